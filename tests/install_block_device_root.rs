//! `bootyard install` onto a block device (a loop device over a file; needs root): the same
//! layout lands on the device, in place, and reads back clean.

#[path = "support/boot.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

use bootyard::disk::gpt;
use bootyard::testkit::{require_root, require_tool};
use support::{bootyard_json, Images};

/// Detaches the loop device however the test ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        // Nothing more can be done about a failed detach in a destructor.
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn install_onto_a_loop_block_device_root() {
    let name = "install_onto_a_loop_block_device_root";
    if !require_root(name)
        || !require_tool(name, "losetup", "mount")
        || !require_tool(name, "grub-mkimage", "grub-pc-bin")
        || !require_tool(name, "apt-get", "apt")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dev = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());

    let images = Images::new(tmp.path());
    let report = bootyard_json(&["install", "--image", &images.source("b1"), "--disk", &dev.0]);
    assert_eq!(
        report["size_bytes"].as_u64(),
        Some(1 << 30),
        "sized from the device: {report}"
    );
    assert_eq!(
        PathBuf::from(report["disk"].as_str().unwrap()),
        PathBuf::from(&dev.0)
    );

    let verify = Command::new("sgdisk")
        .arg("-v")
        .arg(&dev.0)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop(dev);

    // Through the backing file: every filesystem is clean, and grubenv says v b1 is good.
    let table = gpt::read(&std::fs::File::open(&backing).unwrap()).unwrap();
    for p in table
        .partitions
        .iter()
        .filter(|p| p.name.starts_with("COS_") && p.name != "COS_GRUB")
    {
        let o = Command::new("e2fsck")
            .arg("-fn")
            .arg(format!("{}?offset={}", backing.display(), p.offset_bytes()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            p.name,
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // The EFI system partition is FAT, with GRUB at the removable-media path.
    let esp = table
        .partitions
        .iter()
        .find(|p| p.name == "COS_GRUB")
        .unwrap();
    let o = Command::new("mdir")
        .arg("-i")
        .arg(format!("{}@@{}", backing.display(), esp.offset_bytes()))
        .arg("::/EFI/BOOT")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("BOOTX64"),
        "ESP: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let status = bootyard_json(&["status", "--disk", &backing.display().to_string()]);
    assert_eq!(status["slots"]["active"]["version"], "b1");
    assert_eq!(status["slots"]["active"]["health"]["state"], "good");
}
