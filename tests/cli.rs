//! The `bootyard` binary end to end: help text (snapshots), JSON reports, exit codes, every
//! source kind, and slot images.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use bootyard::image::fingerprint::{diff, fingerprint};
use bootyard::image::layout::Layout;
use bootyard::image::sample::{debian_like, write_image, LayerTar, TreeScale};
use bootyard::image::slot::read_label;
use bootyard::image::spec::{Compression, Platform};
use bootyard::testkit::require_tool;

fn bootyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(args)
        .env("CI", "1")
        .output()
        .expect("run bootyard")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sample_layout(dir: &Path) {
    let layout = Layout::create(dir).unwrap();
    let desc = write_image(
        &layout,
        &debian_like(TreeScale::DEMO, 3, Compression::Gzip),
        &Platform::linux_amd64(),
        BTreeMap::new(),
    )
    .unwrap();
    layout.set_tag(desc, "v1").unwrap();
}

#[test]
fn help_texts() {
    for args in [
        &["--help"][..],
        &["image", "--help"],
        &["image", "pull", "--help"],
        &["image", "build-slot", "--help"],
        &["image", "push", "--help"],
        &["upgrade", "--help"],
        &["rollback", "--help"],
        &["build-test-image", "--help"],
        &["scenario", "run", "--help"],
        &["sim", "run", "--help"],
        &["sim", "sweep", "--help"],
        &["conformance", "--help"],
    ] {
        let o = bootyard(args);
        assert!(o.status.success());
        insta::assert_snapshot!(
            format!(
                "help-{}",
                args.join("-").trim_start_matches("--").replace(" --", "-")
            ),
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
fn pull_from_layout_reports_json_and_refuses_a_full_destination() {
    let tmp = tempfile::tempdir().unwrap();
    sample_layout(&tmp.path().join("img"));
    let src = format!("oci-layout:{}:v1", tmp.path().join("img").display());
    let out = tmp.path().join("root").display().to_string();
    // What a killed pull leaves behind (no process has this PID) is swept up.
    let stale = tmp.path().join(".root.bootyard-partial-999999999");
    std::fs::create_dir_all(stale.join("usr")).unwrap();
    let o = bootyard(&[
        "image",
        "pull",
        &src,
        "--out",
        &out,
        "--json",
        "--verify-blobs",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists(), "stale staging directory was not removed");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["unpack"]["layers"].as_array().unwrap().len(), 3);
    assert!(report["unpack"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["blob_digest_verified"] == true));
    assert!(report["unpack"]["stats"]["files"].as_u64().unwrap() > 100);

    let again = bootyard(&["image", "pull", &src, "--out", &out]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("not an empty directory (pass --force"),
        "{}",
        text(&again)
    );
    assert!(bootyard(&["image", "pull", &src, "--out", &out, "--force"])
        .status
        .success());
}

/// `bootyard sim … | head`: a reader that leaves early ends the command quietly, with the
/// status a tool ended by SIGPIPE has, and no panic on standard error.
#[test]
fn a_closed_stdout_ends_a_report_quietly() {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sim/lan-3.toml");
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("lan-3.jsonl");
    let recorded = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args([
            "sim",
            "run",
            scenario.to_str().unwrap(),
            "--seed",
            "1",
            "--trace",
        ])
        .arg(&trace)
        .output()
        .expect("run bootyard");
    assert!(recorded.status.success(), "{recorded:?}");
    for args in [
        vec!["sim", "run", scenario.to_str().unwrap(), "--seed", "1"],
        vec![
            "sim",
            "sweep",
            scenario.to_str().unwrap(),
            "--seeds",
            "1..3",
        ],
        vec!["sim", "replay", trace.to_str().unwrap()],
    ] {
        // The read end is gone before the first write: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run bootyard");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
}

#[test]
fn exit_codes_name_the_kind_of_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bootyard(&["image", "pull", "not a reference", "--out", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("invalid"));

    // A hostile image: exit 3.
    let layout = Layout::create(&tmp.path().join("bad")).unwrap();
    let mut t = LayerTar::new();
    t.file("../escape", 0o644, b"x");
    let desc = write_image(
        &layout,
        &[(t.finish(), Compression::Gzip)],
        &Platform::linux_amd64(),
        BTreeMap::new(),
    )
    .unwrap();
    layout.set_tag(desc, "bad").unwrap();
    let src = format!("oci-layout:{}:bad", tmp.path().join("bad").display());
    let o = bootyard(&[
        "image",
        "pull",
        &src,
        "--out",
        &tmp.path().join("r").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("'..' component"));

    // Nobody listening: exit 4, after bounded retries.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("{host}/os:v1"),
        "--insecure-registry",
        &host,
        "--out",
        &tmp.path().join("n").display().to_string(),
        "--cache",
        &tmp.path().join("c").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));

    // Usage errors are clap's: exit 2.
    assert_eq!(bootyard(&["image", "pull"]).status.code(), Some(2));
}

#[test]
fn dir_and_archive_sources_unpack_like_the_layout() {
    let tmp = tempfile::tempdir().unwrap();
    sample_layout(&tmp.path().join("img"));
    let from_layout = tmp.path().join("from-layout");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-layout:{}:v1", tmp.path().join("img").display()),
        "--out",
        &from_layout.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // oci-archive: a tar of the layout directory.
    let archive = tmp.path().join("img.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path().join("img"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let from_archive = tmp.path().join("from-archive");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-archive:{}:v1", archive.display()),
        "--out",
        &from_archive.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // dir: the unpacked tree copied through the same unpacker.
    let from_dir = tmp.path().join("from-dir");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("dir:{}", from_layout.display()),
        "--out",
        &from_dir.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let reference = fingerprint(&from_layout).unwrap();
    for other in [&from_archive, &from_dir] {
        let d = diff(&reference, &fingerprint(other).unwrap(), 10);
        assert!(
            d.is_empty(),
            "{} differs from the layout unpack: {d:#?}",
            other.display()
        );
    }
}

#[test]
fn build_slot_writes_a_labelled_ext4_image() {
    if !require_tool(
        "build_slot_writes_a_labelled_ext4_image",
        "mkfs.ext4",
        "e2fsprogs",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=test\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:1::::::\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/shadow"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4640),
    )
    .unwrap();
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        std::os::unix::fs::lchown(root.join("etc/shadow"), Some(0), Some(42)).unwrap();
    }
    let img = tmp.path().join("active.img");
    let o = bootyard(&[
        "image",
        "build-slot",
        &root.display().to_string(),
        "--out",
        &img.display().to_string(),
        "--label",
        "COS_PASSIVE",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_label(&img).as_deref(), Some("COS_PASSIVE"));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&img).unwrap().len()
    );
    if require_tool(
        "build_slot_writes_a_labelled_ext4_image",
        "e2fsck",
        "e2fsprogs",
    ) {
        let fsck = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }

    // A label that does not fit is refused, and an existing image is left alone.
    let o = bootyard(&[
        "image",
        "build-slot",
        &root.display().to_string(),
        "--out",
        &img.display().to_string(),
        "--label",
        "A_LABEL_TOO_LONG_FOR_EXT4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(read_label(&img).as_deref(), Some("COS_PASSIVE"));
}

#[test]
fn boot_complete_marks_the_running_slot_good_in_place() {
    use bootyard::boot::assessment::{BootModel, Health};
    use bootyard::boot::grubcfg::{env_to_model, model_to_env};
    use bootyard::boot::grubenv::GrubEnv;

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("grub2")).unwrap();
    let path = tmp.path().join("grub2/grubenv");
    let mut model = BootModel::installed("v1", 3).unwrap();
    model.upgrade("v2").unwrap();
    model.boot();
    let mut env = GrubEnv::new();
    model_to_env(&model, &mut env).unwrap();
    std::fs::write(&path, env.to_block().unwrap()).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());

    let state = tmp.path().display().to_string();
    let o = bootyard(&["boot-complete", "--state-dir", &state, "--slot", "active"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("active (v2) marked good"), "{}", text(&o));
    let back = env_to_model(&GrubEnv::parse(&std::fs::read(&path).unwrap()).unwrap()).unwrap();
    assert_eq!(back.active.health, Health::Good);
    assert_eq!(back.passive.version.as_deref(), Some("v1"));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::ino(&meta), meta.len()),
        (ino, 1024),
        "rewritten in place, same size"
    );

    assert_eq!(
        bootyard(&["boot-complete", "--state-dir", &state, "--slot", "sideways"])
            .status
            .code(),
        Some(2)
    );
    std::fs::write(&path, b"not a grubenv").unwrap();
    let o = bootyard(&["boot-complete", "--state-dir", &state, "--slot", "active"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("is not a GRUB environment block"),
        "{}",
        text(&o)
    );
}
