//! Shared by the conformance tests: `bootyard conformance` as a user runs it.

#![allow(dead_code)] // each test file uses its own subset

use std::process::Command;

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
