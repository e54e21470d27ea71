//! The same installed disk boots under EFI (OVMF): GRUB EFI from the ESP reads the same
//! grub.cfg and grubenv, an upgrade on the node works, and the new slot proves itself. Each
//! boot is checked against the boot-assessment model by the scenario runner.

#[path = "support/boot.rs"]
mod support;

use bootyard::scenario::{Run, OVMF};
use bootyard::testkit::require_tool;
use bootyard_scenarios::file::{StepSpec, UpgradeFrom};
use bootyard_scenarios::ScenarioFile;
use support::{run_dir, scenario_options};

const SCENARIO: &str = r#"
schema = 1
name = "efi-upgrade"
firmware = "efi"
tries = 2
[[image]]
version = "v1"
[[image]]
version = "v2"
[[phase]]
name = "firmware"
deadline_s = 60
marker = "BdsDxe: starting"
[[phase]]
name = "bootloader"
deadline_s = 60
marker = "bootyard: booting slot"
[[phase]]
name = "kernel"
deadline_s = 60
marker = "Linux version"
[[phase]]
name = "stage"
deadline_s = 90
marker = "BOOTYARD-STAGE "
[[phase]]
name = "boot-complete"
deadline_s = 180
marker = "BOOTYARD-BOOT-COMPLETE"
"#;

#[test]
fn qemu_efi_install_boot_and_node_upgrade() {
    let test = "qemu_efi_install_boot_and_node_upgrade";
    if !require_tool(test, "mkfs.fat", "dosfstools") || !require_tool(test, "mcopy", "mtools") {
        return;
    }
    if !std::path::Path::new(OVMF).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {OVMF} is missing in CI (Debian package ovmf)"
        );
        eprintln!("SKIPPED {test}: {OVMF} missing (apt-get install ovmf)");
        return;
    }
    let dir = run_dir("efi-upgrade");
    let Some(opts) = scenario_options(test, &dir) else {
        return;
    };
    let file = ScenarioFile::parse(SCENARIO, "efi-upgrade").unwrap();
    let mut run = Run::start(&file, &opts).unwrap();
    for step in [
        StepSpec::Install { image: "v1".into() },
        StepSpec::Upgrade {
            image: "v2".into(),
            from: UpgradeFrom::Node,
        },
        StepSpec::Boot { times: 1 },
        StepSpec::Status {
            why_contains: Some("trying the new image, attempt 1 of 2".into()),
        },
    ] {
        run.step(&step).unwrap_or_else(|e| panic!("{step:?}: {e}"));
    }
    let last = run.boots().last().unwrap();
    assert_eq!(
        (last.version.as_deref(), last.phases.len() >= 5),
        (Some("v2"), true),
        "{:?}",
        last.phases
    );
    eprintln!(
        "EFI: QEMU start to boot-complete {} ms",
        last.phases
            .iter()
            .find(|p| p.name == "boot-complete")
            .unwrap()
            .at_ms
    );
    drop(run);
    std::fs::remove_dir_all(&dir).unwrap();
}
