//! `bootyard install`: turn an OS image into a bootable A/B disk, rootless, onto a disk
//! image file (or a block device). Layout (Kairos-compatible labels):
//!
//! | GPT partition  | filesystem label | holds                                              |
//! |----------------|------------------|----------------------------------------------------|
//! | BIOS           | -                | GRUB core.img (embedded by hand)                   |
//! | COS_OEM        | COS_OEM          | site configuration                                 |
//! | COS_STATE      | COS_STATE        | cOS/active.img, cOS/passive.img, grub2/{grub.cfg,grubenv} |
//! | COS_RECOVERY   | COS_RECOVERY     | cOS/recovery.img                                   |
//! | COS_PERSISTENT | COS_PERSISTENT   | everything that survives upgrades                  |
//!
//! A disk image is built in a temp file beside the destination and renamed into place only
//! when complete; a failed install leaves what was there before.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::boot::assessment::{AssessmentError, BootModel, TRIES_DEFAULT};
use crate::boot::grub::{
    build_core_image, build_efi_image, build_esp, embed_bios, GrubError, ESP_LABEL, I386_PC_DIR,
};
use crate::boot::grubcfg::{self, GrubCfgOptions, EARLY_CFG, PREFIX};
use crate::boot::grubenv::{GrubEnv, GrubEnvError};
use crate::disk::gpt::{self, GptError, Guid, PartitionSpec};
use crate::image::pull::{pull, PullError, PullOptions};
use crate::image::slot::{build_slot, SlotError, SlotOptions};
use crate::image::Source;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("failed to write the EFI system partition")]
    Fill(#[from] crate::disk::fill::FillError),
    #[error(transparent)]
    Image(#[from] BootableImageError),
    #[error("{0} exists (pass --force to replace it)")]
    DiskExists(PathBuf),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("disk of {size_bytes} bytes is too small; this image needs at least {needed_bytes}")]
    TooSmall { size_bytes: u64, needed_bytes: u64 },
    #[error("failed to build a slot image")]
    Slot(#[from] SlotError),
    #[error("failed to partition the disk")]
    Gpt(#[from] GptError),
    #[error("failed to install GRUB")]
    Grub(#[from] GrubError),
    #[error("failed to write grubenv")]
    GrubEnv(#[from] GrubEnvError),
    #[error(transparent)]
    Assessment(#[from] AssessmentError),
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub disk: PathBuf,
    /// Size of a new disk image; `None` picks the smallest that fits plus `persistent_bytes`.
    pub size_bytes: Option<u64>,
    pub tries: u8,
    pub force: bool,
    pub oem_bytes: u64,
    /// Smallest COS_PERSISTENT accepted, and its size when the disk size is picked for you.
    pub persistent_bytes: u64,
    pub pull: PullOptions,
}

impl InstallOptions {
    pub fn new(disk: PathBuf, pull: PullOptions) -> Self {
        Self {
            disk,
            size_bytes: None,
            tries: TRIES_DEFAULT,
            force: false,
            oem_bytes: 64 << 20,
            persistent_bytes: 256 << 20,
            pull,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub name: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub schema_version: u32,
    pub disk: PathBuf,
    pub size_bytes: u64,
    pub version: String,
    pub slot_bytes: u64,
    pub tries: u8,
    pub partitions: Vec<PartitionReport>,
    pub elapsed_ms: u64,
}

const MIB: u64 = 1 << 20;
const BIOS_BYTES: u64 = MIB;
/// FAT32 wants at least 65525 clusters: 64 MiB of 512-byte sectors, with room to spare.
const ESP_BYTES: u64 = 64 * MIB;
/// Room on COS_STATE beyond active and passive: transition.img during an upgrade, GRUB.
const STATE_SLACK_BYTES: u64 = 128 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum BootableImageError {
    #[error("failed to get the OS image")]
    Pull(#[from] PullError),
    #[error("the OS image has no {0}: a bootable image carries its own kernel and initrd")]
    Missing(&'static str),
}

/// Unpacks `source` into `rootfs`, checks it carries what booting needs, and returns the
/// version it calls itself.
pub fn unpack_bootable(
    source: &Source,
    rootfs: &Path,
    pull_opts: &PullOptions,
) -> Result<String, BootableImageError> {
    pull(source, rootfs, pull_opts)?;
    for (file, shown) in [
        ("boot/vmlinuz", "/boot/vmlinuz"),
        ("boot/initrd", "/boot/initrd"),
    ] {
        if !rootfs.join(file).exists() {
            return Err(BootableImageError::Missing(shown));
        }
    }
    Ok(image_version(rootfs))
}

/// The version an image calls itself: kairos-release VERSION, else os-release VERSION_ID.
pub fn image_version(rootfs: &Path) -> String {
    version_source(rootfs).map_or_else(|| "unknown".into(), |(_, _, v)| v)
}

/// Where an image's version comes from: the file (resolved inside `rootfs`, so an absolute
/// link names the image's file, not this machine's), the key, and the value.
pub fn version_source(rootfs: &Path) -> Option<(PathBuf, &'static str, String)> {
    [
        ("etc/kairos-release", "VERSION"),
        ("etc/os-release", "VERSION_ID"),
    ]
    .into_iter()
    .find_map(|(file, key)| {
        let path = crate::conformance::image_checks::resolve(rootfs, file)?;
        let text = std::fs::read_to_string(&path).ok()?;
        let value = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .filter(|v| !v.is_empty())?;
        Some((path, key, value))
    })
}

/// Makes an ext4 filesystem inside the disk at `offset`, filled from `dir` if given.
fn mkfs_into(
    disk: &Path,
    offset: u64,
    size: u64,
    label: &str,
    dir: Option<&Path>,
) -> Result<(), InstallError> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-b", "4096", "-I", "256", "-L", label, "-E"])
        .arg(format!("offset={offset},root_owner=0:0"));
    if let Some(d) = dir {
        cmd.arg("-d").arg(d);
    }
    cmd.arg(disk).arg((size / 4096).to_string());
    crate::tool::run(&mut cmd, "e2fsprogs")?;
    Ok(())
}

fn relabel(image: &Path, label: &str) -> Result<(), InstallError> {
    crate::tool::run(
        Command::new("tune2fs").arg("-L").arg(label).arg(image),
        "e2fsprogs",
    )?;
    Ok(())
}

pub fn install(source: &Source, opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    let started = Instant::now();
    // Only a regular file is replaced (by a rename, once the disk is whole); a block device
    // is written in place; anything else is refused before any work.
    // Arguments first: nothing is unpacked for a run that cannot succeed.
    if opts.tries == 0 || opts.tries > crate::boot::assessment::TRIES_MAX {
        return Err(AssessmentError::Tries(opts.tries).into());
    }
    let out = crate::output::file_output(&opts.disk, true)?;
    let is_block = out.existing == crate::output::Existing::BlockDevice;
    if out.existing == crate::output::Existing::RegularFile && !opts.force {
        return Err(InstallError::DiskExists(opts.disk.clone()));
    }
    let disk_path = out.path;
    let parent = disk_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::output::scratch_dir(parent);
    let work = tempfile::Builder::new()
        .prefix(&crate::output::scratch_prefix("install"))
        .tempdir_in(parent)
        .map_err(io("create work directory in", parent))?;

    // 1. The OS image, unpacked and checked for what booting needs.
    let rootfs = work.path().join("rootfs");
    let version = unpack_bootable(source, &rootfs, &opts.pull)?;

    // 2. Slot images: active, passive (the same image) and recovery.
    let state_dir = work.path().join("state");
    let recovery_dir = work.path().join("recovery");
    for d in [
        state_dir.join("cOS"),
        state_dir.join("grub2"),
        recovery_dir.join("cOS"),
    ] {
        std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    }
    let active = state_dir.join("cOS/active.img");
    let slot = build_slot(
        &rootfs,
        &active,
        &SlotOptions {
            label: "COS_ACTIVE".into(),
            ..Default::default()
        },
    )?;
    std::fs::remove_dir_all(&rootfs).map_err(io("remove", &rootfs))?;
    for (dest, label) in [
        (state_dir.join("cOS/passive.img"), "COS_PASSIVE"),
        (recovery_dir.join("cOS/recovery.img"), "COS_SYSTEM"),
    ] {
        std::fs::copy(&active, &dest).map_err(io("copy slot image to", &dest))?;
        relabel(&dest, label)?;
    }

    // 3. Boot configuration: the assessment script and its state.
    std::fs::write(
        state_dir.join("grub2/grub.cfg"),
        grubcfg::render(&GrubCfgOptions::default()),
    )
    .map_err(io("write", &state_dir))?;
    let model = BootModel::installed(&version, opts.tries)?;
    let mut env = GrubEnv::new();
    grubcfg::model_to_env(&model, &mut env)?;
    std::fs::write(state_dir.join("grub2/grubenv"), env.to_block()?)
        .map_err(io("write", &state_dir))?;

    // 4. The partition table.
    let state_bytes =
        (2 * slot.size_bytes + STATE_SLACK_BYTES + slot.size_bytes).div_ceil(MIB) * MIB;
    let recovery_bytes = (slot.size_bytes + 64 * MIB).div_ceil(MIB) * MIB;
    let fixed =
        MIB + BIOS_BYTES + ESP_BYTES + opts.oem_bytes + state_bytes + recovery_bytes + 2 * MIB;
    let size_bytes = if is_block {
        let f = std::fs::File::open(&opts.disk).map_err(io("open", &opts.disk))?;
        gpt::size_of(&f).map_err(io("size", &opts.disk))?
    } else {
        opts.size_bytes
            .unwrap_or(fixed + opts.persistent_bytes)
            .div_ceil(MIB)
            * MIB
    };
    if size_bytes < fixed + opts.persistent_bytes.min(64 * MIB) {
        return Err(InstallError::TooSmall {
            size_bytes,
            needed_bytes: fixed + 64 * MIB,
        });
    }
    let part = |name: &str, t: Guid, size: Option<u64>| PartitionSpec {
        name: name.into(),
        type_guid: t,
        size_bytes: size,
    };
    let specs = vec![
        part("BIOS", Guid::BIOS_BOOT, Some(BIOS_BYTES)),
        part(ESP_LABEL, Guid::EFI_SYSTEM, Some(ESP_BYTES)),
        part("COS_OEM", Guid::LINUX_DATA, Some(opts.oem_bytes)),
        part("COS_STATE", Guid::LINUX_DATA, Some(state_bytes)),
        part("COS_RECOVERY", Guid::LINUX_DATA, Some(recovery_bytes)),
        part("COS_PERSISTENT", Guid::LINUX_DATA, None),
    ];
    let table = gpt::plan(size_bytes, &specs, Guid::derived(version.as_bytes(), 0))?;

    let target = if is_block {
        disk_path.clone()
    } else {
        work.path().join("disk.img")
    };
    {
        let disk = std::fs::OpenOptions::new()
            .create(!is_block)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&target)
            .map_err(io("open", &target))?;
        if !is_block {
            disk.set_len(size_bytes).map_err(io("size", &target))?;
        }
        gpt::write(&disk, &table)?;
    }

    // 5. Filesystems, made in place inside the disk.
    let p = |name: &str| {
        table
            .partitions
            .iter()
            .find(|p| p.name == name)
            .expect("planned partition")
    };
    mkfs_into(
        &target,
        p("COS_OEM").offset_bytes(),
        p("COS_OEM").size_bytes(),
        "COS_OEM",
        None,
    )?;
    mkfs_into(
        &target,
        p("COS_STATE").offset_bytes(),
        p("COS_STATE").size_bytes(),
        "COS_STATE",
        Some(&state_dir),
    )?;
    mkfs_into(
        &target,
        p("COS_RECOVERY").offset_bytes(),
        p("COS_RECOVERY").size_bytes(),
        "COS_RECOVERY",
        Some(&recovery_dir),
    )?;
    mkfs_into(
        &target,
        p("COS_PERSISTENT").offset_bytes(),
        p("COS_PERSISTENT").size_bytes(),
        "COS_PERSISTENT",
        None,
    )?;

    // 6. GRUB, for BIOS and for EFI, both reading the same grub.cfg and grubenv.
    let core = build_core_image(work.path(), PREFIX, EARLY_CFG)?;
    let esp = build_esp(
        work.path(),
        ESP_BYTES,
        &build_efi_image(work.path(), PREFIX, EARLY_CFG)?,
    )?;
    {
        let disk = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .map_err(io("open", &target))?;
        crate::disk::fill::copy_into_partition(&disk, p(ESP_LABEL), &esp)?;
    }
    {
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .map_err(io("open", &target))?;
        embed_bios(
            &disk,
            &table,
            &core,
            &Path::new(I386_PC_DIR).join("boot.img"),
        )?;
        // Everything written must be readable as the same table.
        if gpt::read(&disk)? != table {
            return Err(InstallError::Gpt(GptError::ReadBack));
        }
    }
    if !is_block {
        std::fs::rename(&target, &disk_path).map_err(io("move into place", &disk_path))?;
    }
    Ok(InstallReport {
        schema_version: 1,
        disk: opts.disk.clone(),
        size_bytes,
        version,
        slot_bytes: slot.size_bytes,
        tries: opts.tries,
        partitions: table
            .partitions
            .iter()
            .map(|p| PartitionReport {
                name: p.name.clone(),
                offset_bytes: p.offset_bytes(),
                size_bytes: p.size_bytes(),
            })
            .collect(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}
