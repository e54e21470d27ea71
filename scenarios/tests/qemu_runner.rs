//! The QEMU runner against a real `qemu-system-x86_64` (TCG): console capture, exit status,
//! QMP control, deadlines, and the accelerator probe. The guest is a 512-byte boot sector, so
//! each boot takes a fraction of a second.

use std::path::Path;
use std::time::{Duration, Instant};

use bootyard_scenarios::bootsector;
use bootyard_scenarios::qemu::{run_probe, Accel, Drive, Machine, MachineSpec, QemuError};

/// Missing QEMU skips the test on a developer machine and fails it in CI, which installs it.
fn have_qemu(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()));
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: qemu-system-x86_64 missing in CI (apt-get install qemu-system-x86)"
        );
        eprintln!("SKIPPED {test}: qemu-system-x86_64 not installed");
    }
    found
}

fn sector_machine(dir: &Path, name: &str, exit: bool) -> MachineSpec {
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, bootsector::sector(b'Z', exit)).unwrap();
    let mut spec = MachineSpec::new(name, dir);
    spec.memory_mib = 16;
    spec.drives.push(Drive {
        path: img,
        format: "raw".into(),
        interface: "floppy".into(),
    });
    spec.devices.push(bootsector::DEBUG_EXIT_DEVICE.into());
    spec
}

#[test]
fn qemu_console_and_exit_status() {
    if !have_qemu("qemu_console_and_exit_status") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(sector_machine(tmp.path(), "exits", true)).unwrap();
    let line = m.wait_for("Z", Duration::from_secs(30)).unwrap();
    assert_eq!(line.text, "Z");
    let status = m
        .wait_exit(Instant::now() + Duration::from_secs(30))
        .unwrap();
    assert_eq!(status.code(), Some(bootsector::EXIT_STATUS));
    let log = std::fs::read_to_string(m.spec().console_log()).unwrap();
    assert!(log.contains("Z\n"), "console log kept: {log:?}");
}

#[test]
fn qemu_qmp_pause_resume_and_power_cut() {
    if !have_qemu("qemu_qmp_pause_resume_and_power_cut") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(sector_machine(tmp.path(), "stays", false)).unwrap();
    m.wait_for("Z", Duration::from_secs(30)).unwrap();
    let mut q = m.qmp(Duration::from_secs(10)).unwrap();
    assert_eq!(q.status().unwrap(), "running");
    q.execute("stop", None).unwrap();
    assert_eq!(q.status().unwrap(), "paused");
    q.execute("cont", None).unwrap();
    assert_eq!(q.status().unwrap(), "running");
    let err = q.execute("no-such-command", None).unwrap_err();
    assert!(matches!(err, QemuError::Qmp { .. }), "{err}");
    // Power cut by QMP: QEMU quits at once, without a guest shutdown.
    q.execute("quit", None).unwrap();
    let status = m
        .wait_exit(Instant::now() + Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn qemu_deadlines_are_errors_that_name_the_console_log() {
    if !have_qemu("qemu_deadlines_are_errors_that_name_the_console_log") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(sector_machine(tmp.path(), "silent", false)).unwrap();
    m.wait_for("Z", Duration::from_secs(30)).unwrap();
    let err = m
        .wait_for("never printed", Duration::from_millis(300))
        .unwrap_err();
    match err {
        QemuError::Timeout { what, console, .. } => {
            assert!(what.contains("never printed"));
            assert!(console.ends_with("silent.console.log"));
        }
        other => panic!("{other}"),
    }
    // A machine that exits while we wait says so, with its status.
    let mut m = Machine::launch(sector_machine(tmp.path(), "quits", true)).unwrap();
    let err = m
        .wait_for("never printed", Duration::from_secs(30))
        .unwrap_err();
    assert!(matches!(err, QemuError::Exited { .. }), "{err}");
}

#[test]
fn qemu_boot_sector_probe_finishes_within_its_deadline() {
    if !have_qemu("qemu_boot_sector_probe_finishes_within_its_deadline") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ms = run_probe(
        "qemu-system-x86_64",
        tmp.path(),
        Accel::Tcg,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ms < 30_000);
}
