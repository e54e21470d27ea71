use std::process::ExitCode;

use bootyard::cli::exit::{self, exit_code};
use bootyard::cli::{self, Cli};
use clap::Parser;

/// The simulator allocates and frees millions of small buffers (messages, packets): mimalloc
/// does that faster than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIGINT and SIGTERM end a command once it has removed its scratch files, with exit status
/// 128 + the signal (130, 143), as a shell reports a command a signal ended. Both are
/// blocked in every thread (threads inherit the mask; the children std spawns get it
/// cleared) and taken by one thread, which can do what no signal handler may.
fn handle_interrupts() {
    // SAFETY: plain libc calls on a sigset_t this function owns, before any other thread
    // exists; the spawned thread only waits on the same set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            // Without the mask the default action (ending at once) stands; nothing is lost
            // that a later run does not sweep.
            return;
        }
        let waited = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    bootyard::output::sweep_own_scratch();
                    std::process::exit(128 + sig);
                }
            });
        if waited.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    // In an initrd, bootyard is /init: the boot stage, run by the kernel as pid 1.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::process::id() == 1 && std::path::Path::new(&argv0).file_name() == Some("init".as_ref())
    {
        bootyard::agent::stage::run();
    }
    handle_interrupts();
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output left (`bootyard sim sweep … | head`): nothing to say.
        Err(err) if err.chain().any(|c| c.is::<cli::sim::StdoutClosed>()) => {
            ExitCode::from(exit::STDOUT_CLOSED)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}
