//! The `boot` and `upgrade` profiles: the image is installed on a disk and booted under
//! QEMU through the scenario runner, the way a node would run it. The image needs no test
//! hook: the harness reads the boot off the serial console, powers the machine off once the
//! agent reports `boot-complete`, and makes upgrades to the disk from the host with the
//! steps of the node's `bootyard upgrade`, and rollbacks with the swap `bootyard rollback`
//! makes.
//!
//! One machine runs the checks in sequence, each from where the one before left the disk:
//! install and first boot (BOOT-001); upgrade to a second image and boot it (UPG-001); roll
//! back and boot the old image (UPG-003); upgrade again and reset every boot of the new slot
//! as its kernel starts until the tries counter gives up on it (UPG-002).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootyard_conformance::Verdict;
use bootyard_scenarios::file::{Firmware, ScenarioFile};

use crate::boot::assessment::{Health, Slot, TRIES_DEFAULT};
use crate::image::Source;
use crate::scenario::{End, Run, ScenarioRunError};

/// The checks of these profiles, in the order they run.
pub const IDS: &[&str] = &["BOOT-001", "UPG-001", "UPG-003", "UPG-002"];

/// Where the second image comes from.
#[derive(Debug, Clone)]
pub enum SecondImage {
    /// The first image again with a new version in its release file (one changed file):
    /// a second build that must boot exactly as the first did.
    Derived,
    /// A second build the maintainer names (`--upgrade-to`).
    Given(Source),
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    /// What the boots start under (a stall under a probed KVM moves them to TCG).
    pub accel: crate::accel::AccelChoice,
    /// The QEMU binary.
    pub qemu: String,
    pub memory_mib: u32,
    pub firmware: Firmware,
    /// How long one power-on may take, from QEMU's start to the boot's end.
    pub boot_timeout: Duration,
    pub second: SecondImage,
    /// Console logs of failed boots are copied here and attached to their checks; without
    /// it, a failed check's reason carries the log's last lines.
    pub artifacts: Option<PathBuf>,
    /// How the images are read (registries, credentials, the blob cache).
    pub pull: crate::image::pull::PullOptions,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    pub duration_ms: u64,
    pub attachments: Vec<String>,
}

/// Whose a step's failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The image did not do what a correct one does: `fail`.
    Image,
    /// The harness could not do its part: `error`.
    Harness,
    /// Not tried, because a step it needs failed and that step's own check says so: `skip`.
    NotTried,
}

/// Why a step of the sequence did not work out.
#[derive(Debug, Clone)]
struct StepFailure {
    fault: Fault,
    reason: String,
    console: Option<PathBuf>,
}

impl StepFailure {
    fn image(reason: impl Into<String>, console: Option<&Path>) -> Self {
        Self {
            fault: Fault::Image,
            reason: reason.into(),
            console: console.map(Path::to_path_buf),
        }
    }

    fn harness(reason: impl Into<String>, console: Option<&Path>) -> Self {
        Self {
            fault: Fault::Harness,
            reason: reason.into(),
            console: console.map(Path::to_path_buf),
        }
    }

    fn of(e: ScenarioRunError, console: Option<&Path>) -> Self {
        match e {
            // The boot disagreed with what a correct image does.
            ScenarioRunError::Failed(reason) => {
                // The runner names the log it wrote; the check attaches (or quotes) it.
                let reason = match (console, reason.split_once("; console: ")) {
                    (Some(_), Some((said, _))) => said.to_string(),
                    _ => reason,
                };
                Self::image(reason, console)
            }
            ScenarioRunError::Other(e) => {
                let reason = format!("{e:#}");
                // An image that cannot be installed at all is the image's failure; anything
                // else (QEMU, e2fsprogs, the disk) is the harness's.
                let image_fault = e.chain().any(|c| {
                    c.downcast_ref::<crate::install::BootableImageError>()
                        .is_some_and(|b| !matches!(b, crate::install::BootableImageError::Pull(_)))
                });
                if image_fault {
                    Self::image(reason, None)
                } else {
                    Self::harness(reason, console)
                }
            }
        }
    }
}

/// Last lines of a console log, for a reason when there is nowhere to attach the log.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes the second image from the unpacked first one: the same tree with `+conformance`
/// added to the version its release file gives, as a one-image OCI layout under `dir`.
/// Returns its version. Edits `root` in place: call it when nothing reads `root` any more.
fn derive_second(
    root: &Path,
    platform: &crate::image::spec::Platform,
    dir: &Path,
) -> Result<(String, Source), StepFailure> {
    let (file, key, first) = crate::install::version_source(root).ok_or_else(|| {
        StepFailure::image(
            "the image names no version (VERSION in /etc/kairos-release or VERSION_ID in \
             /etc/os-release), so a second build of it cannot be told apart; see IMG-006 and \
             IMG-007, or name a second build with --upgrade-to",
            None,
        )
    })?;
    let harness = |e: String| StepFailure::harness(format!("making the second image: {e}"), None);
    let shown = |e: std::io::Error| harness(format!("{}: {e}", file.display()));
    let text = std::fs::read_to_string(&file).map_err(shown)?;
    let meta = std::fs::symlink_metadata(&file).map_err(shown)?;
    let second = format!("{first}+conformance");
    let mut out = String::with_capacity(text.len() + 16);
    for l in text.lines() {
        if l.strip_prefix(key).is_some_and(|r| r.starts_with('=')) {
            out.push_str(&format!("{key}=\"{second}\""));
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    // A hard link in the tree would carry the change to its other names: a new file, with
    // the old one's mode and owner.
    std::fs::remove_file(&file).map_err(shown)?;
    std::fs::write(&file, out).map_err(shown)?;
    std::fs::set_permissions(&file, meta.permissions()).map_err(shown)?;
    {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&file, Some(meta.uid()), Some(meta.gid())).map_err(shown)?;
    }
    if crate::install::image_version(root) != second {
        return Err(harness(format!(
            "the version did not change ({} still says {first})",
            file.display()
        )));
    }
    let layout =
        crate::image::layout::Layout::create(dir).map_err(|e| harness(super::error_chain(&e)))?;
    let mut tar = Vec::new();
    crate::image::dirstream::write_tree(root, &mut tar)
        .map_err(|e| harness(format!("cannot archive it: {e}")))?;
    let desc = crate::image::sample::write_image(
        &layout,
        &[(tar, crate::image::spec::Compression::Zstd)],
        platform,
        BTreeMap::new(),
    )
    .map_err(|e| harness(super::error_chain(&e)))?;
    layout
        .set_tag(desc, &second)
        .map_err(|e| harness(super::error_chain(&e)))?;
    Ok((
        second.clone(),
        Source::Layout {
            dir: dir.to_path_buf(),
            tag: Some(second),
        },
    ))
}

/// The machine and where the sequence got to.
struct Machine<'f> {
    run: Run<'f>,
    first: String,
    second: String,
}

impl Machine<'_> {
    fn console(&self) -> Option<&Path> {
        self.run.last_console_log()
    }

    /// One boot that must end proven, on the slot and version the model expects.
    fn proven_boot(&mut self, purpose: &str) -> Result<String, StepFailure> {
        let b = self
            .run
            .boot(purpose, None, End::QuitWhenProven)
            .map_err(|e| StepFailure::of(e, self.run.last_console_log()))?;
        self.run
            .check_disk_agrees()
            .map_err(|e| StepFailure::of(e, self.run.last_console_log()))?;
        Ok(format!(
            "{} booted {} to boot-complete in {:.1} s",
            b.slot.as_deref().unwrap_or("?"),
            b.version.as_deref().unwrap_or("?"),
            b.ms as f64 / 1000.0
        ))
    }

    fn install_and_boot(&mut self) -> Result<String, StepFailure> {
        let first = self.first.clone();
        self.run
            .install(&first)
            .map_err(|e| StepFailure::of(e, None))?;
        self.proven_boot("first boot")
    }

    fn upgrade_and_boot(&mut self) -> Result<String, StepFailure> {
        let second = self.second.clone();
        self.run
            .upgrade_from_host(&second)
            .map_err(|e| StepFailure::of(e, None))?;
        self.proven_boot(&format!("upgraded to {second}"))
    }

    fn rollback_and_boot(&mut self) -> Result<String, StepFailure> {
        self.run
            .rollback_from_host()
            .map_err(|e| StepFailure::of(e, None))?;
        self.proven_boot("rolled back")
    }

    /// Upgrades to the image that is not active now, resets every boot of it at its stage,
    /// and wants the previous slot back, proven, within the tries counter.
    fn fall_back(&mut self) -> Result<String, StepFailure> {
        let model = self
            .run
            .current_model()
            .cloned()
            .ok_or_else(|| StepFailure::harness("no disk installed", None))?;
        let old = model.active.version.clone().unwrap_or_default();
        let new = if old == self.first {
            self.second.clone()
        } else {
            self.first.clone()
        };
        self.run
            .upgrade_from_host(&new)
            .map_err(|e| StepFailure::of(e, None))?;
        let tries = self.run.current_model().map_or(TRIES_DEFAULT, |m| m.tries);
        let mut resets = 0;
        for _ in 0..=tries {
            let next = self.run.current_model().cloned().and_then(|mut m| m.boot());
            if next != Some(Slot::Active) {
                let proven = self.proven_boot("after the resets")?;
                return Ok(format!(
                    "{resets} resets before boot-complete, then the fallback: {proven}"
                ));
            }
            let b = self
                .run
                .boot(&format!("{new}, to be reset"), None, End::ResetAtKernel)
                .map_err(|e| StepFailure::of(e, self.console()))?;
            if b.ended_by_harness.as_deref() != Some("reset") {
                return Err(StepFailure::harness(
                    format!(
                        "the kernel never printed its command line, so the harness had no \
                         moment to reset the new slot before it proved itself (boot ended {:?})",
                        b.outcome
                    ),
                    Some(&b.console_log),
                ));
            }
            let disk = crate::upgrade::read_disk_model(self.run.disk())
                .map_err(|e| StepFailure::harness(super::error_chain(&e), None))?;
            if disk.active.health == Health::Good {
                return Err(StepFailure::harness(
                    "the new slot marked itself good before the reset landed (its boot stage \
                     and boot-complete came too close together to reset in between)",
                    Some(&b.console_log),
                ));
            }
            self.run
                .check_disk_agrees()
                .map_err(|e| StepFailure::of(e, Some(&b.console_log)))?;
            resets += 1;
        }
        Err(StepFailure::image(
            format!("after {resets} resets the node still boots the new slot ({tries} tries)"),
            self.console(),
        ))
    }
}

/// Runs the selected checks of the boot and upgrade profiles (`wanted`: their IDs) on
/// `first`, unpacked at `root` (edited in place to derive the second image). Every wanted
/// ID gets a result.
pub fn run(
    first: &Source,
    root: &Path,
    platform: &crate::image::spec::Platform,
    wanted: &[&str],
    opts: &BootOptions,
) -> (BTreeMap<&'static str, Checked>, crate::accel::AccelReport) {
    let unbooted = opts.accel.report(None);
    let mut out = BTreeMap::new();
    let work = match tempfile::Builder::new()
        .prefix("bootyard-conformance-boot-")
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => {
            let f = StepFailure::harness(format!("cannot make a work directory: {e}"), None);
            return (every(wanted, &f, opts), unbooted);
        }
    };
    let file = ScenarioFile {
        schema: 1,
        name: "conformance".into(),
        description: String::new(),
        flavors: Vec::new(),
        tries: TRIES_DEFAULT,
        watchdog_sec: 0,
        memory_mib: opts.memory_mib,
        firmware: opts.firmware,
        images: Vec::new(),
        steps: Vec::new(),
        phases: Vec::new(),
    };
    let first_version = crate::install::image_version(root);
    let want = |id: &str| wanted.contains(&id);
    let upgrades = want("UPG-001") || want("UPG-002") || want("UPG-003");

    // The second image, before anything boots (deriving it edits `root`).
    let second = if !upgrades {
        Ok(None)
    } else {
        match &opts.second {
            SecondImage::Derived => {
                derive_second(root, platform, &work.path().join("second")).map(Some)
            }
            // What is wrong with a second build the run was given says nothing about the
            // image under test: no verdict.
            SecondImage::Given(s) => {
                let probe = work.path().join("second-rootfs");
                let r = match crate::install::unpack_bootable(s, &probe, &opts.pull) {
                    Ok(v) if v == first_version => Err(StepFailure::harness(
                        format!(
                            "the --upgrade-to image calls itself {v}, as the image under test \
                             does: an upgrade to it could not be told from no upgrade"
                        ),
                        None,
                    )),
                    Ok(v) => Ok(Some((v, s.clone()))),
                    Err(e) => Err(StepFailure::harness(
                        format!(
                            "cannot use the --upgrade-to image: {}",
                            super::error_chain(&e)
                        ),
                        None,
                    )),
                };
                let _ = std::fs::remove_dir_all(&probe);
                r
            }
        }
    };
    let mut images = vec![(first_version.clone(), first.clone())];
    let (second_version, second_err) = match second {
        Ok(Some((v, s))) => {
            images.push((v.clone(), s));
            (v, None)
        }
        Ok(None) => (String::new(), None),
        Err(e) => (String::new(), Some(e)),
    };
    let machine = work.path().join("machine");
    let run = Run::external(
        &file,
        &machine,
        (opts.accel.clone(), opts.qemu.clone()),
        images,
        opts.pull.clone(),
    );
    let mut run = match run {
        Ok(r) => r,
        Err(e) => return (every(wanted, &StepFailure::of(e, None), opts), unbooted),
    };
    run.set_boot_deadline(opts.boot_timeout);
    let mut m = Machine {
        run,
        first: first_version,
        second: second_version,
    };

    // BOOT-001, which everything else starts from (not needed when the upgrade checks
    // cannot run anyway).
    let t = Instant::now();
    let booted = if want("BOOT-001") || second_err.is_none() {
        m.install_and_boot()
    } else {
        Ok(String::new())
    };
    if want("BOOT-001") {
        let ms = t.elapsed().as_millis() as u64;
        out.insert("BOOT-001", settle("BOOT-001", booted.clone(), ms, opts));
    }
    // What a later check gets when a step it needs did not work: a skip when that step's
    // own check says why, else the step's failure as its own.
    let blocked = |step_id: &str, f: &StepFailure, what: &str| -> StepFailure {
        if want(step_id) {
            StepFailure {
                fault: Fault::NotTried,
                reason: format!("not tried: {what} did not work ({step_id})"),
                console: None,
            }
        } else {
            StepFailure {
                reason: format!("{what} did not work: {}", f.reason),
                ..f.clone()
            }
        }
    };
    // Every upgrade check needs the first boot and the second image.
    let ready = match (&booted, &second_err) {
        (Err(f), _) => Err(blocked("BOOT-001", f, "the first boot")),
        (Ok(_), Some(f)) => Err(f.clone()),
        (Ok(_), None) => Ok(()),
    };

    // UPG-001, and UPG-003 from where it leaves the machine.
    let mut upgraded = None;
    if want("UPG-001") || want("UPG-003") {
        let t = Instant::now();
        let r = match &ready {
            Err(f) => Err(f.clone()),
            Ok(()) => m.upgrade_and_boot(),
        };
        if want("UPG-001") {
            let ms = t.elapsed().as_millis() as u64;
            out.insert("UPG-001", settle("UPG-001", r.clone(), ms, opts));
        }
        upgraded = Some(r);
    }
    let mut rolled_back_ok = true;
    if want("UPG-003") {
        let t = Instant::now();
        let r = match upgraded.as_ref().expect("the upgrade ran for UPG-003") {
            Err(f) if ready.is_err() => Err(f.clone()),
            Err(f) => Err(blocked("UPG-001", f, "the upgrade")),
            Ok(_) => m.rollback_and_boot(),
        };
        rolled_back_ok = r.is_ok();
        let ms = t.elapsed().as_millis() as u64;
        out.insert("UPG-003", settle("UPG-003", r, ms, opts));
    }

    // UPG-002, on a fresh install when a failed step left the machine where no correct
    // node would be: it is judged on its own evidence.
    if want("UPG-002") {
        let t = Instant::now();
        let clean = rolled_back_ok && !matches!(upgraded, Some(Err(_)));
        let r = match &ready {
            Err(f) => Err(f.clone()),
            Ok(()) if clean => m.fall_back(),
            Ok(()) => m.install_and_boot().and_then(|_| m.fall_back()),
        };
        let ms = t.elapsed().as_millis() as u64;
        out.insert("UPG-002", settle("UPG-002", r, ms, opts));
    }
    (out, m.run.accel_report())
}

/// The same failure for every wanted check: the sequence could not start.
fn every(wanted: &[&str], f: &StepFailure, opts: &BootOptions) -> BTreeMap<&'static str, Checked> {
    IDS.iter()
        .filter(|i| wanted.contains(i))
        .map(|id| (*id, settle(id, Err(f.clone()), 0, opts)))
        .collect()
}

/// A step's outcome as a check's verdict, with its console log attached when it failed.
fn settle(
    id: &str,
    r: Result<String, StepFailure>,
    duration_ms: u64,
    opts: &BootOptions,
) -> Checked {
    let mut attachments = Vec::new();
    let verdict = match r {
        Ok(_) => Verdict::Pass,
        Err(f) if f.fault == Fault::NotTried => Verdict::Skip { reason: f.reason },
        Err(f) => {
            let mut reason = f.reason.clone();
            if let Some(log) = &f.console {
                match attach(id, log, opts.artifacts.as_deref()) {
                    Some(kept) => {
                        reason.push_str(&format!("; console log attached: {kept}"));
                        attachments.push(kept);
                    }
                    None => {
                        let t = tail(log, 15);
                        if !t.is_empty() {
                            reason.push_str(&format!("; the console's last lines:\n{t}"));
                        }
                    }
                }
            }
            match f.fault {
                Fault::Harness => Verdict::Error { reason },
                _ => Verdict::Fail { reason },
            }
        }
    };
    Checked {
        verdict,
        duration_ms,
        attachments,
    }
}

/// Copies a console log to `artifacts/console/ID-name`; the path, when it could.
fn attach(id: &str, log: &Path, artifacts: Option<&Path>) -> Option<String> {
    let dir = artifacts?.join("console");
    std::fs::create_dir_all(&dir).ok()?;
    let name = log.file_name()?.to_string_lossy();
    let dest = dir.join(format!("{id}-{name}"));
    std::fs::copy(log, &dest).ok()?;
    Some(dest.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_image_differs_only_in_its_version() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(
            root.join("usr/lib/os-release"),
            "NAME=\"Test\"\nVERSION_ID=\"2.1\"\nID=test\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        let (v, src) = derive_second(
            &root,
            &crate::image::spec::Platform::linux_amd64(),
            &d.path().join("layout"),
        )
        .unwrap();
        assert_eq!(v, "2.1+conformance");
        // The link is followed inside the tree: the file it names carries the new version.
        let text = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
        assert_eq!(
            text,
            "NAME=\"Test\"\nVERSION_ID=\"2.1+conformance\"\nID=test\n"
        );
        assert!(std::fs::symlink_metadata(root.join("etc/os-release"))
            .unwrap()
            .file_type()
            .is_symlink());
        let Source::Layout { dir, tag } = src else {
            panic!("a layout")
        };
        let l = crate::image::layout::Layout::open(&dir).unwrap();
        assert!(l.find(tag.as_deref()).is_ok());
    }

    #[test]
    fn an_image_without_a_version_cannot_have_a_second_build() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/os-release"), "NAME=x\nVERSION_ID=\n").unwrap();
        let e = derive_second(
            d.path(),
            &crate::image::spec::Platform::linux_amd64(),
            &d.path().join("layout"),
        )
        .unwrap_err();
        assert_eq!(e.fault, Fault::Image);
        assert!(e.reason.contains("names no version"), "{}", e.reason);
    }
}
