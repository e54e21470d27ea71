use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::agent::stage::STATE_DIR;
use crate::agent::sys::console_line;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Where COS_STATE is mounted
    #[arg(long, default_value = STATE_DIR)]
    pub state_dir: PathBuf,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

/// Swaps the slots on this node: the previous image (passive, good) boots next.
pub fn run(a: RollbackArgs) -> anyhow::Result<()> {
    let slot = crate::cli::boot_assess::running_slot(std::path::Path::new("/"))?;
    let r = crate::rollback::rollback(&a.state_dir, slot, |step| {
        console_line(&format!(
            "bootyard-rollback: {}",
            serde_json::to_value(step)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ))
    })
    .context("failed to roll back")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if let Some(how) = r.resumed {
            println!("an interrupted rollback was found: {how:?}");
        }
        println!(
            "rolled back: {} boots next; {} is passive",
            r.active_version.as_deref().unwrap_or("?"),
            r.passive_version.as_deref().unwrap_or("nothing")
        );
    }
    Ok(())
}
