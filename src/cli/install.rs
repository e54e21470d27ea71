use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::image::pull::{default_cache_dir, PullOptions};
use crate::image::Source;
use crate::install::{install, InstallOptions};

/// Parses `4G`, `512M`, `64K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size {s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T unit"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// OS image: registry reference, oci-layout:DIR[:tag], oci-archive:FILE[:tag] or dir:PATH
    #[arg(long)]
    pub image: String,
    /// Disk image file to create (or a block device to write)
    #[arg(long)]
    pub disk: PathBuf,
    /// Size of a new disk image, e.g. 4G [default: just enough, plus 256M persistent]
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Boot attempts a newly written slot gets before GRUB falls back
    #[arg(long, default_value_t = crate::boot::assessment::TRIES_DEFAULT,
          value_parser = clap::value_parser!(u8).range(1..=crate::boot::assessment::TRIES_MAX as i64))]
    pub tries: u8,
    /// Replace an existing disk image file
    #[arg(long)]
    pub force: bool,
    /// Registry (host:port) to reach over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = super::registry_host)]
    pub insecure_registry: Vec<String>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InstallArgs) -> anyhow::Result<()> {
    let source: Source = a.image.parse()?;
    let mut pull = PullOptions::new(default_cache_dir());
    pull.registry.insecure = a.insecure_registry;
    let mut opts = InstallOptions::new(a.disk.clone(), pull);
    opts.size_bytes = a.size;
    opts.tries = a.tries;
    opts.force = a.force;
    let r = install(&source, &opts)
        .with_context(|| format!("failed to install {source} onto {}", a.disk.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "installed {} (version {}) onto {} ({} bytes) in {} ms",
            source,
            r.version,
            r.disk.display(),
            r.size_bytes,
            r.elapsed_ms
        );
        for p in &r.partitions {
            println!(
                "  {:<15} at {:>12}  {:>12} bytes",
                p.name, p.offset_bytes, p.size_bytes
            );
        }
        println!(
            "  slots: active and passive hold {} ({} bytes each); a new slot gets {} boot attempts",
            r.version, r.slot_bytes, r.tries
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
