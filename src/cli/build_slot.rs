use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::image::slot::{build_slot, SlotOptions};

#[derive(Debug, Args)]
pub struct BuildSlotArgs {
    /// Root filesystem directory
    pub rootfs: PathBuf,
    /// Image file to write (replaced atomically)
    #[arg(long)]
    pub out: PathBuf,
    /// Filesystem label
    #[arg(long, default_value = "COS_ACTIVE")]
    pub label: String,
    /// Exact image size in bytes [default: content + 20% + 64 MiB]
    #[arg(long)]
    pub size: Option<u64>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BuildSlotArgs) -> anyhow::Result<()> {
    let opts = SlotOptions {
        label: a.label,
        size_bytes: a.size,
        ..Default::default()
    };
    let r = build_slot(&a.rootfs, &a.out, &opts)
        .with_context(|| format!("failed to build slot image {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "built {} ({} bytes, label {}, {} inodes, {} bytes of content)",
            r.image.display(),
            r.size_bytes,
            r.label,
            r.inodes,
            r.content_bytes
        );
    }
    Ok(())
}
