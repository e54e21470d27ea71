//! A conformance run: pick the checks (profiles, `--only`, `--skip`, a denylist), get the
//! image, run the checks, and stream one event per check to every reporter.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bootyard_conformance::{
    catalogue, CheckDef, CheckResult, Event, Level, Profile, Reporter, RunInfo, Summary, Verdict,
    CATALOGUE_VERSION,
};
use serde::Deserialize;

use super::boot_checks;
use super::container;
use super::error_chain as chain;
use super::image_checks::{self, Platform};
use crate::image::layout::Layout;
use crate::image::pull::{extract_archive, pull, PullError, PullOptions};
use crate::image::source::ResolvedImage;
use crate::image::Source;

/// A mistake in what the run was asked to do: nothing was checked.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not a check in catalogue {CATALOGUE_VERSION} (see conformance/SPEC.md)")]
    UnknownCheck(String),
    #[error("no check selected: the profiles {profiles} with --only/--skip leave nothing to run")]
    NothingSelected { profiles: String },
    #[error("the profiles {profiles} have no checks in catalogue {CATALOGUE_VERSION} yet")]
    EmptyProfiles { profiles: String },
    #[error("cannot read the denylist {path}")]
    DenylistRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("denylist {path} is malformed: {reason}")]
    Denylist { path: PathBuf, reason: String },
}

/// A report (the terminal, or a file in --report-dir) could not be written: the run's
/// verdict cannot reach the gate, which is no verdict on the image. Its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {what}")]
pub struct ReportUnwritable {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// A denylisted check: its failures are reported as warnings until `expires`. Each entry
/// names the tracker issue that explains it, so nothing stays denied without a reason.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyEntry {
    pub id: String,
    pub reason: String,
    /// An http(s) link to the issue tracking the fix.
    pub tracker: String,
    /// The last day (YYYY-MM-DD, UTC) the entry applies: a TOML string or a TOML date.
    #[serde(deserialize_with = "date_text")]
    pub expires: String,
}

/// The longest a denylist entry may run: a waiver that never expires is a permanent
/// exemption, which a conformance gate must not offer.
pub const DENY_DAYS_MAX: i64 = 366;

/// A date given as a TOML string (`"2027-01-31"`) or a bare TOML date (`2027-01-31`), as
/// the YYYY-MM-DD text `load_denylist` checks.
fn date_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Date(toml::value::Datetime),
    }
    // untagged here reads a user's config in the two spellings TOML has for a date; it is
    // not a wire or report format.
    match Given::deserialize(d)? {
        Given::Text(s) => Ok(s),
        Given::Date(dt) => match (dt.date, dt.time, dt.offset) {
            (Some(date), None, None) => Ok(date.to_string()),
            _ => Err(serde::de::Error::custom(format!(
                "expires = {dt}: give a date alone (YYYY-MM-DD), without a time"
            ))),
        },
    }
}

/// An http(s) link with a host and no spaces: `https://tracker.example/issue/42`.
fn tracker_link_ok(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    !host.is_empty() && crate::image::source::check_registry_host(host).is_ok()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyFile {
    #[serde(default)]
    deny: Vec<DenyEntry>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since the epoch as `YYYY-MM-DD` (the inverse of [`parse_date`]).
pub fn date_of(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` as days since the epoch, if it is a real date.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d == 0 || d > days_in[m as usize - 1] {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Today, in days since the epoch (UTC).
pub fn today() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

/// Reads and validates a denylist file (TOML, `[[deny]]` tables).
pub fn load_denylist(path: &Path, today: i64) -> Result<Vec<DenyEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::DenylistRead {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ConfigError::Denylist {
        path: path.to_path_buf(),
        reason,
    };
    let file: DenyFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for e in &file.deny {
        if catalogue::find(&e.id).is_none() {
            return Err(bad(format!("{} is not a check in the catalogue", e.id)));
        }
        if !tracker_link_ok(&e.tracker) {
            return Err(bad(format!(
                "{}: tracker must be an http(s) link to the issue, not {:?}",
                e.id, e.tracker
            )));
        }
        let Some(expires) = parse_date(&e.expires) else {
            return Err(bad(format!(
                "{}: expires must be a date as YYYY-MM-DD, not {:?}",
                e.id, e.expires
            )));
        };
        if expires > today + DENY_DAYS_MAX {
            return Err(bad(format!(
                "{}: expires {} is more than {DENY_DAYS_MAX} days away: a denylist entry is a \
                 waiver until a fix, renewed while the fix is pending, not a permanent one",
                e.id, e.expires
            )));
        }
        if e.reason.trim().is_empty() {
            return Err(bad(format!("{}: reason is empty", e.id)));
        }
    }
    Ok(file.deny)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub profiles: Vec<Profile>,
    pub only: Vec<String>,
    pub skip: Vec<String>,
    pub denylist: Vec<DenyEntry>,
    /// Today, in days since the epoch: denylist entries past their date no longer apply.
    pub today: i64,
    pub pull: PullOptions,
    /// The boot and upgrade profiles' settings.
    pub boot: BootSettings,
}

#[derive(Debug, Clone)]
pub struct BootSettings {
    /// A second build to upgrade to; none: the image again, with a new version.
    pub upgrade_to: Option<Source>,
    /// How long one boot may take, QEMU's start to `boot-complete`.
    pub boot_timeout: std::time::Duration,
    pub memory_mib: u32,
    pub firmware: bootyard_scenarios::file::Firmware,
    /// Where console logs of failed boots are kept (the report directory).
    pub artifacts: Option<PathBuf>,
    /// The accelerator (auto, kvm, tcg) and the QEMU binary.
    pub accel: crate::cli::AccelArgs,
}

impl Default for BootSettings {
    fn default() -> Self {
        Self {
            upgrade_to: None,
            boot_timeout: std::time::Duration::from_secs(300),
            memory_mib: 1024,
            firmware: bootyard_scenarios::file::Firmware::Bios,
            artifacts: None,
            accel: crate::cli::AccelArgs {
                accel: crate::cli::AccelArg::Auto,
                qemu: QEMU.into(),
            },
        }
    }
}

/// The checks a run will do, in catalogue order.
pub fn select(opts: &RunOptions) -> Result<Vec<&'static CheckDef>, ConfigError> {
    for id in opts.only.iter().chain(&opts.skip) {
        if catalogue::find(id).is_none() {
            return Err(ConfigError::UnknownCheck(id.clone()));
        }
    }
    let picked: Vec<&'static CheckDef> = catalogue::of_profiles(&opts.profiles)
        .filter(|c| opts.only.is_empty() || opts.only.iter().any(|o| o == c.id))
        .filter(|c| !opts.skip.iter().any(|s| s == c.id))
        .collect();
    if picked.is_empty() {
        let profiles = profile_names(&opts.profiles);
        return Err(if opts.only.is_empty() && opts.skip.is_empty() {
            ConfigError::EmptyProfiles { profiles }
        } else {
            ConfigError::NothingSelected { profiles }
        });
    }
    Ok(picked)
}

fn profile_names(p: &[Profile]) -> String {
    p.iter().map(|p| p.name()).collect::<Vec<_>>().join(",")
}

/// What a level makes of a failure, and what a live denylist entry makes of it.
fn weigh(def: &CheckDef, v: Verdict, deny: Option<&DenyEntry>) -> Verdict {
    match v {
        Verdict::Fail { reason } => {
            if let Some(d) = deny {
                Verdict::Warn {
                    reason: format!(
                        "denylisted until {} ({}: {}); the check failed: {reason}",
                        d.expires, d.tracker, d.reason
                    ),
                }
            } else if def.level == Level::Must {
                Verdict::Fail { reason }
            } else {
                Verdict::Warn { reason }
            }
        }
        v => v,
    }
}

/// Streams results to the reporters as checks finish, and keeps them.
struct Progress<'a, 'b, 'o> {
    reporters: &'a mut [&'b mut dyn Reporter],
    opts: &'o RunOptions,
    results: Vec<CheckResult>,
    summary: Summary,
}

impl Progress<'_, '_, '_> {
    fn emit(&mut self, e: &Event) -> anyhow::Result<()> {
        for r in self.reporters.iter_mut() {
            r.event(e).map_err(|source| ReportUnwritable {
                what: "a report".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Every check of `group` gets the same verdict (the profile could not run).
    fn finish_all(
        &mut self,
        group: &[&CheckDef],
        v: &Verdict,
        started: Instant,
    ) -> anyhow::Result<()> {
        for def in group {
            self.finish(def, v.clone(), started)?;
        }
        Ok(())
    }

    fn finish(&mut self, def: &CheckDef, verdict: Verdict, started: Instant) -> anyhow::Result<()> {
        let ms = started.elapsed().as_millis() as u64;
        self.finish_with(def, verdict, ms, Vec::new())
    }

    fn finish_with(
        &mut self,
        def: &CheckDef,
        verdict: Verdict,
        duration_ms: u64,
        attachments: Vec<String>,
    ) -> anyhow::Result<()> {
        let deny = self.opts.denylist.iter().find(|d| {
            d.id == def.id && parse_date(&d.expires).is_some_and(|e| e >= self.opts.today)
        });
        let result = CheckResult {
            id: def.check_id(),
            title: def.title.to_string(),
            level: def.level,
            verdict: weigh(def, verdict, deny),
            duration_ms,
            attachments,
        };
        self.summary.count(&result.verdict);
        self.emit(&Event::CheckFinished {
            result: result.clone(),
        })?;
        self.results.push(result);
        Ok(())
    }
}

fn verdict(r: Result<(), String>) -> Verdict {
    match r {
        Ok(()) => Verdict::Pass,
        Err(reason) => Verdict::Fail { reason },
    }
}

/// Runs the selected checks on `source` and streams the events to `reporters`; returns
/// every result (the outcome follows from them: [`Outcome::of`]).
pub fn run(
    source: &Source,
    opts: &RunOptions,
    reporters: &mut [&mut dyn Reporter],
) -> anyhow::Result<Vec<CheckResult>> {
    let started = Instant::now();
    let checks = select(opts)?;
    let mut p = Progress {
        reporters,
        opts,
        results: Vec::new(),
        summary: Summary::default(),
    };
    p.emit(&Event::RunStarted {
        schema_version: bootyard_conformance::event::SCHEMA_VERSION,
        run: RunInfo {
            catalogue_version: CATALOGUE_VERSION.to_string(),
            profile: profile_names(&opts.profiles),
            subject: source.to_string(),
        },
        planned: checks.len() as u32,
    })?;
    // The image is unpacked once, at the first check that reads it.
    let mut unpacked: Option<Result<Unpacked, NotGot>> = None;
    let get = |unpacked: &mut Option<Result<Unpacked, NotGot>>| {
        if unpacked.is_none() {
            *unpacked = Some(unpack(source, &opts.pull));
        }
    };
    // An image that is corrupt, malformed or hostile fails the checks that read it; one
    // that could not be fetched (or a local fault) leaves them without a verdict.
    let not_got = |e: &NotGot| {
        if e.image_fault {
            Verdict::Fail {
                reason: format!("the image cannot be read: {}", e.reason),
            }
        } else {
            Verdict::Error {
                reason: format!("could not get the image to check: {}", e.reason),
            }
        }
    };
    // Profiles are contiguous in catalogue order: each runs as a group, except that boot
    // and upgrade share one machine.
    let machine = |p: Profile| matches!(p, Profile::Boot | Profile::Upgrade);
    let mut rest: &[&'static CheckDef] = &checks;
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|c| {
                c.profile == first.profile || (machine(c.profile) && machine(first.profile))
            })
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        match first.profile {
            Profile::Image => {
                let t = Instant::now();
                get(&mut unpacked);
                let img = match unpacked.as_ref().expect("unpacked above") {
                    Ok(u) => Ok(image_checks::Image::read(&u.root, u.platform.clone())),
                    Err(e) => Err(not_got(e)),
                };
                // The first check's time includes unpacking and reading the image; the
                // others time only themselves.
                let mut t = t;
                for def in group {
                    let v = match &img {
                        Ok(img) => img.check(def.id),
                        Err(v) => v.clone(),
                    };
                    p.finish(def, v, t)?;
                    t = Instant::now();
                }
            }
            Profile::Container => {
                let t = Instant::now();
                let engine = match container::Engine::connect() {
                    Ok(e) => e,
                    Err(why) => {
                        let reason = format!("no Docker engine reachable: {why}");
                        p.finish_all(group, &Verdict::Skip { reason }, t)?;
                        continue;
                    }
                };
                get(&mut unpacked);
                let u = match unpacked.as_ref().expect("unpacked above") {
                    Ok(u) => u,
                    Err(e) => {
                        p.finish_all(group, &not_got(e), t)?;
                        continue;
                    }
                };
                let subject = match &u.layers {
                    Some((layout, image)) => container::Subject::Layers(layout, image),
                    None => container::Subject::Tree(
                        &u.root,
                        match std::env::consts::ARCH {
                            "aarch64" => "arm64",
                            _ => "amd64",
                        },
                    ),
                };
                let loaded = match engine.load(subject) {
                    Ok(l) => l,
                    Err(e) => {
                        let reason = format!("could not load the image into the engine: {e}");
                        p.finish_all(group, &Verdict::Error { reason }, t)?;
                        continue;
                    }
                };
                for def in group {
                    let t = Instant::now();
                    let checked = match def.id {
                        "CTR-001" => container::shell_runs(&engine, &loaded.tag),
                        "CTR-002" => container::agent_version(&engine, &loaded.tag),
                        "CTR-003" if u.layers.is_none() => {
                            let reason = "the subject is a directory: there are no layers of its own to read back".into();
                            p.finish(def, Verdict::Skip { reason }, t)?;
                            continue;
                        }
                        "CTR-003" => container::release_reads_back(&engine, &loaded.tag, &u.root),
                        other => Err(format!("{other} is not a container check this build knows")),
                    };
                    let v = match checked {
                        Ok(r) => verdict(r),
                        Err(reason) => Verdict::Error { reason },
                    };
                    p.finish(def, v, t)?;
                }
            }
            Profile::Boot | Profile::Upgrade => {
                let t = Instant::now();
                if let Err(why) = can_boot(opts.boot.firmware, &opts.boot.accel.qemu) {
                    p.finish_all(group, &Verdict::Skip { reason: why }, t)?;
                    continue;
                }
                get(&mut unpacked);
                let u = match unpacked.as_ref().expect("unpacked above") {
                    Ok(u) => u,
                    Err(e) => {
                        p.finish_all(group, &not_got(e), t)?;
                        continue;
                    }
                };
                let platform = crate::image::spec::Platform {
                    os: u.platform.as_ref().map_or("linux".into(), |p| p.os.clone()),
                    architecture: u
                        .platform
                        .as_ref()
                        .map_or("amd64".into(), |p| p.architecture.clone()),
                    variant: None,
                };
                if platform.architecture != "amd64" {
                    let reason = format!(
                        "this build boots amd64 images only; the image is {}",
                        platform.architecture
                    );
                    p.finish_all(group, &Verdict::Skip { reason }, t)?;
                    continue;
                }
                let accel = opts.boot.accel.choose(
                    || {
                        crate::accel::image_kernel(&u.root)
                            .ok_or_else(|| anyhow::anyhow!("the image has no /boot/vmlinuz"))
                    },
                    u.root.parent().unwrap_or(Path::new("/tmp")),
                );
                let bo = boot_checks::BootOptions {
                    accel,
                    qemu: opts.boot.accel.qemu.clone(),
                    memory_mib: opts.boot.memory_mib,
                    firmware: opts.boot.firmware,
                    boot_timeout: opts.boot.boot_timeout,
                    second: match &opts.boot.upgrade_to {
                        Some(s) => boot_checks::SecondImage::Given(s.clone()),
                        None => boot_checks::SecondImage::Derived,
                    },
                    artifacts: opts.boot.artifacts.clone(),
                    pull: opts.pull.clone(),
                };
                let ids: Vec<&str> = group.iter().map(|d| d.id).collect();
                // The last profile to read the unpacked tree: deriving the second image
                // edits it.
                let (mut done, accel) = boot_checks::run(source, &u.root, &platform, &ids, &bo);
                for (name, value) in [
                    ("accelerator", Some(accel.accel)),
                    ("accelerator_reason", Some(accel.reason)),
                    ("accelerator_fallback", accel.fallback),
                ] {
                    if let Some(value) = value {
                        p.emit(&Event::Property {
                            name: name.into(),
                            value,
                        })?;
                    }
                }
                for def in group {
                    let c = done.remove(def.id).unwrap_or_else(|| boot_checks::Checked {
                        verdict: Verdict::Error {
                            reason: format!("{} is not a boot check this build knows", def.id),
                        },
                        duration_ms: 0,
                        attachments: Vec::new(),
                    });
                    p.finish_with(def, c.verdict, c.duration_ms, c.attachments)?;
                }
            }
            other => {
                let t = Instant::now();
                for def in group {
                    let reason = format!(
                        "this build of bootyard does not run the {other} profile's checks yet"
                    );
                    p.finish(def, Verdict::Skip { reason }, t)?;
                }
            }
        }
    }
    p.summary.duration_ms = started.elapsed().as_millis() as u64;
    let summary = p.summary.clone();
    p.emit(&Event::RunFinished { summary })?;
    Ok(p.results)
}

const QEMU: &str = "qemu-system-x86_64";

/// Whether this machine can run the boot checks: QEMU, GRUB's modules (an install writes
/// both the BIOS and the EFI boot loader), e2fsprogs, the FAT tools, and OVMF for EFI boots.
fn can_boot(firmware: bootyard_scenarios::file::Firmware, qemu: &str) -> Result<(), String> {
    let on_path = |tool: &str| {
        if tool.contains('/') {
            return Path::new(tool).is_file();
        }
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    for (tool, package) in [
        (qemu, "qemu-system-x86"),
        ("grub-mkimage", "grub-common"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("mkfs.fat", "dosfstools"),
        ("mcopy", "mtools"),
    ] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} is not installed (Debian package {package})"
            ));
        }
    }
    let mut needed = vec![
        (crate::boot::grub::I386_PC_DIR, "grub-pc-bin"),
        (crate::boot::grub::X86_64_EFI_DIR, "grub-efi-amd64-bin"),
    ];
    if firmware == bootyard_scenarios::file::Firmware::Efi {
        needed.push((crate::scenario::OVMF, "ovmf"));
    }
    for (path, package) in needed {
        if !Path::new(path).exists() {
            return Err(format!("{path} is missing (Debian package {package})"));
        }
    }
    Ok(())
}

/// An unpacked image: removed with the value.
struct Unpacked {
    _dir: tempfile::TempDir,
    root: PathBuf,
    platform: Option<Platform>,
    /// The image's own layers, where they can be read again (not for a `dir:` subject).
    layers: Option<(Layout, ResolvedImage)>,
}

/// Unpacks the image into a fresh temporary directory, with its config's platform and
/// where its layers are.
/// Why the image could not be had, and whether that is the image's fault (corrupt,
/// malformed, hostile: what `bootyard image pull` exits 3 for).
#[derive(Debug)]
struct NotGot {
    reason: String,
    image_fault: bool,
}

impl NotGot {
    fn of<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        let reason = chain(&e);
        let image_fault =
            crate::cli::exit::exit_code(&anyhow::Error::new(e)) == crate::cli::exit::BAD_INPUT;
        Self {
            reason,
            image_fault,
        }
    }
}

fn unpack(source: &Source, opts: &PullOptions) -> Result<Unpacked, NotGot> {
    let dir = tempfile::Builder::new()
        .prefix("bootyard-conformance-")
        .tempdir()
        .map_err(NotGot::of)?;
    // An archive is opened as a layout here, so its layers stay readable after the unpack.
    let extracted;
    let source = match source {
        Source::Archive { file, tag } => {
            let at = dir.path().join("layout");
            extract_archive(file, &at, opts.limits).map_err(NotGot::of)?;
            extracted = Source::Layout {
                dir: at,
                tag: tag.clone(),
            };
            &extracted
        }
        s => s,
    };
    let root = dir.path().join("rootfs");
    let report = pull(source, &root, opts).map_err(NotGot::of)?;
    let layout_dir = match source {
        Source::Layout { dir, .. } => Some(dir.clone()),
        Source::Registry(_) => Some(opts.cache_dir.clone()),
        _ => None,
    };
    let layers = match (layout_dir, &report.image) {
        (Some(d), Some(image)) => Some((
            Layout::open(&d).map_err(|e| NotGot::of(PullError::Layout(e)))?,
            image.clone(),
        )),
        _ => None,
    };
    let platform = report.image.map(|i| Platform {
        os: i.config.os,
        architecture: i.config.architecture,
    });
    Ok(Unpacked {
        _dir: dir,
        root,
        platform,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_days() {
        // Years 1000..=9999: parse_date takes four-digit years.
        for d in (-354_000..2_900_000).step_by(997) {
            assert_eq!(parse_date(&date_of(d)), Some(d), "{}", date_of(d));
        }
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(
            parse_date("2024-02-29").map(date_of).as_deref(),
            Some("2024-02-29")
        );
    }

    #[test]
    fn tracker_links_need_a_host_and_no_spaces() {
        assert!(tracker_link_ok("https://example.org/distro/issues/7"));
        assert!(tracker_link_ok("http://tracker:8080/x?id=1"));
        for bad in [
            "https://    ",
            "https://a b c",
            "https://",
            "ftp://x.org/1",
            "see the wiki",
        ] {
            assert!(!tracker_link_ok(bad), "{bad}");
        }
    }
}
