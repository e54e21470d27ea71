//! A/B upgrade and automatic rollback in real boots, upgrades done on the host disk:
//! install v1 -> boot v1 -> upgrade to v2 (which never proves itself) -> v2 tried `tries`
//! times -> back on v1 by itself, and `status` says why -> upgrade to v3 from the passive
//! slot: the failed v2 is replaced, v1 is kept (no stale bad mark: v3 gets all its tries).
//! Every boot is checked against the boot-assessment model.

#[path = "support/boot.rs"]
mod support;

use bootyard::boot::assessment::{BootModel, Health, Slot};
use support::{boot, boot_tools, bootyard_json, Images};

#[test]
fn qemu_ab_upgrade_and_automatic_rollback() {
    if !boot_tools("qemu_ab_upgrade_and_automatic_rollback") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = Images::new(tmp.path());
    let disk = tmp.path().join("disk.img");
    let d = disk.display().to_string();
    let tries = 2u8;
    bootyard_json(&[
        "install",
        "--image",
        &images.source("v1"),
        "--disk",
        &d,
        "--tries",
        &tries.to_string(),
    ]);
    let mut model = BootModel::installed("v1", tries).unwrap();
    let mut n = 0;
    let mut check_boot = |model: &mut BootModel| {
        n += 1;
        let expected = model.boot().unwrap();
        let got = boot(tmp.path(), &disk, &format!("boot{n}"));
        eprintln!(
            "boot {n}: {} {} after {} ms",
            got.slot, got.version, got.init.at_ms
        );
        assert_eq!(
            (got.slot, got.version),
            (expected, model.slot(expected).version.clone().unwrap()),
            "boot {n} disagrees with the model"
        );
        let status = bootyard_json(&["status", "--disk", &d]);
        assert_eq!(
            status["slots"]["active"]["health"]["state"],
            serde_json::to_value(model.active.health).unwrap()["state"],
            "boot {n}: {status}"
        );
        status
    };

    check_boot(&mut model);
    let up = bootyard_json(&["upgrade", "--image", &images.source("v2"), "--disk", &d]);
    assert_eq!(
        (up["rotated"].as_bool(), up["passive_version"].as_str()),
        (Some(true), Some("v1"))
    );
    model.upgrade("v2").unwrap();
    for _ in 0..tries {
        check_boot(&mut model);
    }
    let status = check_boot(&mut model);
    assert_eq!(model.active.health, Health::Bad);
    assert_eq!(model.running, Some(Slot::Passive));
    let why = status["why"].as_str().unwrap();
    assert!(why.contains("v2 used up its boot attempts"), "{why}");

    let up = bootyard_json(&["upgrade", "--image", &images.source("v3"), "--disk", &d]);
    assert_eq!(
        (
            up["rotated"].as_bool(),
            up["from_slot"].as_str(),
            up["passive_version"].as_str()
        ),
        (Some(false), Some("passive"), Some("v1"))
    );
    model.upgrade("v3").unwrap();
    let status = check_boot(&mut model);
    assert_eq!(model.running, Some(Slot::Active));
    assert!(
        status["why"].as_str().unwrap().contains("attempt 1 of 2"),
        "{status}"
    );
}
