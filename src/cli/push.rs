use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::image::layout::Layout;
use crate::image::registry::{push, RegistryOptions};
use crate::image::Source;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Image to push: oci-layout:DIR[:tag]
    pub source: String,
    /// Destination reference: host[:port]/name:tag
    pub destination: String,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = super::registry_host)]
    pub insecure_registry: Vec<String>,
    /// Docker config with registry credentials
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

pub fn run(a: PushArgs) -> anyhow::Result<()> {
    let Source::Layout { dir, tag } = a.source.parse()? else {
        bail!("push reads from an OCI layout: give oci-layout:DIR[:tag]");
    };
    let Source::Registry(reference) = a.destination.parse()? else {
        bail!("push destination must be a registry reference (host:port/name:tag)");
    };
    let layout = Layout::open(&dir)?;
    let top = layout.find(tag.as_deref())?;
    let opts = RegistryOptions {
        insecure: a.insecure_registry,
        docker_config: a.docker_config,
        ..Default::default()
    };
    let digest = push(&layout, &top, &reference, &opts)
        .with_context(|| format!("failed to push to {}", reference.whole()))?;
    println!("pushed {} ({digest})", reference.whole());
    Ok(())
}
