use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::image::layout::Layout;
use crate::image::pull::{pull, PullOptions};
use crate::image::registry::{push, RegistryOptions};
use crate::image::sample::{debian_like, write_image, TreeScale};
use crate::image::slot::{build_slot, SlotOptions};
use crate::image::spec::{Compression, Platform};
use crate::image::Source;
use crate::localreg::LocalRegistry;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for the sample layout, blob cache, root filesystem and slot image
    #[arg(long, default_value = "bootyard-demo")]
    pub workdir: PathBuf,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let w = &a.workdir;
    std::fs::create_dir_all(w).with_context(|| format!("failed to create {}", w.display()))?;
    let layout_dir = w.join("sample-oci");
    let cache_dir = w.join("cache");
    for d in [&layout_dir, &cache_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)
                .with_context(|| format!("failed to clear {}", d.display()))?;
        }
    }

    println!(
        "1/4 building the sample OS image (Debian-like tree, 3 layers) in {}",
        layout_dir.display()
    );
    let layout = Layout::create(&layout_dir)?;
    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.title".to_string(),
        "bootyard sample OS".to_string(),
    );
    let desc = write_image(
        &layout,
        &debian_like(TreeScale::DEMO, 1, Compression::Gzip),
        &Platform::linux_amd64(),
        labels,
    )?;
    layout.set_tag(desc.clone(), "v1")?;

    let registry = LocalRegistry::start(None).context("failed to start the local registry")?;
    let reference = format!("{}/bootyard/sample:v1", registry.host());
    println!(
        "2/4 serving it from docker-registry on {} as {reference}",
        registry.host()
    );
    let Source::Registry(r) = reference.parse()? else {
        unreachable!("a registry reference")
    };
    let ropts = RegistryOptions {
        insecure: vec![registry.host()],
        ..Default::default()
    };
    push(&layout, &desc, &r, &ropts).context("failed to push the sample image")?;

    let rootfs = w.join("rootfs");
    println!("3/4 pulling and unpacking it into {}", rootfs.display());
    let mut opts = PullOptions::new(cache_dir);
    opts.registry = ropts;
    opts.force = true;
    opts.progress = super::show_progress(false);
    let report = pull(&reference.parse()?, &rootfs, &opts)
        .with_context(|| format!("failed to pull {reference}"))?;
    super::pull::print_summary(&report);

    let slot = w.join("active.img");
    println!("4/4 building slot image {}", slot.display());
    let s = build_slot(&rootfs, &slot, &SlotOptions::default())?;
    println!(
        "  {} bytes, label {}, {} inodes",
        s.size_bytes, s.label, s.inodes
    );
    let os_release = std::fs::read_to_string(rootfs.join("etc/os-release"))
        .context("unpacked tree has no /etc/os-release")?;
    println!(
        "demo ok: /etc/os-release says {}",
        os_release
            .lines()
            .find(|l| l.starts_with("VERSION_ID"))
            .unwrap_or("?")
    );
    Ok(())
}
