//! GRUB on a GPT disk image, without `grub-install` or root. BIOS: `grub-mkimage` builds
//! core.img, and we embed it ourselves (grub-bios-setup refuses image files). boot.img's code
//! goes into the MBR with the LBA of core.img patched in; core.img goes into the BIOS boot
//! partition with the blocklist in its first sector patched to load the rest of itself.
//! EFI: `grub-mkimage` builds `BOOTX64.EFI` with the same embedded configuration, and
//! `mkfs.fat` + mtools put it on a FAT32 EFI system partition at the removable-media path
//! firmware boots without any NVRAM entry.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::disk::gpt::{Gpt, Guid, SECTOR};

/// Where Debian's grub-pc-bin puts the i386-pc platform files.
pub const I386_PC_DIR: &str = "/usr/lib/grub/i386-pc";

/// Modules both GRUB images carry so they can find COS_STATE, read ext4, loop-mount slot
/// images, keep an environment block and boot Linux, talking on the serial console.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "search",
    "search_label",
    "search_fs_file",
    "normal",
    "configfile",
    "loopback",
    "linux",
    "loadenv",
    "test",
    "echo",
    "serial",
    "terminal",
    "halt",
    "reboot",
    "sleep",
    "cat",
    "true",
];

/// core.img's modules: the common set and BIOS disk access.
pub fn core_modules() -> Vec<&'static str> {
    [&["biosdisk"], COMMON_MODULES].concat()
}

/// BOOTX64.EFI's modules: the common set (EFI disk access is built in), FAT for the ESP, and
/// the EFI framebuffer for kernels that want one.
pub fn efi_modules() -> Vec<&'static str> {
    [COMMON_MODULES, &["fat", "efi_gop"]].concat()
}

/// Where Debian's grub-efi-amd64-bin puts the x86_64-efi platform files.
pub const X86_64_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// The ESP's filesystem label, as Kairos names it.
pub const ESP_LABEL: &str = "COS_GRUB";

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error("the disk has no BIOS boot partition")]
    NoBiosBootPartition,
    #[error("core.img is {core_bytes} bytes; the BIOS boot partition holds {partition_bytes}")]
    CoreTooLarge {
        core_bytes: usize,
        partition_bytes: u64,
    },
    #[error("{0} is not a 512-byte boot.img")]
    BadBootImg(PathBuf),
    #[error("embedded GRUB read back differently from what was written")]
    ReadBack,
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A GRUB platform image grub-mkimage can build.
struct Platform {
    format: &'static str,
    dir: &'static str,
    package: &'static str,
    out: &'static str,
}

/// Runs grub-mkimage for `platform` with `early_cfg` embedded (it runs before any
/// filesystem is read) and `prefix` as where GRUB looks for its modules and grub.cfg.
fn mkimage(
    workdir: &Path,
    platform: &Platform,
    modules: &[&str],
    prefix: &str,
    early_cfg: &str,
) -> Result<Vec<u8>, GrubError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| GrubError::Io { op, path, source }
    };
    let cfg = workdir.join(format!("{}.cfg", platform.out));
    std::fs::write(&cfg, early_cfg).map_err(io("write", &cfg))?;
    let out = workdir.join(platform.out);
    crate::tool::run(
        Command::new("grub-mkimage")
            .args([
                "-O",
                platform.format,
                "-d",
                platform.dir,
                "-p",
                prefix,
                "-c",
            ])
            .arg(&cfg)
            .arg("-o")
            .arg(&out)
            .args(modules),
        platform.package,
    )?;
    std::fs::read(&out).map_err(io("read", &out))
}

/// core.img for BIOS.
pub fn build_core_image(
    workdir: &Path,
    prefix: &str,
    early_cfg: &str,
) -> Result<Vec<u8>, GrubError> {
    let platform = Platform {
        format: "i386-pc",
        dir: I386_PC_DIR,
        package: "grub-pc-bin",
        out: "core.img",
    };
    mkimage(workdir, &platform, &core_modules(), prefix, early_cfg)
}

/// `BOOTX64.EFI` for EFI.
pub fn build_efi_image(
    workdir: &Path,
    prefix: &str,
    early_cfg: &str,
) -> Result<Vec<u8>, GrubError> {
    let platform = Platform {
        format: "x86_64-efi",
        dir: X86_64_EFI_DIR,
        package: "grub-efi-amd64-bin",
        out: "BOOTX64.EFI",
    };
    mkimage(workdir, &platform, &efi_modules(), prefix, early_cfg)
}

/// A FAT32 EFI system partition image of `size_bytes` holding `EFI/BOOT/BOOTX64.EFI`.
pub fn build_esp(workdir: &Path, size_bytes: u64, bootx64: &[u8]) -> Result<PathBuf, GrubError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| GrubError::Io { op, path, source }
    };
    let esp = workdir.join("esp.img");
    let efi = workdir.join("BOOTX64.EFI.copy");
    std::fs::write(&efi, bootx64).map_err(io("write", &efi))?;
    let _ = std::fs::remove_file(&esp);
    crate::tool::run(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-n", ESP_LABEL, "-C"])
            .arg(&esp)
            .arg((size_bytes / 1024).to_string()),
        "dosfstools",
    )?;
    let img = esp.display().to_string();
    crate::tool::run(
        Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT"]),
        "mtools",
    )?;
    crate::tool::run(
        Command::new("mcopy")
            .args(["-i", &img])
            .arg(&efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
        "mtools",
    )?;
    Ok(esp)
}

/// Offsets inside boot.img and core.img's first sector (GRUB's i386-pc boot.S/diskboot.S).
const BOOT_KERNEL_SECTOR: usize = 0x5C;
const BOOT_CODE_BYTES: usize = 440;
const DISKBOOT_BLOCKLIST: usize = 0x1F4;
const CORE_LOAD_SEGMENT: u16 = 0x820;

/// Writes GRUB's boot code into the MBR and core.img into the BIOS boot partition.
pub fn embed_bios(
    disk: &File,
    gpt: &Gpt,
    core_img: &[u8],
    boot_img_path: &Path,
) -> Result<(), GrubError> {
    let bios = gpt
        .partitions
        .iter()
        .find(|p| p.type_guid == Guid::BIOS_BOOT)
        .ok_or(GrubError::NoBiosBootPartition)?;
    if core_img.len() as u64 > bios.size_bytes() {
        return Err(GrubError::CoreTooLarge {
            core_bytes: core_img.len(),
            partition_bytes: bios.size_bytes(),
        });
    }
    let boot = std::fs::read(boot_img_path).map_err(|source| GrubError::Io {
        op: "read",
        path: boot_img_path.to_path_buf(),
        source,
    })?;
    if boot.len() != SECTOR as usize {
        return Err(GrubError::BadBootImg(boot_img_path.to_path_buf()));
    }
    let disk_io = |op| {
        move |source| GrubError::Io {
            op,
            path: PathBuf::from("disk"),
            source,
        }
    };

    let core_lba = bios.first_lba;
    let mut core = core_img.to_vec();
    core.resize(core.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    let sectors = core.len() as u64 / SECTOR;
    // diskboot.img (core.img's first sector) loads the other sectors from this blocklist.
    core[DISKBOOT_BLOCKLIST..DISKBOOT_BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[DISKBOOT_BLOCKLIST + 8..DISKBOOT_BLOCKLIST + 10].copy_from_slice(
        &u16::try_from(sectors - 1)
            .expect("core.img fits in 32 MiB")
            .to_le_bytes(),
    );
    core[DISKBOOT_BLOCKLIST + 10..DISKBOOT_BLOCKLIST + 12]
        .copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());
    disk.write_all_at(&core, core_lba * SECTOR)
        .map_err(disk_io("write core.img to"))?;

    // Keep the MBR's partition table (the protective entry); only the boot code changes.
    let mut mbr = [0u8; SECTOR as usize];
    disk.read_exact_at(&mut mbr, 0)
        .map_err(disk_io("read MBR of"))?;
    let mut code = boot[..BOOT_CODE_BYTES].to_vec();
    code[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[..BOOT_CODE_BYTES].copy_from_slice(&code);
    disk.write_all_at(&mbr, 0)
        .map_err(disk_io("write MBR of"))?;
    disk.sync_all().map_err(disk_io("sync"))?;

    let mut back = vec![0u8; core.len()];
    disk.read_exact_at(&mut back, core_lba * SECTOR)
        .map_err(disk_io("read back core.img from"))?;
    let mut mbr_back = [0u8; SECTOR as usize];
    disk.read_exact_at(&mut mbr_back, 0)
        .map_err(disk_io("read back MBR of"))?;
    if back != core || mbr_back[..BOOT_CODE_BYTES] != code[..] || mbr_back[510..] != [0x55, 0xAA] {
        return Err(GrubError::ReadBack);
    }
    Ok(())
}
