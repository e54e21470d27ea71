//! `bootyard rollback` on a node: the passive (previous, good) image becomes active and the
//! active one passive, as the boot-assessment model's `rollback` says. Files and grubenv
//! cannot change together, so the swap goes through states in which every name GRUB may
//! pick holds a good image:
//!
//! 1. the intent (the swapped slots) is recorded in `cOS/rollback.pending`;
//! 2. an active slot that is not good is marked bad, so GRUB boots passive;
//! 3. `active.img` is kept as `previous.img`;
//! 4. `active.img` is replaced (rename over it) by a second link to the passive image;
//! 5. grubenv gets the swapped states and versions;
//! 6. `previous.img` is renamed over `passive.img`;
//! 7. the record is removed.
//!
//! Each step is made durable in place before the next (see `agent::sys::durable`). A
//! rollback cut off part way is finished (files already swapped) or undone (not yet) by
//! [`resume_interrupted`], which `rollback` and the node's `upgrade` run first, so a later
//! command never works from half-swapped names.

use std::path::{Path, PathBuf};

use serde::Serialize;

use std::os::unix::fs::MetadataExt;

use serde::Deserialize;

use crate::agent::health::{read_model, write_model, MarkError};
use crate::agent::sys::{durable, SysError};
use crate::boot::assessment::{AssessmentError, BootModel, Health, Slot};
use crate::boot::grubenv::GrubEnv;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Mark(#[from] MarkError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("cannot roll back")]
    Assessment(#[from] AssessmentError),
    #[error("there is no active.img (an upgrade was cut off): upgrade again instead; the node already boots passive")]
    NoActiveImage,
    #[error("{path} is not a rollback record: {message}")]
    Record { path: PathBuf, message: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStep {
    RecordIntent,
    MarkActiveBad,
    KeepActiveAsPrevious,
    LinkPassiveAsActive,
    WriteSwappedEnv,
    PreviousToPassive,
    ClearIntent,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub schema_version: u32,
    pub active_version: Option<String>,
    pub passive_version: Option<String>,
    /// The running slot under its new name.
    pub running: Option<Slot>,
    /// What happened to a rollback an earlier power cut interrupted, if there was one.
    pub resumed: Option<Resumed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resumed {
    /// The files were already swapped: the rollback was finished.
    Completed,
    /// They were not: the rollback was undone (nothing was swapped).
    Undone,
}

/// The record of a rollback in progress: the slots as they are to be.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    target: BootModel,
}

pub const PENDING: &str = "cOS/rollback.pending";

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RollbackError {
    let path = path.to_path_buf();
    move |source| RollbackError::Io { op, path, source }
}

/// COS_STATE's slot directory, with the file operations a rollback makes.
struct Cos {
    dir: PathBuf,
}

impl Cos {
    fn p(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }

    fn remove(&self, n: &str) -> Result<(), RollbackError> {
        match std::fs::remove_file(self.p(n)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &self.p(n))(e)),
            _ => Ok(()),
        }
    }

    fn link(&self, from: &str, to: &str) -> Result<(), RollbackError> {
        self.remove(to)?;
        std::fs::hard_link(self.p(from), self.p(to)).map_err(io("link", &self.p(to)))
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), RollbackError> {
        std::fs::rename(self.p(from), self.p(to)).map_err(io("rename", &self.p(from)))
    }

    fn inode(&self, n: &str) -> Option<(u64, u64)> {
        std::fs::metadata(self.p(n))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    fn durable(&self) -> Result<(), RollbackError> {
        Ok(durable(&self.dir)?)
    }
}

/// A prepared rollback: the plan is made, nothing has changed yet.
pub struct Rollback {
    state: PathBuf,
    cos: Cos,
    env: GrubEnv,
    before: BootModel,
    target: BootModel,
}

impl Rollback {
    /// Refuses (nothing good to roll back to) before anything changes.
    pub fn prepare(state: &Path, running: Slot) -> Result<Self, RollbackError> {
        let (env, mut model) = read_model(state)?;
        if model.active_missing {
            return Err(RollbackError::NoActiveImage);
        }
        model.running = Some(running);
        let before = model.clone();
        model.rollback()?;
        Ok(Self {
            state: state.to_path_buf(),
            cos: Cos {
                dir: state.join("cOS"),
            },
            env,
            before,
            target: model,
        })
    }

    pub fn steps(&self) -> Vec<RollbackStep> {
        let mut s = vec![RollbackStep::RecordIntent];
        if self.before.active.health != Health::Good {
            s.push(RollbackStep::MarkActiveBad);
        }
        s.extend([
            RollbackStep::KeepActiveAsPrevious,
            RollbackStep::LinkPassiveAsActive,
            RollbackStep::WriteSwappedEnv,
            RollbackStep::PreviousToPassive,
            RollbackStep::ClearIntent,
        ]);
        s
    }

    pub fn apply(&mut self, step: RollbackStep) -> Result<(), RollbackError> {
        let cos = &self.cos;
        match step {
            RollbackStep::RecordIntent => {
                let path = self.state.join(PENDING);
                let json = serde_json::to_vec(&Intent {
                    target: self.target.clone(),
                })
                .expect("plain data serializes");
                let tmp = path.with_extension("pending.tmp");
                std::fs::write(&tmp, json).map_err(io("write", &tmp))?;
                std::fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io("sync", &tmp))?;
                std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
            }
            RollbackStep::MarkActiveBad => {
                let mut marked = self.before.clone();
                marked.active.health = Health::Bad;
                write_model(&self.state, &mut self.env, &marked)?;
            }
            RollbackStep::KeepActiveAsPrevious => cos.link("active.img", "previous.img")?,
            RollbackStep::LinkPassiveAsActive => {
                cos.link("passive.img", "active.img.new")?;
                cos.rename("active.img.new", "active.img")?;
            }
            RollbackStep::WriteSwappedEnv => write_model(&self.state, &mut self.env, &self.target)?,
            RollbackStep::PreviousToPassive => cos.rename("previous.img", "passive.img")?,
            RollbackStep::ClearIntent => cos.remove("rollback.pending")?,
        }
        cos.durable()
    }

    pub fn report(&self, resumed: Option<Resumed>) -> RollbackReport {
        RollbackReport {
            schema_version: 1,
            active_version: self.target.active.version.clone(),
            passive_version: self.target.passive.version.clone(),
            running: self.target.running,
            resumed,
        }
    }
}

/// Finishes or undoes a rollback a power cut interrupted; `None` when there was none.
/// What the files say decides: once `active.img` is the passive image, the swap is
/// finished (grubenv written from the record, then `previous.img` renamed); before that,
/// the extra names are removed and nothing is swapped.
pub fn resume_interrupted(state: &Path) -> Result<Option<Resumed>, RollbackError> {
    let path = state.join(PENDING);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let intent: Intent = serde_json::from_slice(&text).map_err(|e| RollbackError::Record {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let cos = Cos {
        dir: state.join("cOS"),
    };
    cos.remove("active.img.new")?;
    let (mut env, now) = read_model(state)?;
    let swapped_files = cos.inode("previous.img").is_some()
        && cos.inode("active.img").is_some()
        && cos.inode("active.img") == cos.inode("passive.img");
    // Compare with the target as grubenv can hold it (a demoted slot's tries are not kept).
    let mut target_env = GrubEnv::new();
    crate::boot::grubcfg::model_to_env(&intent.target, &mut target_env).map_err(|e| {
        RollbackError::Record {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    let target =
        crate::boot::grubcfg::env_to_model(&target_env).map_err(|e| RollbackError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let done = cos.inode("previous.img").is_none()
        && now.active == target.active
        && now.passive == target.passive;
    let outcome = if swapped_files {
        write_model(state, &mut env, &intent.target)?;
        cos.durable()?;
        cos.rename("previous.img", "passive.img")?;
        Resumed::Completed
    } else if done {
        Resumed::Completed
    } else {
        cos.remove("previous.img")?;
        Resumed::Undone
    };
    cos.durable()?;
    cos.remove("rollback.pending")?;
    cos.durable()?;
    Ok(Some(outcome))
}

/// `bootyard rollback`: an interrupted rollback is finished (and that is the rollback) or
/// undone (and this one runs).
pub fn rollback(
    state: &Path,
    running: Slot,
    mut on_step: impl FnMut(RollbackStep),
) -> Result<RollbackReport, RollbackError> {
    let resumed = resume_interrupted(state)?;
    if resumed == Some(Resumed::Completed) {
        let (_, model) = read_model(state)?;
        return Ok(RollbackReport {
            schema_version: 1,
            active_version: model.active.version.clone(),
            passive_version: model.passive.version.clone(),
            running: None,
            resumed,
        });
    }
    let mut r = Rollback::prepare(state, running)?;
    for step in r.steps() {
        on_step(step);
        r.apply(step)?;
    }
    Ok(r.report(resumed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::grubcfg::model_to_env;
    use crate::boot::grubenv::GRUBENV_BYTES;

    /// A COS_STATE directory whose slot images are small files naming their version.
    fn state_with(model: &BootModel) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("cOS")).unwrap();
        std::fs::create_dir_all(d.path().join("grub2")).unwrap();
        let mut env = GrubEnv::new();
        model_to_env(model, &mut env).unwrap();
        let block = env.to_block().unwrap();
        assert_eq!(block.len(), GRUBENV_BYTES);
        std::fs::write(d.path().join("grub2/grubenv"), block).unwrap();
        for (name, s) in [
            ("active.img", &model.active),
            ("passive.img", &model.passive),
        ] {
            std::fs::write(
                d.path().join("cOS").join(name),
                s.version.as_deref().unwrap(),
            )
            .unwrap();
        }
        d
    }

    /// Every name holds the image grubenv says it holds, and no extra names are left.
    fn consistent(state: &Path) -> BootModel {
        let (_, m) = read_model(state).unwrap();
        for (name, s) in [("active.img", &m.active), ("passive.img", &m.passive)] {
            let got = std::fs::read_to_string(state.join("cOS").join(name)).unwrap();
            assert_eq!(Some(got.as_str()), s.version.as_deref(), "{name}");
        }
        for extra in ["previous.img", "active.img.new", "rollback.pending"] {
            assert!(
                !state.join("cOS").join(extra).exists(),
                "{extra} left behind"
            );
        }
        m
    }

    fn good_pair() -> BootModel {
        let mut m = BootModel::installed("v1", 3).unwrap();
        m.running = Some(Slot::Active);
        m.upgrade("v2").unwrap();
        m.boot();
        m.boot_complete();
        m
    }

    #[test]
    fn a_rollback_swaps_names_and_states() {
        let m = good_pair();
        let d = state_with(&m);
        let r = rollback(d.path(), Slot::Active, |_| {}).unwrap();
        assert_eq!(
            (
                r.active_version.as_deref(),
                r.passive_version.as_deref(),
                r.resumed
            ),
            (Some("v1"), Some("v2"), None)
        );
        let after = consistent(d.path());
        assert_eq!(
            (after.active.health, after.passive.health),
            (Health::Good, Health::Good)
        );
    }

    #[test]
    fn a_rollback_cut_after_any_step_is_finished_or_undone() {
        let trying = {
            // Running v1 from passive while v3 still has tries left (rolled back by hand).
            let mut m = good_pair();
            m.running = Some(Slot::Active);
            m.upgrade("v3").unwrap();
            m.boot();
            m
        };
        for start in [good_pair(), trying, {
            // Running from passive after v2 failed: active is bad.
            let mut m = good_pair();
            m.running = Some(Slot::Active);
            m.upgrade("v3").unwrap();
            for _ in 0..4 {
                m.boot();
            }
            m
        }] {
            let steps = Rollback::prepare(state_with(&start).path(), Slot::Active)
                .unwrap()
                .steps();
            for cut in 0..steps.len() {
                let d = state_with(&start);
                let mut r = Rollback::prepare(d.path(), Slot::Active).unwrap();
                for step in &steps[..=cut] {
                    r.apply(*step).unwrap();
                }
                let resumed = resume_interrupted(d.path()).unwrap();
                let after = consistent(d.path());
                let swapped = after.active.version == start.passive.version;
                match resumed {
                    Some(Resumed::Completed) | None => {
                        assert!(swapped, "cut after {:?}", steps[cut])
                    }
                    Some(Resumed::Undone) => assert!(!swapped, "cut after {:?}", steps[cut]),
                }
                // Whatever happened, GRUB has a good image to boot.
                assert!(
                    !after.good_versions().is_empty(),
                    "cut after {:?}",
                    steps[cut]
                );
            }
        }
    }

    #[test]
    fn nothing_to_roll_back_to_changes_nothing() {
        let mut m = good_pair();
        m.passive.health = Health::Bad;
        let d = state_with(&m);
        assert!(matches!(
            rollback(d.path(), Slot::Active, |_| {}),
            Err(RollbackError::Assessment(_))
        ));
        assert_eq!(consistent(d.path()).active, m.active);
    }
}
