//! Pieces of test OS images built on this machine from Debian packages: a busybox initramfs
//! around a given init script, and a minimal bootable root filesystem (kernel, initrd,
//! os-release). `bootyard build-test-image` will grow from here.

use std::io::{self, Write};
use std::path::Path;

use crate::boot::cpio::CpioWriter;

/// A gzip'd newc initramfs: static busybox as `/bin/busybox` and `/bin/sh`, `/dev/console`,
/// empty `/proc`, `/sys`, `/mnt`, and `init` as `/init`.
pub fn busybox_initramfs(busybox: &Path, init: &str) -> io::Result<Vec<u8>> {
    let mut c = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for d in ["bin", "dev", "proc", "sys", "mnt"] {
        c.dir(d, 0o755)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.file("bin/busybox", 0o755, &std::fs::read(busybox)?)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("init", 0o755, init.as_bytes())?;
    c.finish()?.finish()
}

/// An init that prints `BOOTYARD-INIT version=VERSION <kernel cmdline>` and powers off.
pub fn reporting_init(version: &str) -> String {
    format!("#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho \"BOOTYARD-INIT version={version} $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n")
}

/// Writes a minimal bootable root filesystem into `root`.
pub fn boot_rootfs(root: &Path, kernel: &Path, initrd: &[u8], version: &str) -> io::Result<()> {
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(kernel, root.join("boot/vmlinuz"))?;
    std::fs::File::create(root.join("boot/initrd"))?.write_all(initrd)?;
    std::fs::write(
        root.join("etc/os-release"),
        format!("ID=bootyard-test\nNAME=\"bootyard test OS\"\nVERSION_ID={version}\n"),
    )?;
    std::fs::write(
        root.join("etc/kairos-release"),
        format!(
            "ID=bootyard-test\nVERSION={version}\nFLAVOR=busybox\nFAMILY=busybox\nARCH=amd64\n"
        ),
    )?;
    Ok(())
}
