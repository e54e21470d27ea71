use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::agent::stage::{PERSISTENT_DIR, STATE_DIR};
use crate::agent::sys::console_line;
use crate::image::pull::{default_cache_dir, PullOptions};
use crate::image::Source;
use crate::upgrade::{run_steps, upgrade_disk, DiskUpgrade};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// OS image to upgrade to: registry reference, oci-layout:DIR[:tag], oci-archive:FILE[:tag] or dir:PATH
    #[arg(long)]
    pub image: String,
    /// Installed disk image to upgrade from the host; without it, upgrade this node
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// On a node: where COS_STATE is mounted
    #[arg(long, default_value = STATE_DIR)]
    pub state_dir: PathBuf,
    /// On a node: where to fetch and unpack the image [default: COS_PERSISTENT]
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = super::registry_host)]
    pub insecure_registry: Vec<String>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: UpgradeArgs) -> anyhow::Result<()> {
    let source: Source = a.image.parse()?;
    let r = match &a.disk {
        Some(disk) => {
            let mut pull = PullOptions::new(default_cache_dir());
            pull.registry.insecure = a.insecure_registry;
            upgrade_disk(&source, disk, &pull)
                .with_context(|| format!("failed to upgrade {} to {source}", disk.display()))?
        }
        None => {
            let slot = crate::cli::boot_assess::running_slot(std::path::Path::new("/"))?;
            let work = a
                .work_dir
                .unwrap_or_else(|| PathBuf::from(PERSISTENT_DIR).join(".bootyard"));
            // Slot images do not fit in memory: never unpack onto /run's tmpfs (which is
            // where the default lands when COS_PERSISTENT is not mounted).
            std::fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            if crate::agent::sys::on_tmpfs(&work) {
                anyhow::bail!(
                    "{} is in memory (tmpfs): COS_PERSISTENT is not mounted; give --work-dir on a disk",
                    work.display()
                );
            }
            // Blobs are only needed for this upgrade: the cache lives and dies with it.
            let cache = work.join("cache");
            let mut pull = PullOptions::new(cache.clone());
            pull.registry.insecure = a.insecure_registry;
            console_line(&format!("bootyard-upgrade: step fetch {source}"));
            let result = DiskUpgrade::prepare_mounted(&source, &a.state_dir, slot, &work, &pull)
                .and_then(|u| {
                    run_steps(u, |i, n, step| {
                        console_line(&format!(
                            "bootyard-upgrade: step {i}/{n} {}",
                            serde_json::to_value(step)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default()
                        ))
                    })
                });
            let _ = std::fs::remove_dir_all(&cache);
            result.with_context(|| format!("failed to upgrade this node ({slot}) to {source}"))?
        }
    };
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
