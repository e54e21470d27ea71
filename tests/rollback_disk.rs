//! `rollback_disk`, the host-side rollback the conformance upgrade checks use: on an
//! installed and upgraded disk it swaps the slot images and grubenv's states, leaving
//! COS_STATE clean; it refuses, changing nothing, when a rollback the node did not finish
//! is on the disk or there is nothing good to roll back to. No boot: the conformance QEMU
//! tests boot what it leaves.

#[path = "support/boot.rs"]
mod support;

use std::path::Path;

use bootyard::boot::assessment::Health;
use bootyard::image::pull::PullOptions;
use bootyard::image::Source;
use bootyard::upgrade::{read_disk_model, rollback_disk, upgrade_disk, UpgradeError};
use support::{boot_tools, bootyard_json, debugfs, fsck_clean, Images};

/// The inode a name in COS_STATE's cOS directory links to.
fn inode(disk: &Path, name: &str) -> String {
    debugfs(disk, false, &format!("stat /cOS/{name}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn a_host_rollback_swaps_the_slots_and_refuses_what_it_cannot_do_safely() {
    if !boot_tools("rollback_disk") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = Images::new(tmp.path());
    let disk = tmp.path().join("disk.img");
    bootyard_json(&[
        "install",
        "--image",
        &images.source("v1"),
        "--disk",
        &disk.display().to_string(),
    ]);

    // A disk whose passive.img is gone has nothing to roll back to: refused, nothing changed.
    let broken = tmp.path().join("no-passive.img");
    std::fs::copy(&disk, &broken).unwrap();
    debugfs(&broken, true, "rm /cOS/passive.img");
    let before = std::fs::read(&broken).unwrap();
    let e = rollback_disk(&broken).unwrap_err();
    assert!(matches!(e, UpgradeError::NoPassiveImage(_)), "{e:?}");
    assert!(
        std::fs::read(&broken).unwrap() == before,
        "a refusal changed the disk"
    );
    std::fs::remove_file(&broken).unwrap();

    upgrade_disk(
        &Source::Dir(images.root("v2")),
        &disk,
        &PullOptions::new(tmp.path().join("cache")),
    )
    .unwrap();
    let up = read_disk_model(&disk).unwrap();
    assert_eq!(up.active.version.as_deref(), Some("v2"));
    assert_eq!(up.passive.version.as_deref(), Some("v1"));
    let (active, passive) = (inode(&disk, "active.img"), inode(&disk, "passive.img"));

    // A rollback the node left unfinished is the node's to finish: refused, nothing changed.
    debugfs(&disk, true, "write /dev/null /cOS/rollback.pending");
    let before = std::fs::read(&disk).unwrap();
    let e = rollback_disk(&disk).unwrap_err();
    assert!(matches!(e, UpgradeError::InterruptedRollback(_)), "{e:?}");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refusal changed the disk"
    );
    debugfs(&disk, true, "rm /cOS/rollback.pending");

    let r = rollback_disk(&disk).unwrap();
    assert_eq!(r.active_version.as_deref(), Some("v1"));
    let back = read_disk_model(&disk).unwrap();
    assert_eq!(back.active.version.as_deref(), Some("v1"));
    assert_eq!(back.active.health, Health::Good);
    assert_eq!(back.passive.version.as_deref(), Some("v2"));
    // The images moved, not copied: each name now links the other's inode.
    assert_eq!(inode(&disk, "active.img"), passive);
    assert_eq!(inode(&disk, "passive.img"), active);
    assert!(!debugfs(&disk, false, "ls -l /cOS").contains("previous.img"));
    fsck_clean(&disk, "COS_STATE", "after the rollback");
}
