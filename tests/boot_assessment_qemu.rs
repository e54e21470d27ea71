//! The boot-assessment grub.cfg in real boots, checked against the model at every boot: an
//! upgrade to an image that never proves itself is tried `tries` times, then GRUB falls back
//! to the passive slot on its own, and grubenv on the disk says so.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootyard::boot::assessment::{BootModel, Slot};
use bootyard::boot::grub::{build_core_image, embed_bios, I386_PC_DIR};
use bootyard::boot::grubcfg::{
    self, env_to_model, model_to_env, GrubCfgOptions, EARLY_CFG, PREFIX,
};
use bootyard::boot::grubenv::{GrubEnv, GRUBENV_BYTES};
use bootyard::debpkg;
use bootyard::disk::fill::copy_into_partition;
use bootyard::disk::gpt::{self, Guid, PartitionSpec};
use bootyard::image::slot::{build_slot, SlotOptions};
use bootyard::testimage::{boot_rootfs, busybox_initramfs, reporting_init};
use bootyard::testkit::require_tool;
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};

fn asset_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/deb")
}

/// A slot image whose init reports its version and powers off without marking itself good.
fn slot_image(dir: &Path, kernel: &Path, busybox: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("slot-{version}"));
    boot_rootfs(
        &root,
        kernel,
        &busybox_initramfs(busybox, &reporting_init(version)).unwrap(),
        version,
    )
    .unwrap();
    let img = dir.join(format!("{version}.img"));
    build_slot(
        &root,
        &img,
        &SlotOptions {
            label: format!("SLOT_{version}"),
            headroom_bytes: 8 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    img
}

/// The byte offset of a small file's only block inside an ext4 image.
fn file_block_offset(fs_image: &Path, path: &str) -> u64 {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap {path} 0"))
        .arg(fs_image)
        .output()
        .unwrap();
    let block: u64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("debugfs bmap: {}", String::from_utf8_lossy(&o.stderr)));
    block * 4096
}

#[test]
fn qemu_failed_upgrade_falls_back_as_the_model_says() {
    let name = "qemu_failed_upgrade_falls_back_as_the_model_says";
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

    // v1 installed and good; v2 written as the upgrade, never proving itself.
    let tries = 2;
    let mut model = BootModel::installed("v1", tries).unwrap();
    model.boot();
    model.boot_complete();
    model.upgrade("v2").unwrap();

    let state_root = tmp.path().join("state");
    std::fs::create_dir_all(state_root.join("cOS")).unwrap();
    std::fs::create_dir_all(state_root.join("grub2")).unwrap();
    std::fs::rename(
        slot_image(tmp.path(), &kernel.vmlinuz, &busybox, "v2"),
        state_root.join("cOS/active.img"),
    )
    .unwrap();
    std::fs::rename(
        slot_image(tmp.path(), &kernel.vmlinuz, &busybox, "v1"),
        state_root.join("cOS/passive.img"),
    )
    .unwrap();
    std::fs::write(
        state_root.join("grub2/grub.cfg"),
        grubcfg::render(&GrubCfgOptions {
            cmdline: "panic=-1".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    let mut env = GrubEnv::new();
    model_to_env(&model, &mut env).unwrap();
    std::fs::write(state_root.join("grub2/grubenv"), env.to_block().unwrap()).unwrap();

    let disk_bytes = 768u64 << 20;
    let disk_path = tmp.path().join("disk.img");
    let disk = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&disk_path)
        .unwrap();
    disk.set_len(disk_bytes).unwrap();
    let specs = vec![
        PartitionSpec {
            name: "bios".into(),
            type_guid: Guid::BIOS_BOOT,
            size_bytes: Some(1 << 20),
        },
        PartitionSpec {
            name: "COS_STATE".into(),
            type_guid: Guid::LINUX_DATA,
            size_bytes: None,
        },
    ];
    let table = gpt::plan(disk_bytes, &specs, Guid::derived(b"assessment", 0)).unwrap();
    gpt::write(&disk, &table).unwrap();
    let state_img = tmp.path().join("state.img");
    build_slot(
        &state_root,
        &state_img,
        &SlotOptions {
            label: "COS_STATE".into(),
            size_bytes: Some(table.partitions[1].size_bytes()),
            ..Default::default()
        },
    )
    .unwrap();
    let grubenv_at =
        table.partitions[1].offset_bytes() + file_block_offset(&state_img, "/grub2/grubenv");
    copy_into_partition(&disk, &table.partitions[1], &state_img).unwrap();
    embed_bios(
        &disk,
        &table,
        &build_core_image(tmp.path(), PREFIX, EARLY_CFG).unwrap(),
        &Path::new(I386_PC_DIR).join("boot.img"),
    )
    .unwrap();

    let read_env = || {
        let mut block = vec![0u8; GRUBENV_BYTES];
        disk.read_exact_at(&mut block, grubenv_at).unwrap();
        GrubEnv::parse(&block).unwrap()
    };
    assert_eq!(
        env_to_model(&read_env()).unwrap().active,
        model.active,
        "grubenv located on disk"
    );

    for boot in 1..=(tries as usize + 2) {
        let expected = model.boot().unwrap();
        let expected_version = model.slot(expected).version.clone().unwrap();
        let mut spec = MachineSpec::new(&format!("boot{boot}"), tmp.path());
        spec.memory_mib = 512;
        spec.drives.push(Drive {
            path: disk_path.clone(),
            format: "raw".into(),
            interface: "ide".into(),
        });
        let mut m = Machine::launch(spec).unwrap();
        let chosen = m
            .wait_for("bootyard: booting slot", Duration::from_secs(60))
            .unwrap();
        let init = m
            .wait_for("BOOTYARD-INIT", Duration::from_secs(120))
            .unwrap();
        let status = m
            .wait_exit(Instant::now() + Duration::from_secs(30))
            .unwrap();
        assert!(status.success(), "boot {boot}: {status}");
        drop(m);

        assert!(
            chosen.text.ends_with(&format!("slot {expected}")),
            "boot {boot}: GRUB said {:?}, the model says {expected}",
            chosen.text
        );
        assert!(
            init.text.contains(&format!("version={expected_version}"))
                && init.text.contains(&format!("bootyard.slot={expected}")),
            "boot {boot}: {}",
            init.text
        );
        let on_disk = env_to_model(&read_env()).unwrap();
        assert_eq!(
            on_disk.active.health, model.active.health,
            "boot {boot}: active slot state in grubenv"
        );
        assert_eq!(
            on_disk.last_boot, model.last_boot,
            "boot {boot}: last boot in grubenv"
        );
        eprintln!(
            "boot {boot}: {expected} {expected_version} after {} ms, grubenv {:?}",
            init.at_ms, on_disk.last_boot
        );
    }
    assert_eq!(model.running, Some(Slot::Passive));
}
