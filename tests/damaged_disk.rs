//! Installed disks that are damaged or are not bootyard's: `status` and `upgrade --disk`
//! say what is wrong, repair what is safe to repair, and never call such a disk healthy
//! (issue 19). Host-side only: no boot.

#[path = "support/boot.rs"]
mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use support::{boot_tools, bootyard_json, Images};

fn bootyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(args)
        .env("CI", "1")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An installed disk (v1), and the source of a v2 to upgrade to.
fn installed(test: &str, dir: &Path) -> Option<(std::path::PathBuf, String)> {
    if !boot_tools(test) {
        return None;
    }
    let images = Images::new(dir);
    let disk = dir.join("disk.img");
    bootyard_json(&[
        "install",
        "--image",
        &images.source("v1"),
        "--disk",
        disk.to_str().unwrap(),
    ]);
    Some((disk, images.source("v2")))
}

#[test]
fn r19_a_truncated_disk_is_not_called_healthy_nor_upgraded() {
    let t = tempfile::tempdir().unwrap();
    let Some((disk, v2)) = installed("r19_truncated_disk", t.path()) else {
        return;
    };
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let full = f.metadata().unwrap().len();
    f.set_len(full / 2).unwrap();
    drop(f);
    let before = std::fs::read(&disk).unwrap();
    for args in [
        vec!["status", "--disk", disk.to_str().unwrap()],
        vec!["upgrade", "--image", &v2, "--disk", disk.to_str().unwrap()],
    ] {
        let o = bootyard(&args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("cut short"), "{args:?}: {}", text(&o));
    }
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refusal changed the disk"
    );
}

#[test]
fn r19_a_corrupt_primary_gpt_is_reported_and_the_upgrade_repairs_it() {
    let t = tempfile::tempdir().unwrap();
    let Some((disk, v2)) = installed("r19_corrupt_primary_gpt", t.path()) else {
        return;
    };
    for (at, len, damage) in [(1u64, 1usize, "primary"), (2, 4, "partition entries")] {
        let copy = t.path().join(format!("copy-{at}.img"));
        std::fs::copy(&disk, &copy).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.write_all_at(&vec![0xa5; 512 * len], at * 512).unwrap();
        drop(f);
        let o = bootyard(&["status", "--disk", copy.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(
            text(&o).contains("the partition table is damaged") && text(&o).contains(damage),
            "{}",
            text(&o)
        );
        let up = bootyard_json(&["upgrade", "--image", &v2, "--disk", copy.to_str().unwrap()]);
        let said = up["disk_problems"].to_string();
        assert!(said.contains("rewritten from the intact copy"), "{up}");
        // Repaired: status is clean again, and sgdisk agrees.
        let o = bootyard(&["status", "--disk", copy.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(!text(&o).contains("warning"), "{}", text(&o));
        let v = Command::new("sgdisk")
            .arg("-v")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&v.stdout).contains("No problems found"),
            "{}",
            String::from_utf8_lossy(&v.stdout)
        );
        std::fs::remove_file(&copy).unwrap();
    }
}

#[test]
fn r19_a_foreign_disk_is_not_a_bootyard_disk() {
    let t = tempfile::tempdir().unwrap();
    if !boot_tools("r19_foreign_disk") {
        return;
    }
    let disk = t.path().join("foreign.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // A GPT of someone else's, with a partition that happens to be called COS_STATE.
    let o = Command::new("sgdisk")
        .args(["-n", "1:2048:+16M", "-c", "1:COS_STATE"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bootyard(&["status", "--disk", disk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("not a disk bootyard installed") && !text(&o).contains("debugfs"),
        "{}",
        text(&o)
    );
}

#[test]
fn status_reports_a_transition_image_left_by_a_cut_off_upgrade() {
    let t = tempfile::tempdir().unwrap();
    let Some((disk, _)) = installed("status_reports_a_stray_transition", t.path()) else {
        return;
    };
    support::debugfs(&disk, true, "write /dev/null /cOS/transition.img");
    let o = bootyard(&["status", "--disk", disk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("warning: cOS/transition.img is on COS_STATE"),
        "{}",
        text(&o)
    );
    let j = bootyard_json(&["status", "--disk", disk.to_str().unwrap()]);
    assert!(
        j["problems"][0]
            .as_str()
            .unwrap()
            .contains("transition.img"),
        "{j}"
    );
}

/// The `.bootyard-*` scratch entries beside the disk.
fn scratch(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bootyard-"))
        .collect()
}

/// Starts `bootyard upgrade` on `disk` and returns it once its scratch directory exists.
fn upgrade_under_way(disk: &Path, v2: &str) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(["upgrade", "--image", v2, "--disk", disk.to_str().unwrap()])
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = disk.parent().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Polled: the scratch appears within the upgrade's first second.
    while scratch(dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upgrade made no scratch within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Issue 19: an `upgrade --disk` stopped 0.3-1 s in left a 26-48 MB `.bootyard-upgrade-*`
/// beside the disk that later runs never removed.
#[test]
fn r19_an_interrupted_upgrade_leaves_no_scratch_behind() {
    let t = tempfile::tempdir().unwrap();
    let Some((disk, v2)) = installed("r19_interrupted_upgrade", t.path()) else {
        return;
    };
    for (signal, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut child = upgrade_under_way(&disk, &v2);
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(status), "{st:?}");
        assert!(scratch(t.path()).is_empty(), "{:?}", scratch(t.path()));
    }
    // SIGKILL cannot be handled: the next run sweeps what the dead one left.
    let mut child = upgrade_under_way(&disk, &v2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!scratch(t.path()).is_empty());
    bootyard_json(&["upgrade", "--image", &v2, "--disk", disk.to_str().unwrap()]);
    assert!(scratch(t.path()).is_empty(), "{:?}", scratch(t.path()));
    let o = bootyard(&["status", "--disk", disk.to_str().unwrap()]);
    assert!(
        o.status.success() && !text(&o).contains("warning"),
        "{}",
        text(&o)
    );
}
