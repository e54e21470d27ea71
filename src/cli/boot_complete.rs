use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::boot::assessment::Slot;

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
    // On a node booted through the stage, only the version that booted may be called good.
    let record = crate::agent::health::check_userspace(std::path::Path::new("/"), Some(slot)).ok();
    let (model, before) = crate::agent::health::mark_good(
        &a.state_dir,
        slot,
        record.as_ref().map(|r| r.version.as_str()),
    )?;
    println!(
        "{slot} ({}) marked good (was {:?})",
        model.slot(slot).version.as_deref().unwrap_or("?"),
        before
    );
    Ok(())
}
