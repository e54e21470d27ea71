//! Choosing the accelerator on hosts where `/dev/kvm` opens but KVM cannot run Linux (the
//! nested `kvm-pvm` host of issue 19, where a good image failed BOOT-001 under `--accel
//! auto`). The broken KVM is faked by a QEMU wrapper (see `stalling_kvm_qemu`): under
//! "KVM" the guest gets a CPU without long mode, so firmware and GRUB run and the kernel
//! never starts. Real boots under QEMU (TCG).

#[path = "support/boot.rs"]
mod support;

use bootyard::accel::{probe, AccelMode};
use bootyard::scenario::run;
use bootyard_scenarios::qemu::Accel;
use bootyard_scenarios::ScenarioFile;
use support::{asset_cache, kvm_device_opens, run_dir, scenario_options, stalling_kvm_qemu};

fn kernel() -> std::path::PathBuf {
    bootyard::debpkg::cloud_kernel(&asset_cache())
        .unwrap()
        .vmlinuz
}

#[test]
fn r19_the_probe_does_not_take_a_kvm_that_cannot_boot_linux() {
    let test = "r19_the_probe_does_not_take_a_kvm_that_cannot_boot_linux";
    if !support::boot_tools(test) || !kvm_device_opens(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qemu = stalling_kvm_qemu(dir.path(), true);
    let c = probe(qemu.to_str().unwrap(), &kernel(), dir.path());
    assert_eq!((c.accel, c.mode), (Accel::Tcg, AccelMode::Auto), "{c:?}");
    assert!(
        c.reason.contains("did not reach userspace under KVM")
            && c.reason.contains("under TCG it did"),
        "{}",
        c.reason
    );
}

#[test]
fn the_probe_takes_kvm_when_kvm_boots_the_kernel_to_userspace() {
    let test = "the_probe_takes_kvm_when_kvm_boots_the_kernel_to_userspace";
    if !support::boot_tools(test) || !kvm_device_opens(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Kernel boots under this "KVM" are TCG boots, as fast as the TCG probe's.
    let qemu = stalling_kvm_qemu(dir.path(), false);
    let c = probe(qemu.to_str().unwrap(), &kernel(), dir.path());
    assert_eq!(c.accel, Accel::Kvm, "{}", c.reason);
    assert!(c.may_fall_back());
    assert!(c.reason.contains("reached userspace"), "{}", c.reason);
}

const TWO_BOOTS: &str = r#"
schema = 1
name = "accel-fallback"
tries = 2
watchdog_sec = 60
[[image]]
version = "v1"
[[step]]
do = "install"
image = "v1"
[[step]]
do = "boot"
times = 2
[[phase]]
name = "firmware"
deadline_s = 30
marker = "SeaBIOS"
[[phase]]
name = "bootloader"
deadline_s = 30
marker = "bootyard: booting slot"
[[phase]]
name = "kernel"
deadline_s = 30
marker = "Linux version"
[[phase]]
name = "boot-complete"
deadline_s = 180
marker = "BOOTYARD-BOOT-COMPLETE"
"#;

#[test]
fn r19_a_boot_that_stalls_under_kvm_before_its_kernel_is_run_again_under_tcg() {
    let test = "r19_a_boot_that_stalls_under_kvm_before_its_kernel_is_run_again_under_tcg";
    let dir = run_dir("accel-fallback");
    let Some(mut opts) = scenario_options(test, &dir) else {
        return;
    };
    if !kvm_device_opens(test) {
        return;
    }
    let qemu = stalling_kvm_qemu(&dir, false);
    opts.qemu = qemu.display().to_string();
    opts.accel = probe(&opts.qemu, &kernel(), &dir.join("probe"));
    assert_eq!(opts.accel.accel, Accel::Kvm, "{}", opts.accel.reason);
    let file = ScenarioFile::parse(TWO_BOOTS, "accel-fallback").unwrap();
    let r = run(&file, &opts).unwrap();
    assert!(r.passed, "{:?}", r.failure);
    assert_eq!(r.accel.accel, "tcg");
    let fallback = r.accel.fallback.as_deref().unwrap_or_default();
    assert!(
        fallback.contains("boot 1 (boot) did not reach its kernel under KVM"),
        "{fallback:?}"
    );
    // Both boots were judged (the stalled one is not among them: it was run again), and
    // the tries the stalled boot's GRUB spent were given back: the model's second boot is
    // the first one's slot, proven good.
    assert_eq!(r.boots.len(), 2);
    assert!(r.boots.iter().all(|b| b.version.as_deref() == Some("v1")));
    assert!(r.workdir.join("boot01-kvm.console.log").is_file());
    let kvm_log = std::fs::read_to_string(r.workdir.join("boot01-kvm.console.log")).unwrap();
    assert!(kvm_log.contains("bootyard: booting slot"), "{kvm_log}");
    assert!(!kvm_log.contains("Linux version"), "{kvm_log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The probe on this host's own QEMU and KVM: it decides, and says why in terms of what it
/// booted. (On the nested-KVM machines bootyard's CI runs on, it picks TCG.)
#[test]
fn the_probe_decides_on_this_host_with_the_real_qemu() {
    let test = "the_probe_decides_on_this_host_with_the_real_qemu";
    if !support::boot_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let c = probe("qemu-system-x86_64", &kernel(), dir.path());
    eprintln!(
        "accelerator: {:?} in {} ms ({})",
        c.accel,
        started.elapsed().as_millis(),
        c.reason
    );
    match c.accel {
        Accel::Kvm => assert!(c.reason.contains("under KVM"), "{}", c.reason),
        Accel::Tcg => assert!(
            c.reason.contains("cannot be opened") || c.reason.contains("under TCG"),
            "{}",
            c.reason
        ),
    }
}
