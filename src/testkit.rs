//! Helpers shared by the integration tests and benches: locating external tools, and the
//! rule that a missing tool skips a test on a developer machine but fails it in CI.

use std::path::{Path, PathBuf};

/// Finds `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether a test needing `tool` can run. In CI (`CI` set) a missing tool is a failure,
/// because CI installs everything; elsewhere the test is skipped with the reason printed.
pub fn require_tool(test: &str, tool: &str, package: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: {tool} is missing in CI (Debian package {package}); .ci/run must install it"
        );
    }
    eprintln!("SKIPPED {test}: {tool} not installed (apt-get install {package})");
    false
}

/// Whether a test that needs root can run, with the same CI rule.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root, and CI runs as root");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// The static bootyard that test OS images carry: `$BOOTYARD_GUEST_AGENT` (set by `./x test`),
/// else where `./x guest-agent` builds it. Same CI rule as the tools.
pub fn require_guest_agent(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("BOOTYARD_GUEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-gnu/guest/bootyard")
        });
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: no static guest agent at {}; `./x test` builds it",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: no static guest agent at {} (run ./x guest-agent)",
        p.display()
    );
    None
}

/// Makes a FIFO at `path` (for tests of what a command does with one in its way).
pub fn mkfifo(path: &Path) -> std::io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(std::io::Error::from)
}
