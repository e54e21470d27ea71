//! Crash safety of the upgrade's step order: stop the upgrade after each of its steps (the
//! agent's own step list, not random points), boot the disk, and require a good slot: the
//! old version, or the new one only under an armed tries counter. Every cut also leaves
//! COS_STATE and COS_PERSISTENT clean for e2fsck, with the persistent data intact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootyard::debpkg;
use bootyard::disk::gpt;
use bootyard::image::pull::PullOptions;
use bootyard::image::Source;
use bootyard::testimage::{boot_rootfs, busybox_initramfs, reporting_init};
use bootyard::testkit::require_tool;
use bootyard::upgrade::DiskUpgrade;
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};

fn asset_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/deb")
}

fn fsck_clean(disk: &Path, partition: &str) {
    let table = gpt::read(&std::fs::File::open(disk).unwrap()).unwrap();
    let p = table
        .partitions
        .iter()
        .find(|p| p.name == partition)
        .unwrap();
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={}", disk.display(), p.offset_bytes()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck {partition}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn qemu_every_upgrade_cut_point_boots_a_good_slot() {
    let name = "qemu_every_upgrade_cut_point_boots_a_good_slot";
    for (tool, pkg) in [
        ("grub-mkimage", "grub-pc-bin"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debugfs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("apt-get", "apt"),
    ] {
        if !require_tool(name, tool, pkg) {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernel = debpkg::cloud_kernel(&asset_cache()).unwrap();
    let busybox = debpkg::busybox(&asset_cache()).unwrap();
    let image = |v: &str| {
        let root = tmp.path().join(format!("os-{v}"));
        boot_rootfs(
            &root,
            &kernel.vmlinuz,
            &busybox_initramfs(&busybox, &reporting_init(v)).unwrap(),
            v,
        )
        .unwrap();
        root
    };
    let pristine = tmp.path().join("pristine.img");
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args([
            "install",
            "--image",
            &format!("dir:{}", image("v1").display()),
            "--disk",
            &pristine.display().to_string(),
            "--tries",
            "2",
        ])
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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

    let v2 = Source::Dir(image("v2"));
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

        let mut spec = MachineSpec::new(&format!("cut{k}"), tmp.path());
        spec.memory_mib = 512;
        spec.drives.push(Drive {
            path: disk.clone(),
            format: "raw".into(),
            interface: "ide".into(),
        });
        let mut m = Machine::launch(spec).unwrap();
        let chosen = m
            .wait_for("bootyard: booting slot", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("cut after {after}: {e}"));
        let init = m
            .wait_for("BOOTYARD-INIT", Duration::from_secs(120))
            .unwrap_or_else(|e| {
                panic!("cut after {after}: GRUB chose {:?}, then {e}", chosen.text)
            });
        assert!(m
            .wait_exit(Instant::now() + Duration::from_secs(30))
            .unwrap()
            .success());
        drop(m);
        let new_version = init.text.contains("version=v2");
        let status = Command::new(env!("CARGO_BIN_EXE_bootyard"))
            .args(["status", "--json", "--disk", &disk.display().to_string()])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
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
        fsck_clean(&disk, "COS_STATE");
        fsck_clean(&disk, "COS_PERSISTENT");
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
