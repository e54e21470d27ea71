//! The scenario files under scenarios/, run as a user runs them (`bootyard scenario run`),
//! on every flavor they list: real boots under QEMU, each checked against the
//! boot-assessment model by the runner. Needs QEMU, root (the Debian flavor is built with
//! mmdebstrap) and the static guest agent.

#[path = "support/boot.rs"]
mod support;

use std::process::Command;

use bootyard::testkit::{require_guest_agent, require_root, require_tool};
use support::{asset_cache, boot_tools};

fn run_scenario(test: &str, file: &str) {
    if !boot_tools(test)
        || !require_root(test)
        || !require_tool(test, "mmdebstrap", "mmdebstrap")
        || !require_tool(test, "docker-registry", "docker-registry")
    {
        return;
    }
    let Some(agent) = require_guest_agent(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(["scenario", "run", file, "--json", "--accel", "tcg"])
        .arg("--workdir")
        .arg(work.path())
        .arg("--agent")
        .arg(&agent)
        .arg("--cache")
        .arg(asset_cache())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let reports: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{file}: no JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    for r in reports.as_array().unwrap() {
        eprintln!(
            "{file} [{}]: passed={} in {} ms (images {} ms), {} boots",
            r["flavor"],
            r["passed"],
            r["ms"],
            r["build_ms"],
            r["boots"].as_array().map_or(0, |b| b.len())
        );
        for b in r["boots"].as_array().into_iter().flatten() {
            eprintln!(
                "  boot {} {}: {}:{} {} in {} ms",
                b["n"], b["purpose"], b["slot"], b["version"], b["outcome"], b["ms"]
            );
        }
        assert_eq!(
            r["passed"], true,
            "{file} [{}]: {}",
            r["flavor"], r["failure"]
        );
    }
    assert_eq!(reports.as_array().unwrap().len(), 2, "both flavors ran");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// One test, so the runs take turns on the machine's cores.
#[test]
fn qemu_scenarios_ab_rollback_and_manual_rollback_both_flavors() {
    let test = "qemu_scenarios_ab_rollback_and_manual_rollback_both_flavors";
    run_scenario(test, "scenarios/ab-rollback.toml");
    run_scenario(test, "scenarios/manual-rollback.toml");
}
