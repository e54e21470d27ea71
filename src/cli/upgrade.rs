use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::image::pull::{default_cache_dir, PullOptions};
use crate::image::Source;
use crate::upgrade::upgrade_disk;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// OS image to upgrade to: registry reference, oci-layout:DIR[:tag], oci-archive:FILE[:tag] or dir:PATH
    #[arg(long)]
    pub image: String,
    /// Installed disk image to upgrade from the host (upgrading a running node from inside
    /// is not available yet)
    #[arg(long)]
    pub disk: PathBuf,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: UpgradeArgs) -> anyhow::Result<()> {
    let source: Source = a.image.parse()?;
    let mut pull = PullOptions::new(default_cache_dir());
    pull.registry.insecure = a.insecure_registry;
    let r = upgrade_disk(&source, &a.disk, &pull)
        .with_context(|| format!("failed to upgrade {} to {source}", a.disk.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let how = if r.rotated {
            "active rotated to passive"
        } else {
            "failed active replaced, passive kept"
        };
        println!("upgraded {} to {} from the {} slot ({how}); passive holds {}; the new slot gets {} boot attempts", r.disk.display(), r.version, r.from_slot, r.passive_version.as_deref().unwrap_or("nothing"), r.tries);
    }
    Ok(())
}
