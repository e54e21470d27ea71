//! The conformance `container` profile against the local Docker engine, with the busybox
//! test OS image (built here from Debian packages) and two breakages of it (the Debian image
//! is judged by every profile in conformance_boot_qemu.rs). Skipped with the reason when no
//! engine is reachable, except in CI, which must have one.

#[path = "support/conformance.rs"]
mod conformance_support;

use std::process::Command;
use std::time::Duration;

use bootyard::conformance::container::{Engine, Subject};
use bootyard::testimage::{write_oci, Flavor};
use conformance_support::{conformance, test_rootfs};

/// The checks that did not pass, from the console report.
fn not_passed(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            ["FAIL ", "WARN ", "SKIP ", "ERROR"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[test]
fn the_busybox_image_runs_as_a_container_and_broken_userlands_fail_exactly_their_checks() {
    let t = tempfile::tempdir().unwrap();
    let Some(root) = test_rootfs("busybox_container", t.path(), Flavor::Busybox, "1.0.0") else {
        return;
    };
    let layout = t.path().join("layout");
    write_oci(&root, &layout, "good", Default::default()).unwrap();
    let judge = |tag: &str| {
        conformance(&[
            &format!("oci-layout:{}:{tag}", layout.display()),
            "--profile",
            "image",
            "--profile",
            "container",
        ])
    };
    let (code, out) = judge("good");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("16 passed, 0 failed, 0 warned, 0 skipped, 0 errored"),
        "{out}"
    );

    // No shell: the shell check fails, and so does reading the release back (it uses the
    // shell); the static checks do not look for a shell.
    let sh = root.join("bin/sh");
    let link = std::fs::read_link(&sh).unwrap();
    std::fs::remove_file(&sh).unwrap();
    write_oci(&root, &layout, "no-shell", Default::default()).unwrap();
    std::os::unix::fs::symlink(&link, &sh).unwrap();
    let (code, out) = judge("no-shell");
    assert_eq!(code, 1, "{out}");
    assert_eq!(not_passed(&out), ["CTR-001", "CTR-003"], "{out}");

    // An agent that links a library the image lacks (the image has the loader and libc, for
    // mke2fs): the static checks cannot see it, the container check does.
    let agent_path = root.join("usr/bin/bootyard");
    std::fs::copy("/usr/bin/zstd", &agent_path).unwrap();
    assert!(!root.join("usr/lib/x86_64-linux-gnu/libzstd.so.1").exists());
    write_oci(&root, &layout, "broken-agent", Default::default()).unwrap();
    let (code, out) = judge("broken-agent");
    assert_eq!(code, 1, "{out}");
    assert_eq!(not_passed(&out), ["CTR-002"], "{out}");
    assert!(
        out.contains("error while loading shared libraries"),
        "{out}"
    );
}

#[test]
fn a_command_past_its_deadline_is_the_images_failure_and_leaves_no_container() {
    let t = tempfile::tempdir().unwrap();
    let Some(root) = test_rootfs("container_deadline", t.path(), Flavor::Busybox, "1.0.0") else {
        return;
    };
    let engine = Engine::connect().unwrap();
    let loaded = engine.load(Subject::Tree(&root, "amd64")).unwrap();
    let o = engine
        .run(
            &loaded.tag,
            &["/bin/sh", "-c", "echo started; while :; do :; done"],
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(o.exit, 124, "{o:?}");
    assert!(o.stderr.contains("did not exit within"), "{o:?}");
    // A command that is not in the image: 127, the image's failure too.
    let o = engine
        .run(&loaded.tag, &["/no/such/program"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(o.exit, 127, "{o:?}");
    // Neither run left its container behind (asked through the docker CLI, when there is one).
    if bootyard::testkit::which("docker").is_none() {
        return;
    }
    let ps = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("ancestor={}", loaded.tag),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
