//! Boot assessment on the node: health checks, then marking the running slot good and
//! stopping the watchdog. Built-in checks first (the system came up through bootyard's
//! stage; the agent can read and write its boot state), then the image's own commands.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::CommandCheck;
use super::stage::{BootRecord, BOOT_RECORD};
use crate::boot::assessment::{BootModel, Health, Slot};
use crate::boot::grubcfg::{env_to_model, model_to_env, EnvModelError};
use crate::boot::grubenv::{GrubEnv, GrubEnvError, GRUBENV_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GRUB environment block")]
    Env {
        path: PathBuf,
        #[source]
        source: GrubEnvError,
    },
    #[error("{path} does not describe the slots")]
    Model {
        path: PathBuf,
        #[source]
        source: EnvModelError,
    },
    #[error("grubenv read back differently after marking {0} good")]
    ReadBack(Slot),
    #[error("this boot came up with {booted} from {slot}, which now holds {now}: not marking an image good that never booted")]
    Rewritten {
        slot: Slot,
        booted: String,
        now: String,
    },
}

/// Reads the boot model from grubenv under a mounted COS_STATE.
pub fn read_model(state_dir: &Path) -> Result<(GrubEnv, BootModel), MarkError> {
    let path = state_dir.join("grub2/grubenv");
    let bytes = std::fs::read(&path).map_err(|source| MarkError::Io {
        op: "read",
        path: path.clone(),
        source,
    })?;
    let env = GrubEnv::parse(&bytes).map_err(|source| MarkError::Env {
        path: path.clone(),
        source,
    })?;
    let mut model = env_to_model(&env).map_err(|source| MarkError::Model { path, source })?;
    model.active_missing = !state_dir.join("cOS/active.img").exists();
    Ok((env, model))
}

/// Writes `model` into grubenv in place, in the blocks the file already has (GRUB's
/// save_env writes to those blocks directly and cannot allocate new ones), and syncs.
pub fn write_model(
    state_dir: &Path,
    env: &mut GrubEnv,
    model: &BootModel,
) -> Result<(), MarkError> {
    let path = state_dir.join("grub2/grubenv");
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| MarkError::Io { op, path, source }
    };
    model_to_env(model, env).map_err(|source| MarkError::Env {
        path: path.clone(),
        source,
    })?;
    let block = env.to_block().map_err(|source| MarkError::Env {
        path: path.clone(),
        source,
    })?;
    debug_assert_eq!(block.len(), GRUBENV_BYTES);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io("open"))?;
    f.seek(SeekFrom::Start(0)).map_err(io("write"))?;
    f.write_all(&block).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(())
}

/// Marks `slot` good; returns the model after, and the slot's health before.
/// `booted_version` is the version this boot came up with (the stage's record): if the slot
/// now holds another one (an upgrade or rollback ran during this boot), the image in it has
/// never booted and must not be called good.
pub fn mark_good(
    state_dir: &Path,
    slot: Slot,
    booted_version: Option<&str>,
) -> Result<(BootModel, Health), MarkError> {
    let (mut env, mut model) = read_model(state_dir)?;
    if let Some(booted) = booted_version {
        let now = model.slot(slot).version.as_deref();
        if now != Some(booted) || (slot == Slot::Active && model.active_missing) {
            return Err(MarkError::Rewritten {
                slot,
                booted: booted.to_string(),
                now: now.unwrap_or("nothing").to_string(),
            });
        }
    }
    model.running = Some(slot);
    let before = model.slot(slot).health;
    model.boot_complete();
    write_model(state_dir, &mut env, &model)?;
    let (_, back) = read_model(state_dir)?;
    if back.slot(slot).health != model.slot(slot).health {
        return Err(MarkError::ReadBack(slot));
    }
    Ok((model, before))
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub ms: u64,
}

/// The system came up through bootyard's stage, from the slot the command line names.
pub fn check_userspace(root: &Path, cmdline_slot: Option<Slot>) -> Result<BootRecord, String> {
    let path = root.join(BOOT_RECORD);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no boot record at {}: {e} (not booted through bootyard's stage?)",
            path.display()
        )
    })?;
    let rec: BootRecord = serde_json::from_str(&text)
        .map_err(|e| format!("boot record {} is corrupt: {e}", path.display()))?;
    if let Some(s) = cmdline_slot {
        if s != rec.slot {
            return Err(format!(
                "the stage booted {} but the command line says {s}",
                rec.slot
            ));
        }
    }
    Ok(rec)
}

/// The agent can do its job: COS_STATE is mounted writable, its grubenv describes the
/// slots, and the running slot is not one GRUB gave up on.
pub fn check_agent(state_dir: &Path, slot: Slot) -> Result<String, String> {
    let (_, model) = read_model(state_dir).map_err(|e| {
        let mut s = e.to_string();
        if let Some(c) = std::error::Error::source(&e) {
            s.push_str(&format!(": {c}"));
        }
        s
    })?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(state_dir.join("grub2/grubenv"))
        .map_err(|e| format!("grubenv is not writable: {e}"))?;
    match model.slot(slot).health {
        Health::Bad => Err(format!("running from {slot}, which grubenv marks bad")),
        Health::Empty => Err(format!("running from {slot}, which grubenv says is empty")),
        h => Ok(format!("{slot} is {h:?}")),
    }
}

/// Runs one command check with its deadline. The check runs in its own process group; when
/// it overruns, the whole group is killed (children that kept the pipes open included).
pub fn run_command_check(c: &CommandCheck) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(&c.command[0])
        .args(&c.command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", c.command[0]))?;
    let pgid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    // The waiter reads both pipes at once (a full stderr cannot stall it) and reaps the
    // child; the deadline is a channel receive, not a poll.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(c.timeout_sec.into())) {
        Ok(Ok(o)) if o.status.success() => {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        Ok(Ok(o)) => {
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            Err(format!(
                "{}: {}",
                o.status,
                if err.trim().is_empty() {
                    out.trim()
                } else {
                    err.trim()
                }
            ))
        }
        Ok(Err(e)) => Err(format!("cannot wait for {}: {e}", c.command[0])),
        Err(_) => {
            // SAFETY: kill(2) on the check's own process group; its leader is not reaped
            // yet (the waiter holds it), so the group id cannot have been reused.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            Err(format!("did not finish within {} s", c.timeout_sec))
        }
    }
}

/// Runs `f` as a named check, timing it.
pub fn timed(name: &str, f: impl FnOnce() -> Result<String, String>) -> CheckResult {
    let t = Instant::now();
    let r = f();
    CheckResult {
        name: name.into(),
        passed: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
        ms: t.elapsed().as_millis() as u64,
    }
}
