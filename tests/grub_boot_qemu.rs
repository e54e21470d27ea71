//! A GPT disk image built without root (our GPT, `mkfs.ext4 -d`, GRUB embedded by hand)
//! boots in QEMU: BIOS -> boot.img -> core.img -> grub.cfg found by filesystem label on
//! COS_STATE, which prints a marker on the serial console and powers off.

use std::time::{Duration, Instant};

use bootyard::boot::grub::{build_core_image, embed_bios, I386_PC_DIR};
use bootyard::boot::grubcfg::{EARLY_CFG, PREFIX};
use bootyard::disk::fill::copy_into_partition;
use bootyard::disk::gpt::{self, Guid, PartitionSpec};
use bootyard::image::slot::{build_slot, SlotOptions};
use bootyard::testkit::require_tool;
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};

#[test]
fn qemu_boots_grub_embedded_without_root() {
    let name = "qemu_boots_grub_embedded_without_root";
    if !require_tool(name, "grub-mkimage", "grub-pc-bin")
        || !require_tool(name, "qemu-system-x86_64", "qemu-system-x86")
        || !require_tool(name, "mkfs.ext4", "e2fsprogs")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk_path = tmp.path().join("disk.img");
    let disk = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&disk_path)
        .unwrap();
    disk.set_len(128 << 20).unwrap();
    let specs = vec![
        PartitionSpec {
            name: "bios".into(),
            type_guid: Guid::BIOS_BOOT,
            size_bytes: Some(1 << 20),
        },
        PartitionSpec {
            name: "state".into(),
            type_guid: Guid::LINUX_DATA,
            size_bytes: None,
        },
    ];
    let table = gpt::plan(128 << 20, &specs, Guid::derived(b"grub-test", 0)).unwrap();
    gpt::write(&disk, &table).unwrap();

    // COS_STATE with the real grub.cfg, found by label at boot.
    let root = tmp.path().join("state");
    std::fs::create_dir_all(root.join("grub2")).unwrap();
    std::fs::write(
        root.join("grub2/grub.cfg"),
        "echo BOOTYARD-GRUB-CFG-OK\nhalt\n",
    )
    .unwrap();
    let fs = tmp.path().join("state.img");
    build_slot(
        &root,
        &fs,
        &SlotOptions {
            label: "COS_STATE".into(),
            size_bytes: Some(table.partitions[1].size_bytes()),
            ..Default::default()
        },
    )
    .unwrap();
    copy_into_partition(&disk, &table.partitions[1], &fs).unwrap();

    let core = build_core_image(tmp.path(), PREFIX, EARLY_CFG).unwrap();
    embed_bios(
        &disk,
        &table,
        &core,
        &std::path::Path::new(I386_PC_DIR).join("boot.img"),
    )
    .unwrap();
    drop(disk);

    let mut spec = MachineSpec::new("grub", tmp.path());
    spec.memory_mib = 128;
    spec.drives.push(Drive {
        path: disk_path,
        format: "raw".into(),
        interface: "ide".into(),
    });
    let mut m = Machine::launch(spec).unwrap();
    let line = m
        .wait_for("BOOTYARD-GRUB-CFG-OK", Duration::from_secs(60))
        .unwrap();
    eprintln!("GRUB read grub.cfg from COS_STATE after {} ms", line.at_ms);
    let status = m
        .wait_exit(Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert!(status.success(), "{status}");
}
