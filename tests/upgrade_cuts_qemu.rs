//! Crash safety of the upgrade's step order: stop the upgrade after each of its steps (the
//! agent's own step list, not random points), boot the disk, and require a good slot: the
//! old version, or the new one only under an armed tries counter. Every cut also leaves
//! COS_STATE and COS_PERSISTENT clean for e2fsck, with the persistent data intact.

#[path = "support/boot.rs"]
mod support;

use std::process::Command;

use bootyard::disk::gpt;
use bootyard::image::pull::PullOptions;
use bootyard::image::Source;
use bootyard::upgrade::DiskUpgrade;
use support::{boot, boot_tools, bootyard_json, fsck_clean, Images};

#[test]
fn qemu_every_upgrade_cut_point_boots_a_good_slot() {
    if !boot_tools("qemu_every_upgrade_cut_point_boots_a_good_slot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = Images::new(tmp.path());
    let pristine = tmp.path().join("pristine.img");
    bootyard_json(&[
        "install",
        "--image",
        &images.source("v1"),
        "--disk",
        &pristine.display().to_string(),
        "--tries",
        "2",
    ]);
    // Persistent data that every cut must leave alone.
    let table = gpt::read(&std::fs::File::open(&pristine).unwrap()).unwrap();
    let persistent = table
        .partitions
        .iter()
        .find(|p| p.name == "COS_PERSISTENT")
        .unwrap();
    std::fs::write(tmp.path().join("marker"), "keep me").unwrap();
    let st = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!(
            "write {} /marker",
            tmp.path().join("marker").display()
        ))
        .arg(format!(
            "{}?offset={}",
            pristine.display(),
            persistent.offset_bytes()
        ))
        .output()
        .unwrap();
    assert!(st.status.success());

    let v2 = Source::Dir(images.root("v2"));
    let pull = PullOptions::new(tmp.path().join("cache"));
    let steps = DiskUpgrade::prepare(&v2, &pristine.clone(), &pull)
        .unwrap()
        .steps();
    assert!(steps.len() >= 8, "{steps:?}");
    let mut cuts = 0;
    for k in 0..=steps.len() {
        let disk = tmp.path().join(format!("cut{k}.img"));
        assert!(Command::new("cp")
            .arg("--sparse=always")
            .arg(&pristine)
            .arg(&disk)
            .status()
            .unwrap()
            .success());
        let mut u = DiskUpgrade::prepare(&v2, &disk, &pull).unwrap();
        for step in &steps[..k] {
            u.apply(*step).unwrap();
        }
        drop(u);
        let after = if k == 0 {
            "nothing".to_string()
        } else {
            format!("{:?}", steps[k - 1])
        };

        let booted = boot(tmp.path(), &disk, &format!("cut{k}"));
        let (chosen, init) = (&booted.grub, &booted.init);
        let new_version = booted.version == "v2";
        let status = bootyard_json(&["status", "--disk", &disk.display().to_string()]);
        if new_version {
            assert!(
                init.text.contains("bootyard.slot=active"),
                "cut after {after}: {}",
                init.text
            );
            assert_eq!(
                status["slots"]["active"]["health"]["state"], "trying",
                "cut after {after}: v2 booted without an armed counter: {status}"
            );
        } else {
            assert!(
                init.text.contains("version=v1"),
                "cut after {after}: {}",
                init.text
            );
        }
        fsck_clean(&disk, "COS_STATE", &format!("cut after {after}"));
        fsck_clean(&disk, "COS_PERSISTENT", &format!("cut after {after}"));
        let marker = Command::new("debugfs")
            .arg("-R")
            .arg("cat /marker")
            .arg(format!(
                "{}?offset={}",
                disk.display(),
                persistent.offset_bytes()
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&marker.stdout),
            "keep me",
            "cut after {after}"
        );
        eprintln!(
            "cut after {after:<24} -> {} ({})",
            chosen.text,
            if new_version {
                "v2, counter armed"
            } else {
                "v1"
            }
        );
        std::fs::remove_file(&disk).unwrap();
        cuts += 1;
    }
    assert_eq!(cuts, steps.len() + 1, "every step boundary was cut");
}
