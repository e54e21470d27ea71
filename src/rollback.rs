//! `bootyard rollback` on a node: the passive (previous, good) image becomes active and the
//! active one passive, as the boot-assessment model's `rollback` says. Files and grubenv
//! cannot change together, so the swap goes through states in which every name GRUB may
//! pick holds a good image:
//!
//! 1. an active slot that is not good is marked bad first, so GRUB boots passive;
//! 2. `active.img` is kept as `previous.img`;
//! 3. `active.img` is replaced (rename over it) by a second link to the passive image;
//! 4. grubenv gets the swapped states and versions;
//! 5. `previous.img` is renamed over `passive.img`.
//!
//! Each step is made durable in place before the next (see `agent::sys::durable`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::agent::health::{read_model, write_model, MarkError};
use crate::agent::sys::{durable, SysError};
use crate::boot::assessment::{AssessmentError, Health, Slot};

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Mark(#[from] MarkError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("cannot roll back")]
    Assessment(#[from] AssessmentError),
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
    MarkActiveBad,
    KeepActiveAsPrevious,
    LinkPassiveAsActive,
    WriteSwappedEnv,
    PreviousToPassive,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub schema_version: u32,
    pub active_version: Option<String>,
    pub passive_version: Option<String>,
    /// The running slot under its new name.
    pub running: Option<Slot>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RollbackError {
    let path = path.to_path_buf();
    move |source| RollbackError::Io { op, path, source }
}

pub fn rollback(
    state: &Path,
    running: Slot,
    mut on_step: impl FnMut(RollbackStep),
) -> Result<RollbackReport, RollbackError> {
    let (mut env, mut model) = read_model(state)?;
    model.running = Some(running);
    let before = model.clone();
    // Refuses (nothing to roll back to) before anything changes.
    model.rollback()?;
    let cos = state.join("cOS");
    let p = |n: &str| cos.join(n);
    let replace = |from: &str, to: &str| -> Result<(), RollbackError> {
        std::fs::rename(p(from), p(to)).map_err(io("rename", &p(from)))
    };
    let link = |from: &str, to: &str| -> Result<(), RollbackError> {
        let _ = std::fs::remove_file(p(to));
        std::fs::hard_link(p(from), p(to)).map_err(io("link", &p(to)))
    };

    if before.active.health != Health::Good {
        on_step(RollbackStep::MarkActiveBad);
        let mut marked = before.clone();
        marked.active.health = Health::Bad;
        write_model(state, &mut env, &marked)?;
        durable(&cos)?;
    }
    on_step(RollbackStep::KeepActiveAsPrevious);
    link("active.img", "previous.img")?;
    durable(&cos)?;
    on_step(RollbackStep::LinkPassiveAsActive);
    link("passive.img", "active.img.new")?;
    replace("active.img.new", "active.img")?;
    durable(&cos)?;
    on_step(RollbackStep::WriteSwappedEnv);
    write_model(state, &mut env, &model)?;
    durable(&cos)?;
    on_step(RollbackStep::PreviousToPassive);
    replace("previous.img", "passive.img")?;
    durable(&cos)?;
    Ok(RollbackReport {
        schema_version: 1,
        active_version: model.active.version.clone(),
        passive_version: model.passive.version.clone(),
        running: model.running,
    })
}
