//! The hostile-layer corpus: every case must fail with a clear error (or, for the two
//! containment cases, succeed without touching anything outside the root), write nothing
//! outside the target, and leave the good tree that was already at the destination intact.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bootyard::image::apply::{ApplyOptions, Limits};
use bootyard::image::digest::Digest;
use bootyard::image::fingerprint::{diff, fingerprint};
use bootyard::image::layout::Layout;
use bootyard::image::pull::{pull, PullOptions};
use bootyard::image::sample::{compress, write_image, LayerTar};
use bootyard::image::spec::{
    Compression, Descriptor, Manifest, Platform, MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST,
};
use bootyard::image::tarwrite::{Header, Kind};
use bootyard::image::Source;

enum Expect {
    /// The error chain must mention this.
    Error(&'static str),
    /// Must succeed; the check runs on the unpacked root.
    Contained(fn(&Path)),
}

type Build = Box<dyn Fn(&Layout, &Path) -> Descriptor>;

struct Case {
    name: &'static str,
    /// Builds the image in `layout` and returns its manifest descriptor.
    build: Build,
    limits: Limits,
    expect: Expect,
}

fn image(layers: Vec<Vec<u8>>) -> Build {
    Box::new(move |layout, _| {
        let l: Vec<_> = layers
            .iter()
            .map(|t| (t.clone(), Compression::Gzip))
            .collect();
        write_image(layout, &l, &Platform::linux_amd64(), BTreeMap::new()).unwrap()
    })
}

fn one(f: impl FnOnce(&mut LayerTar)) -> Vec<u8> {
    let mut t = LayerTar::new();
    f(&mut t);
    t.finish()
}

/// An image whose single layer blob and config are given verbatim.
fn raw_image(layout: &Layout, blob: &[u8], media: Compression, diff_id: Digest) -> Descriptor {
    let layer = layout.put_blob(media.oci_media_type(), blob).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}});
    let config = layout
        .put_blob(MEDIA_OCI_CONFIG, &serde_json::to_vec(&config).unwrap())
        .unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config,
        layers: vec![layer],
        annotations: BTreeMap::new(),
    };
    layout
        .put_blob(MEDIA_OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
        .unwrap()
}

fn raw_header_tar(typeflag: u8, size_field: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..5].copy_from_slice(b"x/pax");
    h[100..107].copy_from_slice(b"0000644");
    h[124..124 + size_field.len()].copy_from_slice(size_field);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut v = h.to_vec();
    v.extend([0u8; 1024]);
    v
}

fn cases() -> Vec<Case> {
    let d = Limits::default();
    let pwned_abs = format!("/tmp/bootyard-hostile-pwned-{}", std::process::id());
    let pwned_abs2 = pwned_abs.clone();
    let mut v = vec![
        Case {
            name: "dotdot-file",
            build: image(vec![one(|t| {
                t.file("../outside/pwned", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("'..' component"),
        },
        Case {
            name: "dotdot-inner",
            build: image(vec![one(|t| {
                t.dir("a", 0o755).file("a/../../outside/pwned", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("'..' component"),
        },
        Case {
            name: "absolute-path",
            build: image(vec![one(move |t| {
                t.file(&pwned_abs, 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("absolute path"),
        },
        Case {
            name: "symlink-escape-relative",
            build: image(vec![one(|t| {
                t.symlink("evil", "../../outside")
                    .file("evil/pwned", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("points outside the root"),
        },
        Case {
            name: "symlink-escape-two-layers",
            build: image(vec![
                one(|t| {
                    t.symlink("up", "..");
                }),
                one(|t| {
                    t.file("up/outside/pwned", 0o644, b"x");
                }),
            ]),
            limits: d,
            expect: Expect::Error("points outside the root"),
        },
        Case {
            name: "symlink-escape-nested",
            build: image(vec![one(|t| {
                t.dir("d", 0o755)
                    .symlink("d/up", "../..")
                    .file("d/up/pwned", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("points outside the root"),
        },
        Case {
            name: "symlink-escape-chained",
            build: image(vec![one(|t| {
                t.dir("d", 0o755)
                    .symlink("d/top", "/")
                    .symlink("d/esc", "top/..")
                    .file("d/esc/pwned", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("points outside the root"),
        },
        Case {
            name: "hardlink-dotdot",
            build: image(vec![one(|t| {
                t.hardlink("h", "../outside/sentinel");
            })]),
            limits: d,
            expect: Expect::Error("'..' component"),
        },
        Case {
            name: "hardlink-absolute",
            build: image(vec![one(|t| {
                t.hardlink("h", "/etc/passwd");
            })]),
            limits: d,
            expect: Expect::Error("absolute path"),
        },
        Case {
            name: "hardlink-through-escaping-symlink",
            build: image(vec![one(|t| {
                t.symlink("up", "../..")
                    .hardlink("h", "up/outside/sentinel");
            })]),
            limits: d,
            expect: Expect::Error("points outside the root"),
        },
        Case {
            name: "hardlink-missing-target",
            build: image(vec![one(|t| {
                t.hardlink("h", "nope");
            })]),
            limits: d,
            expect: Expect::Error("target does not exist"),
        },
        Case {
            name: "hardlink-to-directory",
            build: image(vec![one(|t| {
                t.dir("dir", 0o755).hardlink("h", "dir");
            })]),
            limits: d,
            expect: Expect::Error("target is a directory"),
        },
        Case {
            name: "symlink-loop",
            build: image(vec![one(|t| {
                t.symlink("a", "b")
                    .symlink("b", "a")
                    .file("a/x", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("more than 40 symlinks"),
        },
        Case {
            name: "whiteout-dot",
            build: image(vec![
                one(|t| {
                    t.file("keep", 0o644, b"k");
                }),
                one(|t| {
                    t.file(".wh..", 0o644, b"");
                }),
            ]),
            limits: d,
            expect: Expect::Error("whiteout names no single entry"),
        },
        Case {
            name: "whiteout-dotdot",
            build: image(vec![
                one(|t| {
                    t.dir("d", 0o755);
                }),
                one(|t| {
                    t.file("d/.wh...", 0o644, b"");
                }),
            ]),
            limits: d,
            expect: Expect::Error("whiteout names no single entry"),
        },
        Case {
            name: "file-under-file",
            build: image(vec![one(|t| {
                t.file("f", 0o644, b"f").file("f/x", 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("to be a directory"),
        },
        Case {
            name: "path-too-long",
            build: image(vec![one(|t| {
                t.file(&"a/".repeat(2100), 0o644, b"x");
            })]),
            limits: d,
            expect: Expect::Error("exceeds 4096 bytes"),
        },
        Case {
            name: "nul-in-pax-path",
            build: image(vec![one(|t| {
                let mut h = Header::new(&b"ok"[..], Kind::File, 0o644);
                h.path = b"evil\0name-that-is-long-enough-to-need-pax-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_vec();
                t.entry(h, b"x");
            })]),
            limits: d,
            expect: Expect::Error("NUL byte"),
        },
        Case {
            name: "uid-out-of-range",
            build: image(vec![one(|t| {
                t.owned_file("f", 0o644, 1 << 32, 0, b"x");
            })]),
            limits: d,
            expect: Expect::Error("uid or gid out of range"),
        },
        Case {
            name: "decompression-bomb",
            build: image(vec![one(|t| {
                t.file("zeros", 0o644, &vec![0u8; 48 << 20]);
            })]),
            limits: Limits {
                unpacked_bytes_max: 16 << 20,
                ..d
            },
            expect: Expect::Error("decompression bomb"),
        },
        Case {
            name: "entry-count-bomb",
            build: image(vec![one(|t| {
                for i in 0..3000 {
                    t.file(&format!("f{i}"), 0o644, b"");
                }
            })]),
            limits: Limits {
                entries_max: 1000,
                ..d
            },
            expect: Expect::Error("more than 1000 entries"),
        },
        Case {
            name: "pax-header-bomb",
            build: Box::new(|layout, _| {
                let tar = raw_header_tar(b'x', b"77777777777");
                raw_image(
                    layout,
                    &compress(&tar, Compression::Gzip),
                    Compression::Gzip,
                    Digest::of(&tar),
                )
            }),
            limits: d,
            expect: Expect::Error("exceeds the limit"),
        },
        Case {
            name: "gnu-sparse",
            build: Box::new(|layout, _| {
                let tar = raw_header_tar(b'S', b"00000000000");
                raw_image(layout, &tar, Compression::None, Digest::of(&tar))
            }),
            limits: d,
            expect: Expect::Error("GNU sparse file"),
        },
        Case {
            name: "bad-tar-checksum",
            build: Box::new(|layout, _| {
                let mut tar = one(|t| {
                    t.file("f", 0o644, b"x");
                });
                tar[0] = b'g';
                raw_image(layout, &tar, Compression::None, Digest::of(&tar))
            }),
            limits: d,
            expect: Expect::Error("bad checksum"),
        },
        Case {
            name: "truncated-gzip",
            build: Box::new(|layout, _| {
                let tar = one(|t| {
                    t.file("f", 0o644, &vec![7u8; 200_000]);
                });
                let gz = compress(&tar, Compression::Gzip);
                let cut = &gz[..gz.len() / 2];
                raw_image(layout, cut, Compression::Gzip, Digest::of(&tar))
            }),
            limits: d,
            expect: Expect::Error("cannot read or decompress"),
        },
        Case {
            name: "not-gzip-at-all",
            build: Box::new(|layout, _| {
                let tar = one(|t| {
                    t.file("f", 0o644, b"x");
                });
                raw_image(layout, &tar, Compression::Gzip, Digest::of(&tar))
            }),
            limits: d,
            expect: Expect::Error("is not Gzip data"),
        },
        Case {
            name: "diff-id-mismatch",
            build: Box::new(|layout, _| {
                let tar = one(|t| {
                    t.file("f", 0o644, b"x");
                });
                raw_image(
                    layout,
                    &compress(&tar, Compression::Gzip),
                    Compression::Gzip,
                    Digest::of(b"something else"),
                )
            }),
            limits: d,
            expect: Expect::Error("diff_id"),
        },
        Case {
            name: "corrupt-blob-in-layout",
            build: Box::new(|layout, _| {
                let tar = one(|t| {
                    t.file("f", 0o644, &vec![1u8; 100_000]);
                });
                let gz = compress(&tar, Compression::Gzip);
                let desc = raw_image(layout, &gz, Compression::Gzip, Digest::of(&tar));
                // Flip a byte inside the stored blob after the fact (bit rot, tampering).
                let path = layout.blob_path(&Digest::of(&gz));
                let mut bytes = std::fs::read(&path).unwrap();
                let n = bytes.len();
                bytes[n - 12] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
                desc
            }),
            limits: d,
            expect: Expect::Error("corrupt or tampered"),
        },
    ];
    v.push(Case {
        name: "replace-symlink-to-outside-with-file",
        build: Box::new(|layout, sandbox| {
            let target = sandbox.join("outside/sentinel").display().to_string();
            let tars = vec![
                one(|t| {
                    t.symlink("link", &target);
                }),
                one(|t| {
                    t.file("link", 0o644, b"pwned?");
                }),
            ];
            let l: Vec<_> = tars.into_iter().map(|t| (t, Compression::Gzip)).collect();
            write_image(layout, &l, &Platform::linux_amd64(), BTreeMap::new()).unwrap()
        }),
        limits: d,
        expect: Expect::Contained(|root| {
            let md = std::fs::symlink_metadata(root.join("link")).unwrap();
            assert!(md.is_file(), "the symlink was replaced by a regular file");
        }),
    });
    v.push(Case {
        name: "absolute-symlink-parent-stays-inside",
        build: image(vec![
            one(|t| {
                t.symlink("etc", "/tmp");
            }),
            one(move |t| {
                t.file(
                    &format!("etc/{}", pwned_abs2.trim_start_matches("/tmp/")),
                    0o644,
                    b"x",
                );
            }),
        ]),
        limits: d,
        expect: Expect::Contained(|root| {
            let name = format!("bootyard-hostile-pwned-{}", std::process::id());
            assert!(
                root.join("tmp").join(&name).is_file(),
                "the write through /tmp landed inside the root"
            );
        }),
    });
    v
}

#[test]
fn hostile_layers_are_refused_or_contained() {
    let pwned_abs = std::path::PathBuf::from(format!(
        "/tmp/bootyard-hostile-pwned-{}",
        std::process::id()
    ));
    let mut problems = Vec::new();
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("sandbox");
        std::fs::create_dir_all(sandbox.join("outside/dir")).unwrap();
        std::fs::write(sandbox.join("outside/sentinel"), b"sentinel").unwrap();
        let dest = sandbox.join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::File::create(dest.join("precious"))
            .unwrap()
            .write_all(b"the good tree")
            .unwrap();

        let layout_dir = tmp.path().join("layout");
        let layout = Layout::create(&layout_dir).unwrap();
        let desc = (case.build)(&layout, &sandbox);
        layout.set_tag(desc, "t").unwrap();
        let before = fingerprint(&sandbox).unwrap();
        let before_outside = fingerprint(&sandbox.join("outside")).unwrap();

        let mut opts = PullOptions::new(tmp.path().join("cache"));
        opts.limits = case.limits;
        opts.force = true;
        opts.apply = ApplyOptions::for_current_user();
        let result = pull(
            &Source::Layout {
                dir: layout_dir.clone(),
                tag: Some("t".into()),
            },
            &dest,
            &opts,
        );

        match (&case.expect, result) {
            (Expect::Error(needle), Err(e)) => {
                let chain = format!("{:#}", anyhow::Error::from(e));
                if !chain.contains(needle) {
                    problems.push(format!(
                        "{}: error does not mention {needle:?}: {chain}",
                        case.name
                    ));
                }
                let after = fingerprint(&sandbox).unwrap();
                let d = diff(&before, &after, 5);
                if !d.is_empty() {
                    problems.push(format!(
                        "{}: the sandbox changed: {}",
                        case.name,
                        d.join("; ")
                    ));
                }
            }
            (Expect::Error(needle), Ok(_)) => problems.push(format!(
                "{}: succeeded, expected an error mentioning {needle:?}",
                case.name
            )),
            (Expect::Contained(check), Ok(_)) => {
                check(&dest);
                let after = fingerprint(&sandbox.join("outside")).unwrap();
                let d = diff(&before_outside, &after, 5);
                assert!(d.is_empty(), "{}: outside changed: {d:?}", case.name);
                assert_eq!(
                    std::fs::read(sandbox.join("outside/sentinel")).unwrap(),
                    b"sentinel",
                    "{}",
                    case.name
                );
            }
            (Expect::Contained(_), Err(e)) => problems.push(format!(
                "{}: expected success, got {:#}",
                case.name,
                anyhow::Error::from(e)
            )),
        }
        if pwned_abs.exists() {
            problems.push(format!(
                "{}: wrote {} outside the root",
                case.name,
                pwned_abs.display()
            ));
            std::fs::remove_file(&pwned_abs).unwrap();
        }
    }
    assert!(
        problems.is_empty(),
        "hostile corpus failures:\n{}",
        problems.join("\n")
    );
}
