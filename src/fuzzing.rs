//! Fuzz targets: every parser that reads outside input, each as a function of one byte
//! string that must not panic, hang or leave its sandbox whatever the bytes. The AFL++
//! driver (`src/bin/fuzz.rs`, built by `./x fuzz` with the `fuzz` feature) feeds them;
//! the tests below run every saved input (`tests/fuzz/TARGET/`: seeds, and each crash a
//! run found, kept as a regression) through the same functions on every `cargo test`.
//!
//! Where a parser has a writer, an input it accepts must survive the round trip (grubenv,
//! GPT); where it has a bound, what it returns must be within it.

use std::io::Cursor;
use std::path::Path;

/// A fuzz target: one input, no result (a panic is the finding).
pub type Target = fn(&[u8]);

/// The targets by name, as `./x fuzz` and the driver call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("tar", tar),
    ("oci", oci),
    ("grubenv", grubenv),
    ("gpt", gpt),
    ("token", token),
    ("sim-file", sim_file),
    ("scenario-file", scenario_file),
    ("trace", trace),
    ("mesh-frames", mesh_frames),
    ("initramfs", initramfs),
    ("kernel", kernel),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A layer (an uncompressed tar) applied to a scratch root inside a sandbox directory:
/// whatever it holds, nothing may appear in the sandbox outside the root.
pub fn tar(data: &[u8]) {
    let sandbox = tempfile::tempdir().expect("a scratch directory");
    let root = sandbox.path().join("root");
    std::fs::create_dir(&root).expect("the scratch root");
    let limits = crate::image::apply::Limits {
        entries_max: 2_000,
        unpacked_bytes_max: 16 << 20,
        ..Default::default()
    };
    let opts = crate::image::apply::ApplyOptions {
        preserve_owner: false,
        special_files: false,
    };
    if let Ok(mut a) = crate::image::apply::Applier::new(&root, opts, limits) {
        // Refusals are the point; what matters is what was (not) written.
        let _ = a
            .apply_layer(Cursor::new(data))
            .and_then(|_| a.finish().map(|_| ()));
    }
    let outside: Vec<_> = std::fs::read_dir(sandbox.path())
        .expect("the sandbox")
        .map(|e| e.expect("an entry").file_name())
        .filter(|n| n != "root")
        .collect();
    assert!(
        outside.is_empty(),
        "a layer wrote outside its root: {outside:?}"
    );
}

/// Manifests, indexes and configs, as the registry and a layout hand them over.
pub fn oci(data: &[u8]) {
    use crate::image::spec;
    for mt in [
        None,
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
    ] {
        let _ = spec::parse_pointed(mt, data);
    }
    for layers in [0, 1, 3] {
        if let Ok(c) = spec::parse_config(data, layers) {
            assert_eq!(
                c.rootfs.diff_ids.len(),
                layers,
                "a config must match its manifest"
            );
        }
    }
}

/// grubenv blocks: one that parses writes back to a block that parses the same.
pub fn grubenv(data: &[u8]) {
    use crate::boot::grubenv::{GrubEnv, GRUBENV_BYTES};
    let mut block = vec![b'#'; GRUBENV_BYTES];
    let n = data.len().min(GRUBENV_BYTES);
    block[..n].copy_from_slice(&data[..n]);
    for b in [&block[..], data] {
        if let Ok(env) = GrubEnv::parse(b) {
            let again = env.to_block().expect("a parsed block fits its block");
            assert_eq!(
                GrubEnv::parse(&again).expect("written back, it parses"),
                env,
                "grubenv round trip"
            );
        }
    }
}

/// Partition tables: a table that reads lies inside the disk, and rewriting it from the
/// copy that served reads back the same.
pub fn gpt(data: &[u8]) {
    use crate::disk::gpt;
    // Disks of whole sectors; the bytes are the start of a 4 MiB disk (the rest zero).
    let fd =
        rustix::fs::memfd_create("fuzz-gpt", rustix::fs::MemfdFlags::CLOEXEC).expect("a memfd");
    let file = std::fs::File::from(fd);
    let len = (data.len() as u64).max(4 << 20).div_ceil(gpt::SECTOR) * gpt::SECTOR;
    file.set_len(len).expect("memfd size");
    std::os::unix::fs::FileExt::write_all_at(&file, data, 0).expect("memfd write");
    if let Ok(c) = gpt::read_checked(&file) {
        for p in &c.gpt.partitions {
            assert!(
                p.first_lba <= p.last_lba && p.last_lba < c.gpt.disk_sectors,
                "partition {p:?} outside the disk"
            );
        }
        gpt::repair(&file, &c).expect("a table that read can be written");
        let back = gpt::read_checked(&file).expect("a repaired table reads");
        assert_eq!(back.gpt, c.gpt, "repair changed the table");
        assert!(
            back.damaged.is_empty(),
            "repair left damage: {:?}",
            back.damaged
        );
    }
}

/// Network tokens (base64 of YAML): one that decodes derives its keys at any time.
pub fn token(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = crate::mesh::token::NetworkToken::decode(s) {
        for now_s in [0, 1, 1 << 20, u64::MAX / 4, u64::MAX] {
            let _ = (t.rendezvous_key(now_s), t.sealing_keys(now_s));
        }
        let _ = t.topic();
        // What decodes encodes back to a token that decodes (to the same token).
        let again = crate::mesh::token::NetworkToken::decode(&t.encode())
            .expect("an encoded token decodes");
        assert_eq!(again.encode(), t.encode(), "token round trip");
    }
}

/// Mesh scenario files: one that validates is within every bound the simulator needs.
pub fn sim_file(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::meshsim::SimFile::parse(s);
    }
}

/// QEMU scenario files.
pub fn scenario_file(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = bootyard_scenarios::ScenarioFile::parse(s, "fuzz");
    }
}

/// Trace files, as `sim replay` opens them (the header and its embedded scenario).
pub fn trace(data: &[u8]) {
    let _ = crate::meshsim::trace::Recorded::open(std::io::BufReader::new(Cursor::new(data)));
}

/// What a rogue peer can send a node: frames on a connection, before and after the
/// token's Hello opened (see [`crate::mesh::node::fuzz_frames`]).
pub fn mesh_frames(data: &[u8]) {
    crate::mesh::node::fuzz_frames(data);
}

/// Initramfs images as the conformance checks read them (cpio segments, compressed
/// streams, microcode prefixes).
pub fn initramfs(data: &[u8]) {
    let _ = crate::conformance::initramfs::read(data);
}

/// Kernel images as the conformance checks read them (bzImage, arm64 Image, zboot).
pub fn kernel(data: &[u8]) {
    let _ = crate::conformance::kernel::parse(data);
}

/// Writes a seed corpus for every target under `dir/TARGET/`: inputs the real writers
/// make (a layer with every entry kind, an image's metadata, a grubenv, a partition table,
/// a token, the shipped scenario files, the head of a trace, an initramfs, the head of the
/// test kernel when its package is cached). Returns how many files it wrote.
pub fn write_seeds(dir: &Path, repo: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        n += 1;
        Ok(())
    };
    // A layer with each entry kind the applier handles.
    let mut t = crate::image::sample::LayerTar::new();
    t.dir("etc", 0o755)
        .file("etc/os-release", 0o644, b"ID=fuzz\n")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .hardlink("etc/os-release.bak", "etc/os-release")
        .dir("var/lib", 0o755)
        .whiteout("var/lib/gone")
        .opaque("var/lib");
    put("tar", "layer.tar", &t.finish())?;
    let mut escape = crate::image::sample::LayerTar::new();
    escape.symlink("up", "..").file("up/escaped", 0o644, b"x");
    put("tar", "escape.tar", &escape.finish())?;
    // An image's metadata, as a layout holds it.
    let scratch = tempfile::tempdir()?;
    let layout = crate::image::layout::Layout::create(&scratch.path().join("l"))
        .map_err(std::io::Error::other)?;
    let mut l = crate::image::sample::LayerTar::new();
    l.file("a", 0o644, b"a");
    let desc = crate::image::sample::write_image(
        &layout,
        &[(l.finish(), crate::image::spec::Compression::Gzip)],
        &crate::image::spec::Platform::linux_amd64(),
        Default::default(),
    )
    .map_err(std::io::Error::other)?;
    let manifest = layout
        .read_json_blob(&desc)
        .map_err(std::io::Error::other)?;
    put("oci", "manifest.json", &manifest)?;
    if let Ok(crate::image::spec::Pointed::Manifest(m)) =
        crate::image::spec::parse_pointed(Some(&desc.media_type), &manifest)
    {
        let config = layout
            .read_json_blob(&m.config)
            .map_err(std::io::Error::other)?;
        put("oci", "config.json", &config)?;
    }
    put(
        "oci",
        "index.json",
        &std::fs::read(scratch.path().join("l/index.json"))?,
    )?;
    // grubenv as install writes it.
    let mut env = crate::boot::grubenv::GrubEnv::new();
    env.set("bootyard_active", "good")
        .map_err(std::io::Error::other)?;
    env.set("bootyard_tries", "3")
        .map_err(std::io::Error::other)?;
    put(
        "grubenv",
        "grubenv",
        &env.to_block().map_err(std::io::Error::other)?,
    )?;
    // A partition table: its primary copy (the backup is at the end of the disk).
    {
        use crate::disk::gpt;
        let fd = rustix::fs::memfd_create("seed-gpt", rustix::fs::MemfdFlags::CLOEXEC)?;
        let f = std::fs::File::from(fd);
        f.set_len(4 << 20)?;
        let specs = [gpt::PartitionSpec {
            name: "COS_STATE".into(),
            type_guid: gpt::Guid::LINUX_DATA,
            size_bytes: Some(1 << 20),
        }];
        let table = gpt::plan(4 << 20, &specs, gpt::Guid::derived(b"seed", 0))
            .map_err(std::io::Error::other)?;
        gpt::write(&f, &table).map_err(std::io::Error::other)?;
        let mut head = vec![0u8; 34 * 512];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0)?;
        put("gpt", "primary.bin", &head)?;
    }
    let token = crate::mesh::token::NetworkToken::generate(&mut bootyard_sim::Rng::seed(1));
    put("token", "token.txt", token.encode().as_bytes())?;
    for (target, sub) in [
        ("sim-file", "scenarios/sim"),
        ("scenario-file", "scenarios"),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(repo.join(sub))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            put(target, &name, &std::fs::read(&f)?)?;
        }
    }
    // The head of a trace: its header and first events (replay's reader sees lines).
    {
        let text = std::fs::read_to_string(repo.join("scenarios/sim/lan-3.toml"))?;
        let file = crate::meshsim::SimFile::parse(&text).map_err(std::io::Error::other)?;
        let mut lines: Vec<serde_json::Value> =
            vec![crate::meshsim::trace::header(1, "lan-3.toml", &text)];
        crate::meshsim::run(&file, 1, &mut lines).map_err(std::io::Error::other)?;
        let mut out = Vec::new();
        for l in lines.iter().take(40) {
            out.extend(l.to_string().as_bytes());
            out.push(b'\n');
        }
        put("trace", "lan-3-head.jsonl", &out)?;
    }
    // Frames: short, plain and sealed-looking, as the driver cuts them.
    put(
        "mesh-frames",
        "frames.bin",
        &[3, 1, 0, 0, 2, 0, 7, 5, 1, 2, 0, 0, 0],
    )?;
    // An initramfs: a newc archive with /init, bare and gzipped.
    let mut w = crate::boot::cpio::CpioWriter::new(Vec::new());
    w.dir("dev", 0o755)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, &crate::accel::probe_init())?;
    w.symlink("sbin", "/bin")?;
    let cpio = w.finish()?;
    put("initramfs", "initramfs.cpio", &cpio)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &cpio)?;
    put("initramfs", "initramfs.cpio.gz", &gz.finish()?)?;
    // The test kernel's head (its setup header and the start of the payload), if cached.
    let deb = repo.join("target/test-assets/deb");
    if let Ok(k) = crate::debpkg::cloud_kernel(&deb) {
        let bytes = std::fs::read(&k.vmlinuz)?;
        put(
            "kernel",
            "vmlinuz-head",
            &bytes[..bytes.len().min(64 << 10)],
        )?;
    }
    Ok(n)
}

/// The saved inputs of `target` (seeds and kept crashes) under `dir`.
pub fn saved_inputs(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["seeds", "crashes"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("an entry").path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("a saved input");
            out.push((p, bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input a fuzz run found a crash with, and every seed, still passes its target.
    #[test]
    fn every_saved_fuzz_input_passes_its_target() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
        let mut ran = 0;
        for (name, f) in TARGETS {
            for (path, bytes) in saved_inputs(&base.join(name)) {
                eprintln!("{name}: {}", path.display());
                f(&bytes);
                ran += 1;
            }
        }
        // Every target also takes the empty input and a few bytes of noise.
        for (_, f) in TARGETS {
            f(b"");
            f(&[0xff; 64]);
        }
        eprintln!("{ran} saved inputs");
    }

    /// The seeds `./x fuzz` starts from are what bootyard's own writers make, and each
    /// passes its target.
    #[test]
    fn seeds_from_the_real_writers_pass_their_targets() {
        let d = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let n = write_seeds(d.path(), repo).unwrap();
        assert!(n >= TARGETS.len(), "{n} seeds");
        for (name, f) in TARGETS {
            let dir = d.path().join(name);
            let mut seen = 0;
            for e in std::fs::read_dir(&dir).unwrap() {
                f(&std::fs::read(e.unwrap().path()).unwrap());
                seen += 1;
            }
            assert!(seen > 0 || *name == "kernel", "no seed for {name}");
        }
    }
}
