use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::boot::assessment::Slot;
use crate::boot::grubcfg::{env_to_model, model_to_env};
use crate::boot::grubenv::{GrubEnv, GRUBENV_BYTES};

#[derive(Debug, Args)]
pub struct BootCompleteArgs {
    /// Where COS_STATE is mounted
    #[arg(long, default_value = "/run/cos/state")]
    pub state_dir: PathBuf,
    /// The slot this system booted from [default: bootyard.slot= on /proc/cmdline]
    #[arg(long, value_parser = parse_slot)]
    pub slot: Option<Slot>,
}

fn parse_slot(s: &str) -> Result<Slot, String> {
    match s {
        "active" => Ok(Slot::Active),
        "passive" => Ok(Slot::Passive),
        "recovery" => Ok(Slot::Recovery),
        other => Err(format!("slot {other:?} is not active, passive or recovery")),
    }
}

/// Marks the running slot good: its health checks passed. grubenv is rewritten in place, in
/// the blocks it already has, because GRUB's save_env writes to those blocks directly.
pub fn run(a: BootCompleteArgs) -> anyhow::Result<()> {
    let slot = match a.slot {
        Some(s) => s,
        None => {
            let cmdline =
                std::fs::read_to_string("/proc/cmdline").context("failed to read /proc/cmdline")?;
            let Some(v) = cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bootyard.slot="))
            else {
                bail!("the kernel command line has no bootyard.slot=: not booted by bootyard's GRUB (pass --slot)");
            };
            parse_slot(v).map_err(anyhow::Error::msg)?
        }
    };
    let path = a.state_dir.join("grub2/grubenv");
    let bytes =
        std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut env = GrubEnv::parse(&bytes)
        .with_context(|| format!("{} is not a GRUB environment block", path.display()))?;
    let mut model = env_to_model(&env)?;
    model.running = Some(slot);
    let before = model.slot(slot).health;
    model.boot_complete();
    model_to_env(&model, &mut env)?;
    let block = env.to_block()?;
    debug_assert_eq!(block.len(), GRUBENV_BYTES);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&block)?;
    f.sync_all()?;
    let back = env_to_model(&GrubEnv::parse(&std::fs::read(&path)?)?)?;
    if back.slot(slot).health != model.slot(slot).health {
        bail!("grubenv read back differently after marking {slot} good");
    }
    println!(
        "{slot} ({}) marked good (was {:?})",
        model.slot(slot).version.as_deref().unwrap_or("?"),
        before
    );
    Ok(())
}
