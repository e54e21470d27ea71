//! Power cuts during an upgrade run on the node itself: the node announces each step of
//! its own step list on the console, and the harness cuts the power (QMP `quit`) the moment
//! it sees the chosen one, so the step is in flight. Cut points (13): the fetch, every step of an
//! upgrade from the active slot, and the steps only an upgrade from the passive slot has.
//! After every cut the next power-on must come up healthy on a good slot (the old version,
//! or the new one only under an armed tries counter), as the model read back from the disk
//! predicts; the persistent partition keeps what was written before the upgrade; COS_STATE
//! and COS_PERSISTENT are clean for e2fsck.

#[path = "support/boot.rs"]
mod support;

use std::path::Path;

use bootyard::boot::assessment::Health;
use bootyard::scenario::Run;
use bootyard::testkit::require_root;
use bootyard_scenarios::file::{StepSpec, UpgradeFrom};
use bootyard_scenarios::ScenarioFile;
use support::{fsck_clean, run_dir, scenario_options};

const SCENARIO: &str = r#"
schema = 1
name = "upgrade-power-cut"
tries = 1
watchdog_sec = 90
[[image]]
version = "v1"
[[image]]
version = "v2"
[[image]]
version = "v3"
breakage = "panic"
[[image]]
version = "v4"
[[phase]]
name = "bootloader"
deadline_s = 60
marker = "bootyard: booting slot"
[[phase]]
name = "stage"
deadline_s = 90
marker = "BOOTYARD-STAGE "
[[phase]]
name = "boot-complete"
deadline_s = 180
marker = "BOOTYARD-BOOT-COMPLETE"
"#;

const CANARY: &str = "echo bootyard-canary > /run/cos/persistent/canary && sync";
/// Checks the canary, then leaves both partitions clean for e2fsck on the host.
const CHECK: &str = "test \"$(cat /run/cos/persistent/canary)\" = bootyard-canary || exit 3\numount /run/cos/persistent || exit 4\nmount -o remount,ro /run/cos/state || exit 5\n";

fn cut_and_recover(run: &mut Run, pristine: &Path, cut: &str, case: &str) {
    std::fs::copy(pristine, run.disk()).unwrap();
    let before = run.resync_from_disk().unwrap();
    let old_good: Vec<String> = before
        .good_versions()
        .into_iter()
        .map(String::from)
        .collect();
    let hook = format!("{CANARY}\n{}\n", run.upgrade_command("v4").unwrap());
    let b = run
        .power_on(&format!("{case}: upgrade, cut at {cut}"), &hook, Some(cut))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(
        b.steps
            .iter()
            .any(|s| s.name.split_whitespace().any(|w| w == cut)),
        "{case}: the node never announced {cut} (steps: {:?}, hook rc {:?}); console: {}",
        b.steps,
        b.hook_rc,
        b.console_log.display()
    );
    assert_eq!(
        b.hook_rc, None,
        "{case}: the upgrade finished before the cut"
    );

    let after = run.resync_from_disk().unwrap();
    let b = run
        .power_on(&format!("{case}: first boot after the cut"), CHECK, None)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let version = b.version.clone().unwrap();
    let allowed = old_good.contains(&version)
        || (version == "v4" && matches!(after.active.health, Health::Trying { .. }));
    assert!(
        allowed,
        "{case}: came up on {version}, which is neither a good slot before the upgrade ({old_good:?}) nor the new image under an armed counter ({after:?})"
    );
    assert_eq!(
        b.hook_rc,
        Some(0),
        "{case}: persistent data lost or partitions not unmountable (3: canary, 4/5: unmount); console: {}",
        b.console_log.display()
    );
    fsck_clean(run.disk(), "COS_STATE", case);
    fsck_clean(run.disk(), "COS_PERSISTENT", case);
    eprintln!(
        "{case}: cut at {cut} -> came up on {}:{version}",
        b.expected_slot
    );
}

/// The cut points of an upgrade from the active slot, then those only an upgrade from the
/// passive slot has.
const FROM_ACTIVE: [&str; 10] = [
    "fetch",
    "remove_stale_transition",
    "write_transition",
    "remove_old_passive",
    "link_active_as_passive",
    "record_passive",
    "unlink_active",
    "arm_counter",
    "link_transition_as_active",
    "unlink_transition",
];
const FROM_PASSIVE: [&str; 3] = [
    "remove_failed_active",
    "arm_counter",
    "link_transition_as_active",
];

/// Prepares a node and cuts at `active` (indexes into FROM_ACTIVE) and `passive` (into
/// FROM_PASSIVE). Two tests share the points, so the harness runs them on both cores.
fn power_cuts(
    test: &str,
    part: &str,
    active: std::ops::Range<usize>,
    passive: std::ops::Range<usize>,
) {
    if !require_root(test) {
        return;
    }
    let dir = run_dir(&format!("upgrade-power-cut-{part}"));
    let Some(opts) = scenario_options(test, &dir) else {
        return;
    };
    let file = ScenarioFile::parse(SCENARIO, "upgrade-power-cut").unwrap();
    let mut run = Run::start(&file, &opts).unwrap();

    // From the active slot: v2 good in active, v1 good in passive (distinct versions, so a
    // cut that boots the rotated image under the old passive's name would show).
    run.step(&StepSpec::Install { image: "v1".into() }).unwrap();
    run.step(&StepSpec::Upgrade {
        image: "v2".into(),
        from: UpgradeFrom::Host,
    })
    .unwrap();
    run.step(&StepSpec::Boot { times: 1 }).unwrap();
    let from_active = dir.join("from-active.img");
    std::fs::copy(run.disk(), &from_active).unwrap();
    let from_passive = dir.join("from-passive.img");
    if !passive.is_empty() {
        // From the passive slot: an upgrade to v3 panicked through its try; the next
        // power-on runs v2 from passive.
        run.step(&StepSpec::Upgrade {
            image: "v3".into(),
            from: UpgradeFrom::Host,
        })
        .unwrap();
        run.step(&StepSpec::Boot { times: 1 }).unwrap();
        std::fs::copy(run.disk(), &from_passive).unwrap();
    }
    for i in active {
        cut_and_recover(
            &mut run,
            &from_active,
            FROM_ACTIVE[i],
            &format!("from active #{}", i + 1),
        );
    }
    for i in passive {
        cut_and_recover(
            &mut run,
            &from_passive,
            FROM_PASSIVE[i],
            &format!("from passive #{}", FROM_ACTIVE.len() + i + 1),
        );
    }
    drop(run);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qemu_power_cut_at_the_first_upgrade_steps_boots_a_good_slot() {
    power_cuts(
        "qemu_power_cut_at_the_first_upgrade_steps_boots_a_good_slot",
        "a",
        0..6,
        0..0,
    );
}

#[test]
fn qemu_power_cut_at_the_later_upgrade_steps_boots_a_good_slot() {
    power_cuts(
        "qemu_power_cut_at_the_later_upgrade_steps_boots_a_good_slot",
        "b",
        6..FROM_ACTIVE.len(),
        0..FROM_PASSIVE.len(),
    );
}
