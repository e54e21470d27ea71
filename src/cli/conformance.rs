use std::path::PathBuf;

use bootyard_conformance::{Console, JsonLines, Junit, Outcome, Profile, Reporter, Tap};
use clap::Args;

use crate::conformance::run::{
    load_denylist, run, today, BootSettings, ReportUnwritable, RunOptions,
};
use crate::image::Source;

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Image to judge: host[:port]/name[:tag][@sha256:...], oci-layout:DIR[:tag], oci-archive:FILE[:tag] or dir:PATH
    pub image: String,
    /// Profile to run (image, container, boot, upgrade, mesh, k3s); repeatable [default: image]
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<Profile>,
    /// Run only this check (an ID such as IMG-004); repeatable
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
    /// Leave this check out (an ID); repeatable
    #[arg(long, value_name = "ID")]
    pub skip: Vec<String>,
    /// TOML file of [[deny]] entries (id, reason, tracker link, expires = YYYY-MM-DD): their
    /// failures are reported as warnings until the date
    #[arg(long, value_name = "FILE")]
    pub denylist: Option<PathBuf>,
    /// Write junit.xml, results.jsonl and results.tap here (created if missing), and the
    /// console logs of failed boots under console/
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// The upgrade profile upgrades to this second build of the image (any source the
    /// image argument takes) [default: the image again, with "+conformance" added to its
    /// version]
    #[arg(long, value_name = "IMAGE")]
    pub upgrade_to: Option<String>,
    /// Seconds one boot may take, QEMU's start to boot-complete
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub boot_timeout: u64,
    /// Guest memory for the boot and upgrade profiles
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub memory_mib: u32,
    /// Firmware the boot and upgrade profiles boot with: SeaBIOS, or OVMF (UEFI)
    #[arg(long, value_enum, default_value_t = FirmwareArg::Bios)]
    pub firmware: FirmwareArg,
    #[command(flatten)]
    pub accel: super::AccelArgs,
    #[command(flatten)]
    pub fetch: super::FetchArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Efi,
}

/// A run that reached its verdict, when the verdict is not a pass: the exit status says
/// which (see `conformance/SPEC.md`); the report has already said why.
#[derive(Debug, thiserror::Error)]
#[error("conformance: {}", match .0 {
    Outcome::Passed => "passed",
    Outcome::Failed => "a MUST check failed",
    Outcome::Errored => "a check could not reach a verdict",
    Outcome::Incomplete => "a MUST check was skipped, so the image was not fully judged",
})]
pub struct NotPassed(pub Outcome);

pub fn run_cmd(a: ConformanceArgs) -> anyhow::Result<()> {
    let source: Source = a.image.parse()?;
    let pull = a.fetch.pull_options();
    let opts = RunOptions {
        profiles: if a.profiles.is_empty() {
            vec![Profile::Image]
        } else {
            a.profiles.clone()
        },
        only: a.only.clone(),
        skip: a.skip.clone(),
        denylist: match &a.denylist {
            Some(p) => load_denylist(p, today())?,
            None => Vec::new(),
        },
        today: today(),
        pull,
        boot: BootSettings {
            upgrade_to: a.upgrade_to.as_deref().map(str::parse).transpose()?,
            boot_timeout: std::time::Duration::from_secs(a.boot_timeout),
            memory_mib: a.memory_mib,
            firmware: match a.firmware {
                FirmwareArg::Bios => bootyard_scenarios::file::Firmware::Bios,
                FirmwareArg::Efi => bootyard_scenarios::file::Firmware::Efi,
            },
            artifacts: a.report_dir.clone(),
            accel: a.accel.clone(),
        },
    };
    let mut console = Console::new(std::io::stdout().lock());
    let results = match &a.report_dir {
        None => run(&source, &opts, &mut [&mut console])?,
        Some(dir) => {
            // Before any check runs: a gate must not wait minutes to learn its report
            // directory is unusable.
            std::fs::create_dir_all(dir).map_err(|source| ReportUnwritable {
                what: format!("the report directory {}", dir.display()),
                source,
            })?;
            let create = |name: &str| {
                let p = dir.join(name);
                std::fs::File::create(&p)
                    .map(std::io::BufWriter::new)
                    .map_err(|source| ReportUnwritable {
                        what: p.display().to_string(),
                        source,
                    })
            };
            let mut junit = Junit::new(create("junit.xml")?);
            let mut jsonl = JsonLines::new(create("results.jsonl")?);
            let mut tap = Tap::new(create("results.tap")?);
            let reporters: &mut [&mut dyn Reporter] =
                &mut [&mut console, &mut junit, &mut jsonl, &mut tap];
            run(&source, &opts, reporters)?
        }
    };
    match Outcome::of(&results) {
        Outcome::Passed => Ok(()),
        o => Err(NotPassed(o).into()),
    }
}
