use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::boot::assessment::{BootModel, BootReason};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Installed disk image to inspect from the host; without it, this node
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// On a node: where COS_STATE is mounted
    #[arg(long, default_value = crate::agent::stage::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Status {
    schema_version: u32,
    slots: BootModel,
    why: String,
    /// On a node: what the boot stage recorded about this boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<crate::agent::stage::BootRecord>,
    /// What is wrong with the disk besides its slots (a damaged partition table copy, a
    /// cut-off upgrade's transition image), one sentence each.
    problems: Vec<String>,
}

/// The disk is damaged (one copy of its partition table): `status` has printed what it
/// found, and exits with the status of a corrupt input.
#[derive(Debug, thiserror::Error)]
#[error("the disk is damaged: {0}")]
pub struct DiskDamaged(pub String);

/// Why the last boot went where it did, in words.
pub fn explain(m: &BootModel) -> String {
    match &m.last_boot {
        None => "not booted since install or upgrade".into(),
        Some((slot, BootReason::ActiveGood)) => format!("booted {slot}: the active image is good"),
        Some((slot, BootReason::ActiveTrying { attempt, of })) => {
            format!("booted {slot}: trying the new image, attempt {attempt} of {of}")
        }
        Some((slot, BootReason::ActiveFailed { version })) => {
            format!("booted {slot}: the active image {} used up its boot attempts without passing its health checks", version.as_deref().unwrap_or("?"))
        }
        Some((slot, BootReason::ActiveNotBootable)) => {
            format!("booted {slot}: the active slot is not bootable")
        }
        Some((slot, BootReason::NoGoodSlot)) => format!("booted {slot}: no good A/B slot"),
    }
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let (mut model, boot, problems) = match &a.disk {
        Some(disk) => {
            let (model, problems) = crate::upgrade::inspect_disk(disk)?;
            (model, None, problems)
        }
        None => {
            let (_, model) = crate::agent::health::read_model(&a.state_dir).with_context(|| {
                format!(
                    "no boot state at {} (not a bootyard node? use --disk for a disk image)",
                    a.state_dir.display()
                )
            })?;
            let boot = crate::agent::health::check_userspace(std::path::Path::new("/"), None).ok();
            let problems = crate::upgrade::DiskProblems {
                stray_transition: a.state_dir.join("cOS/transition.img").exists(),
                ..Default::default()
            };
            (model, boot, problems)
        }
    };
    let damaged = !problems.gpt_damaged.is_empty();
    let problems = problems.sentences();
    model.running = boot.as_ref().map(|b| b.slot);
    let why = explain(&model);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Status {
                schema_version: 2,
                slots: model,
                why,
                boot,
                problems: problems.clone(),
            })?
        );
    } else {
        for (name, s) in [
            ("active", &model.active),
            ("passive", &model.passive),
            ("recovery", &model.recovery),
        ] {
            println!(
                "{name:<9} {:<8} {:?}",
                s.version.as_deref().unwrap_or("-"),
                s.health
            );
        }
        println!("{why}");
        for p in &problems {
            println!("warning: {p}");
        }
    }
    if damaged {
        return Err(DiskDamaged(problems.join("; ")).into());
    }
    Ok(())
}
