use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use serde::Serialize;

use crate::boot::assessment::{BootModel, BootReason};
use crate::boot::grubcfg::env_to_model;
use crate::boot::grubenv::{GrubEnv, GRUBENV_BYTES};
use crate::disk::gpt;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Installed disk image to inspect from the host
    #[arg(long)]
    pub disk: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Status {
    schema_version: u32,
    slots: BootModel,
    why: String,
}

fn explain(m: &BootModel) -> String {
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

/// Finds grubenv on COS_STATE with debugfs and reads it.
fn read_env(disk: &std::path::Path) -> anyhow::Result<GrubEnv> {
    let f =
        std::fs::File::open(disk).with_context(|| format!("failed to open {}", disk.display()))?;
    let table = gpt::read(&f)?;
    let state = table
        .partitions
        .iter()
        .find(|p| p.name == "COS_STATE")
        .ok_or_else(|| anyhow!("{} has no COS_STATE partition", disk.display()))?;
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg("bmap /grub2/grubenv 0")
        .arg(format!(
            "{}?offset={}",
            disk.display(),
            state.offset_bytes()
        ))
        .output()
        .context("failed to run debugfs (e2fsprogs)")?;
    let block: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            anyhow!(
                "COS_STATE has no /grub2/grubenv: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let mut buf = vec![0u8; GRUBENV_BYTES];
    f.read_exact_at(&mut buf, state.offset_bytes() + block * 4096)?;
    Ok(GrubEnv::parse(&buf)?)
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let model = env_to_model(&read_env(&a.disk)?)?;
    let why = explain(&model);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Status {
                schema_version: 1,
                slots: model,
                why
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
    }
    Ok(())
}
