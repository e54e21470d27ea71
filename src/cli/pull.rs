use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::image::apply::Limits;
use crate::image::pull::{pull, PullReport};
use crate::image::Source;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull: host[:port]/name[:tag][@sha256:...], oci-layout:DIR[:tag], oci-archive:FILE[:tag] or dir:PATH
    pub source: String,
    /// Directory to unpack into (must not exist, or be empty, unless --force)
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub fetch: super::FetchArgs,
    /// Replace a non-empty destination (atomically, once the new tree is complete)
    #[arg(long)]
    pub force: bool,
    /// Largest total decompressed size accepted
    #[arg(long, default_value_t = Limits::default().unpacked_bytes_max)]
    pub max_unpacked_bytes: u64,
    /// Most tar entries accepted across all layers
    #[arg(long, default_value_t = Limits::default().entries_max)]
    pub max_entries: u64,
    /// Also recompute each layer blob's digest while unpacking (diff_ids are always verified;
    /// registry downloads always verify blob digests)
    #[arg(long)]
    pub verify_blobs: bool,
    /// Print a JSON report on stdout instead of a summary
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PullArgs) -> anyhow::Result<()> {
    let source: Source = a.source.parse()?;
    let mut opts = a.fetch.pull_options();
    opts.force = a.force;
    opts.verify_blobs = a.verify_blobs;
    opts.limits.unpacked_bytes_max = a.max_unpacked_bytes;
    opts.limits.entries_max = a.max_entries;
    opts.progress = super::show_progress(a.json);
    let report =
        pull(&source, &a.out, &opts).with_context(|| format!("failed to pull {source}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

pub fn print_summary(r: &PullReport) {
    let s = &r.unpack.stats;
    println!("pulled {} -> {}", r.source, r.destination.display());
    if let Some(img) = &r.image {
        println!("  manifest  {}  ({})", img.manifest_digest, img.platform);
        println!("  config    {}", img.config_digest);
    }
    for (i, l) in r.unpack.layers.iter().enumerate() {
        let d = l.digest.map(|d| d.short()).unwrap_or_else(|| "-".into());
        let checks = if l.blob_digest_verified {
            "blob digest and diff_id verified"
        } else {
            "diff_id verified"
        };
        println!(
            "  layer {i}   {d}  {:?}  {} -> {} bytes, {checks}",
            l.compression, l.compressed_bytes, l.uncompressed_bytes
        );
    }
    println!(
        "  {} entries: {} files ({} bytes), {} dirs, {} symlinks, {} hardlinks, {} special, {} whiteouts ({} opaque)",
        s.entries, s.files, s.file_bytes, s.dirs, s.symlinks, s.hardlinks, s.special_files, s.whiteouts, s.opaque_dirs
    );
    let mb = r
        .unpack
        .layers
        .iter()
        .map(|l| l.uncompressed_bytes)
        .sum::<u64>() as f64
        / 1e6;
    let secs = r.unpack.elapsed_ms.max(1) as f64 / 1e3;
    println!(
        "  fetched in {} ms, unpacked in {} ms ({:.0} MB/s)",
        r.fetch_ms,
        r.unpack.elapsed_ms,
        mb / secs
    );
    for w in &r.unpack.warnings {
        println!("  warning: {w}");
    }
}
