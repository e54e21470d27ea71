//! The scenario files under scenarios/, run as a user runs them (`bootyard scenario run`),
//! on every flavor they list: real boots under QEMU, each checked against the
//! boot-assessment model by the runner. Needs QEMU, root (the Debian flavor is built with
//! mmdebstrap) and the static guest agent.

#[path = "support/boot.rs"]
mod support;

use std::process::Command;

use bootyard::testkit::{require_guest_agent, require_root, require_tool};
use support::{asset_cache, boot_tools};

fn run_scenario(test: &str, file: &str, flavor: &str) {
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
    // Under target/, not a temp dir: console logs and disks stay when a run fails.
    let work = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-runs")
        .join(format!(
            "{}-{flavor}",
            std::path::Path::new(file)
                .file_stem()
                .unwrap()
                .to_string_lossy()
        ));
    if work.exists() {
        std::fs::remove_dir_all(&work).unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args([
            "scenario", "run", file, "--json", "--accel", "tcg", "--flavor", flavor,
        ])
        .arg("--workdir")
        .arg(&work)
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
    assert_eq!(
        reports.as_array().unwrap().len(),
        1,
        "one report for the one flavor"
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&work).unwrap();
}

// One test per scenario and flavor: the harness runs two at a time, one per core. The
// names order them so the two Debian runs of a file do not both build the Debian base.
#[test]
fn qemu_scenario_1_ab_rollback_debian() {
    run_scenario(
        "qemu_scenario_1_ab_rollback_debian",
        "scenarios/ab-rollback.toml",
        "debian",
    );
}

#[test]
fn qemu_scenario_2_ab_rollback_busybox() {
    run_scenario(
        "qemu_scenario_2_ab_rollback_busybox",
        "scenarios/ab-rollback.toml",
        "busybox",
    );
}

#[test]
fn qemu_scenario_3_bad_images_busybox() {
    run_scenario(
        "qemu_scenario_3_bad_images_busybox",
        "scenarios/bad-images.toml",
        "busybox",
    );
}

#[test]
fn qemu_scenario_4_manual_rollback_busybox() {
    run_scenario(
        "qemu_scenario_4_manual_rollback_busybox",
        "scenarios/manual-rollback.toml",
        "busybox",
    );
}

#[test]
fn qemu_scenario_5_manual_rollback_debian() {
    run_scenario(
        "qemu_scenario_5_manual_rollback_debian",
        "scenarios/manual-rollback.toml",
        "debian",
    );
}
