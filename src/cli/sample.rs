use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::image::layout::Layout;
use crate::image::sample::{debian_like, write_image, TreeScale};
use crate::image::spec::{Compression, Platform};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scale {
    /// About 5 MB
    Demo,
    /// About 230 MB in ~18k entries
    Bench,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Compress {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// OCI layout directory to write into (created if missing)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "demo")]
    pub scale: Scale,
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: Compress,
    #[arg(long, default_value = "latest")]
    pub tag: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    let scale = match a.scale {
        Scale::Demo => TreeScale::DEMO,
        Scale::Bench => TreeScale::BENCH,
    };
    let c = match a.compression {
        Compress::Gzip => Compression::Gzip,
        Compress::Zstd => Compression::Zstd,
        Compress::None => Compression::None,
    };
    let layout = Layout::create(&a.out)
        .with_context(|| format!("failed to create OCI layout {}", a.out.display()))?;
    let layers = debian_like(scale, a.seed, c);
    let bytes: usize = layers.iter().map(|(t, _)| t.len()).sum();
    let desc = write_image(&layout, &layers, &Platform::linux_amd64(), BTreeMap::new())?;
    layout.set_tag(desc.clone(), &a.tag)?;
    println!(
        "wrote oci-layout:{}:{} ({} layers, {} bytes uncompressed, manifest {})",
        a.out.display(),
        a.tag,
        layers.len(),
        bytes,
        desc.digest
    );
    Ok(())
}
