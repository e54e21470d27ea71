//! Synthetic images for the conformance checks' tests: a kernel-shaped file, ELF headers, an
//! initramfs, and a whole root filesystem that passes every `image` check, which tests then
//! break one way at a time. Nothing here boots or runs.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::elf::{DF_1_PIE, DT_FLAGS_1, PT_DYNAMIC, PT_INTERP};
use crate::boot::cpio::CpioWriter;

/// A bzImage-shaped file: boot sector signature, setup header and a version string.
pub fn bzimage(release: &str) -> Vec<u8> {
    let setup_sects = 3u8;
    let mut b = vec![0u8; (usize::from(setup_sects) + 1) * 512 + 4096];
    b[0x1f1] = setup_sects;
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x211] = 1;
    b[0x236] = 1; // XLF_KERNEL_64
    let text = format!("{release} (builder@example) #1 SMP\0");
    let at = 0x400;
    b[at..at + text.len()].copy_from_slice(text.as_bytes());
    b[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
    b
}

/// A minimal ELF64 image: header, program headers for `interp` and a DT_FLAGS_1 entry.
pub fn elf(kind: u16, machine: u16, interp: Option<&str>, pie: bool) -> Vec<u8> {
    let mut phdrs: Vec<(u32, Vec<u8>)> = Vec::new();
    if let Some(i) = interp {
        let mut s = i.as_bytes().to_vec();
        s.push(0);
        phdrs.push((PT_INTERP, s));
    }
    if pie {
        let mut d = DT_FLAGS_1.to_le_bytes().to_vec();
        d.extend(DF_1_PIE.to_le_bytes());
        d.extend([0u8; 16]); // DT_NULL
        phdrs.push((PT_DYNAMIC, d));
    }
    let mut b = vec![0u8; 64];
    b[..6].copy_from_slice(b"\x7fELF\x02\x01");
    b[0x10..0x12].copy_from_slice(&kind.to_le_bytes());
    b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
    b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    b[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    let mut data_at = 64 + 56 * phdrs.len();
    let mut data: Vec<u8> = Vec::new();
    for (t, payload) in &phdrs {
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&t.to_le_bytes());
        ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        b.extend(ph);
        data.extend(payload);
        data_at += payload.len();
    }
    b.extend(data);
    b
}

/// The kernel release of [`good_rootfs`].
pub const RELEASE: &str = "6.1.0-test-amd64";

/// Writes `data` at `root/rel` with `mode`, making the directories on the way.
pub fn put(root: &Path, rel: &str, mode: u32, data: &[u8]) -> io::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, data)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
}

/// A gzip'd newc initramfs, with an executable `/init` when `init`.
pub fn initrd(init: bool) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut c = CpioWriter::new(Vec::new());
    c.dir("bin", 0o755)?;
    c.file("bin/busybox", 0o755, b"\x7fELF")?;
    if init {
        c.file("init", 0o755, b"#!/bin/sh\nexec /bin/busybox sh\n")?;
    }
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(&c.finish()?)?;
    g.finish()
}

/// Writes into `root` a small root filesystem that passes every image check, shaped like the
/// busybox test flavor (synthetic kernel and binaries: it does not boot).
pub fn good_rootfs(root: &Path) -> io::Result<()> {
    put(root, "boot/vmlinuz", 0o644, &bzimage(RELEASE))?;
    put(root, "boot/initrd", 0o644, &initrd(true)?)?;
    let m = format!("lib/modules/{RELEASE}");
    put(
        root,
        &format!("{m}/kernel/drivers/block/loop.ko"),
        0o644,
        b"ko",
    )?;
    put(
        root,
        &format!("{m}/kernel/fs/ext4/ext4.ko.xz"),
        0o644,
        b"ko",
    )?;
    put(
        root,
        &format!("{m}/kernel/fs/jbd2/jbd2.ko.xz"),
        0o644,
        b"ko",
    )?;
    put(
        root,
        &format!("{m}/modules.dep"),
        0o644,
        b"kernel/drivers/block/loop.ko:\nkernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz\nkernel/fs/jbd2/jbd2.ko.xz:\n",
    )?;
    put(
        root,
        &format!("{m}/modules.builtin"),
        0o644,
        b"kernel/fs/mbcache.ko\n",
    )?;
    put(
        root,
        "etc/os-release",
        0o644,
        b"ID=testos\nNAME=\"Test OS\"\nVERSION_ID=1.2\n",
    )?;
    put(
        root,
        "etc/kairos-release",
        0o644,
        b"ID=testos\nVERSION=1.2\nFLAVOR=busybox\nFAMILY=busybox\nARCH=amd64\n",
    )?;
    put(root, "usr/bin/bootyard", 0o755, &elf(2, 62, None, false))?;
    put(root, "bin/busybox", 0o755, &elf(2, 62, None, false))?;
    std::fs::create_dir_all(root.join("sbin"))?;
    symlink("../bin/busybox", root.join("sbin/init"))?;
    put(
        root,
        "etc/inittab",
        0o644,
        b"::sysinit:/etc/init.d/rcS\n::wait:/usr/bin/bootyard boot-assess\n",
    )?;
    put(root, "etc/machine-id", 0o444, b"")
}
