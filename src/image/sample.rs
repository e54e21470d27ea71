//! Deterministic sample images: a Debian-like root filesystem for the quick start and the
//! benchmarks, and a corpus of small images that exercises every changeset rule of the OCI
//! image spec (used by the differential test against umoci). Same seed, same bytes.

use std::collections::BTreeMap;
use std::io::Write;

use bootyard_sim::Rng;

use super::digest::Digest;
use super::layout::{Layout, LayoutError};
use super::spec::{
    Compression, Descriptor, Index, Manifest, Platform, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
};
use super::tarwrite::{Header, Kind, TarWriter};

/// One layer's tar stream, built in memory.
pub struct LayerTar {
    w: TarWriter<Vec<u8>>,
    /// Entries so far; gives each a distinct mtime so tests can tell mtimes apart.
    n: i64,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        Self {
            w: TarWriter::new(Vec::new()),
            n: 0,
        }
    }

    pub fn entry(&mut self, h: Header, data: &[u8]) -> &mut Self {
        let mut h = h;
        if h.kind == Kind::File {
            h.size = data.len() as u64;
        }
        if h.mtime_s == Header::new("", Kind::File, 0).mtime_s {
            h.mtime_s += self.n * 3_607;
        }
        self.n += 1;
        self.w
            .append(&h, &mut &data[..])
            .expect("writing to a Vec cannot fail");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(Header::new(path, Kind::Directory, mode), &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(Header::new(path, Kind::File, mode), data)
    }

    pub fn owned_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new(path, Kind::File, mode);
        h.uid = uid;
        h.gid = gid;
        self.entry(h, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Header::new(path, Kind::Symlink, 0o777);
        h.link = target.as_bytes().to_vec();
        self.entry(h, &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Header::new(path, Kind::Hardlink, 0o644);
        h.link = target.as_bytes().to_vec();
        self.entry(h, &[])
    }

    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n))
            .unwrap_or((String::new(), path));
        self.file(&format!("{dir}.wh.{name}"), 0o644, b"")
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.w.finish().expect("writing to a Vec cannot fail")
    }
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(tar).expect("in-memory gzip");
            e.finish().expect("in-memory gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("in-memory zstd"),
    }
}

/// Writes an image (config + manifest) built from `layers` into `layout`; returns the
/// manifest's descriptor (not yet tagged).
pub fn write_image(
    layout: &Layout,
    layers: &[(Vec<u8>, Compression)],
    platform: &Platform,
    labels: BTreeMap<String, String>,
) -> Result<Descriptor, LayoutError> {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, c) in layers {
        diff_ids.push(Digest::of(tar));
        let blob = compress(tar, *c);
        descs.push(layout.put_blob(c.oci_media_type(), &blob)?);
    }
    let config = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": platform.architecture,
        "os": platform.os,
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "bootyard sample"})).collect::<Vec<_>>(),
    });
    let config_desc = layout.put_blob(
        MEDIA_OCI_CONFIG,
        &serde_json::to_vec(&config).expect("json"),
    )?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: config_desc,
        layers: descs,
        annotations: BTreeMap::new(),
    };
    let mut desc = layout.put_blob(
        MEDIA_OCI_MANIFEST,
        &serde_json::to_vec(&manifest).expect("json"),
    )?;
    desc.platform = Some(platform.clone());
    Ok(desc)
}

/// Writes an index over per-platform manifests; returns its descriptor.
pub fn write_index(layout: &Layout, manifests: Vec<Descriptor>) -> Result<Descriptor, LayoutError> {
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.into()),
        manifests,
        annotations: BTreeMap::new(),
    };
    layout.put_blob(MEDIA_OCI_INDEX, &serde_json::to_vec(&index).expect("json"))
}

const WORDS: &[&str] = &[
    "the",
    "package",
    "library",
    "config",
    "system",
    "debian",
    "kernel",
    "module",
    "service",
    "network",
    "version",
    "license",
    "copyright",
    "install",
    "update",
    "boot",
    "slot",
    "image",
    "layer",
    "mesh",
    "node",
    "cluster",
    "agent",
    "free",
    "software",
    "GNU",
    "General",
    "Public",
    "without",
    "warranty",
];

fn sized(rng: &mut Rng, base: usize, spread: u64) -> Vec<u8> {
    let len = base + rng.below(spread) as usize;
    content(rng, len)
}

/// Text-like content that compresses about like a real /usr (gzip ~2.5x).
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if rng.below(4) == 0 {
            for _ in 0..16 {
                out.push(rng.next_u64() as u8);
            }
        } else {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
        }
    }
    out.truncate(len);
    out
}

/// How big a Debian-like sample to make.
#[derive(Debug, Clone, Copy)]
pub struct TreeScale {
    pub packages: usize,
    /// Files of a few hundred KiB to a few MiB, as shared libraries and binaries are.
    pub large_files: usize,
    pub large_file_bytes: usize,
}

impl TreeScale {
    /// About 5 MB: the quick start.
    pub const DEMO: TreeScale = TreeScale {
        packages: 60,
        large_files: 2,
        large_file_bytes: 1 << 20,
    };
    /// About 230 MB uncompressed in ~18k entries: the benchmark image.
    pub const BENCH: TreeScale = TreeScale {
        packages: 1400,
        large_files: 40,
        large_file_bytes: 3 << 20,
    };
}

/// A Debian-like image in three layers: a base system, an update that replaces, deletes
/// (whiteouts, an opaque directory) and hardlinks into the base, and a small config layer.
pub fn debian_like(scale: TreeScale, seed: u64, c: Compression) -> ImageLayers {
    let mut rng = Rng::seed(seed);
    let mut base = LayerTar::new();
    for d in [
        "bin", "boot", "dev", "etc", "home", "lib", "proc", "root", "run", "sbin", "srv", "sys",
        "tmp", "usr", "var",
    ] {
        let mode = match d {
            "tmp" => 0o1777,
            "root" => 0o700,
            _ => 0o755,
        };
        if !matches!(d, "bin" | "lib" | "sbin") {
            base.dir(d, mode);
        }
    }
    // usrmerge, as Debian ships it.
    base.symlink("bin", "usr/bin")
        .symlink("lib", "usr/lib")
        .symlink("sbin", "usr/sbin");
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib/x86_64-linux-gnu",
        "usr/share",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/man/man1",
        "usr/share/locale",
        "etc/default",
        "etc/systemd",
        "var/lib",
        "var/lib/dpkg",
        "var/lib/dpkg/info",
        "var/log",
        "var/cache",
    ] {
        base.dir(d, 0o755);
    }
    base.symlink("var/run", "/run");
    base.file(
        "etc/os-release",
        0o644,
        b"PRETTY_NAME=\"bootyard sample\"\nID=bootyard-sample\nVERSION_ID=1\n",
    );
    base.file("etc/hostname", 0o644, b"sample\n");
    base.owned_file("etc/shadow", 0o640, 0, 42, b"root:*:19000:0:99999:7:::\n");
    for p in 0..scale.packages {
        let pkg = format!("pkg{p:04}");
        base.dir(&format!("usr/share/doc/{pkg}"), 0o755);
        base.file(
            &format!("usr/share/doc/{pkg}/copyright"),
            0o644,
            &sized(&mut rng, 1500, 3000),
        );
        base.file(
            &format!("usr/share/doc/{pkg}/changelog.Debian.gz"),
            0o644,
            &sized(&mut rng, 400, 2000),
        );
        base.file(
            &format!("var/lib/dpkg/info/{pkg}.list"),
            0o644,
            &sized(&mut rng, 200, 800),
        );
        base.file(
            &format!("var/lib/dpkg/info/{pkg}.md5sums"),
            0o644,
            &sized(&mut rng, 100, 500),
        );
        let bins = 1 + rng.below(3);
        for b in 0..bins {
            let mode = if p % 97 == 0 && b == 0 { 0o4755 } else { 0o755 };
            base.file(
                &format!("usr/bin/{pkg}-{b}"),
                mode,
                &sized(&mut rng, 8_000, 120_000),
            );
        }
        base.file(
            &format!("usr/lib/x86_64-linux-gnu/lib{pkg}.so.1"),
            0o644,
            &sized(&mut rng, 20_000, 200_000),
        );
        base.symlink(
            &format!("usr/lib/x86_64-linux-gnu/lib{pkg}.so"),
            &format!("lib{pkg}.so.1"),
        );
        base.file(
            &format!("usr/share/man/man1/{pkg}.1.gz"),
            0o644,
            &sized(&mut rng, 500, 4000),
        );
        if p % 5 == 0 {
            base.dir(&format!("usr/share/locale/{pkg}"), 0o755);
            for l in 0..4 {
                base.file(
                    &format!("usr/share/locale/{pkg}/l{l}.mo"),
                    0o644,
                    &sized(&mut rng, 300, 6000),
                );
            }
        }
        if p % 50 == 0 {
            base.hardlink(&format!("usr/bin/{pkg}-alias"), &format!("usr/bin/{pkg}-0"));
        }
    }
    for i in 0..scale.large_files {
        let len = scale.large_file_bytes / 2 + rng.below(scale.large_file_bytes as u64) as usize;
        base.file(
            &format!("usr/lib/x86_64-linux-gnu/libbig{i}.so"),
            0o644,
            &content(&mut rng, len),
        );
    }
    base.owned_file("usr/bin/sudo", 0o4755, 0, 0, &content(&mut rng, 50_000));
    base.owned_file("usr/bin/wall", 0o2755, 0, 5, &content(&mut rng, 20_000));

    let mut update = LayerTar::new();
    update.file(
        "etc/os-release",
        0o644,
        b"PRETTY_NAME=\"bootyard sample\"\nID=bootyard-sample\nVERSION_ID=2\n",
    );
    for p in (0..scale.packages).step_by(7) {
        let pkg = format!("pkg{p:04}");
        update.file(
            &format!("usr/lib/x86_64-linux-gnu/lib{pkg}.so.1"),
            0o644,
            &sized(&mut rng, 30_000, 100_000),
        );
    }
    for p in (3..scale.packages).step_by(11) {
        update.whiteout(&format!("usr/share/doc/pkg{p:04}"));
        update.whiteout(&format!("var/lib/dpkg/info/pkg{p:04}.list"));
    }
    update.dir("usr/share/locale", 0o755);
    update.opaque("usr/share/locale");
    update.dir("usr/share/locale/C.UTF-8", 0o755);
    update.file(
        "usr/share/locale/C.UTF-8/messages.mo",
        0o644,
        &content(&mut rng, 4000),
    );
    update.hardlink("usr/bin/sudoedit", "usr/bin/sudo");

    let mut config = LayerTar::new();
    config.dir("etc/bootyard", 0o750);
    config.file(
        "etc/bootyard/config.yaml",
        0o600,
        b"#cloud-config\np2p:\n  network_id: sample\n",
    );
    config.file(
        "etc/kairos-release",
        0o644,
        b"ID=bootyard-sample\nVERSION=v1\nFLAVOR=sample\nFAMILY=debian\nARCH=amd64\n",
    );

    vec![
        (base.finish(), c),
        (update.finish(), c),
        (config.finish(), Compression::None),
    ]
}

/// An image as its layers' tar streams, each with the compression to store it with.
pub type ImageLayers = Vec<(Vec<u8>, Compression)>;

/// Small images that each stress one part of the changeset rules. Names are stable: the
/// differential test reports failures by them.
pub fn rules_corpus() -> Vec<(&'static str, ImageLayers)> {
    let mut out = Vec::new();

    let mut l1 = LayerTar::new();
    l1.dir("a", 0o755)
        .file("a/keep", 0o644, b"keep")
        .file("a/gone", 0o644, b"gone")
        .dir("a/sub", 0o700)
        .file("a/sub/deep", 0o600, b"deep");
    l1.dir("b", 0o755).file("b/x", 0o644, b"x");
    let mut l2 = LayerTar::new();
    l2.whiteout("a/gone")
        .whiteout("a/sub")
        .whiteout("b")
        .whiteout("never-existed");
    out.push((
        "whiteouts",
        vec![
            (l1.finish(), Compression::Gzip),
            (l2.finish(), Compression::Gzip),
        ],
    ));

    let mut l1 = LayerTar::new();
    l1.dir("o", 0o755)
        .file("o/old1", 0o644, b"1")
        .dir("o/olddir", 0o755)
        .file("o/olddir/f", 0o644, b"f")
        .dir("o/kept", 0o755)
        .file("o/kept/lower", 0o644, b"lower");
    let mut l2 = LayerTar::new();
    // Siblings before and after the marker belong to this layer and must survive it.
    l2.dir("o", 0o711)
        .file("o/before", 0o644, b"b")
        .dir("o/kept", 0o755)
        .opaque("o")
        .file("o/after", 0o644, b"a")
        .file("o/kept/upper", 0o644, b"u");
    out.push((
        "opaque",
        vec![
            (l1.finish(), Compression::Zstd),
            (l2.finish(), Compression::Zstd),
        ],
    ));

    let mut l1 = LayerTar::new();
    l1.dir("bin", 0o755)
        .owned_file("bin/tool", 0o755, 0, 0, b"tool")
        .file("data", 0o644, b"data");
    let mut l2 = LayerTar::new();
    l2.hardlink("bin/tool2", "bin/tool")
        .file("new", 0o644, b"new")
        .hardlink("new-link", "new")
        .hardlink("data-link", "data");
    out.push((
        "hardlinks",
        vec![
            (l1.finish(), Compression::None),
            (l2.finish(), Compression::Gzip),
        ],
    ));

    let mut l1 = LayerTar::new();
    l1.dir("d2f", 0o755)
        .file("d2f/inner", 0o644, b"i")
        .file("f2d", 0o644, b"f")
        .file("f2l", 0o644, b"f")
        .symlink("l2f", "somewhere")
        .dir("keepdir", 0o755)
        .file("keepdir/child", 0o644, b"c");
    let mut l2 = LayerTar::new();
    l2.file("d2f", 0o600, b"now a file")
        .dir("f2d", 0o750)
        .file("f2d/child", 0o644, b"c")
        .symlink("f2l", "f2d")
        .file("l2f", 0o644, b"real")
        .dir("keepdir", 0o700);
    out.push((
        "replacements",
        vec![
            (l1.finish(), Compression::Gzip),
            (l2.finish(), Compression::Gzip),
        ],
    ));

    let mut l1 = LayerTar::new();
    l1.dir("tmp", 0o1777).dir("srv", 0o2775);
    l1.owned_file("suid", 0o4755, 0, 0, b"s")
        .owned_file("sgid", 0o2755, 0, 50, b"g")
        .owned_file("user-file", 0o640, 1000, 1000, b"u")
        .owned_file("odd", 0o7000, 65534, 65534, b"o");
    let mut h = Header::new("usr-owned-dir", Kind::Directory, 0o750);
    h.uid = 1234;
    h.gid = 4321;
    l1.entry(h, &[]);
    let mut h = Header::new("usr-owned-link", Kind::Symlink, 0o777);
    h.uid = 1234;
    h.gid = 4321;
    h.link = b"suid".to_vec();
    l1.entry(h, &[]);
    out.push(("modes-owners", vec![(l1.finish(), Compression::Gzip)]));

    let mut l1 = LayerTar::new();
    l1.dir("dev", 0o755);
    let mut h = Header::new("dev/null", Kind::CharDevice, 0o666);
    (h.dev_major, h.dev_minor) = (1, 3);
    l1.entry(h, &[]);
    let mut h = Header::new("dev/loop9", Kind::BlockDevice, 0o660);
    (h.dev_major, h.dev_minor, h.gid) = (7, 9, 6);
    l1.entry(h, &[]);
    l1.entry(Header::new("dev/initctl", Kind::Fifo, 0o600), &[]);
    out.push(("special-files", vec![(l1.finish(), Compression::Gzip)]));

    let long_dir = "very-long-directory-name-".repeat(5);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let mut l1 = LayerTar::new();
    l1.dir(&long_dir, 0o755)
        .file(&long_file, 0o644, b"long")
        .symlink("long-target-link", &"t".repeat(180))
        .hardlink("long-hardlink", &long_file);
    let mut h = Header::new("caps", Kind::File, 0o755);
    h.xattrs
        .push((b"user.bootyard.note".to_vec(), b"hello".to_vec()));
    l1.entry(h, b"x");
    l1.file("empty", 0o644, b"");
    l1.entry(
        Header::new(&b"latin1-\xe9t\xe9"[..], Kind::File, 0o644),
        b"bytes",
    );
    out.push(("names-xattrs", vec![(l1.finish(), Compression::Zstd)]));

    let mut l1 = LayerTar::new();
    l1.dir("run", 0o755)
        .dir("var", 0o755)
        .symlink("var/run", "/run")
        .symlink("usrlib", "usr/lib")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755);
    let mut l2 = LayerTar::new();
    // Writes through in-root symlinks (absolute and relative) land where the link points.
    l2.file("var/run/pid", 0o644, b"1")
        .file("usrlib/libx.so", 0o644, b"x");
    // Parent directories the layer never declared are created.
    l2.file("implicit/parents/file", 0o644, b"p");
    out.push((
        "symlink-parents",
        vec![
            (l1.finish(), Compression::None),
            (l2.finish(), Compression::None),
        ],
    ));

    out
}
