//! The `bootyard` binary end to end: help text (snapshots), JSON reports, exit codes, every
//! source kind, and slot images.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
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
    // A source that is not one is a usage error (issue 19: it was 1), as is a bad port.
    let o = bootyard(&["image", "pull", "not a reference", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("invalid"));
    let o = bootyard(&["image", "pull", "localhost:99999/os:v1", "--out", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("1..=65535"), "{}", text(&o));
    let o = bootyard(&[
        "image",
        "pull",
        "localhost:5000/os:v1",
        "--out",
        "x",
        "--insecure-registry",
        "not a host",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

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

    // Arguments are checked before any work (issue 19: --tries 0 was refused only after
    // the image was unpacked): nothing is read from a source that does not exist.
    for tries in ["0", "100"] {
        let o = bootyard(&[
            "install",
            "--image",
            "oci-layout:/nonexistent:v1",
            "--disk",
            "d.img",
            "--tries",
            tries,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
    let o = bootyard_lib_install_with_tries(0);
    assert!(o.contains("tries must be 1..=9"), "{o}");

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

/// Issue 19: `install --disk /dev/null --force` replaced the system's /dev/null with a 1 GB
/// file, renaming its temp file over the device (and a FIFO the same way). Only regular
/// files and block devices are disks; the check comes before any work.
#[test]
fn r19_install_never_renames_a_disk_over_a_device_or_fifo() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    sample_layout(&layout);
    let fifo = d.path().join("fifo");
    bootyard::testkit::mkfifo(&fifo).unwrap();
    let mut targets = vec![(fifo, "a FIFO")];
    // A null device of our own (needs root, as CI has): never the system's.
    let null = d.path().join("null");
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &null,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    );
    match made {
        Ok(()) => targets.push((null, "a character device")),
        Err(e) => eprintln!("r19 install: no character device test here (mknod: {e})"),
    }
    let source = format!("oci-layout:{}:v1", layout.display());
    for (target, kind) in targets {
        let before = std::fs::symlink_metadata(&target).unwrap();
        let o = bootyard(&[
            "install",
            "--image",
            &source,
            "--disk",
            target.to_str().unwrap(),
            "--force",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(kind), "{}", text(&o));
        let after = std::fs::symlink_metadata(&target).unwrap();
        assert_eq!(
            (before.ino(), before.file_type()),
            (after.ino(), after.file_type())
        );
    }
    // Nothing was left beside them either.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bootyard"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 19: `image pull oci-layout:SRC --out SRC --force` replaced the source layout with
/// its own unpacked tree; `image pull dir:rec --out rec/inner` unpacked a tree into itself.
#[test]
fn r19_pull_refuses_an_output_that_is_in_or_around_its_source() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    sample_layout(&layout);
    let before = fingerprint(&layout).unwrap();
    let rec = d.path().join("rec");
    std::fs::create_dir_all(rec.join("etc")).unwrap();
    std::fs::write(rec.join("etc/hostname"), "rec\n").unwrap();
    let rec_before = fingerprint(&rec).unwrap();
    for (source, out) in [
        (
            format!("oci-layout:{}:v1", layout.display()),
            layout.clone(),
        ),
        (
            format!("oci-layout:{}:v1", layout.display()),
            d.path().to_path_buf(),
        ),
        (format!("dir:{}", rec.display()), rec.join("inner")),
    ] {
        let o = bootyard(&[
            "image",
            "pull",
            &source,
            "--out",
            out.to_str().unwrap(),
            "--force",
        ]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{source} -> {out:?}: {}",
            text(&o)
        );
        assert!(text(&o).contains("the input"), "{}", text(&o));
    }
    assert!(diff(&before, &fingerprint(&layout).unwrap(), 5).is_empty());
    assert!(diff(&rec_before, &fingerprint(&rec).unwrap(), 5).is_empty());
}

/// Issue 19: `image pull oci-layout:GOOD:latest --platform linux/arm64` unpacked the amd64
/// image (exit 0): the platform was checked only when the tag pointed at an index.
#[test]
fn r19_pull_checks_the_platform_against_the_config() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("layout");
    sample_layout(&layout);
    let out = d.path().join("out");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-layout:{}:v1", layout.display()),
        "--out",
        out.to_str().unwrap(),
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("linux/amd64, not the requested platform linux/arm64"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}

/// Rewrites the layout's index so its first manifest descriptor points at `bytes` (stored
/// as a blob under their own digest).
fn point_index_at(layout: &Path, media_type: &str, bytes: &[u8]) {
    use sha2::Digest as _;
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let d = &mut index["manifests"][0];
    d["digest"] = format!("sha256:{hex}").into();
    d["size"] = bytes.len().into();
    d["mediaType"] = media_type.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Issue 19: corrupt metadata in a local layout exited 1 (and a garbage index.json blamed
/// "manifest"); each is an invalid image (3) or one the source lacks (4).
#[test]
fn r19_corrupt_layout_metadata_exits_as_a_bad_or_missing_image() {
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let l = tmp.path().join(name);
        sample_layout(&l);
        l
    };
    let manifest_of = |l: &Path| -> serde_json::Value {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(l.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(l.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    type Breakage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breakage, i32, &str)> = vec![
        (
            "index-garbage",
            Box::new(|l: &Path| std::fs::write(l.join("index.json"), [0x9f, 0x13, 0xff]).unwrap()),
            3,
            "index",
        ),
        (
            "manifest-not-json",
            Box::new(|l: &Path| point_index_at(l, MANIFEST, b"not json")),
            3,
            "not valid JSON",
        ),
        (
            "config-no-diff-ids",
            Box::new(move |l: &Path| {
                let mut m = manifest_of(l);
                let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
                use sha2::Digest as _;
                let hex = hex::encode(sha2::Sha256::digest(config));
                std::fs::write(l.join("blobs/sha256").join(&hex), config).unwrap();
                m["config"]["digest"] = format!("sha256:{hex}").into();
                m["config"]["size"] = config.len().into();
                point_index_at(l, MANIFEST, &serde_json::to_vec(&m).unwrap());
            }),
            3,
            "diff_ids",
        ),
        (
            "layer-missing",
            Box::new(move |l: &Path| {
                let m = manifest_of(l);
                let d = m["layers"][0]["digest"].as_str().unwrap().to_string();
                std::fs::remove_file(
                    l.join("blobs/sha256")
                        .join(d.strip_prefix("sha256:").unwrap()),
                )
                .unwrap();
            }),
            3,
            "missing",
        ),
        (
            "size-lies",
            Box::new(|l: &Path| {
                let index_path = l.join("index.json");
                let mut index: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
                let n = index["manifests"][0]["size"].as_u64().unwrap();
                index["manifests"][0]["size"] = (n + 7).into();
                std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
            }),
            3,
            "says",
        ),
        (
            "no-manifests",
            Box::new(|l: &Path| {
                std::fs::write(
                    l.join("index.json"),
                    br#"{"schemaVersion":2,"manifests":[]}"#,
                )
                .unwrap()
            }),
            4,
            "no images",
        ),
    ];
    for (name, breakage, code, said) in cases {
        let l = fresh(name);
        breakage(&l);
        let tag = if name == "no-manifests" { "" } else { ":v1" };
        let o = bootyard(&[
            "image",
            "pull",
            &format!("oci-layout:{}{tag}", l.display()),
            "--out",
            tmp.path().join(format!("out-{name}")).to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(code), "{name}: {}", text(&o));
        assert!(text(&o).contains(said), "{name}: {}", text(&o));
    }
    // A tag the layout does not have: the source lacks the image.
    let l = fresh("tags");
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-layout:{}:v9", l.display()),
        "--out",
        tmp.path().join("out-tag").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // A zero-byte archive is not an image.
    let empty = tmp.path().join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-archive:{}", empty.display()),
        "--out",
        tmp.path().join("out-ar").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

/// The exit-status table is written once: `bootyard --help` and the README carry the same.
#[test]
fn the_readme_carries_the_exit_status_table_of_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(bootyard::cli::exit::TABLE),
        "README.md's exit-status table differs from bootyard::cli::exit::TABLE"
    );
    let o = bootyard(&["--help"]);
    assert!(
        text(&o).contains(bootyard::cli::exit::TABLE),
        "{}",
        text(&o)
    );
}

/// Issue 19: an interrupted `image pull` left `.DEST.bootyard-partial-PID/` (33 MB) that
/// later pulls never removed. A pull stopped by SIGTERM removes its scratch and exits 143;
/// what a killed one left is removed by the next pull beside it.
#[test]
fn r19_an_interrupted_pull_leaves_no_scratch_and_the_next_sweeps_a_dead_ones() {
    let d = tempfile::tempdir().unwrap();
    let scratch = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".bootyard-"))
            .collect()
    };
    // An archive that is a FIFO nobody writes: the pull makes its scratch, then blocks.
    let fifo = d.path().join("stuck.tar");
    bootyard::testkit::mkfifo(&fifo).unwrap();
    let out_dir = d.path().join("outs");
    std::fs::create_dir(&out_dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(["image", "pull", &format!("oci-archive:{}", fifo.display())])
        .arg("--out")
        .arg(out_dir.join("root"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Polled: the scratch directory appears as soon as the pull starts.
    while scratch(&out_dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(scratch(&out_dir).is_empty(), "{:?}", scratch(&out_dir));

    // A dead run's staging and scratch (no process has a pid this large) go at the next pull.
    let dead = u32::MAX - 1;
    for name in [
        format!(".root.bootyard-partial-{dead}"),
        format!(".bootyard-archive-{dead}-abcd"),
    ] {
        std::fs::create_dir_all(out_dir.join(&name).join("usr")).unwrap();
    }
    let layout = d.path().join("layout");
    sample_layout(&layout);
    let o = bootyard(&[
        "image",
        "pull",
        &format!("oci-layout:{}:v1", layout.display()),
        "--out",
        out_dir.join("root").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(scratch(&out_dir).is_empty(), "{:?}", scratch(&out_dir));
}

/// The library's own check (for callers other than the CLI): refused before the source
/// is opened.
fn bootyard_lib_install_with_tries(tries: u8) -> String {
    let d = tempfile::tempdir().unwrap();
    let mut o = bootyard::install::InstallOptions::new(
        d.path().join("d.img"),
        bootyard::image::pull::PullOptions::new(d.path().join("cache")),
    );
    o.tries = tries;
    let src: bootyard::image::Source = "oci-layout:/nonexistent:v1".parse().unwrap();
    let e = bootyard::install::install(&src, &o).unwrap_err();
    assert!(!d.path().join("cache").exists());
    e.to_string()
}
