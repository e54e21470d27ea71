//! Shared by the conformance tests: `bootyard conformance` as a user runs it.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use bootyard::cli::build_test_image::default_cache;
use bootyard::conformance::container::Engine;
use bootyard::testimage::{build_rootfs, Flavor, TestImageSpec};
use bootyard::testkit::require_guest_agent;

/// Runs `bootyard conformance ARGS`: its exit status and everything it printed.
pub fn conformance(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .arg("conformance")
        .args(args)
        .output()
        .expect("run bootyard");
    (
        o.status.code().expect("exited"),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Whether a Docker engine answers; outside CI, false (after saying why) when none does.
pub fn engine_or_skip(test: &str) -> bool {
    match Engine::connect() {
        Ok(_) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: no Docker engine in CI ({why}); .ci/run must start one")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: no Docker engine reachable ({why})");
            false
        }
    }
}

/// A test OS image's root filesystem, built under `dir` (None, with the reason printed, when
/// there is no guest agent or no engine outside CI).
pub fn test_rootfs(test: &str, dir: &Path, flavor: Flavor, version: &str) -> Option<PathBuf> {
    let agent = require_guest_agent(test)?;
    if !engine_or_skip(test) {
        return None;
    }
    let root = dir.join("rootfs");
    let spec = TestImageSpec {
        flavor,
        version: version.into(),
        breakage: None,
        watchdog_sec: 120,
        agent,
        cache: default_cache(),
    };
    build_rootfs(&spec, &root).unwrap();
    Some(root)
}
