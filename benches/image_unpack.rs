//! Criterion bench: unpack the generated Debian-like image (gzip layers, ~526 MB in ~18k
//! entries) from an OCI layout on local disk, with diff_ids verified, into fresh
//! directories. `benches/compare.sh` times the same image against umoci and tar.
//!
//! Trees are not deleted between iterations (ext4 creates files several times slower right
//! after deletions); they are removed when the bench ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bootyard::image::apply::ApplyOptions;
use bootyard::image::layout::Layout;
use bootyard::image::pull::{pull, PullOptions};
use bootyard::image::sample::{debian_like, write_image, TreeScale};
use bootyard::image::spec::{Compression, Platform};
use bootyard::image::Source;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/criterion")
}

/// Builds (once, cached on disk) an image and returns its layout and uncompressed size.
fn image(name: &str, scale: TreeScale) -> (PathBuf, u64) {
    let dir = bench_dir().join(name);
    let layers = debian_like(scale, 1, Compression::Gzip);
    let size: u64 = layers.iter().map(|(t, _)| t.len() as u64).sum();
    if Layout::open(&dir)
        .and_then(|l| l.find(Some("bench")))
        .is_err()
    {
        let layout = Layout::create(&dir).expect("create bench layout");
        let desc = write_image(&layout, &layers, &Platform::linux_amd64(), BTreeMap::new())
            .expect("write bench image");
        layout.set_tag(desc, "bench").expect("tag bench image");
    }
    (dir, size)
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn unpack_once(layout: &Path, out_root: &Path) -> Duration {
    let out = out_root.join(format!(
        "{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let mut opts = PullOptions::new(out_root.join("cache"));
    opts.apply = ApplyOptions::for_current_user();
    let source = Source::Layout {
        dir: layout.to_path_buf(),
        tag: Some("bench".into()),
    };
    let started = Instant::now();
    pull(&source, &out, &opts).expect("unpack bench image");
    started.elapsed()
}

fn unpack(c: &mut Criterion) {
    let out_root = bench_dir().join("out");
    std::fs::create_dir_all(&out_root).expect("create bench output dir");
    let mut group = c.benchmark_group("unpack");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    for (name, scale) in [
        ("demo-image", TreeScale::DEMO),
        ("debian-like-bench-image", TreeScale::BENCH),
    ] {
        let (layout, size) = image(name, scale);
        group.throughput(Throughput::Bytes(size));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| unpack_once(&layout, &out_root)).sum())
        });
    }
    group.finish();
    // Cleanup after measuring: see the module doc on deletions.
    if let Err(e) = std::fs::remove_dir_all(&out_root) {
        eprintln!("warning: could not remove {}: {e}", out_root.display());
    }
}

criterion_group!(benches, unpack);
criterion_main!(benches);
