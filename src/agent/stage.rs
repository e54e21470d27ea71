//! The boot stage: bootyard as `/init` of the initrd (what Kairos's immucore does). Loads
//! the drivers, finds COS_STATE by its label, loop-mounts the slot image GRUB chose
//! read-only as the new root, gives it a tmpfs `/run` with COS_STATE and COS_PERSISTENT
//! under `/run/cos`, writable overlays where the image asks for them, arms the watchdog
//! that ends a boot which never proves itself, and switches root into the image's init.
//! Any failure reboots at once: GRUB's tries counter then decides what boots next.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{AgentConfig, ConfigError};
use super::sys::{self, console_line, SysError};
use crate::boot::assessment::Slot;

/// Module load list written into the initrd by the image builder, one path per line.
pub const MODULE_LIST: &str = "lib/modules/bootyard.load";
/// What the stage tells the running system, under the new root.
pub const BOOT_RECORD: &str = "run/bootyard/boot.json";
/// Where COS_STATE and COS_PERSISTENT are mounted in the running system.
pub const STATE_DIR: &str = "/run/cos/state";
pub const PERSISTENT_DIR: &str = "/run/cos/persistent";
/// How long the stage waits for the disk to show up.
const DEVICE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("failed to load kernel module {path}")]
    Module {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What GRUB put on the kernel command line for the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub slot: Slot,
    /// The slot image on its partition, e.g. `/cOS/active.img`.
    pub image: String,
    /// `init=` overrides the image's configured init.
    pub init: Option<PathBuf>,
}

pub fn parse_slot(s: &str) -> Option<Slot> {
    match s {
        "active" => Some(Slot::Active),
        "passive" => Some(Slot::Passive),
        "recovery" => Some(Slot::Recovery),
        _ => None,
    }
}

pub fn parse_cmdline(line: &str) -> Result<Cmdline, StageError> {
    let mut slot = None;
    let mut image = None;
    let mut init = None;
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("bootyard.slot=") {
            slot = Some(parse_slot(v).ok_or_else(|| {
                StageError::Cmdline(format!(
                    "bootyard.slot={v} is not active, passive or recovery"
                ))
            })?);
        } else if let Some(v) = w.strip_prefix("cos-img/filename=") {
            if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
                return Err(StageError::Cmdline(format!(
                    "cos-img/filename={v} is not an absolute path on its partition"
                )));
            }
            image = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("init=") {
            init = Some(PathBuf::from(v));
        }
    }
    let slot = slot.ok_or_else(|| {
        StageError::Cmdline("no bootyard.slot=: not booted by bootyard's GRUB".into())
    })?;
    let image = image.unwrap_or_else(|| format!("/cOS/{slot}.img"));
    Ok(Cmdline { slot, image, init })
}

/// The record the stage leaves for the running system (`/run/bootyard/boot.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BootRecord {
    pub slot: Slot,
    pub version: String,
    pub image: String,
    pub watchdog_sec: u32,
    pub stage_ms: u64,
}

/// Runs as pid 1 of the initrd; never returns.
pub fn run() -> ! {
    let err = match stage() {
        Ok(init) => {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&init).exec();
            format!("cannot start {}: {e}", init.display())
        }
        Err(e) => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    };
    console_line(&format!("BOOTYARD-STAGE-FAILED {err}"));
    console_line("bootyard-stage: rebooting; the tries counter decides what boots next");
    let e = sys::reboot_now();
    console_line(&format!("bootyard-stage: reboot failed: {e}"));
    // pid 1 exiting panics the kernel, which reboots after panic=.
    std::process::exit(1)
}

fn mkdir(p: &Path) -> Result<(), SysError> {
    std::fs::create_dir_all(p).map_err(sys::io("create", p))
}

fn stage() -> Result<PathBuf, StageError> {
    let started = Instant::now();
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        mkdir(Path::new(dir))?;
        sys::mount(
            src,
            Path::new(dir),
            fs,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            None,
        )?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(sys::io("read", Path::new("/proc/cmdline")))?;
    let cmd = parse_cmdline(&cmdline)?;
    eprintln!("bootyard-stage: slot {} image {}", cmd.slot, cmd.image);

    let list = Path::new("/").join(MODULE_LIST);
    let modules = std::fs::read_to_string(&list).unwrap_or_default();
    let mut loaded = 0;
    for m in modules.lines().filter(|l| !l.trim().is_empty()) {
        let path = Path::new("/").join(m.trim());
        super::kmod::load(&path).map_err(|source| StageError::Module { path, source })?;
        loaded += 1;
    }
    eprintln!(
        "bootyard-stage: {loaded} modules loaded after {} ms",
        started.elapsed().as_millis()
    );

    let state_dev = sys::wait_for_label("COS_STATE", DEVICE_DEADLINE)?;
    let state = Path::new("/state");
    mkdir(state)?;
    sys::mount(
        &state_dev.to_string_lossy(),
        state,
        "ext4",
        libc::MS_NOATIME,
        None,
    )?;
    let image = if cmd.slot == Slot::Recovery {
        let dev = sys::wait_for_label("COS_RECOVERY", DEVICE_DEADLINE)?;
        let rec = Path::new("/recovery");
        mkdir(rec)?;
        sys::mount(&dev.to_string_lossy(), rec, "ext4", libc::MS_RDONLY, None)?;
        rec.join(cmd.image.trim_start_matches('/'))
    } else {
        state.join(cmd.image.trim_start_matches('/'))
    };
    let (loopdev, loop_handle) = sys::loop_attach(&image)?;
    let root = Path::new("/sysroot");
    mkdir(root)?;
    sys::mount(
        &loopdev.to_string_lossy(),
        root,
        "ext4",
        libc::MS_RDONLY | libc::MS_NOATIME,
        None,
    )?;
    drop(loop_handle);
    let config = AgentConfig::load(root)?;
    let version = crate::install::image_version(root);

    // /run for the new system, with the partitions under it.
    let run = root.join("run");
    sys::mount(
        "tmpfs",
        &run,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    let state_in_root = root.join(STATE_DIR.trim_start_matches('/'));
    mkdir(&state_in_root)?;
    sys::move_mount(state, &state_in_root)?;
    if cmd.slot == Slot::Recovery {
        let rec_in_root = root.join("run/cos/recovery");
        mkdir(&rec_in_root)?;
        sys::move_mount(Path::new("/recovery"), &rec_in_root)?;
    }
    match sys::wait_for_label("COS_PERSISTENT", Duration::ZERO) {
        Ok(dev) => {
            let p = root.join(PERSISTENT_DIR.trim_start_matches('/'));
            mkdir(&p)?;
            sys::mount(&dev.to_string_lossy(), &p, "ext4", libc::MS_NOATIME, None)?;
        }
        Err(e) => eprintln!("bootyard-stage: warning: {e}; running without persistent storage"),
    }
    for dir in &config.boot.overlays {
        let lower = root.join(dir.strip_prefix("/").unwrap_or(dir));
        if !lower.is_dir() {
            continue;
        }
        let flat = dir.to_string_lossy().trim_matches('/').replace('/', "-");
        let base = run.join("bootyard/overlay").join(flat);
        let (upper, work) = (base.join("upper"), base.join("work"));
        mkdir(&upper)?;
        mkdir(&work)?;
        sys::mount(
            "overlay",
            &lower,
            "overlay",
            0,
            Some(&format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            )),
        )?;
    }
    if config.boot.watchdog_sec > 0 {
        sys::watchdog_arm(config.boot.watchdog_sec)?;
    }
    let record = BootRecord {
        slot: cmd.slot,
        version: version.clone(),
        image: cmd.image.clone(),
        watchdog_sec: config.boot.watchdog_sec,
        stage_ms: started.elapsed().as_millis() as u64,
    };
    let rec_path = root.join(BOOT_RECORD);
    mkdir(rec_path.parent().expect("has a parent"))?;
    std::fs::write(
        &rec_path,
        serde_json::to_vec(&record).expect("plain data serializes"),
    )
    .map_err(sys::io("write", &rec_path))?;

    for d in ["dev", "proc", "sys"] {
        sys::move_mount(&Path::new("/").join(d), &root.join(d))?;
    }
    // Free the initrd's memory: everything on the initramfs, not crossing into mounts.
    remove_initramfs(Path::new("/"), root);
    std::env::set_current_dir(root).map_err(sys::io("enter", root))?;
    sys::move_mount(Path::new("."), Path::new("/"))?;
    sys::chroot(Path::new("."))?;
    std::env::set_current_dir("/").map_err(sys::io("enter", Path::new("/")))?;
    let init = cmd.init.unwrap_or(config.boot.init);
    console_line(&format!(
        "BOOTYARD-STAGE slot={} version={} ms={} watchdog_sec={}",
        cmd.slot,
        version,
        started.elapsed().as_millis(),
        config.boot.watchdog_sec
    ));
    Ok(init)
}

/// Deletes the initramfs contents below `dir`, skipping `keep` and anything on another
/// filesystem. Best effort: what cannot be removed only costs memory.
fn remove_initramfs(dir: &Path, keep: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p == keep {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != top.dev() {
            continue;
        }
        if md.is_dir() {
            remove_initramfs(&p, keep);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_grub_passes() {
        let c = parse_cmdline(
            "console=ttyS0 panic=5 root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img bootyard.slot=passive\n",
        )
        .unwrap();
        assert_eq!(
            c,
            Cmdline {
                slot: Slot::Passive,
                image: "/cOS/passive.img".into(),
                init: None
            }
        );
        let c = parse_cmdline("bootyard.slot=recovery init=/bin/sh").unwrap();
        assert_eq!(
            (c.image.as_str(), c.init),
            ("/cOS/recovery.img", Some("/bin/sh".into()))
        );
    }

    #[test]
    fn refuses_what_grub_would_never_pass() {
        for (line, says) in [
            ("console=ttyS0", "no bootyard.slot="),
            ("bootyard.slot=c", "not active, passive or recovery"),
            (
                "bootyard.slot=active cos-img/filename=/cOS/../../x",
                "not an absolute path",
            ),
            (
                "bootyard.slot=active cos-img/filename=cOS/a.img",
                "not an absolute path",
            ),
        ] {
            let e = parse_cmdline(line).unwrap_err().to_string();
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
