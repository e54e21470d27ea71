use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::image::layout::Layout;
use crate::image::registry::{push, RegistryOptions};
use crate::image::Source;
use crate::testimage::{build_rootfs, write_oci, Breakage, Flavor, TestImageSpec};

#[derive(Debug, Args)]
pub struct BuildTestImageArgs {
    /// Which OS
    #[arg(long, value_enum, default_value = "busybox")]
    pub flavor: Flavor,
    /// The version the image calls itself (kairos-release VERSION)
    #[arg(long = "os-version", value_name = "VERSION")]
    pub os_version: String,
    /// Make a deliberately bad image
    #[arg(long = "break", value_enum)]
    pub breakage: Option<Breakage>,
    /// Seconds an unproven boot may run before the watchdog resets the node
    #[arg(long, default_value_t = 120)]
    pub watchdog_sec: u32,
    /// Statically linked bootyard to put in the image [default: this binary, if static]
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Cache for Debian packages [default: ~/.cache/bootyard/deb]
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Write into this OCI layout (created if missing), tagged with the version
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    /// Also push to this registry reference (host:port/name:tag)
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = super::registry_host)]
    pub insecure_registry: Vec<String>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    schema_version: u32,
    flavor: Flavor,
    version: String,
    breakage: Option<Breakage>,
    layout: String,
    tag: String,
    digest: String,
    pushed: Option<String>,
}

pub fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("bootyard/deb")
}

pub fn run(a: BuildTestImageArgs) -> anyhow::Result<()> {
    if a.oci_layout.is_none() && a.push.is_none() {
        bail!("say where the image goes: --oci-layout DIR and/or --push REF");
    }
    let agent = match a.agent {
        Some(p) => p,
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let spec = TestImageSpec {
        flavor: a.flavor,
        version: a.os_version.clone(),
        breakage: a.breakage,
        watchdog_sec: a.watchdog_sec,
        agent,
        cache: a.cache.unwrap_or_else(default_cache),
    };
    let work = tempfile::Builder::new()
        .prefix(".bootyard-test-image-")
        .tempdir()
        .context("cannot create a work directory")?;
    let root = work.path().join("rootfs");
    build_rootfs(&spec, &root)?;
    let layout_dir = a
        .oci_layout
        .clone()
        .unwrap_or_else(|| work.path().join("layout"));
    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.version".into(),
        a.os_version.clone(),
    );
    labels.insert(
        "dev.bootyard.test-image.flavor".into(),
        format!("{:?}", a.flavor).to_lowercase(),
    );
    if let Some(b) = a.breakage {
        labels.insert("dev.bootyard.test-image.breakage".into(), format!("{b:?}"));
    }
    let tag = a.os_version.clone();
    let digest = write_oci(&root, &layout_dir, &tag, labels)?;
    let mut pushed = None;
    if let Some(dest) = &a.push {
        let Source::Registry(reference) = dest.parse()? else {
            bail!("--push wants a registry reference (host:port/name:tag)");
        };
        let layout = Layout::open(&layout_dir)?;
        let top = layout.find(Some(&tag))?;
        let opts = RegistryOptions {
            insecure: a.insecure_registry.clone(),
            ..Default::default()
        };
        push(&layout, &top, &reference, &opts)
            .with_context(|| format!("failed to push to {}", reference.whole()))?;
        pushed = Some(reference.whole());
    }
    let report = Report {
        schema_version: 1,
        flavor: a.flavor,
        version: a.os_version,
        breakage: a.breakage,
        layout: layout_dir.display().to_string(),
        tag,
        digest: digest.to_string(),
        pushed,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "built {:?} test image {} ({}){}",
            report.flavor,
            report.version,
            report.digest,
            report
                .pushed
                .as_deref()
                .map(|p| format!(", pushed to {p}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
