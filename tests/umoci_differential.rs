//! Differential test: every image of the rules corpus, plus the Debian-like sample, unpacks
//! to exactly the tree `umoci unpack` produces (type, mode, owner, size, content, link
//! target, device numbers, hardlink groups, user xattrs). Needs root and umoci.

use std::collections::BTreeMap;
use std::process::Command;

use bootyard::image::apply::ApplyOptions;
use bootyard::image::fingerprint::{diff, fingerprint};
use bootyard::image::layout::Layout;
use bootyard::image::pull::{pull, PullOptions};
use bootyard::image::sample::{debian_like, rules_corpus, write_image, TreeScale};
use bootyard::image::spec::{Compression, Platform};
use bootyard::image::Source;
use bootyard::testkit::{require_root, require_tool};

#[test]
fn unpack_matches_umoci_on_corpus_root() {
    if !require_tool("unpack_matches_umoci_on_corpus_root", "umoci", "umoci")
        || !require_root("unpack_matches_umoci_on_corpus_root")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout_dir = tmp.path().join("layout");
    let layout = Layout::create(&layout_dir).unwrap();
    let mut corpus = rules_corpus();
    corpus.push((
        "debian-like",
        debian_like(TreeScale::DEMO, 7, Compression::Gzip),
    ));
    corpus.push((
        "debian-like-zstd",
        debian_like(TreeScale::DEMO, 8, Compression::Zstd),
    ));
    let mut failures = Vec::new();
    for (name, layers) in &corpus {
        let desc = write_image(&layout, layers, &Platform::linux_amd64(), BTreeMap::new()).unwrap();
        layout.set_tag(desc, name).unwrap();
        // umoci 0.4 predates zstd layers: it gets the same tars gzipped (same diff_ids).
        let gz: Vec<_> = layers
            .iter()
            .map(|(t, c)| {
                (
                    t.clone(),
                    if *c == Compression::Zstd {
                        Compression::Gzip
                    } else {
                        *c
                    },
                )
            })
            .collect();
        let desc = write_image(&layout, &gz, &Platform::linux_amd64(), BTreeMap::new()).unwrap();
        layout.set_tag(desc, &format!("{name}-umoci")).unwrap();

        let bundle = tmp.path().join(format!("umoci-{name}"));
        let out = Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{name}-umoci", layout_dir.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci unpack {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let ours = tmp.path().join(format!("ours-{name}"));
        let mut opts = PullOptions::new(tmp.path().join("cache"));
        opts.apply = ApplyOptions {
            preserve_owner: true,
            special_files: true,
        };
        let source = Source::Layout {
            dir: layout_dir.clone(),
            tag: Some(name.to_string()),
        };
        pull(&source, &ours, &opts).unwrap_or_else(|e| panic!("bootyard unpack {name}: {e:?}"));

        let theirs = fingerprint(&bundle.join("rootfs")).unwrap();
        let mine = fingerprint(&ours).unwrap();
        assert!(!theirs.is_empty(), "{name}: umoci produced an empty tree");
        let d = diff(&theirs, &mine, 20);
        if !d.is_empty() {
            failures.push(format!(
                "image {name:?} (first = umoci, second = bootyard):\n  {}",
                d.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "trees differ:\n{}",
        failures.join("\n")
    );
}
