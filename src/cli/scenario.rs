use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use bootyard_scenarios::ScenarioFile;

use crate::scenario::{default_workdir, run, RunOptions};
use crate::testimage::Flavor;

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run a scenario file: build its test images, install, boot, upgrade, roll back in QEMU
    Run(ScenarioRunArgs),
}

#[derive(Debug, Args)]
pub struct ScenarioRunArgs {
    /// Scenario file (scenarios/*.toml)
    pub file: PathBuf,
    /// Run only this flavor [default: every flavor the file lists]
    #[arg(long, value_enum)]
    pub flavor: Option<Flavor>,
    /// Directory for images, disks, console logs [default: target/scenarios/NAME-FLAVOR]
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Statically linked bootyard for the test images [default: $BOOTYARD_GUEST_AGENT, else this binary]
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Cache for Debian packages [default: ~/.cache/bootyard/deb]
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub accel: super::AccelArgs,
    /// Print the reports as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run_cmd(cmd: ScenarioCommand) -> anyhow::Result<()> {
    let ScenarioCommand::Run(a) = cmd;
    let file = ScenarioFile::load(&a.file)?;
    if file.steps.is_empty() {
        bail!("{} has no [[step]]s to run", a.file.display());
    }
    let flavors: Vec<Flavor> = match a.flavor {
        Some(f) => vec![f],
        None => file
            .flavors
            .iter()
            .map(|f| Flavor::from_str(f, true).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
    };
    let agent = match a
        .agent
        .or_else(|| std::env::var_os("BOOTYARD_GUEST_AGENT").map(PathBuf::from))
    {
        Some(p) => p,
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let cache = a
        .cache
        .unwrap_or_else(crate::cli::build_test_image::default_cache);
    // One probe for every flavor: they boot the same kernel.
    let probe_dir = a
        .workdir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/scenarios"))
        .join("accel-probe");
    let mut accel = a.accel.choose(
        || Ok(crate::debpkg::cloud_kernel(&cache)?.vmlinuz),
        &probe_dir,
    );
    if !a.json {
        eprintln!(
            "accelerator: {} ({})",
            crate::accel::accel_name(accel.accel),
            accel.reason
        );
    }
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for flavor in flavors {
        let workdir = a
            .workdir
            .clone()
            .map(|w| w.join(format!("{flavor:?}").to_lowercase()))
            .unwrap_or_else(|| default_workdir(&file.name, flavor));
        if workdir.exists() {
            std::fs::remove_dir_all(&workdir)
                .with_context(|| format!("cannot clear {}", workdir.display()))?;
        }
        std::fs::create_dir_all(&workdir)?;
        let opts = RunOptions {
            flavor,
            workdir: workdir.clone(),
            agent: agent.clone(),
            cache: cache.clone(),
            accel: accel.clone(),
            qemu: a.accel.qemu.clone(),
        };
        let r = run(&file, &opts)?;
        if !a.json {
            if let Some(f) = &r.accel.fallback {
                eprintln!("accelerator: now tcg: {f}");
            }
        }
        // What KVM did to one flavor's boots it would do to the next one's.
        if let Some(f) = &r.accel.fallback {
            accel = crate::accel::AccelChoice {
                accel: bootyard_scenarios::qemu::Accel::Tcg,
                mode: crate::accel::AccelMode::Auto,
                reason: format!("an earlier flavor's run fell back: {f}"),
            };
        }
        if !a.json {
            for b in &r.boots {
                let complete = b
                    .phases
                    .iter()
                    .find(|p| p.name == "boot-complete")
                    .map(|p| format!(", boot-complete at {} ms", p.at_ms))
                    .unwrap_or_default();
                eprintln!(
                    "boot {:>2} {:<20} {}:{} -> {} in {} ms{complete}",
                    b.n,
                    b.purpose,
                    b.slot.as_deref().unwrap_or("?"),
                    b.version.as_deref().unwrap_or("?"),
                    b.outcome
                        .and_then(|o| serde_json::to_value(o).ok())
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_else(|| "no outcome".into()),
                    b.ms
                );
            }
            println!(
                "{} {} [{flavor:?}] in {:.1} s (images {:.1} s){}",
                if r.passed { "PASS" } else { "FAIL" },
                r.scenario,
                r.ms as f64 / 1000.0,
                r.build_ms as f64 / 1000.0,
                r.failure
                    .as_deref()
                    .map(|f| format!(": {f}"))
                    .unwrap_or_default()
            );
        }
        if !r.passed {
            failed.push(format!("{flavor:?}"));
        }
        reports.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if !failed.is_empty() {
        bail!("scenario {} failed on {}", file.name, failed.join(", "));
    }
    Ok(())
}
