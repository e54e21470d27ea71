//! Which accelerator real boots run under, and why.
//!
//! `/dev/kvm` opening says little: on a nested host (`kvm-pvm`) KVM runs firmware and GRUB
//! but never a Linux kernel, so a probe that boots a boot sector passes and every real boot
//! then stalls right after GRUB. The probe here does what a real boot needs: it boots the
//! kernel the run will boot, with a one-file initramfs whose `/init` prints a line, to that
//! first line of userspace. It boots it under TCG and under KVM at once (one core each) and
//! picks KVM only when KVM got there, and not clearly later than TCG did.
//!
//! A probe can still be wrong (a kernel that starts under KVM from `-kernel` but not from
//! GRUB, a host that breaks later), so the scenario runner also keeps KVM on probation until
//! one of its boots reaches the kernel, and retries a stalled boot under TCG (see
//! [`crate::scenario::Run::boot`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bootyard_scenarios::qemu::{Accel, Machine, MachineSpec, QemuError};
use serde::Serialize;

/// The line the probe's `/init` prints.
pub const PROBE_MARKER: &str = "BOOTYARD-PROBE-USERSPACE";
/// How long the TCG probe may take to reach userspace (a cloud kernel takes about 3 s here).
const PROBE_TCG_TIMEOUT: Duration = Duration::from_secs(90);
/// KVM must reach userspace within TCG's time times this ratio (in tenths), plus
/// [`PROBE_KVM_SLACK`]: a KVM that is clearly slower than TCG at a kernel boot is not used.
const PROBE_KVM_RATIO_TENTHS: u32 = 12;
const PROBE_KVM_SLACK: Duration = Duration::from_millis(1500);
/// Guest memory of a probe: a kernel and a one-file initramfs.
const PROBE_MEMORY_MIB: u32 = 256;

/// How a run's accelerator was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// Probed, with the fallback to TCG armed.
    Auto,
    /// Asked for by name: no probe, no fallback.
    Forced,
}

/// The accelerator a run starts with, and the sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub mode: AccelMode,
    pub reason: String,
}

impl AccelChoice {
    pub fn forced(accel: Accel) -> Self {
        Self {
            accel,
            mode: AccelMode::Forced,
            reason: format!("--accel {}", accel_name(accel)),
        }
    }

    /// What a report says of this choice: the accelerator, why, and what moved it.
    pub fn report(&self, fallback: Option<String>) -> AccelReport {
        AccelReport {
            accel: accel_name(self.accel).into(),
            reason: self.reason.clone(),
            fallback,
        }
    }

    /// Whether a boot that stalls under KVM before its kernel may be retried under TCG.
    pub fn may_fall_back(&self) -> bool {
        self.mode == AccelMode::Auto && self.accel == Accel::Kvm
    }
}

pub fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// What a run says about its accelerator in its reports: what it started with and why, and
/// what it ended on (a fallback moves it to TCG, with the boot that caused it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccelReport {
    /// `kvm` or `tcg`: what the run ended on.
    pub accel: String,
    /// Why the run started with the accelerator it started with.
    pub reason: String,
    /// Set when a boot stalled under KVM and the run moved to TCG.
    pub fallback: Option<String>,
}

/// Chooses the accelerator for boots of `kernel`: KVM when `/dev/kvm` opens and the probe
/// kernel reaches userspace under KVM within TCG's time (see the module doc); else TCG.
/// Never fails: whatever goes wrong is said in the reason, and TCG is chosen.
pub fn probe(qemu: &str, kernel: &Path, workdir: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        mode: AccelMode::Auto,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm cannot be opened ({e})"));
    }
    let initrd = workdir.join("accel-probe.cpio");
    if let Err(e) = std::fs::create_dir_all(workdir)
        .and_then(|()| probe_initramfs())
        .and_then(|b| std::fs::write(&initrd, b))
    {
        return tcg(format!(
            "the KVM probe could not be set up ({e}); TCG is always there"
        ));
    }
    let race = match race(qemu, kernel, &initrd, workdir) {
        Ok(r) => r,
        Err(e) => return tcg(format!("the KVM probe could not run ({e})")),
    };
    decide(&race, kernel)
}

/// How far each probe got: the time to the marker, or why it did not get there.
#[derive(Debug, Clone)]
struct Race {
    tcg: Result<u64, String>,
    kvm: Result<u64, String>,
    kvm_deadline_ms: u64,
}

fn decide(r: &Race, kernel: &Path) -> AccelChoice {
    let choice = |accel, reason| AccelChoice {
        accel,
        mode: AccelMode::Auto,
        reason,
    };
    let k = kernel.display();
    match (&r.tcg, &r.kvm) {
        (Ok(t), Ok(v)) if *v <= r.kvm_deadline_ms => choice(
            Accel::Kvm,
            format!("the probe kernel ({k}) reached userspace in {v} ms under KVM ({t} ms under TCG)"),
        ),
        (Ok(t), Ok(v)) => choice(
            Accel::Tcg,
            format!("KVM reached userspace in {v} ms, clearly slower than TCG's {t} ms with the probe kernel ({k})"),
        ),
        (Ok(t), Err(why)) => choice(
            Accel::Tcg,
            format!("/dev/kvm opens, but the probe kernel ({k}) did not reach userspace under KVM ({why}); under TCG it did, in {t} ms"),
        ),
        (Err(why), Ok(v)) => choice(
            Accel::Kvm,
            format!("the probe kernel ({k}) reached userspace in {v} ms under KVM; under TCG it did not ({why})"),
        ),
        (Err(t), Err(v)) => choice(
            Accel::Tcg,
            format!("the probe kernel ({k}) reached userspace under neither KVM ({v}) nor TCG ({t}): the boots will tell"),
        ),
    }
}

/// Boots the probe under TCG and KVM at once. KVM's deadline is set by TCG's time.
fn race(qemu: &str, kernel: &Path, initrd: &Path, workdir: &Path) -> Result<Race, QemuError> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut stoppers = Vec::new();
    let mut threads = Vec::new();
    for accel in [Accel::Tcg, Accel::Kvm] {
        let mut spec = MachineSpec::new(&format!("accel-probe-{}", accel_name(accel)), workdir);
        spec.binary = qemu.into();
        spec.accel = accel;
        spec.memory_mib = PROBE_MEMORY_MIB;
        spec.kernel = Some(kernel.to_path_buf());
        spec.initrd = Some(initrd.to_path_buf());
        // quiet: the kernel's log over a TCG serial port is most of the time to userspace.
        spec.append = Some("console=ttyS0 panic=-1 quiet".into());
        let mut m = Machine::launch(spec)?;
        stoppers.push(m.stopper());
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let r = m
                .wait_for(PROBE_MARKER, PROBE_TCG_TIMEOUT)
                .map(|l| l.at_ms)
                .map_err(|e| short(&e));
            // The receiver outlives both threads (they are joined below).
            let _ = tx.send((accel, r));
        }));
    }
    drop(tx);
    let mut tcg = None;
    let mut kvm = None;
    let mut kvm_deadline_ms = u64::MAX;
    let hard = started + PROBE_TCG_TIMEOUT + Duration::from_secs(5);
    while tcg.is_none() || kvm.is_none() {
        let until = if tcg.is_some() {
            (started + Duration::from_millis(kvm_deadline_ms)).min(hard)
        } else {
            hard
        };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((Accel::Tcg, r)) => {
                if let Ok(t) = &r {
                    kvm_deadline_ms = t * u64::from(PROBE_KVM_RATIO_TENTHS) / 10
                        + PROBE_KVM_SLACK.as_millis() as u64;
                }
                tcg = Some(r);
            }
            Ok((Accel::Kvm, r)) => kvm = Some(r),
            Err(_) => {
                // KVM's time is up (or, failing everything, the hard limit).
                if kvm.is_none() {
                    kvm = Some(Err(format!(
                        "nothing within {} ms",
                        started.elapsed().as_millis()
                    )));
                }
                if tcg.is_none() {
                    tcg = Some(Err("no answer".into()));
                }
            }
        }
    }
    for s in &stoppers {
        s.kill();
    }
    for t in threads {
        // A probe thread only waits on its machine; a panic there is a bug to surface.
        t.join().expect("accelerator probe thread panicked");
    }
    Ok(Race {
        tcg: tcg.expect("set above"),
        kvm: kvm.expect("set above"),
        kvm_deadline_ms,
    })
}

/// A QEMU error in a few words, for a reason sentence (the console path is in the workdir).
fn short(e: &QemuError) -> String {
    match e {
        QemuError::Timeout { timeout_ms, .. } => format!("no userspace within {timeout_ms} ms"),
        QemuError::Exited { status, .. } => format!("QEMU exited ({status}) before userspace"),
        other => other.to_string(),
    }
}

/// The probe's initramfs: `/dev/console` (the kernel opens it for init's standard streams)
/// and `/init`, a static x86-64 program that prints [`PROBE_MARKER`] and exits, whereupon
/// the kernel panics and, with `panic=-1` and QEMU's `-no-reboot`, the machine ends.
pub fn probe_initramfs() -> io::Result<Vec<u8>> {
    let mut w = crate::boot::cpio::CpioWriter::new(Vec::new());
    w.dir("dev", 0o755)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, &probe_init())?;
    w.finish()
}

/// A 64-bit ELF executable of one loadable segment: `write(1, msg, len); exit(0)`. Written
/// by hand so the probe needs no userspace from anywhere (the image's may not run, and the
/// host's is not static).
pub fn probe_init() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let msg = format!("\n{PROBE_MARKER}\n");
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1 (stdout)
    let lea_at = code.len();
    code.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + msg]
    code.extend([0xba]); // mov edx, len
    code.extend((msg.len() as u32).to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    let rel = (code.len() - (lea_at + 7)) as u32;
    code[lea_at + 3..lea_at + 7].copy_from_slice(&rel.to_le_bytes());
    code.extend(msg.as_bytes());

    let total = (EHDR + PHDR + code.len()) as u64;
    let entry = BASE + (EHDR + PHDR) as u64;
    let mut e = Vec::with_capacity(total as usize);
    e.extend(b"\x7fELF");
    e.extend([2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    e.extend([0u8; 8]);
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(0x3eu16.to_le_bytes()); // x86-64
    e.extend(1u32.to_le_bytes());
    e.extend(entry.to_le_bytes());
    e.extend((EHDR as u64).to_le_bytes()); // program headers right after
    e.extend(0u64.to_le_bytes()); // no sections
    e.extend(0u32.to_le_bytes());
    e.extend((EHDR as u16).to_le_bytes());
    e.extend((PHDR as u16).to_le_bytes());
    e.extend(1u16.to_le_bytes());
    e.extend([0u8; 6]); // no section headers
    assert_eq!(e.len(), EHDR);
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // R + X
    e.extend(0u64.to_le_bytes()); // from the file's start
    e.extend(BASE.to_le_bytes());
    e.extend(BASE.to_le_bytes());
    e.extend(total.to_le_bytes());
    e.extend(total.to_le_bytes());
    e.extend(0x1000u64.to_le_bytes());
    assert_eq!(e.len(), EHDR + PHDR);
    e.extend(code);
    e
}

/// The kernel an image boots, as the probe should boot it: `/boot/vmlinuz` resolved inside
/// the image's tree.
pub fn image_kernel(root: &Path) -> Option<PathBuf> {
    crate::conformance::image_checks::resolve(root, "boot/vmlinuz").filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_init_prints_its_marker_and_exits_cleanly() {
        // It only writes and exits, so it is safe to run here as it runs in the guest.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("init");
        std::fs::write(&p, probe_init()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&p).output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("\n{PROBE_MARKER}\n")
        );
    }

    #[test]
    fn the_probe_init_is_a_static_x86_64_executable() {
        let e = probe_init();
        assert!(crate::testimage::is_static_elf(&e));
        let info = crate::conformance::elf::parse(&e).unwrap();
        assert_eq!(info.arch, Some(crate::conformance::elf::Arch::Amd64));
        assert!(info.executable);
        assert_eq!(info.interp, None);
    }

    fn race(tcg: Result<u64, &str>, kvm: Result<u64, &str>) -> Race {
        let tcg = tcg.map_err(String::from);
        let kvm_deadline_ms = tcg.as_ref().map_or(u64::MAX, |t| t * 12 / 10 + 1500);
        Race {
            tcg,
            kvm: kvm.map_err(String::from),
            kvm_deadline_ms,
        }
    }

    #[test]
    fn kvm_is_chosen_only_when_it_reaches_userspace_in_tcgs_time() {
        let k = Path::new("vmlinuz");
        let pick = |r: Race| decide(&r, k);
        assert_eq!(pick(race(Ok(3000), Ok(400))).accel, Accel::Kvm);
        assert_eq!(pick(race(Ok(3000), Ok(5100))).accel, Accel::Kvm);
        assert_eq!(pick(race(Ok(3000), Ok(5200))).accel, Accel::Tcg);
        // The nested-KVM host: firmware runs, the kernel never does.
        let c = pick(race(Ok(3000), Err("no userspace within 5500 ms")));
        assert_eq!(c.accel, Accel::Tcg);
        assert!(
            c.reason.contains("did not reach userspace under KVM"),
            "{}",
            c.reason
        );
        assert!(c.reason.contains("3000 ms"), "{}", c.reason);
        assert_eq!(pick(race(Err("x"), Ok(900))).accel, Accel::Kvm);
        assert_eq!(pick(race(Err("x"), Err("y"))).accel, Accel::Tcg);
        assert!(pick(race(Ok(1), Ok(1))).may_fall_back());
    }
}
