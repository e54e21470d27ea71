//! Running scenario files against real boots: test OS images are built and served from a
//! local registry, a disk is installed, and every power-on is a QEMU process whose console
//! is read live. The harness keeps its own boot-assessment model and checks every boot
//! against it: the slot GRUB picked, the version that came up, and how the boot ended (a
//! healthy image must complete; a broken one must fail the way its breakage says).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootyard_scenarios::bootwatch::{BootWatch, Outcome};
use bootyard_scenarios::file::{Firmware, StepSpec, UpgradeFrom};
use bootyard_scenarios::qemu::{Accel, Drive, Machine, MachineSpec};

use crate::accel::{AccelChoice, AccelReport};
use bootyard_scenarios::{PhaseEvent, PhaseTracker, ScenarioFile};
use serde::Serialize;

use crate::boot::assessment::{BootModel, Slot};
use crate::image::pull::PullOptions;
use crate::image::Source;
use crate::localreg::LocalRegistry;
use crate::testimage::{Breakage, Flavor, TestImageSpec};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioRunError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Lines a Linux kernel prints first on the serial console (`Linux version` is suppressed
/// by `quiet`; the command line is not).
const KERNEL_MARKERS: [&str; 2] = ["Linux version", "Command line:"];
/// While KVM is on probation, a boot's kernel must print within this time of QEMU's start.
/// Under TCG firmware and GRUB take 2-10 s to get there (the scenario files give 30 s too).
const KVM_KERNEL_TIMEOUT: Duration = Duration::from_secs(30);

/// Debian's OVMF build (package ovmf), for EFI boots.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

pub struct RunOptions {
    pub flavor: Flavor,
    /// Where images, disks and console logs go.
    pub workdir: PathBuf,
    /// The static agent the test images carry.
    pub agent: PathBuf,
    pub cache: PathBuf,
    pub accel: AccelChoice,
    /// The QEMU binary (`qemu-system-x86_64`, or a wrapper).
    pub qemu: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    pub n: u32,
    pub purpose: String,
    pub expected_slot: Slot,
    pub expected_version: String,
    pub expected_outcome: Outcome,
    pub slot: Option<String>,
    pub version: Option<String>,
    pub outcome: Option<Outcome>,
    pub hook_rc: Option<i32>,
    /// Upgrade or rollback steps the node announced, with when (ms since QEMU start).
    pub steps: Vec<PhaseReport>,
    pub phases: Vec<PhaseReport>,
    /// QEMU start to the end of the boot (its exit).
    pub ms: u64,
    pub console_log: PathBuf,
    /// When the harness ended the boot itself: `cut` (power cut), `reset` (QMP reset
    /// before the slot was proven) or `quit` (powered off once the boot was proven).
    pub ended_by_harness: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub n: usize,
    pub step: String,
    pub ms: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub scenario: String,
    pub flavor: Flavor,
    /// What the boots ran under, why, and whether the run had to fall back to TCG.
    pub accel: AccelReport,
    pub passed: bool,
    pub failure: Option<String>,
    /// Wall time of the whole run, image builds included.
    pub ms: u64,
    /// Of which building and pushing the test images.
    pub build_ms: u64,
    pub steps: Vec<StepReport>,
    pub boots: Vec<BootReport>,
    pub final_model: Option<BootModel>,
    pub workdir: PathBuf,
}

fn breakage_of(name: &str) -> Option<Breakage> {
    match name {
        "panic" => Some(Breakage::Panic),
        "hang" => Some(Breakage::Hang),
        "never-good" => Some(Breakage::NeverGood),
        "health-fails" => Some(Breakage::HealthFails),
        _ => None,
    }
}

/// How a power-on ends, besides the machine exiting by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<'s> {
    /// The node ends the boot: a test image powers off after its hook; a failing boot
    /// resets, which `-no-reboot` turns into an exit.
    Exit,
    /// Power cut (QMP `quit`) as soon as the node announces this upgrade or rollback step.
    CutAt(&'s str),
    /// Power off (QMP `quit`) once the boot is proven, for images without the test hook,
    /// which keep running after `boot-complete` (the agent makes its mark durable before
    /// it says so). A boot that fails still ends by itself.
    QuitWhenProven,
    /// QMP `system_reset` as soon as the kernel reports its command line: GRUB has counted
    /// the try, and nothing of the slot has run, so it cannot have proven itself. A boot
    /// proven without that line being seen is powered off as with `QuitWhenProven`.
    ResetAtKernel,
}

/// One run of a scenario on one flavor.
pub struct Run<'a> {
    file: &'a ScenarioFile,
    workdir: PathBuf,
    qemu: String,
    /// What boots run under now; a fallback moves it to TCG.
    accel: AccelChoice,
    /// A boot under KVM has reached its kernel: KVM runs Linux here, and a later stall is
    /// the image's.
    kvm_proven: bool,
    /// What moved the run to TCG, when something did.
    fallback: Option<String>,
    /// Serves the test images to nodes that upgrade themselves; none for outside images.
    registry: Option<LocalRegistry>,
    /// version -> (host-side source, breakage name)
    images: BTreeMap<String, (Source, Option<String>)>,
    disk: PathBuf,
    model: Option<BootModel>,
    boots: Vec<BootReport>,
    repo: String,
    boot_deadline: Duration,
    last_console_log: Option<PathBuf>,
    /// How installs and upgrades read the images.
    pull: PullOptions,
}

impl<'a> Run<'a> {
    /// Starts the registry and builds and serves the scenario's images.
    pub fn start(file: &'a ScenarioFile, opts: &'a RunOptions) -> Result<Self, ScenarioRunError> {
        std::fs::create_dir_all(&opts.workdir).map_err(anyhow::Error::from)?;
        let registry = LocalRegistry::start(None).map_err(anyhow::Error::from)?;
        let flavor = match opts.flavor {
            Flavor::Busybox => "busybox",
            Flavor::Debian => "debian",
        };
        let mut r = Run {
            file,
            workdir: opts.workdir.clone(),
            qemu: opts.qemu.clone(),
            accel: opts.accel.clone(),
            kvm_proven: false,
            fallback: None,
            registry: Some(registry),
            images: BTreeMap::new(),
            disk: opts.workdir.join("disk.img"),
            model: None,
            boots: Vec::new(),
            repo: format!("bootyard-test/{flavor}"),
            boot_deadline: Self::default_deadline(file),
            last_console_log: None,
            pull: PullOptions::new(opts.workdir.join("cache")),
        };
        r.build_images(opts)?;
        Ok(r)
    }

    /// A run on images that already exist (version -> where the host reads it), with no
    /// registry: upgrades and rollbacks are made to the disk from the host. The images
    /// need no test hook; boots end with [`End::QuitWhenProven`] or [`End::ResetAtKernel`].
    pub fn external(
        file: &'a ScenarioFile,
        workdir: &Path,
        (accel, qemu): (AccelChoice, String),
        images: Vec<(String, Source)>,
        pull: PullOptions,
    ) -> Result<Self, ScenarioRunError> {
        std::fs::create_dir_all(workdir).map_err(anyhow::Error::from)?;
        Ok(Run {
            file,
            workdir: workdir.to_path_buf(),
            qemu,
            accel,
            kvm_proven: false,
            fallback: None,
            registry: None,
            images: images.into_iter().map(|(v, s)| (v, (s, None))).collect(),
            disk: workdir.join("disk.img"),
            model: None,
            boots: Vec::new(),
            repo: String::new(),
            boot_deadline: Self::default_deadline(file),
            last_console_log: None,
            pull,
        })
    }

    /// Every boot ends within the watchdog's time plus room for the slowest healthy boot.
    fn default_deadline(file: &ScenarioFile) -> Duration {
        Duration::from_secs(u64::from(file.watchdog_sec) + 240)
    }

    /// How long one power-on may take before it is a failure.
    pub fn set_boot_deadline(&mut self, d: Duration) {
        self.boot_deadline = d;
    }

    /// The console log of the latest power-on (kept when it failed).
    pub fn last_console_log(&self) -> Option<&Path> {
        self.last_console_log.as_deref()
    }

    pub fn disk(&self) -> &Path {
        &self.disk
    }

    pub fn boots(&self) -> &[BootReport] {
        &self.boots
    }

    /// What the boots ran under and why, for the run's reports.
    pub fn accel_report(&self) -> AccelReport {
        self.accel.report(self.fallback.clone())
    }

    pub fn current_model(&self) -> Option<&BootModel> {
        self.model.as_ref()
    }

    /// Takes the model from the disk, for when the harness cannot know where the node
    /// got to (a power cut); the next boots are checked against it.
    pub fn resync_from_disk(&mut self) -> Result<BootModel, ScenarioRunError> {
        let m = crate::upgrade::read_disk_model(&self.disk).map_err(anyhow::Error::from)?;
        self.model = Some(m.clone());
        Ok(m)
    }

    /// The node-side command that upgrades to `version` from the harness's registry.
    pub fn upgrade_command(&self, version: &str) -> Result<String, ScenarioRunError> {
        let registry = self.registry.as_ref().ok_or_else(|| {
            Self::harness("images from outside are not served to the node: upgrade from the host")
        })?;
        let port = registry.addr().port();
        Ok(format!(
            "bootyard upgrade --image 10.0.2.2:{port}/{}:{version} --insecure-registry 10.0.2.2:{port}",
            self.repo
        ))
    }

    fn fail(msg: impl Into<String>) -> ScenarioRunError {
        ScenarioRunError::Failed(msg.into())
    }

    /// A mistake in how the run was driven, not something a node did.
    fn harness(msg: impl Into<String>) -> ScenarioRunError {
        ScenarioRunError::Other(anyhow::anyhow!(msg.into()))
    }

    fn model(&mut self) -> Result<&mut BootModel, ScenarioRunError> {
        self.model
            .as_mut()
            .ok_or_else(|| Self::harness("no disk installed yet"))
    }

    /// Builds the scenario's test images and pushes them to the registry. The node reaches
    /// the host's loopback as 10.0.2.2 under QEMU user networking.
    fn build_images(&mut self, opts: &RunOptions) -> Result<(), ScenarioRunError> {
        let layout = self.workdir.join("images");
        let host = match &self.registry {
            Some(r) => r.host(),
            None => return Err(Self::harness("no registry to serve the test images from")),
        };
        for img in &self.file.images {
            let spec = TestImageSpec {
                flavor: opts.flavor,
                version: img.version.clone(),
                breakage: img.breakage.as_deref().and_then(breakage_of),
                watchdog_sec: self.file.watchdog_sec,
                agent: opts.agent.clone(),
                cache: opts.cache.clone(),
            };
            let root = self.workdir.join(format!("rootfs-{}", img.version));
            if root.exists() {
                std::fs::remove_dir_all(&root).map_err(anyhow::Error::from)?;
            }
            crate::testimage::build_rootfs(&spec, &root).map_err(anyhow::Error::from)?;
            crate::testimage::write_oci(&root, &layout, &img.version, BTreeMap::new())
                .map_err(anyhow::Error::from)?;
            std::fs::remove_dir_all(&root).map_err(anyhow::Error::from)?;
            let l = crate::image::layout::Layout::open(&layout).map_err(anyhow::Error::from)?;
            let top = l.find(Some(&img.version)).map_err(anyhow::Error::from)?;
            let dest = format!("{host}/{}:{}", self.repo, img.version);
            let Source::Registry(reference) = dest.parse().map_err(anyhow::Error::from)? else {
                return Err(Self::fail(format!("{dest} is not a registry reference")));
            };
            crate::image::registry::push(
                &l,
                &top,
                &reference,
                &crate::image::registry::RegistryOptions {
                    insecure: vec![host.clone()],
                    ..Default::default()
                },
            )
            .map_err(anyhow::Error::from)?;
            self.images.insert(
                img.version.clone(),
                (
                    Source::Layout {
                        dir: layout.clone(),
                        tag: Some(img.version.clone()),
                    },
                    img.breakage.clone(),
                ),
            );
        }
        Ok(())
    }

    /// Powers the node on once and reads the boot to its end (QEMU exits: the node powers
    /// off after the hook, or resets, which `-no-reboot` turns into an exit). `hook` is the
    /// shell script the test image runs after its boot assessment; `cut` cuts the power
    /// (QMP `quit`) as soon as the node announces that step.
    pub fn power_on(
        &mut self,
        purpose: &str,
        hook: &str,
        cut: Option<&str>,
    ) -> Result<BootReport, ScenarioRunError> {
        let end = match cut {
            Some(step) => End::CutAt(step),
            None => End::Exit,
        };
        self.boot(purpose, Some(hook), end)
    }

    /// Powers the node on once and reads the boot until `end` (or the machine) ends it,
    /// then checks it against the model: the slot GRUB picked, the version that came up,
    /// how the boot ended. `hook`: the test image's script, through fw_cfg (none for an
    /// image without the test hook). A boot the harness cut or reset is reported, not
    /// judged (it proves nothing; the model already counted the attempt).
    ///
    /// While KVM is on probation (chosen by the probe, no boot of the run has reached its
    /// kernel under it yet), a boot that stalls or ends before its kernel prints is taken
    /// to be KVM's failure, not the image's: GRUB's one write (grubenv's block) is undone,
    /// the model put back, and the boot run again under TCG, where the run then stays.
    pub fn boot(
        &mut self,
        purpose: &str,
        hook: Option<&str>,
        end: End<'_>,
    ) -> Result<BootReport, ScenarioRunError> {
        let probation = self.accel.may_fall_back() && !self.kvm_proven;
        if !probation {
            return self
                .boot_once(purpose, hook, end, false)?
                .map_err(Self::fail);
        }
        let model_before = self.model.clone();
        let env = crate::upgrade::GrubenvBlock::read(&self.disk).map_err(anyhow::Error::from)?;
        let stall = match self.boot_once(purpose, hook, end, true)? {
            Ok(report) => return Ok(report),
            Err(stall) => stall,
        };
        let n = self.boots.len() as u32 + 1;
        env.restore(&self.disk).map_err(anyhow::Error::from)?;
        self.model = model_before;
        // Keep the KVM boot's logs beside the retry's.
        for ext in ["console.log", "qemu.log"] {
            let from = self.workdir.join(format!("boot{n:02}.{ext}"));
            let to = self.workdir.join(format!("boot{n:02}-kvm.{ext}"));
            // A log QEMU never wrote is no reason to stop; the retry writes its own.
            let _ = std::fs::rename(from, to);
        }
        self.accel.accel = Accel::Tcg;
        self.fallback = Some(format!(
            "boot {n} ({purpose}) did not reach its kernel under KVM ({stall}); it was run \
             again under TCG, and the rest of the run stayed on TCG"
        ));
        self.boot_once(purpose, hook, end, false)?
            .map_err(Self::fail)
    }

    /// One power-on. `Ok(Err(why))`: on probation, the kernel never started (`why`), and
    /// nothing of the boot was judged.
    fn boot_once(
        &mut self,
        purpose: &str,
        hook: Option<&str>,
        end: End<'_>,
        probation: bool,
    ) -> Result<Result<BootReport, String>, ScenarioRunError> {
        let n = self.boots.len() as u32 + 1;
        let model = self.model()?;
        let expected_slot = model
            .boot()
            .ok_or_else(|| Self::fail("the model says nothing is bootable"))?;
        let expected_version = model
            .slot(expected_slot)
            .version
            .clone()
            .unwrap_or_default();
        let breakage = self
            .images
            .get(&expected_version)
            .and_then(|(_, b)| b.clone());
        let expected_outcome = Outcome::expected_for(breakage.as_deref());

        let name = format!("boot{n:02}");
        let mut spec = MachineSpec::new(&name, &self.workdir);
        spec.binary = self.qemu.clone();
        spec.accel = self.accel.accel;
        spec.memory_mib = self.file.memory_mib;
        spec.user_net = true;
        spec.firmware_serial = true;
        if self.file.firmware == Firmware::Efi {
            spec.bios = Some(OVMF.into());
        }
        if let Some(hook) = hook {
            let hook_path = self.workdir.join(format!("{name}.hook.sh"));
            std::fs::write(&hook_path, hook).map_err(anyhow::Error::from)?;
            spec.fw_cfg
                .push((crate::testimage::HOOK_FW_CFG.into(), hook_path));
        }
        spec.drives.push(Drive {
            path: self.disk.clone(),
            format: "raw".into(),
            interface: "virtio".into(),
        });
        let console_log = spec.console_log();
        self.last_console_log = Some(console_log.clone());
        let mut m = Machine::launch(spec).map_err(anyhow::Error::from)?;
        let mut qmp = if end != End::Exit {
            Some(
                m.qmp(Duration::from_secs(10))
                    .map_err(anyhow::Error::from)?,
            )
        } else {
            None
        };
        let started = Instant::now();
        // Every boot ends within the watchdog's time plus room for the slowest healthy boot.
        let deadline = started + self.boot_deadline;
        let mut watch = BootWatch::default();
        let mut tracker = (expected_outcome == Outcome::Complete)
            .then(|| PhaseTracker::new(self.file.phases.clone(), 0));
        let mut phases = Vec::new();
        let mut steps = Vec::new();
        let mut phase_failure = None;
        let mut ended_by_harness: Option<&str> = None;
        let mut kernel_seen = false;
        let kernel_deadline = started + KVM_KERNEL_TIMEOUT;
        loop {
            let mut wait_until = match tracker.as_ref().and_then(|t| t.poll_timeout()) {
                Some(ms) => (started + Duration::from_millis(ms)).min(deadline),
                None => deadline,
            };
            if probation && !kernel_seen {
                wait_until = wait_until.min(kernel_deadline);
            }
            match m.next_line(wait_until, "the boot to end") {
                Ok(line) => {
                    if !kernel_seen && KERNEL_MARKERS.iter().any(|k| line.text.contains(k)) {
                        kernel_seen = true;
                        if self.accel.accel == Accel::Kvm {
                            self.kvm_proven = true;
                        }
                    }
                    let before = watch.steps.len();
                    watch.line(&line.text);
                    for st in &watch.steps[before..] {
                        steps.push(PhaseReport {
                            name: st.clone(),
                            at_ms: line.at_ms,
                        });
                    }
                    if line.text.contains("BOOTYARD-HOOK-") {
                        phases.push(PhaseReport {
                            name: line.text.trim().to_string(),
                            at_ms: line.at_ms,
                        });
                    }
                    if let Some(t) = tracker.as_mut() {
                        for ev in t.handle_line(line.at_ms, &line.text) {
                            if let PhaseEvent::Passed { phase, at_ms, .. } = ev {
                                phases.push(PhaseReport { name: phase, at_ms });
                            }
                        }
                    }
                    let act = match end {
                        _ if ended_by_harness.is_some() => None,
                        End::CutAt(step)
                            if watch
                                .steps
                                .iter()
                                .any(|s| s.split_whitespace().any(|w| w == step)) =>
                        {
                            // Power cut: QEMU stops at once, nothing is flushed.
                            Some(("cut", "quit"))
                        }
                        End::QuitWhenProven | End::ResetAtKernel
                            if watch.outcome == Some(Outcome::Complete) =>
                        {
                            Some(("quit", "quit"))
                        }
                        // With -no-reboot, QEMU exits on the reset.
                        End::ResetAtKernel
                            if watch.outcome.is_none() && line.text.contains("Command line:") =>
                        {
                            Some(("reset", "system_reset"))
                        }
                        _ => None,
                    };
                    if let (Some((what, command)), Some(q)) = (act, qmp.as_mut()) {
                        // QEMU may stop before it answers; the exit that follows is what counts.
                        let _ = q.execute(command, None);
                        ended_by_harness = Some(what);
                    }
                }
                Err(bootyard_scenarios::qemu::QemuError::Exited { status, .. })
                    if probation && !kernel_seen && ended_by_harness.is_none() =>
                {
                    return Ok(Err(format!(
                        "QEMU exited ({status}) before the kernel printed"
                    )));
                }
                Err(bootyard_scenarios::qemu::QemuError::Exited { .. }) => break,
                Err(e) => {
                    let now = started.elapsed().as_millis() as u64;
                    if let Some(t) = tracker.as_mut() {
                        for ev in t.handle_timeout(now) {
                            if let PhaseEvent::TimedOut {
                                phase, deadline_ms, ..
                            } = ev
                            {
                                phase_failure = Some(format!(
                                    "phase {phase} not reached within {deadline_ms} ms"
                                ));
                            }
                        }
                    }
                    if probation
                        && !kernel_seen
                        && (phase_failure.is_some() || Instant::now() >= kernel_deadline)
                    {
                        m.kill();
                        let why = phase_failure.unwrap_or_else(|| {
                            format!("no kernel output within {} s", KVM_KERNEL_TIMEOUT.as_secs())
                        });
                        return Ok(Err(why));
                    }
                    if phase_failure.is_some() || Instant::now() >= deadline {
                        m.kill();
                        let why = phase_failure.unwrap_or_else(|| e.to_string());
                        return Err(Self::fail(format!(
                            "boot {n} ({purpose}): {why}; console: {}",
                            console_log.display()
                        )));
                    }
                }
            }
        }
        if let Some(t) = tracker.as_ref().filter(|t| !t.done()) {
            if expected_outcome == Outcome::Complete && watch.outcome == Some(Outcome::Complete) {
                return Err(Self::fail(format!(
                    "boot {n} ({purpose}): phase {} was never seen; console: {}",
                    t.current().unwrap_or("?"),
                    console_log.display()
                )));
            }
        }
        let report = BootReport {
            n,
            purpose: purpose.into(),
            expected_slot,
            expected_version: expected_version.clone(),
            expected_outcome,
            slot: watch.slot.clone(),
            version: watch.version.clone(),
            outcome: watch.outcome,
            hook_rc: watch.hook_rc,
            steps,
            phases,
            ms: started.elapsed().as_millis() as u64,
            console_log: console_log.clone(),
            ended_by_harness: ended_by_harness.map(String::from),
        };
        self.boots.push(report.clone());
        let disagree = |what: String| {
            Self::fail(format!(
                "boot {n} ({purpose}) disagrees with the model: {what}; console: {}",
                console_log.display()
            ))
        };
        // A power cut can come before GRUB has said anything; a reset comes after the
        // kernel named the slot, which must be the model's.
        if ended_by_harness == Some("cut") {
            return Ok(Ok(report));
        }
        if watch.slot.as_deref() != Some(expected_slot.to_string().as_str()) {
            return Err(disagree(format!(
                "GRUB booted {:?}, the model says {expected_slot}",
                watch.slot
            )));
        }
        if ended_by_harness == Some("reset") {
            return Ok(Ok(report));
        }
        // A kernel that panics before the stage never says its version.
        if let Some(v) = &watch.version {
            if *v != expected_version {
                return Err(disagree(format!(
                    "version {v} came up, the model says {expected_version}"
                )));
            }
        }
        if watch.outcome != Some(expected_outcome) {
            return Err(disagree(format!(
                "the boot ended {:?}{}, expected {expected_outcome:?}",
                watch.outcome,
                watch
                    .failure_line
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            )));
        }
        if expected_outcome == Outcome::Complete {
            if watch.version.is_none() {
                return Err(disagree(
                    "the boot completed without saying which version it runs".into(),
                ));
            }
            self.model()?.boot_complete();
        }
        Ok(Ok(report))
    }

    /// The slots as the disk has them must be the model's.
    fn check_disk(&mut self, why_contains: Option<&str>) -> Result<String, ScenarioRunError> {
        let disk_model =
            crate::upgrade::read_disk_model(&self.disk).map_err(anyhow::Error::from)?;
        let model = self.model()?.clone();
        for (name, a, b) in [
            ("active", &disk_model.active, &model.active),
            ("passive", &disk_model.passive, &model.passive),
        ] {
            if a != b {
                return Err(Self::fail(format!(
                    "the disk's {name} slot is {a:?}, the model's {b:?}"
                )));
            }
        }
        let why = crate::cli::status::explain(&disk_model);
        if let Some(w) = why_contains {
            if !why.contains(w) {
                return Err(Self::fail(format!(
                    "status says {why:?}, expected it to mention {w:?}"
                )));
            }
        }
        Ok(why)
    }

    fn source(&self, version: &str) -> Result<Source, ScenarioRunError> {
        self.images
            .get(version)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| Self::harness(format!("the run has no image {version}")))
    }

    /// Installs `version` on a fresh disk, as a node's installer would.
    pub fn install(
        &mut self,
        version: &str,
    ) -> Result<crate::install::InstallReport, ScenarioRunError> {
        let source = self.source(version)?;
        if self.disk.exists() {
            std::fs::remove_file(&self.disk).map_err(anyhow::Error::from)?;
        }
        let mut o = crate::install::InstallOptions::new(self.disk.clone(), self.pull.clone());
        o.tries = self.file.tries;
        o.persistent_bytes = 512 << 20;
        let r = crate::install::install(&source, &o).map_err(anyhow::Error::from)?;
        self.model =
            Some(BootModel::installed(&r.version, self.file.tries).map_err(anyhow::Error::from)?);
        Ok(r)
    }

    /// Writes `version` to the disk from the host, with the same steps the node's
    /// `bootyard upgrade` takes.
    pub fn upgrade_from_host(
        &mut self,
        version: &str,
    ) -> Result<crate::upgrade::UpgradeReport, ScenarioRunError> {
        let source = self.source(version)?;
        let r = crate::upgrade::upgrade_disk(&source, &self.disk, &self.pull)
            .map_err(anyhow::Error::from)?;
        // Offline, the node "runs" from where it last booted.
        let m = self.model()?;
        m.running = Some(r.from_slot);
        m.upgrade(&r.version).map_err(anyhow::Error::from)?;
        Ok(r)
    }

    /// `bootyard rollback`'s swap, made to the disk from the host.
    pub fn rollback_from_host(
        &mut self,
    ) -> Result<crate::upgrade::DiskRollbackReport, ScenarioRunError> {
        let last = crate::upgrade::read_disk_model(&self.disk)
            .map_err(anyhow::Error::from)?
            .last_boot
            .map(|(s, _)| s);
        let r = crate::upgrade::rollback_disk(&self.disk).map_err(anyhow::Error::from)?;
        let m = self.model()?;
        m.running = Some(last.unwrap_or(Slot::Active));
        m.rollback().map_err(anyhow::Error::from)?;
        Ok(r)
    }

    /// The slots as the disk has them must be the model's; says how `status` explains them.
    pub fn check_disk_agrees(&mut self) -> Result<String, ScenarioRunError> {
        self.check_disk(None)
    }

    pub fn step(&mut self, st: &StepSpec) -> Result<String, ScenarioRunError> {
        match st {
            StepSpec::Install { image } => {
                let r = self.install(image)?;
                Ok(format!("installed {} ({} bytes)", r.version, r.size_bytes))
            }
            StepSpec::Boot { times } => {
                let mut seen = Vec::new();
                for _ in 0..*times {
                    let b = self.power_on("boot", "true\n", None)?;
                    seen.push(format!(
                        "{}:{}:{:?}",
                        b.expected_slot, b.expected_version, b.expected_outcome
                    ));
                }
                Ok(seen.join(" "))
            }
            StepSpec::Upgrade { image, from } => match from {
                UpgradeFrom::Host => {
                    let r = self.upgrade_from_host(image)?;
                    Ok(format!("host upgrade to {image} from {}", r.from_slot))
                }
                UpgradeFrom::Node => {
                    let hook = format!("{}\n", self.upgrade_command(image)?);
                    let b = self.power_on(&format!("upgrade to {image}"), &hook, None)?;
                    if b.hook_rc != Some(0) {
                        return Err(Self::fail(format!(
                            "the upgrade to {image} on the node failed (rc {:?}); console: {}",
                            b.hook_rc,
                            b.console_log.display()
                        )));
                    }
                    self.model()?.upgrade(image).map_err(anyhow::Error::from)?;
                    Ok(format!(
                        "node upgrade to {image}: {}",
                        b.steps
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            },
            StepSpec::Rollback => {
                let b = self.power_on("manual rollback", "bootyard rollback\n", None)?;
                if b.hook_rc != Some(0) {
                    return Err(Self::fail(format!(
                        "rollback on the node failed (rc {:?}); console: {}",
                        b.hook_rc,
                        b.console_log.display()
                    )));
                }
                self.model()?.rollback().map_err(anyhow::Error::from)?;
                Ok(format!(
                    "rollback: {}",
                    b.steps
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            StepSpec::Status { why_contains } => self.check_disk(why_contains.as_deref()),
        }
    }
}

/// Runs `file` on one flavor; the report says what happened, pass or fail.
pub fn run(file: &ScenarioFile, opts: &RunOptions) -> Result<RunReport, ScenarioRunError> {
    let started = Instant::now();
    let mut report = RunReport {
        schema_version: 2,
        scenario: file.name.clone(),
        flavor: opts.flavor,
        accel: opts.accel.report(None),
        passed: false,
        failure: None,
        ms: 0,
        build_ms: 0,
        steps: Vec::new(),
        boots: Vec::new(),
        final_model: None,
        workdir: opts.workdir.clone(),
    };
    let mut r = match Run::start(file, opts) {
        Ok(r) => r,
        Err(e) => {
            report.failure = Some(format!("{:#}", anyhow::Error::from(e)));
            report.ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
    };
    report.build_ms = started.elapsed().as_millis() as u64;
    let result = (|| -> Result<(), ScenarioRunError> {
        for (i, st) in file.steps.iter().enumerate() {
            let t = Instant::now();
            let detail = r.step(st)?;
            report.steps.push(StepReport {
                n: i + 1,
                step: format!("{st:?}"),
                ms: t.elapsed().as_millis() as u64,
                detail,
            });
        }
        // Whatever the steps were, the disk must end where the model says.
        if r.model.is_some() {
            r.check_disk(None)?;
        }
        Ok(())
    })();
    report.passed = result.is_ok();
    report.failure = result
        .err()
        .map(|e| format!("{:#}", anyhow::Error::from(e)));
    report.boots = r.boots.clone();
    report.accel = r.accel_report();
    report.final_model = r.model.clone();
    report.ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Default place for run artifacts.
pub fn default_workdir(name: &str, flavor: Flavor) -> PathBuf {
    Path::new("target/scenarios").join(format!(
        "{name}-{}",
        match flavor {
            Flavor::Busybox => "busybox",
            Flavor::Debian => "debian",
        }
    ))
}
