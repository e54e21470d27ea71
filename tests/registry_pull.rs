//! Pulls from a real `docker-registry` process on 127.0.0.1, with images pushed by the tests
//! themselves: an index with two platforms (pushed by skopeo, an independent client), zstd
//! layers, a corrupted blob, 401s, 404s, and a proxy that drops the connection mid-blob.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bootyard::image::layout::Layout;
use bootyard::image::pull::{pull, PullError, PullOptions};
use bootyard::image::registry::{push, RegistryError, RegistryOptions};
use bootyard::image::sample::{write_image, write_index, LayerTar};
use bootyard::image::spec::{Compression, Descriptor, Platform};
use bootyard::image::{Digest, Source};
use bootyard::localreg::{Htpasswd, LocalRegistry};
use bootyard::testkit::require_tool;

fn registry_available(test: &str) -> bool {
    require_tool(test, "docker-registry", "docker-registry")
}

fn arch_image(layout: &Layout, arch: &str, c: Compression) -> Descriptor {
    let mut base = LayerTar::new();
    base.dir("etc", 0o755)
        .file("etc/arch", 0o644, arch.as_bytes())
        .file("big", 0o644, &vec![b'z'; 300_000]);
    let mut top = LayerTar::new();
    top.file("etc/version", 0o644, b"v1");
    let platform = Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: None,
    };
    write_image(
        layout,
        &[(base.finish(), c), (top.finish(), c)],
        &platform,
        BTreeMap::new(),
    )
    .unwrap()
}

fn opts(tmp: &Path, reg: &str) -> PullOptions {
    let mut o = PullOptions::new(tmp.join("cache"));
    o.registry.insecure = vec![reg.to_string()];
    o.registry.backoff_initial = Duration::from_millis(10);
    o.force = true;
    o
}

fn registry_ref(s: &str) -> Source {
    s.parse().unwrap()
}

fn push_layout(layout: &Layout, desc: &Descriptor, reference: &str, docker_config: Option<&Path>) {
    let Source::Registry(r) = registry_ref(reference) else {
        panic!()
    };
    let ropts = RegistryOptions {
        insecure: vec![r.registry().to_string()],
        docker_config: docker_config.map(Path::to_path_buf),
        ..Default::default()
    };
    push(layout, desc, &r, &ropts).unwrap();
}

#[test]
fn index_with_two_platforms_pushed_by_skopeo() {
    if !registry_available("index_with_two_platforms_pushed_by_skopeo")
        || !require_tool(
            "index_with_two_platforms_pushed_by_skopeo",
            "skopeo",
            "skopeo",
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None).unwrap();
    let layout = Layout::create(&tmp.path().join("layout")).unwrap();
    let amd = arch_image(&layout, "amd64", Compression::Gzip);
    let arm = arch_image(&layout, "arm64", Compression::Gzip);
    let index = write_index(&layout, vec![amd, arm]).unwrap();
    layout.set_tag(index, "multi").unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", tmp.path().join("layout").display()))
        .arg(format!("docker://{}/os/multi:v1", reg.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let reference = format!("{}/os/multi:v1", reg.host());
    let o = opts(tmp.path(), &reg.host());
    let report = pull(&registry_ref(&reference), &tmp.path().join("amd"), &o).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("amd/etc/arch")).unwrap(),
        "amd64"
    );
    assert_eq!(report.image.unwrap().platform, "linux/amd64");

    let mut o_arm = opts(tmp.path(), &reg.host());
    o_arm.registry.platform = "linux/arm64".parse().unwrap();
    pull(&registry_ref(&reference), &tmp.path().join("arm"), &o_arm).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("arm/etc/arch")).unwrap(),
        "arm64"
    );

    let mut o_s390 = opts(tmp.path(), &reg.host());
    o_s390.registry.platform = "linux/s390x".parse().unwrap();
    let err = pull(&registry_ref(&reference), &tmp.path().join("s390"), &o_s390).unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("no manifest for platform linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );
    assert!(!tmp.path().join("s390").exists());

    // By digest, too: the index digest the cache recorded pins the same image.
    let pinned = format!(
        "{}/os/multi@{}",
        reg.host(),
        report_manifest(&tmp.path().join("cache"), &reference)
    );
    pull(&registry_ref(&pinned), &tmp.path().join("pinned"), &o).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("pinned/etc/arch")).unwrap(),
        "amd64"
    );
}

/// The digest of the top-level object the cache recorded for `reference`.
fn report_manifest(cache: &Path, reference: &str) -> Digest {
    Layout::open(cache)
        .unwrap()
        .find(Some(reference))
        .unwrap()
        .digest
}

#[test]
fn zstd_layers_pull_and_verify() {
    if !registry_available("zstd_layers_pull_and_verify") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None).unwrap();
    let layout = Layout::create(&tmp.path().join("layout")).unwrap();
    let desc = arch_image(&layout, "amd64", Compression::Zstd);
    let reference = format!("{}/os/zstd:v1", reg.host());
    push_layout(&layout, &desc, &reference, None);
    let report = pull(
        &registry_ref(&reference),
        &tmp.path().join("root"),
        &opts(tmp.path(), &reg.host()),
    )
    .unwrap();
    assert!(report
        .unpack
        .layers
        .iter()
        .all(|l| l.compression == Compression::Zstd));
    assert_eq!(
        std::fs::read(tmp.path().join("root/big")).unwrap().len(),
        300_000
    );
}

#[test]
fn corrupted_blob_is_refused_and_destination_kept() {
    if !registry_available("corrupted_blob_is_refused_and_destination_kept") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None).unwrap();
    let layout = Layout::create(&tmp.path().join("layout")).unwrap();
    let desc = arch_image(&layout, "amd64", Compression::Gzip);
    let reference = format!("{}/os/corrupt:v1", reg.host());
    push_layout(&layout, &desc, &reference, None);

    let manifest: bootyard::image::spec::Manifest =
        serde_json::from_slice(&layout.read_json_blob(&desc).unwrap()).unwrap();
    let victim = manifest.layers[0].digest;
    let data = reg.blob_data_path(&victim);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();

    let dest = tmp.path().join("root");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("good"), b"keep me").unwrap();
    let err = pull(
        &registry_ref(&reference),
        &dest,
        &opts(tmp.path(), &reg.host()),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::DigestMismatch { .. })
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(dest.join("good")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
    assert!(
        !Layout::open(&tmp.path().join("cache"))
            .unwrap()
            .has_blob(&victim),
        "a corrupt blob must not enter the cache"
    );
}

#[test]
fn unauthorized_without_credentials_ok_with_docker_config() {
    if !registry_available("unauthorized_without_credentials_ok_with_docker_config") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let reg = LocalRegistry::start(Some(&Htpasswd {
        user: "maint".into(),
        bcrypt_hash: hash,
    }))
    .unwrap();
    let config = tmp.path().join("docker-config.json");
    let auth = base64_encode(b"maint:s3cret");
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();

    let layout = Layout::create(&tmp.path().join("layout")).unwrap();
    let desc = arch_image(&layout, "amd64", Compression::Gzip);
    let reference = format!("{}/os/private:v1", reg.host());
    push_layout(&layout, &desc, &reference, Some(&config));

    let mut o = opts(tmp.path(), &reg.host());
    o.registry.docker_config = Some(tmp.path().join("no-such-config.json"));
    let err = pull(&registry_ref(&reference), &tmp.path().join("denied"), &o).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::Unauthorized { .. })),
        "{err:?}"
    );
    assert!(!tmp.path().join("denied").exists());

    o.registry.docker_config = Some(config);
    pull(&registry_ref(&reference), &tmp.path().join("allowed"), &o).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("allowed/etc/version")).unwrap(),
        "v1"
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn unknown_tag_and_unreachable_registry() {
    if !registry_available("unknown_tag_and_unreachable_registry") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None).unwrap();
    let err = pull(
        &registry_ref(&format!("{}/os/none:v9", reg.host())),
        &tmp.path().join("a"),
        &opts(tmp.path(), &reg.host()),
    )
    .unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::NotFound { .. })),
        "{err:?}"
    );

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let host = closed.to_string();
    let mut o = opts(tmp.path(), &host);
    o.registry.attempts_max = 3;
    let err = pull(
        &registry_ref(&format!("{host}/os/x:v1")),
        &tmp.path().join("b"),
        &o,
    )
    .unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(msg.contains("failed after 3 attempts"), "{msg}");
}

/// A one-request-per-connection HTTP proxy that cuts blob responses for `digest` after
/// `cut_after` bytes, `drops` times.
struct DroppingProxy {
    addr: std::net::SocketAddr,
    drops_done: Arc<AtomicU32>,
    /// Blob requests that asked for a byte range (resumed downloads).
    ranged: Arc<AtomicU32>,
}

impl DroppingProxy {
    fn start(upstream: std::net::SocketAddr, digest: Digest, drops: u32, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let drops_done = Arc::new(AtomicU32::new(0));
        let ranged = Arc::new(AtomicU32::new(0));
        let (done, ranged2) = (drops_done.clone(), ranged.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (done, ranged) = (done.clone(), ranged2.clone());
                let needle = format!("/blobs/{digest}");
                std::thread::spawn(move || {
                    relay(client, upstream, &needle, drops, cut_after, &done, &ranged)
                });
            }
        });
        Self {
            addr,
            drops_done,
            ranged,
        }
    }
}

fn relay(
    mut client: TcpStream,
    upstream: std::net::SocketAddr,
    needle: &str,
    drops: u32,
    cut_after: usize,
    done: &AtomicU32,
    ranged: &AtomicU32,
) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
        assert!(head.len() < 64 << 10, "request head too large");
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let is_target = text.starts_with("GET ") && text.lines().next().unwrap_or("").contains(needle);
    if is_target && text.to_ascii_lowercase().contains("\r\nrange: bytes=") {
        ranged.fetch_add(1, Ordering::SeqCst);
    }
    let rewritten: String = text
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    let mut up = TcpStream::connect(upstream).unwrap();
    up.write_all(rewritten.as_bytes()).unwrap();
    let cut = is_target && done.fetch_add(1, Ordering::SeqCst) < drops;
    if !cut && is_target {
        done.fetch_sub(1, Ordering::SeqCst);
    }
    let mut sent = 0usize;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = if cut {
            n.min(cut_after.saturating_sub(sent))
        } else {
            n
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if cut && sent >= cut_after {
            break;
        }
    }
    // Closing both halves is the point: the client sees a connection reset mid-body.
    let _ = client.shutdown(Shutdown::Both);
}

#[test]
fn connection_dropped_mid_blob_is_retried_then_reported() {
    if !registry_available("connection_dropped_mid_blob_is_retried_then_reported") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(None).unwrap();
    let layout = Layout::create(&tmp.path().join("layout")).unwrap();
    let mut base = LayerTar::new();
    let mut rng = bootyard_sim::Rng::seed(42);
    let noise: Vec<u8> = (0..2_000_000u32).map(|_| rng.next_u64() as u8).collect();
    base.file("noise", 0o644, &noise);
    let desc = write_image(
        &layout,
        &[(base.finish(), Compression::Gzip)],
        &Platform::linux_amd64(),
        BTreeMap::new(),
    )
    .unwrap();
    push_layout(&layout, &desc, &format!("{}/os/flaky:v1", reg.host()), None);
    let manifest: bootyard::image::spec::Manifest =
        serde_json::from_slice(&layout.read_json_blob(&desc).unwrap()).unwrap();
    let blob = manifest.layers[0].digest;

    // Two drops, five attempts: the pull recovers.
    let proxy = DroppingProxy::start(reg.addr(), blob, 2, 100_000);
    let host = proxy.addr.to_string();
    let report = pull(
        &registry_ref(&format!("{host}/os/flaky:v1")),
        &tmp.path().join("ok"),
        &opts(tmp.path(), &host),
    )
    .unwrap();
    assert_eq!(proxy.drops_done.load(Ordering::SeqCst), 2);
    assert_eq!(
        proxy.ranged.load(Ordering::SeqCst),
        2,
        "both retries resume with a range request"
    );
    assert_eq!(std::fs::read(tmp.path().join("ok/noise")).unwrap(), noise);
    assert_eq!(report.unpack.layers[0].digest, Some(blob));

    // Always dropping: a bounded number of attempts, a clear error, nothing written.
    let tmp2 = tempfile::tempdir().unwrap();
    let proxy = DroppingProxy::start(reg.addr(), blob, u32::MAX, 100_000);
    let host = proxy.addr.to_string();
    let mut o = opts(tmp2.path(), &host);
    o.registry.attempts_max = 4;
    let err = pull(
        &registry_ref(&format!("{host}/os/flaky:v1")),
        &tmp2.path().join("never"),
        &o,
    )
    .unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains(&format!("blob {blob}")) && msg.contains("failed after 4 attempts"),
        "{msg}"
    );
    assert_eq!(proxy.drops_done.load(Ordering::SeqCst), 4);
    assert!(!tmp2.path().join("never").exists());
    assert!(!Layout::open(&tmp2.path().join("cache"))
        .unwrap()
        .has_blob(&blob));
}
