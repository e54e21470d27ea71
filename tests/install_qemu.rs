//! `bootyard install` end to end: an OS image (a `dir:` tree with its own kernel and initrd)
//! becomes a GPT disk with Kairos's partitions; QEMU boots its active slot through the
//! boot-assessment grub.cfg; a second install refuses to overwrite; an image that cannot
//! boot is refused before anything is written.

#[path = "support/boot.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use bootyard_scenarios::phase::{PhaseEvent, PhaseTracker};
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};
use bootyard_scenarios::PhaseSpec;
use support::{boot_tools, Images};

fn bootyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(args)
        .env("CI", "1")
        .output()
        .unwrap()
}

#[test]
fn qemu_install_then_boot_the_active_slot() {
    if !boot_tools("qemu_install_then_boot_the_active_slot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = Images::new(tmp.path()).root("7");

    let disk = tmp.path().join("disk.img");
    let (d, r) = (
        disk.display().to_string(),
        format!("dir:{}", root.display()),
    );
    let o = bootyard(&[
        "install", "--image", &r, "--disk", &d, "--size", "1G", "--json",
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["version"], "7");
    assert_eq!(report["size_bytes"].as_u64(), Some(1 << 30));
    let listing = String::from_utf8_lossy(
        &Command::new("sgdisk")
            .arg("-p")
            .arg(&disk)
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    for p in [
        "BIOS",
        "COS_OEM",
        "COS_STATE",
        "COS_RECOVERY",
        "COS_PERSISTENT",
    ] {
        assert!(listing.contains(p), "{p} missing: {listing}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".bootyard-install")
        })
        .collect();
    assert!(leftovers.is_empty(), "work directory left behind");

    let mut spec = MachineSpec::new("installed", tmp.path());
    spec.memory_mib = 512;
    spec.drives.push(Drive {
        path: disk.clone(),
        format: "raw".into(),
        interface: "virtio".into(),
    });
    let mut m = Machine::launch(spec).unwrap();
    // Phases with deadlines, driven by the console as it arrives.
    let phase = |name: &str, s: u64, marker: &str| PhaseSpec {
        name: name.into(),
        deadline_s: s,
        marker: marker.into(),
    };
    let mut phases = PhaseTracker::new(
        vec![
            phase("bootloader", 30, "bootyard: booting slot active"),
            phase("kernel", 60, "Linux version"),
            phase("init", 120, "BOOTYARD-INIT"),
        ],
        0,
    );
    let mut init = None;
    while !phases.done() {
        let wait = Duration::from_millis(
            phases
                .poll_timeout()
                .expect("a phase is running")
                .saturating_sub(m.elapsed_ms()),
        );
        let line = m
            .next_line(Instant::now() + wait, phases.current().unwrap_or("?"))
            .unwrap_or_else(|e| panic!("{e}; {phases:?}"));
        for ev in phases.handle_line(line.at_ms, &line.text) {
            eprintln!("{ev:?}");
            if matches!(&ev, PhaseEvent::Passed { phase, .. } if phase == "init") {
                init = Some(line.clone());
            }
        }
    }
    let init = init.expect("init phase passed");
    assert!(
        init.text.contains("version=7")
            && init.text.contains("cos-img/filename=/cOS/active.img")
            && init.text.contains("root=LABEL=COS_STATE"),
        "{}",
        init.text
    );
    assert!(m
        .wait_exit(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .success());
    drop(m);
    eprintln!("installed disk booted its active slot in {} ms", init.at_ms);

    // A second install does not overwrite without --force, and leaves the disk alone.
    let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let o = bootyard(&["install", "--image", &r, "--disk", &d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --force"));
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        before
    );

    // An image without a kernel is refused, and no disk appears.
    std::fs::remove_file(root.join("boot/vmlinuz")).unwrap();
    let other = tmp.path().join("other.img");
    let o = bootyard(&[
        "install",
        "--image",
        &r,
        "--disk",
        &other.display().to_string(),
    ]);
    // An image that cannot boot is an invalid input (exit 3), as a corrupt one is.
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no /boot/vmlinuz"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!other.exists());
}
