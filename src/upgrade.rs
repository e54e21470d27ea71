//! `bootyard upgrade`: on a running node (COS_STATE mounted at /run/cos/state), or with
//! `--disk` on an installed disk image from the host, without booting or mounting it, for
//! preparing scenarios fast. Both run the same steps in the same order:
//! write `transition.img`; rotate `active.img` to `passive.img` (not when the node last ran
//! from passive: then the failed active is dropped instead); arm the tries counter in
//! grubenv; rename `transition.img` to `active.img`. At every step some good slot stays
//! bootable: between the renames there is no `active.img`, and GRUB falls back to passive.
//! On a disk image the COS_STATE filesystem is edited with debugfs; on a node with plain
//! file operations, each step made durable in place (fsync, then an ext4 journal checkpoint,
//! because GRUB does not replay the journal). grubenv is always rewritten in place, in its
//! own block, as GRUB's `save_env` does.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::boot::assessment::{AssessmentError, Slot};
use crate::boot::grubcfg::{self, EnvModelError};
use crate::boot::grubenv::{GrubEnv, GrubEnvError, GRUBENV_BYTES};
use crate::disk::gpt::{self, GptError};
use crate::image::pull::PullOptions;
use crate::image::slot::{build_slot, SlotError, SlotOptions};
use crate::image::Source;
use crate::install::{unpack_bootable, BootableImageError};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Image(#[from] BootableImageError),
    #[error("{0} has no COS_STATE partition: not a disk bootyard installed")]
    NoStatePartition(PathBuf),
    #[error("{disk}: {what}: not a disk bootyard installed")]
    NotInstalled { disk: PathBuf, what: &'static str },
    #[error("failed to read the partition table")]
    Gpt(#[from] GptError),
    #[error("failed to build the transition image")]
    Slot(#[from] SlotError),
    #[error("grubenv on the disk is not usable")]
    Env(#[from] EnvModelError),
    #[error("failed to write grubenv")]
    GrubEnv(#[from] GrubEnvError),
    #[error(transparent)]
    Assessment(#[from] AssessmentError),
    #[error("debugfs failed ({what}): {stderr}")]
    Debugfs { what: String, stderr: String },
    #[error("cannot replay the journal of COS_STATE on {disk} (e2fsck): {stderr}")]
    Recover { disk: PathBuf, stderr: String },
    #[error(transparent)]
    Sys(#[from] crate::agent::sys::SysError),
    #[error(transparent)]
    Mark(#[from] crate::agent::health::MarkError),
    #[error("{0} has no active.img (an upgrade was cut off): there is nothing to roll back from")]
    NoActiveImage(PathBuf),
    #[error("{0} holds a rollback the node did not finish (cOS/rollback.pending or previous.img): boot the node, whose next rollback or upgrade finishes or undoes it")]
    InterruptedRollback(PathBuf),
    #[error("{0} has no passive.img: there is nothing to roll back to")]
    NoPassiveImage(PathBuf),
    #[error("failed to resolve an interrupted rollback")]
    Rollback(#[from] Box<crate::rollback::RollbackError>),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let path = path.to_path_buf();
    move |source| UpgradeError::Io { op, path, source }
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub schema_version: u32,
    /// The disk image, or the mounted COS_STATE on a node.
    pub disk: PathBuf,
    pub version: String,
    /// The slot the node last ran from, which decided whether active rotated to passive.
    pub from_slot: Slot,
    pub rotated: bool,
    pub passive_version: Option<String>,
    pub tries: u8,
    pub elapsed_ms: u64,
    /// What was wrong with the disk before the upgrade, and what it did about it (a
    /// damaged partition table copy rewritten, a cut-off upgrade's transition image).
    pub disk_problems: Vec<String>,
}

/// debugfs exits 0 even when a request fails; its complaints on stderr name the request.
fn check_debugfs(what: &str, o: &std::process::Output) -> Result<(), UpgradeError> {
    let stderr = String::from_utf8_lossy(&o.stderr);
    let complaint = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty());
    if !o.status.success() || complaint.is_some() {
        return Err(UpgradeError::Debugfs {
            what: what.into(),
            stderr: complaint.unwrap_or(&stderr).to_string(),
        });
    }
    Ok(())
}

/// A COS_STATE filesystem inside a disk image, addressed the way e2fsprogs tools accept.
struct StateFs {
    disk: PathBuf,
    offset: u64,
}

impl StateFs {
    fn spec(&self) -> String {
        format!("{}?offset={}", self.disk.display(), self.offset)
    }

    fn debugfs(&self, what: &str, write: bool, commands: &str) -> Result<String, UpgradeError> {
        let mut cmd = Command::new("debugfs");
        if write {
            cmd.arg("-w");
        }
        let o = cmd
            .arg("-R")
            .arg(commands)
            .arg(self.spec())
            .output()
            .map_err(io("run debugfs on", &self.disk))?;
        check_debugfs(what, &o)?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs one step's requests in one debugfs session.
    fn step(&self, what: &str, requests: &[&str]) -> Result<(), UpgradeError> {
        let mut child = Command::new("debugfs")
            .args(["-w", "-f", "-"])
            .arg(self.spec())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io("run debugfs on", &self.disk))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin was piped");
            stdin
                .write_all(requests.join("\n").as_bytes())
                .map_err(io("drive debugfs on", &self.disk))?;
        }
        let o = child
            .wait_with_output()
            .map_err(io("run debugfs on", &self.disk))?;
        check_debugfs(what, &o)?;
        Ok(())
    }

    fn exists(&self, path: &str) -> bool {
        self.debugfs("stat", false, &format!("stat {path}")).is_ok()
    }

    /// Replays the journal of a file system a node left without unmounting it (a power
    /// cut, or a harness that powered it off): debugfs writes past the journal, and a
    /// replay at the next mount would put stale metadata back over what it wrote. e2fsck
    /// cannot replay at an offset (it reopens the device without it), so the partition is
    /// copied out (sparse) and replayed there, and the chunks that changed are written back:
    /// the journal's superblock and then the file system's last, each after a sync, so a
    /// copy-back cut short leaves a journal that still replays.
    fn recover(&self, file: &std::fs::File, size: u64) -> Result<(), UpgradeError> {
        const SUPERBLOCK: u64 = 1024;
        const INCOMPAT: u64 = 0x60;
        const INCOMPAT_RECOVER: u32 = 0x4;
        let mut w = [0u8; 4];
        file.read_exact_at(&mut w, self.offset + SUPERBLOCK + INCOMPAT)
            .map_err(io("read the COS_STATE superblock in", &self.disk))?;
        if u32::from_le_bytes(w) & INCOMPAT_RECOVER == 0 {
            return Ok(());
        }
        let parent = self
            .disk
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::output::scratch_dir(parent);
        let tmp = tempfile::Builder::new()
            .prefix(&crate::output::scratch_prefix("state"))
            .tempfile_in(parent)
            .map_err(io("create a scratch file in", parent))?;
        copy_out(file, self.offset, tmp.as_file(), size)
            .map_err(io("copy COS_STATE out of", &self.disk))?;
        let scratch = StateFs {
            disk: tmp.path().to_path_buf(),
            offset: 0,
        };
        let journal_block = scratch.block_offset("<8>")?;
        let o = Command::new("e2fsck")
            .args(["-p", "-E", "journal_only"])
            .arg(tmp.path())
            .output()
            .map_err(io("run e2fsck on", &self.disk))?;
        // 0: nothing to do, 1: the journal was replayed.
        if !matches!(o.status.code(), Some(0 | 1)) {
            return Err(UpgradeError::Recover {
                disk: self.disk.clone(),
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            });
        }
        copy_back(tmp.as_file(), file, self.offset, size, &[journal_block, 0])
            .map_err(io("copy COS_STATE back into", &self.disk))
    }

    /// Byte offset of a one-block file's data inside the disk.
    fn block_offset(&self, path: &str) -> Result<u64, UpgradeError> {
        let what = format!("locate {path}");
        let out = self.debugfs(&what, false, &format!("bmap {path} 0"))?;
        let block: u64 = out.trim().parse().map_err(|_| UpgradeError::Debugfs {
            what,
            stderr: out.clone(),
        })?;
        Ok(self.offset + block * STATE_BLOCK_BYTES as u64)
    }
}

const COPY_CHUNK: u64 = 1 << 20;

/// Copies `len` bytes of `src` from `from` into the fresh file `dst`, leaving all-zero chunks
/// as holes.
fn copy_out(src: &std::fs::File, from: u64, dst: &std::fs::File, len: u64) -> std::io::Result<()> {
    dst.set_len(len)?;
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = COPY_CHUNK.min(len - done) as usize;
        src.read_exact_at(&mut buf[..n], from + done)?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], done)?;
        }
        done += n as u64;
    }
    Ok(())
}

/// Writes back into `dst` at `to` the chunks of `src` (`len` bytes) that differ from what
/// `dst` holds; the chunks holding the byte offsets in `last` go after all others, in that
/// order, each after a sync.
fn copy_back(
    src: &std::fs::File,
    dst: &std::fs::File,
    to: u64,
    len: u64,
    last: &[u64],
) -> std::io::Result<()> {
    let mut late: Vec<u64> = Vec::new();
    for at in last {
        let c = at / COPY_CHUNK;
        if !late.contains(&c) {
            late.push(c);
        }
    }
    let mut new = vec![0u8; COPY_CHUNK as usize];
    let mut old = vec![0u8; COPY_CHUNK as usize];
    let mut chunk = |c: u64| -> std::io::Result<()> {
        let at = c * COPY_CHUNK;
        let n = COPY_CHUNK.min(len - at) as usize;
        src.read_exact_at(&mut new[..n], at)?;
        dst.read_exact_at(&mut old[..n], to + at)?;
        if new[..n] != old[..n] {
            dst.write_all_at(&new[..n], to + at)?;
        }
        Ok(())
    };
    let chunks = len.div_ceil(COPY_CHUNK);
    for c in (0..chunks).filter(|c| !late.contains(c)) {
        chunk(c)?;
    }
    for c in late.into_iter().filter(|&c| c < chunks) {
        dst.sync_all()?;
        chunk(c)?;
    }
    dst.sync_all()
}

/// One step of an upgrade, in the order they run. Public so a harness can stop after any
/// of them and check that the disk still boots a good slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    RemoveStaleTransition,
    WriteTransition,
    RemoveOldPassive,
    LinkActiveAsPassive,
    /// grubenv's passive slot becomes the rotated image (good, its version) before
    /// `active.img` goes: a cut in between boots it under its own name, not an old
    /// passive's state or version.
    RecordPassive,
    UnlinkActive,
    RemoveFailedActive,
    ArmCounter,
    LinkTransitionAsActive,
    UnlinkTransition,
}

/// Where an upgrade writes: COS_STATE inside a disk image (edited with debugfs), or
/// COS_STATE mounted on the running node.
enum Target {
    Disk {
        file: std::fs::File,
        fs: StateFs,
        env_at: u64,
        /// The new slot image, built in `prepare`.
        transition: PathBuf,
    },
    Mounted {
        state: PathBuf,
        /// The new image's root filesystem; WriteTransition builds the slot image from it
        /// directly on COS_STATE.
        rootfs: PathBuf,
    },
}

/// A prepared upgrade: the new image is fetched and the plan made; nothing on the disk has
/// changed yet.
pub struct DiskUpgrade {
    target: Target,
    env: GrubEnv,
    model: crate::boot::assessment::BootModel,
    /// The slots once active is rotated to passive, before the new image is armed.
    rotated: crate::boot::assessment::BootModel,
    from_slot: Slot,
    rotate: bool,
    version: String,
    _work: tempfile::TempDir,
    started: Instant,
    disk_problems: Vec<String>,
}

impl DiskUpgrade {
    pub fn prepare(
        source: &Source,
        disk: &Path,
        pull_opts: &PullOptions,
    ) -> Result<Self, UpgradeError> {
        let started = Instant::now();
        let OpenDisk {
            file,
            fs,
            env_at,
            env,
            mut model,
            problems,
        } = open_disk(disk, true)?;
        // Offline, the node "runs" from where it last booted (never booted: active).
        let from_slot = model
            .last_boot
            .as_ref()
            .map(|(s, _)| *s)
            .unwrap_or(Slot::Active);
        model.running = Some(from_slot);

        // The new image, as a slot image, built before anything on the disk changes.
        let parent = disk
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::output::scratch_dir(parent);
        let work = tempfile::Builder::new()
            .prefix(&crate::output::scratch_prefix("upgrade"))
            .tempdir_in(parent)
            .map_err(io("create work directory in", parent))?;
        let rootfs = work.path().join("rootfs");
        let version = unpack_bootable(source, &rootfs, pull_opts)?;
        let transition = work.path().join("transition.img");
        build_slot(
            &rootfs,
            &transition,
            &SlotOptions {
                label: "COS_ACTIVE".into(),
                ..Default::default()
            },
        )?;
        std::fs::remove_dir_all(&rootfs).map_err(io("remove", &rootfs))?;
        let mut u = Self::plan(
            Target::Disk {
                file,
                fs,
                env_at,
                transition,
            },
            env,
            model,
            from_slot,
            version,
            work,
            started,
        )?;
        u.disk_problems = problems.sentences();
        Ok(u)
    }

    /// An upgrade of the running node: COS_STATE mounted at `state`, running from
    /// `from_slot`; the image is fetched and unpacked under `work_parent` (COS_PERSISTENT:
    /// slot images do not fit in memory).
    pub fn prepare_mounted(
        source: &Source,
        state: &Path,
        from_slot: Slot,
        work_parent: &Path,
        pull_opts: &PullOptions,
    ) -> Result<Self, UpgradeError> {
        let started = Instant::now();
        // Never rotate names a cut-off rollback left half swapped.
        crate::rollback::resume_interrupted(state).map_err(Box::new)?;
        let (env, mut model) = crate::agent::health::read_model(state)?;
        model.running = Some(from_slot);
        std::fs::create_dir_all(work_parent).map_err(io("create", work_parent))?;
        crate::output::scratch_dir(work_parent);
        let work = tempfile::Builder::new()
            .prefix(&crate::output::scratch_prefix("upgrade"))
            .tempdir_in(work_parent)
            .map_err(io("create work directory in", work_parent))?;
        let rootfs = work.path().join("rootfs");
        let version = unpack_bootable(source, &rootfs, pull_opts)?;
        Self::plan(
            Target::Mounted {
                state: state.to_path_buf(),
                rootfs,
            },
            env,
            model,
            from_slot,
            version,
            work,
            started,
        )
    }

    fn plan(
        target: Target,
        env: GrubEnv,
        mut model: crate::boot::assessment::BootModel,
        from_slot: Slot,
        version: String,
        work: tempfile::TempDir,
        started: Instant,
    ) -> Result<Self, UpgradeError> {
        let rotate = from_slot == Slot::Active;
        let mut rotated = model.clone();
        rotated.passive = rotated.active.clone();
        model.upgrade(&version)?;
        Ok(Self {
            target,
            env,
            model,
            rotated,
            from_slot,
            rotate,
            version,
            _work: work,
            started,
            disk_problems: Vec::new(),
        })
    }

    /// The steps, in order; which ones depend on where the node last ran.
    pub fn steps(&self) -> Vec<Step> {
        let mut s = vec![Step::RemoveStaleTransition, Step::WriteTransition];
        if self.rotate {
            s.extend([
                Step::RemoveOldPassive,
                Step::LinkActiveAsPassive,
                Step::RecordPassive,
                Step::UnlinkActive,
            ]);
        } else {
            s.push(Step::RemoveFailedActive);
        }
        s.extend([
            Step::ArmCounter,
            Step::LinkTransitionAsActive,
            Step::UnlinkTransition,
        ]);
        s
    }

    pub fn apply(&mut self, step: Step) -> Result<(), UpgradeError> {
        match &self.target {
            Target::Disk { .. } => self.apply_disk(step),
            Target::Mounted { .. } => self.apply_mounted(step),
        }
    }

    fn apply_disk(&mut self, step: Step) -> Result<(), UpgradeError> {
        let Target::Disk {
            file,
            fs,
            env_at,
            transition,
        } = &self.target
        else {
            unreachable!("apply dispatches on the target")
        };
        match step {
            Step::RemoveStaleTransition if fs.exists("/cOS/transition.img") => {
                fs.step("remove a stale transition.img", &["rm /cOS/transition.img"])
            }
            Step::WriteTransition => fs.step(
                "write transition.img",
                &[&format!(
                    "write {} /cOS/transition.img",
                    transition.display()
                )],
            ),
            Step::RemoveOldPassive if fs.exists("/cOS/passive.img") => {
                fs.step("remove the old passive.img", &["rm /cOS/passive.img"])
            }
            // debugfs's ln and unlink leave the inode's link count alone; keep it true, so the
            // filesystem is consistent between any two steps.
            Step::LinkActiveAsPassive => fs.step(
                "rotate active.img to passive.img",
                &[
                    "ln /cOS/active.img /cOS/passive.img",
                    "sif /cOS/passive.img links_count 2",
                ],
            ),
            Step::UnlinkActive => fs.step(
                "rotate active.img to passive.img",
                &[
                    "unlink /cOS/active.img",
                    "sif /cOS/passive.img links_count 1",
                ],
            ),
            Step::RemoveFailedActive if fs.exists("/cOS/active.img") => {
                fs.step("remove the failed active.img", &["rm /cOS/active.img"])
            }
            // Armed while there is no active.img: a cut before the rename boots passive.
            Step::RecordPassive | Step::ArmCounter => {
                let model = if step == Step::ArmCounter {
                    &self.model
                } else {
                    &self.rotated
                };
                grubcfg::model_to_env(model, &mut self.env)?;
                file.write_all_at(&self.env.to_block()?, *env_at)
                    .map_err(io("write grubenv in", &fs.disk))?;
                file.sync_all().map_err(io("sync", &fs.disk))
            }
            Step::LinkTransitionAsActive => fs.step(
                "rename transition.img to active.img",
                &[
                    "ln /cOS/transition.img /cOS/active.img",
                    "sif /cOS/active.img links_count 2",
                ],
            ),
            Step::UnlinkTransition => fs.step(
                "rename transition.img to active.img",
                &[
                    "unlink /cOS/transition.img",
                    "sif /cOS/active.img links_count 1",
                ],
            ),
            // The conditional steps whose condition does not hold.
            Step::RemoveStaleTransition | Step::RemoveOldPassive | Step::RemoveFailedActive => {
                Ok(())
            }
        }
    }

    /// On a node: plain file operations, each made durable in place before the next.
    fn apply_mounted(&mut self, step: Step) -> Result<(), UpgradeError> {
        let Target::Mounted { state, rootfs } = &self.target else {
            unreachable!("apply dispatches on the target")
        };
        let cos = state.join("cOS");
        let p = |name: &str| cos.join(name);
        let remove = |name: &str| -> Result<(), UpgradeError> {
            match std::fs::remove_file(p(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io("remove", &p(name))(e))
                }
                _ => Ok(()),
            }
        };
        let link = |from: &str, to: &str| -> Result<(), UpgradeError> {
            std::fs::hard_link(p(from), p(to)).map_err(io("link", &p(to)))
        };
        match step {
            Step::RemoveStaleTransition => {
                remove("transition.img")?;
                // A slot image cut off while being built (build_slot's temp files).
                for e in std::fs::read_dir(&cos).map_err(io("read", &cos))? {
                    let e = e.map_err(io("read", &cos))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(".slot-") && name.ends_with(".img") {
                        remove(&name)?;
                    }
                }
            }
            Step::WriteTransition => {
                build_slot(
                    rootfs,
                    &p("transition.img"),
                    &SlotOptions {
                        label: "COS_ACTIVE".into(),
                        ..Default::default()
                    },
                )?;
            }
            Step::RemoveOldPassive => remove("passive.img")?,
            Step::LinkActiveAsPassive => link("active.img", "passive.img")?,
            Step::UnlinkActive => remove("active.img")?,
            Step::RemoveFailedActive => remove("active.img")?,
            Step::RecordPassive => {
                crate::agent::health::write_model(state, &mut self.env, &self.rotated)?;
            }
            Step::ArmCounter => {
                crate::agent::health::write_model(state, &mut self.env, &self.model)?;
            }
            Step::LinkTransitionAsActive => link("transition.img", "active.img")?,
            Step::UnlinkTransition => remove("transition.img")?,
        }
        crate::agent::sys::durable(&cos)?;
        Ok(())
    }

    fn exists(&self, path: &str) -> bool {
        match &self.target {
            Target::Disk { fs, .. } => fs.exists(path),
            Target::Mounted { state, .. } => state.join(path.trim_start_matches('/')).exists(),
        }
    }

    /// Reads everything back: the files GRUB will look for and the state it will act on.
    pub fn verify(&self) -> Result<UpgradeReport, UpgradeError> {
        let (back, disk) = match &self.target {
            Target::Disk {
                file, fs, env_at, ..
            } => (
                grubcfg::env_to_model(&read_env_at(file, *env_at, &fs.disk)?)?,
                fs.disk.clone(),
            ),
            Target::Mounted { state, .. } => {
                (crate::agent::health::read_model(state)?.1, state.clone())
            }
        };
        if back.active != self.model.active
            || back.passive != self.model.passive
            || !self.exists("/cOS/active.img")
            || !self.exists("/cOS/passive.img")
            || self.exists("/cOS/transition.img")
        {
            return Err(UpgradeError::Debugfs {
                what: "verify the upgraded disk".into(),
                stderr: format!("read back {back:?}"),
            });
        }
        Ok(UpgradeReport {
            schema_version: 2,
            disk,
            version: self.version.clone(),
            from_slot: self.from_slot,
            rotated: self.rotate,
            passive_version: self.model.passive.version.clone(),
            tries: self.model.tries,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            disk_problems: self.disk_problems.clone(),
        })
    }
}

/// What a rollback on a disk image did.
#[derive(Debug, Clone, Serialize)]
pub struct DiskRollbackReport {
    pub schema_version: u32,
    pub disk: PathBuf,
    pub active_version: Option<String>,
    pub passive_version: Option<String>,
}

/// The swap `bootyard rollback` makes, applied to an installed disk image from the host
/// without booting it: the passive (good) image becomes active and the active one passive,
/// as the model's `rollback` says. The disk is offline, so there is no power cut to survive
/// between steps: the names are swapped in one debugfs session (three renames through
/// `previous.img`) and grubenv is written after. Refused, with nothing changed, when there is
/// no good passive slot, no `active.img` or `passive.img`, or a rollback the node left
/// unfinished.
pub fn rollback_disk(disk: &Path) -> Result<DiskRollbackReport, UpgradeError> {
    let OpenDisk {
        file,
        fs,
        env_at,
        mut env,
        mut model,
        problems: _,
    } = open_disk(disk, true)?;
    if model.active_missing {
        return Err(UpgradeError::NoActiveImage(disk.to_path_buf()));
    }
    model.running = Some(
        model
            .last_boot
            .as_ref()
            .map(|(s, _)| *s)
            .unwrap_or(Slot::Active),
    );
    model.rollback()?;
    for leftover in ["/cOS/rollback.pending", "/cOS/previous.img"] {
        if fs.exists(leftover) {
            return Err(UpgradeError::InterruptedRollback(disk.to_path_buf()));
        }
    }
    if !fs.exists("/cOS/passive.img") {
        return Err(UpgradeError::NoPassiveImage(disk.to_path_buf()));
    }
    // Each ln + unlink pair is a rename: the link counts stay 1 throughout.
    fs.step(
        "swap active.img and passive.img",
        &[
            "ln /cOS/active.img /cOS/previous.img",
            "unlink /cOS/active.img",
            "ln /cOS/passive.img /cOS/active.img",
            "unlink /cOS/passive.img",
            "ln /cOS/previous.img /cOS/passive.img",
            "unlink /cOS/previous.img",
        ],
    )?;
    grubcfg::model_to_env(&model, &mut env)?;
    file.write_all_at(&env.to_block()?, env_at)
        .map_err(io("write grubenv in", disk))?;
    file.sync_all().map_err(io("sync", disk))?;
    Ok(DiskRollbackReport {
        schema_version: 1,
        disk: disk.to_path_buf(),
        active_version: model.active.version.clone(),
        passive_version: model.passive.version.clone(),
    })
}

/// grubenv's filesystem block on an installed disk, as it was when read: before a kernel
/// runs, GRUB writes nothing else, so putting it back undoes a boot that never reached its
/// kernel.
#[derive(Debug, Clone)]
pub struct GrubenvBlock {
    at: u64,
    bytes: Vec<u8>,
}

/// ext4's superblock magic (0xEF53, little-endian) and where it sits in the file system.
const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];
const EXT4_MAGIC_AT: u64 = 1024 + 56;

/// ext4's block size on COS_STATE (install makes it so; `block_offset` counts in it).
const STATE_BLOCK_BYTES: usize = 4096;

impl GrubenvBlock {
    pub fn read(disk: &Path) -> Result<Self, UpgradeError> {
        let d = open_disk(disk, false)?;
        let mut bytes = vec![0u8; STATE_BLOCK_BYTES];
        d.file
            .read_exact_at(&mut bytes, d.env_at)
            .map_err(io("read grubenv in", disk))?;
        Ok(Self {
            at: d.env_at,
            bytes,
        })
    }

    pub fn restore(&self, disk: &Path) -> Result<(), UpgradeError> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(disk)
            .map_err(io("open", disk))?;
        f.write_all_at(&self.bytes, self.at)
            .and_then(|()| f.sync_data())
            .map_err(io("write grubenv in", disk))
    }
}

/// The boot model a disk image's grubenv holds, read from the host.
pub fn read_disk_model(disk: &Path) -> Result<crate::boot::assessment::BootModel, UpgradeError> {
    Ok(open_disk(disk, false)?.model)
}

/// What is wrong with an installed disk besides what its boot model says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskProblems {
    /// Damage to one copy of the partition table (the other served); empty when intact.
    pub gpt_damaged: Vec<String>,
    /// Whether that damage was repaired from the intact copy (by a command that writes).
    pub gpt_repaired: bool,
    /// `cOS/transition.img` is on COS_STATE: an upgrade was cut off before its rename (the
    /// next upgrade writes it anew; nothing boots it).
    pub stray_transition: bool,
}

impl DiskProblems {
    /// The problems in words, one sentence each; empty when there are none.
    pub fn sentences(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.gpt_damaged.is_empty() {
            out.push(format!(
                "the partition table is damaged ({}); {}",
                self.gpt_damaged.join("; "),
                if self.gpt_repaired {
                    "it was rewritten from the intact copy"
                } else {
                    "the intact copy served, and a command that writes the disk (upgrade, \
                     rollback) rewrites the damaged one from it"
                }
            ));
        }
        if self.stray_transition {
            out.push(
                "cOS/transition.img is on COS_STATE: an upgrade was cut off before it finished \
                 (nothing boots it; the next upgrade replaces it)"
                    .into(),
            );
        }
        out
    }
}

/// An installed disk image, opened: its COS_STATE, where grubenv's block is, grubenv, and
/// the model it holds (including whether `active.img` is there at all).
struct OpenDisk {
    file: std::fs::File,
    fs: StateFs,
    env_at: u64,
    env: GrubEnv,
    model: crate::boot::assessment::BootModel,
    problems: DiskProblems,
}

/// The boot model a disk holds, and what else is wrong with it (for `status`).
pub fn inspect_disk(
    disk: &Path,
) -> Result<(crate::boot::assessment::BootModel, DiskProblems), UpgradeError> {
    let d = open_disk(disk, false)?;
    Ok((d.model, d.problems))
}

fn open_disk(disk: &Path, write: bool) -> Result<OpenDisk, UpgradeError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(disk)
        .map_err(io("open", disk))?;
    let checked = gpt::read_checked(&file)?;
    let mut problems = DiskProblems {
        gpt_damaged: checked.damaged.clone(),
        ..Default::default()
    };
    if write && !checked.damaged.is_empty() {
        // The copy that served is whole and inside the disk: write both from it.
        gpt::repair(&file, &checked)?;
        problems.gpt_repaired = true;
    }
    let table = checked.gpt;
    let state = table
        .partitions
        .iter()
        .find(|p| p.name == "COS_STATE")
        .ok_or_else(|| UpgradeError::NoStatePartition(disk.to_path_buf()))?;
    let fs = StateFs {
        disk: disk.to_path_buf(),
        offset: state.offset_bytes(),
    };
    // Before any tool reads it: debugfs on something else says "Bad magic number".
    let mut magic = [0u8; 2];
    file.read_exact_at(&mut magic, state.offset_bytes() + EXT4_MAGIC_AT)
        .map_err(io("read COS_STATE in", disk))?;
    if magic != EXT4_MAGIC {
        return Err(UpgradeError::NotInstalled {
            disk: disk.to_path_buf(),
            what: "its COS_STATE partition holds no ext4 file system",
        });
    }
    if write {
        fs.recover(&file, state.size_bytes())?;
    }
    if !fs.exists("/grub2/grubenv") {
        return Err(UpgradeError::NotInstalled {
            disk: disk.to_path_buf(),
            what: "its COS_STATE has no grub2/grubenv",
        });
    }
    let env_at = fs.block_offset("/grub2/grubenv")?;
    let env = read_env_at(&file, env_at, disk)?;
    let mut model = grubcfg::env_to_model(&env)?;
    model.active_missing = !fs.exists("/cOS/active.img");
    problems.stray_transition = fs.exists("/cOS/transition.img");
    Ok(OpenDisk {
        file,
        fs,
        env_at,
        env,
        model,
        problems,
    })
}

fn read_env_at(file: &std::fs::File, at: u64, disk: &Path) -> Result<GrubEnv, UpgradeError> {
    let mut block = vec![0u8; GRUBENV_BYTES];
    file.read_exact_at(&mut block, at)
        .map_err(io("read grubenv in", disk))?;
    Ok(GrubEnv::parse(&block)?)
}

/// Runs every step; `on_step` hears of each before it starts (the node prints them, so a
/// harness can cut the power at a chosen one).
pub fn run_steps(
    mut u: DiskUpgrade,
    mut on_step: impl FnMut(usize, usize, Step),
) -> Result<UpgradeReport, UpgradeError> {
    let steps = u.steps();
    for (i, step) in steps.iter().enumerate() {
        on_step(i + 1, steps.len(), *step);
        u.apply(*step)?;
    }
    u.verify()
}

pub fn upgrade_disk(
    source: &Source,
    disk: &Path,
    pull_opts: &PullOptions,
) -> Result<UpgradeReport, UpgradeError> {
    run_steps(DiskUpgrade::prepare(source, disk, pull_opts)?, |_, _, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_out_and_back_round_trip_and_write_only_what_changed() {
        let d = tempfile::tempdir().unwrap();
        let mib = COPY_CHUNK as usize;
        let len = (5 * mib + 4096) as u64;
        // A "disk" with the partition at 1 MiB: data in chunks 0, 2 and the short last one.
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("disk"))
            .unwrap();
        disk.set_len(8 << 20).unwrap();
        let at = COPY_CHUNK;
        for (chunk, byte) in [(0u64, 1u8), (2, 2), (5, 5)] {
            disk.write_all_at(&[byte; 4096], at + chunk * COPY_CHUNK)
                .unwrap();
        }
        let scratch = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("scratch"))
            .unwrap();
        copy_out(&disk, at, &scratch, len).unwrap();
        assert_eq!(scratch.metadata().unwrap().len(), len);
        // Only the three chunks with data were written: the copy stays sparse.
        assert!(scratch.metadata().unwrap().blocks() * 512 <= 3 * COPY_CHUNK);

        // A replay changes chunk 2 and chunk 4 (a hole before); copy back.
        scratch
            .write_all_at(&[9; 10], 2 * COPY_CHUNK + 100)
            .unwrap();
        scratch.write_all_at(&[7; 10], 4 * COPY_CHUNK).unwrap();
        let allocated = disk.metadata().unwrap().blocks();
        copy_back(&scratch, &disk, at, len, &[3 * COPY_CHUNK + 5, 0]).unwrap();
        let mut a = vec![0u8; len as usize];
        let mut b = vec![0u8; len as usize];
        scratch.read_exact_at(&mut a, 0).unwrap();
        disk.read_exact_at(&mut b, at).unwrap();
        assert!(a == b, "the partition is the replayed copy");
        // Only the changed chunks 2 and 4 were written; the unchanged ones (holes among
        // them) would have added three more MiB.
        assert!(disk.metadata().unwrap().blocks() - allocated <= 2 * COPY_CHUNK / 512);
    }
}
