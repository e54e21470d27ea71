//! A/B upgrade and automatic rollback in real boots, upgrades done on the host disk:
//! install v1 -> boot v1 -> upgrade to v2 (which never proves itself) -> v2 tried `tries`
//! times -> back on v1 by itself, and `status` says why -> upgrade to v3 from the passive
//! slot: the failed v2 is replaced, v1 is kept (no stale bad mark: v3 gets all its tries).
//! Every boot is checked against the boot-assessment model.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootyard::boot::assessment::{BootModel, Health, Slot};
use bootyard::debpkg;
use bootyard::testimage::{boot_rootfs, busybox_initramfs, reporting_init};
use bootyard::testkit::require_tool;
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};

fn asset_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/deb")
}

fn bootyard(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(args)
        .arg("--json")
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bootyard {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn boot(dir: &Path, disk: &Path, n: usize) -> (Slot, String) {
    let mut spec = MachineSpec::new(&format!("boot{n}"), dir);
    spec.memory_mib = 512;
    spec.drives.push(Drive {
        path: disk.to_path_buf(),
        format: "raw".into(),
        interface: "ide".into(),
    });
    let mut m = Machine::launch(spec).unwrap();
    let init = m
        .wait_for("BOOTYARD-INIT", Duration::from_secs(120))
        .unwrap();
    assert!(m
        .wait_exit(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .success());
    let field = |k: &str| {
        init.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {}", init.text))
            .to_string()
    };
    let slot = match field("bootyard.slot=").as_str() {
        "active" => Slot::Active,
        "passive" => Slot::Passive,
        _ => Slot::Recovery,
    };
    eprintln!(
        "boot {n}: {slot} version {} after {} ms",
        field("version="),
        init.at_ms
    );
    (slot, field("version="))
}

#[test]
fn qemu_ab_upgrade_and_automatic_rollback() {
    let name = "qemu_ab_upgrade_and_automatic_rollback";
    for (tool, pkg) in [
        ("grub-mkimage", "grub-pc-bin"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
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
        format!("dir:{}", root.display())
    };
    let disk = tmp.path().join("disk.img");
    let d = disk.display().to_string();
    let tries = 2u8;
    bootyard(&[
        "install",
        "--image",
        &image("v1"),
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
        let got = boot(tmp.path(), &disk, n);
        assert_eq!(
            got,
            (expected, model.slot(expected).version.clone().unwrap()),
            "boot {n} disagrees with the model"
        );
        let status = bootyard(&["status", "--disk", &d]);
        assert_eq!(
            status["slots"]["active"]["health"]["state"],
            serde_json::to_value(model.active.health).unwrap()["state"],
            "boot {n}: {status}"
        );
        status
    };

    check_boot(&mut model);
    let up = bootyard(&["upgrade", "--image", &image("v2"), "--disk", &d]);
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

    let up = bootyard(&["upgrade", "--image", &image("v3"), "--disk", &d]);
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
