use std::process::ExitCode;

use bootyard::cli::sim::SimError;
use bootyard::cli::{self, Cli};
use bootyard::image::apply::ApplyError;
use bootyard::image::pull::PullError;
use bootyard::image::registry::RegistryError;
use bootyard::image::unpack::UnpackError;
use clap::Parser;

/// The simulator allocates and frees millions of small buffers (messages, packets): mimalloc
/// does that faster than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, stable for scripts and CI gates.
mod exit {
    pub const FAILURE: u8 = 1;
    /// A usage error (clap's, and a conformance run asked for unknown checks or given a bad
    /// denylist).
    pub const USAGE: u8 = 2;
    /// The input is invalid: an image that is corrupt or hostile (digest mismatch, unsafe
    /// path, bomb), a mesh scenario file that does not parse or validate, a corrupt trace.
    pub const BAD_INPUT: u8 = 3;
    /// The registry or source could not be reached, refused access, or lacks the image.
    pub const UNAVAILABLE: u8 = 4;
    /// Standard output was closed under a report (`| head`): 128 + SIGPIPE, as the shell
    /// reports a tool that signal ended.
    pub const STDOUT_CLOSED: u8 = 141;
}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(cli::conformance::NotPassed(outcome)) = cause.downcast_ref() {
            return outcome.exit_code();
        }
        if cause.is::<bootyard::conformance::run::ConfigError>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<SimError>() {
            return match e {
                SimError::Seeds { .. }
                | SimError::Shard { .. }
                | SimError::EmptyShard { .. }
                | SimError::OutputIsInput { .. } => exit::USAGE,
                SimError::InvalidFile { .. } | SimError::InvalidTrace { .. } => exit::BAD_INPUT,
                SimError::Read { .. }
                | SimError::Write { .. }
                | SimError::Run { .. }
                | SimError::Failed { .. }
                | SimError::NotDeterministic { .. }
                | SimError::SweepFailed { .. }
                | SimError::Diverged { .. } => exit::FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return match e {
                RegistryError::DigestMismatch { .. }
                | RegistryError::SizeMismatch { .. }
                | RegistryError::TooLarge { .. }
                | RegistryError::Spec(_) => exit::BAD_INPUT,
                RegistryError::Unauthorized { .. }
                | RegistryError::NotFound { .. }
                | RegistryError::Exhausted { .. }
                | RegistryError::Failed { .. } => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<UnpackError>() {
            return match e {
                UnpackError::DestinationNotEmpty(_)
                | UnpackError::DestinationNotDir(_)
                | UnpackError::Io { .. } => exit::FAILURE,
                UnpackError::Apply {
                    source: ApplyError::Io { .. },
                    ..
                } => exit::FAILURE,
                _ => exit::BAD_INPUT,
            };
        }
        if let Some(PullError::Archive(_) | PullError::Spec(_)) = cause.downcast_ref::<PullError>()
        {
            return exit::BAD_INPUT;
        }
    }
    exit::FAILURE
}

fn main() -> ExitCode {
    // In an initrd, bootyard is /init: the boot stage, run by the kernel as pid 1.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::process::id() == 1 && std::path::Path::new(&argv0).file_name() == Some("init".as_ref())
    {
        bootyard::agent::stage::run();
    }
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
