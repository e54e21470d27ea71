use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::agent::config::AgentConfig;
use crate::agent::health::{self, CheckResult};
use crate::agent::stage::parse_slot;
use crate::agent::sys::{self, console_line};
use crate::boot::assessment::Slot;

#[derive(Debug, Args)]
pub struct BootAssessArgs {
    /// Where COS_STATE is mounted
    #[arg(long, default_value = crate::agent::stage::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Root of the running system (its agent.toml and the stage's boot record)
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Do not reboot when a check fails, whatever agent.toml says
    #[arg(long)]
    pub no_reboot: bool,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    schema_version: u32,
    slot: Slot,
    version: String,
    passed: bool,
    checks: Vec<CheckResult>,
    uptime_ms: Option<u64>,
}

/// The slot this node runs from: the stage's boot record, else bootyard.slot= on the
/// kernel command line.
pub fn running_slot(root: &std::path::Path) -> anyhow::Result<Slot> {
    if let Ok(rec) = health::check_userspace(root, None) {
        return Ok(rec.slot);
    }
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("bootyard.slot="))
                .and_then(parse_slot)
        })
        .context("cannot tell which slot this node runs from: no boot record at /run/bootyard/boot.json and no bootyard.slot= on the kernel command line (not booted by bootyard?)")
}

fn uptime_ms() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Runs the health checks; all pass -> the running slot is marked good and the watchdog
/// stopped; one fails -> the boot is reported failed and (by default) the node reboots, so
/// the tries counter moves on now rather than at the watchdog's deadline.
pub fn run(a: BootAssessArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&a.root)?;
    let cmdline_slot = std::fs::read_to_string("/proc/cmdline").ok().and_then(|c| {
        c.split_whitespace()
            .find_map(|w| w.strip_prefix("bootyard.slot="))
            .and_then(parse_slot)
    });
    let mut checks = Vec::new();
    let mut record = None;
    checks.push(health::timed("userspace", || {
        let r = health::check_userspace(&a.root, cmdline_slot)?;
        let detail = format!("booted {} ({}) through the stage", r.slot, r.version);
        record = Some(r);
        Ok(detail)
    }));
    let slot = record
        .as_ref()
        .map(|r| r.slot)
        .or(cmdline_slot)
        .context("cannot tell which slot is running: no boot record and no bootyard.slot=")?;
    let version = record
        .as_ref()
        .map(|r| r.version.clone())
        .unwrap_or_else(|| "?".into());
    checks.push(health::timed("agent", || {
        health::check_agent(&a.state_dir, slot)
    }));
    for c in &config.health.checks {
        checks.push(health::timed(&c.name, || health::run_command_check(c)));
    }
    let passed = checks.iter().all(|c| c.passed);
    let report = Report {
        schema_version: 1,
        slot,
        version: version.clone(),
        passed,
        checks,
        uptime_ms: uptime_ms(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !passed {
        let failed = report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ");
        console_line(&format!(
            "BOOTYARD-HEALTH-FAILED slot={slot} version={version} {failed}"
        ));
        if config.health.reboot_on_failure && !a.no_reboot {
            console_line("bootyard: rebooting; the tries counter decides what boots next");
            let e = sys::reboot_now();
            bail!("health checks failed ({failed}) and the reboot failed: {e}");
        }
        bail!("health checks failed: {failed}");
    }
    let (model, before) = health::mark_good(
        &a.state_dir,
        slot,
        record.as_ref().map(|r| r.version.as_str()),
    )?;
    if record.as_ref().is_some_and(|r| r.watchdog_sec > 0) {
        sys::watchdog_disarm().context("marked good, but the watchdog could not be stopped")?;
    }
    console_line(&format!(
        "BOOTYARD-BOOT-COMPLETE slot={slot} version={} was={before:?} uptime_ms={}",
        model.slot(slot).version.as_deref().unwrap_or("?"),
        report.uptime_ms.unwrap_or(0)
    ));
    Ok(())
}
