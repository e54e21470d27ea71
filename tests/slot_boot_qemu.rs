//! The A/B boot chain end to end, without root: a GPT disk whose COS_STATE holds
//! `cOS/active.img`; GRUB loop-mounts that slot image and boots the kernel and initrd inside
//! it (Kairos's layout); the initrd's init reports back on the serial console.
//! Kernel and busybox come from Debian packages, unpacked into a cache, never installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootyard::boot::cpio::CpioWriter;
use bootyard::boot::grub::{build_core_image, embed_bios, I386_PC_DIR};
use bootyard::debpkg;
use bootyard::disk::fill::copy_into_partition;
use bootyard::disk::gpt::{self, Guid, PartitionSpec};
use bootyard::image::slot::{build_slot, SlotOptions};
use bootyard::testkit::require_tool;
use bootyard_scenarios::phase::{PhaseEvent, PhaseTracker};
use bootyard_scenarios::qemu::{Drive, Machine, MachineSpec};
use bootyard_scenarios::PhaseSpec;

fn asset_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/deb")
}

fn initramfs(busybox: &Path, out: &Path) {
    let mut c = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for d in ["bin", "dev", "proc", "sys"] {
        c.dir(d, 0o755).unwrap();
    }
    c.char_dev("dev/console", 0o600, 5, 1).unwrap();
    c.file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap())
        .unwrap();
    c.symlink("bin/sh", "busybox").unwrap();
    let init = "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho \"BOOTYARD-INIT-OK cmdline: $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n";
    c.file("init", 0o755, init.as_bytes()).unwrap();
    let gz = c.finish().unwrap().finish().unwrap();
    std::fs::File::create(out).unwrap().write_all(&gz).unwrap();
}

#[test]
fn qemu_grub_boots_kernel_from_loop_mounted_slot_image() {
    let name = "qemu_grub_boots_kernel_from_loop_mounted_slot_image";
    for (tool, pkg) in [
        ("grub-mkimage", "grub-pc-bin"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mkfs.ext4", "e2fsprogs"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        if !require_tool(name, tool, pkg) {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernel = debpkg::cloud_kernel(&asset_cache()).unwrap();
    let busybox = debpkg::busybox(&asset_cache()).unwrap();

    // The slot image: what an OS image unpacks to, reduced to its boot files.
    let slot_root = tmp.path().join("slot");
    std::fs::create_dir_all(slot_root.join("boot")).unwrap();
    std::fs::create_dir_all(slot_root.join("etc")).unwrap();
    std::fs::copy(&kernel.vmlinuz, slot_root.join("boot/vmlinuz")).unwrap();
    initramfs(&busybox, &slot_root.join("boot/initrd"));
    std::fs::write(
        slot_root.join("etc/os-release"),
        "ID=bootyard-test\nVERSION_ID=1\n",
    )
    .unwrap();
    let state_root = tmp.path().join("state");
    std::fs::create_dir_all(state_root.join("cOS")).unwrap();
    std::fs::create_dir_all(state_root.join("grub2")).unwrap();
    build_slot(
        &slot_root,
        &state_root.join("cOS/active.img"),
        &SlotOptions {
            label: "COS_ACTIVE".into(),
            headroom_bytes: 8 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = "set timeout=0\n\
        echo BOOTYARD-GRUB-OK\n\
        loopback loop0 ($root)/cOS/active.img\n\
        linux (loop0)/boot/vmlinuz console=ttyS0 panic=-1 bootyard.slot=active\n\
        initrd (loop0)/boot/initrd\n\
        boot\n";
    std::fs::write(state_root.join("grub2/grub.cfg"), cfg).unwrap();

    let disk_bytes = 512u64 << 20;
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
    let table = gpt::plan(disk_bytes, &specs, Guid::derived(b"slot-boot", 0)).unwrap();
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
    copy_into_partition(&disk, &table.partitions[1], &state_img).unwrap();
    let early = "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nsearch --no-floppy --label COS_STATE --set root\nconfigfile ($root)/grub2/grub.cfg\n";
    embed_bios(
        &disk,
        &table,
        &build_core_image(tmp.path(), "/grub2", early).unwrap(),
        &Path::new(I386_PC_DIR).join("boot.img"),
    )
    .unwrap();
    drop(disk);

    let mut spec = MachineSpec::new("slot-boot", tmp.path());
    spec.memory_mib = 512;
    spec.drives.push(Drive {
        path: disk_path,
        format: "raw".into(),
        interface: "ide".into(),
    });
    let mut m = Machine::launch(spec).unwrap();
    let phase = |name: &str, s: u64, marker: &str| PhaseSpec {
        name: name.into(),
        deadline_s: s,
        marker: marker.into(),
    };
    let mut phases = PhaseTracker::new(
        vec![
            phase("bootloader", 30, "BOOTYARD-GRUB-OK"),
            phase("kernel", 60, "Linux version"),
            phase("init", 120, "BOOTYARD-INIT-OK"),
        ],
        0,
    );
    while !phases.done() {
        let deadline_ms = phases.poll_timeout().expect("a phase is running");
        let now_ms = m.elapsed_ms();
        let wait = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        match m.next_line(Instant::now() + wait, phases.current().unwrap_or("?")) {
            Ok(line) => {
                for ev in phases.handle_line(line.at_ms, &line.text) {
                    eprintln!("{ev:?}");
                    if let PhaseEvent::Passed { phase, .. } = &ev {
                        if phase == "init" {
                            assert!(line.text.contains("bootyard.slot=active"), "{}", line.text);
                        }
                    }
                }
            }
            Err(e) => panic!(
                "{e}; phases: {phases:?}; console: {}",
                std::fs::read_to_string(m.spec().console_log()).unwrap_or_default()
            ),
        }
    }
    let status = m
        .wait_exit(Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert!(status.success(), "{status}");
}
