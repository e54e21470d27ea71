//! `bootyard conformance` end to end: exit statuses, the report files, --only/--skip, the
//! denylist, and an image that cannot be read. The images are synthetic (see
//! `bootyard::conformance::fixture`); the busybox and Debian test flavors are judged by the
//! QEMU suites that build them.

#[path = "support/conformance.rs"]
mod conformance_support;

use std::path::Path;

use bootyard::conformance::fixture::{good_rootfs, put};
use bootyard::conformance::run::{date_of, today};
use bootyard::testimage::write_oci;
use conformance_support::conformance;

/// A layout with `v1` (good) and `v2` (baked SSH host keys).
fn layout(dir: &Path) -> String {
    let good = dir.join("good");
    good_rootfs(&good).unwrap();
    let layout = dir.join("layout");
    write_oci(&good, &layout, "v1", Default::default()).unwrap();
    put(&good, "etc/ssh/ssh_host_rsa_key", 0o600, b"secret").unwrap();
    write_oci(&good, &layout, "v2", Default::default()).unwrap();
    layout.display().to_string()
}

#[test]
fn a_good_image_passes_and_every_report_is_written() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    let reports = t.path().join("reports");
    let (code, out) = conformance(&[
        &format!("oci-layout:{l}:v1"),
        "--report-dir",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("13 passed, 0 failed"), "{out}");
    let junit = std::fs::read_to_string(reports.join("junit.xml")).unwrap();
    assert!(
        junit.contains(r#"tests="13" failures="0" errors="0" skipped="0""#),
        "{junit}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(reports.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 15, "start, 13 checks, finish");
    assert_eq!(lines[0]["event"], "run_started");
    assert_eq!(lines[14]["summary"]["passed"], 13);
    let tap = std::fs::read_to_string(reports.join("results.tap")).unwrap();
    assert!(tap.starts_with("TAP version 13\n"), "{tap}");
    assert!(
        tap.contains("\n1..13\n") && !tap.contains("not ok"),
        "{tap}"
    );
}

#[test]
fn a_failed_must_check_fails_the_run_and_a_live_denylist_entry_makes_it_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    let v2 = format!("oci-layout:{l}:v2");
    let (code, out) = conformance(&[&v2]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  IMG-010") && out.contains("ssh_host_rsa_key"),
        "{out}"
    );
    assert!(out.contains("12 passed, 1 failed"), "{out}");

    let deny = t.path().join("deny.toml");
    let entry = |expires: &str| {
        format!("[[deny]]\nid = \"IMG-010\"\nreason = \"keys removed at first boot\"\ntracker = \"https://example.org/distro/issues/7\"\nexpires = \"{expires}\"\n")
    };
    let soon = date_of(today() + 30);
    std::fs::write(&deny, entry(&soon)).unwrap();
    let (code, out) = conformance(&[&v2, "--denylist", deny.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN  IMG-010") && out.contains(&format!("denylisted until {soon}")),
        "{out}"
    );
    // TOML's own date (unquoted) is a date too (issue 19: it was "invalid type: map").
    std::fs::write(&deny, entry(&soon).replace(&format!("\"{soon}\""), &soon)).unwrap();
    let (code, out) = conformance(&[&v2, "--denylist", deny.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Past its date, the entry no longer applies.
    std::fs::write(&deny, entry("2001-01-01")).unwrap();
    let (code, out) = conformance(&[&v2, "--denylist", deny.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    // --skip leaves the check out.
    let (code, out) = conformance(&[&v2, "--skip", "IMG-010"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12 checks"), "{out}");
}

#[test]
fn usage_mistakes_exit_2_and_check_nothing() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    let v1 = format!("oci-layout:{l}:v1");
    let (code, out) = conformance(&[&v1, "--only", "IMG-999"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("IMG-999 is not a check"), "{out}");
    let deny = t.path().join("deny.toml");
    for (bad, why) in [
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\nexpires = \"2999-01-01\"\n", "tracker"),
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"see the wiki\"\nexpires = \"2999-01-01\"\n", "http(s) link"),
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"https://example.org/1\"\nexpires = \"2999-02-30\"\n", "YYYY-MM-DD"),
        ("[[deny]]\nid = \"NOPE-001\"\nreason = \"r\"\ntracker = \"https://example.org/1\"\nexpires = \"2999-01-01\"\n", "not a check"),
        // Issue 19: links that are not links, and a waiver that never ends.
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"https://    \"\nexpires = \"2999-01-01\"\n", "http(s) link"),
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"https://a b c\"\nexpires = \"2999-01-01\"\n", "http(s) link"),
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"https://example.org/1\"\nexpires = \"9999-12-31\"\n", "more than 366 days"),
        ("[[deny]]\nid = \"IMG-010\"\nreason = \"r\"\ntracker = \"https://example.org/1\"\nexpires = 2027-01-01T10:00:00\n", "without a time"),
    ] {
        std::fs::write(&deny, bad).unwrap();
        let (code, out) = conformance(&[&v1, "--denylist", deny.to_str().unwrap()]);
        assert_eq!(code, 2, "{bad}: {out}");
        assert!(out.contains(why), "{bad}: {out}");
        assert!(!out.contains("PASS"), "nothing ran: {out}");
    }
    let (code, out) = conformance(&[&v1, "--profile", "kernel"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn skips_and_errors_are_never_a_pass() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    good_rootfs(&root).unwrap();
    let dir = format!("dir:{}", root.display());
    // A directory has no image config: IMG-012 is skipped, and the run is incomplete.
    let (code, out) = conformance(&[&dir]);
    assert_eq!(code, 6, "{out}");
    assert!(
        out.contains("SKIP  IMG-012") && out.contains("INCOMPLETE"),
        "{out}"
    );
    let (code, out) = conformance(&[&dir, "--skip", "IMG-012"]);
    assert_eq!(code, 0, "{out}");
    // An image that cannot be read: every check errors, none passes.
    let missing = format!("oci-layout:{}:v1", t.path().join("nowhere").display());
    let (code, out) = conformance(&[&missing]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("0 passed, 0 failed, 0 warned, 0 skipped, 13 errored"),
        "{out}"
    );
    assert!(out.contains("could not get the image"), "{out}");
}

#[test]
fn the_ci_example_uses_only_flags_the_command_has() {
    let wf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conformance/github-workflow.yml"
    ))
    .unwrap();
    let (code, help) = conformance(&["--help"]);
    assert_eq!(code, 0);
    // The flags the workflow gives bootyard: the lines that build its argument list.
    let flags: Vec<&str> = wf
        .lines()
        .filter(|l| l.contains("args"))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '(' || c == ')'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    for f in ["--report-dir", "--denylist", "--profile"] {
        assert!(flags.contains(&f), "{flags:?}");
    }
    for f in flags {
        assert!(
            help.contains(f),
            "the example uses {f}, which `bootyard conformance` lacks"
        );
    }
    assert!(wf.contains("bootyard)\" conformance \"${args[@]}\""));
}

/// Issue 19: an image whose layout is corrupt (a garbage index.json, a truncated layer)
/// got ERROR (exit 5, "the harness broke"): what cannot be read of an image is the image's
/// failure.
#[test]
fn r19_a_corrupt_image_fails_its_checks_instead_of_erroring() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    std::fs::write(Path::new(&l).join("index.json"), [0x9f, 0x00, 0xff, 0x13]).unwrap();
    let (code, out) = conformance(&[&format!("oci-layout:{l}:v1")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the image cannot be read"), "{out}");
    assert!(out.contains(" 0 errored"), "{out}");
}

/// Issue 19: a layer that climbs out of the root (`../escape`) got ERROR: a hostile image
/// fails.
#[test]
fn r19_a_hostile_layer_fails_its_checks_instead_of_erroring() {
    use bootyard::image::sample::{write_image, LayerTar};
    use bootyard::image::spec::{Compression, Platform};
    let t = tempfile::tempdir().unwrap();
    let layout = bootyard::image::layout::Layout::create(&t.path().join("bad")).unwrap();
    let mut tar = LayerTar::new();
    tar.file("../escape", 0o644, b"x");
    let desc = write_image(
        &layout,
        &[(tar.finish(), Compression::Gzip)],
        &Platform::linux_amd64(),
        Default::default(),
    )
    .unwrap();
    layout.set_tag(desc, "bad").unwrap();
    let (code, out) = conformance(&[&format!(
        "oci-layout:{}:bad",
        t.path().join("bad").display()
    )]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the image cannot be read") && out.contains(" 0 errored"),
        "{out}"
    );
    assert!(!t.path().join("escape").exists());
}

/// Issue 19: `--profile mesh` said "... with --only/--skip leave nothing to run" when
/// neither was given.
#[test]
fn r19_a_profile_without_checks_says_so() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    let (code, out) = conformance(&[&format!("oci-layout:{l}:v1"), "--profile", "mesh"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("have no checks") && !out.contains("--only"),
        "{out}"
    );
}

/// Issue 19: a `--report-dir` that cannot be written exited 1, which a gate reads as "a
/// MUST check failed". It has its own status, and is found before any check runs.
#[test]
fn r19_an_unwritable_report_dir_has_its_own_status() {
    let t = tempfile::tempdir().unwrap();
    let l = layout(t.path());
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, out) = conformance(&[
        &format!("oci-layout:{l}:v1"),
        "--report-dir",
        file.join("reports").to_str().unwrap(),
    ]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("cannot write the report directory"), "{out}");
    assert!(!out.contains("IMG-001"), "no check ran: {out}");
}
