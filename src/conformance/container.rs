//! The `container` profile: the image's userland, run by the local Docker engine.
//!
//! The unpacked image is loaded into the engine as a one-layer archive (`docker load`'s
//! format, built here: no registry and no pull), each check runs one short-lived container
//! with no network, and the image is removed again at the end.
//!
//! The engine is reached through bollard, the Docker API client the `testcontainers` crate is
//! built on, with the API version negotiated: testcontainers itself asks for API 1.44 or newer
//! without negotiating, which engines before Docker 25 refuse ("client version 1.47 is too
//! new"), and Debian's engine is one of them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ImportImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::error_chain as chain;
use super::image_checks::parse_release;
use crate::image::layout::Layout;
use crate::image::source::ResolvedImage;
use crate::image::spec::Compression;
use crate::image::tarwrite::{Header, Kind, TarWriter};

/// How long the engine may take to answer its version.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long loading the image may take.
const LOAD_DEADLINE: Duration = Duration::from_secs(600);
/// How long one check's container may run.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Output kept per stream.
const OUTPUT_MAX: usize = 64 << 10;

/// A connection to the local Docker engine.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

/// What a container printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub exit: i64,
    pub stdout: String,
    pub stderr: String,
}

/// The image, loaded into the engine under a tag of its own; removed on drop.
pub struct Loaded<'a> {
    engine: &'a Engine,
    pub tag: String,
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        let opts = RemoveImageOptionsBuilder::new().force(true).build();
        let _ =
            self.engine
                .rt
                .block_on(self.engine.docker.remove_image(&self.tag, Some(opts), None));
    }
}

/// Writes through to `inner` and hashes what passed.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the tree at `root` as a `docker load` archive (manifest.json, config.json, one
/// layer) into `out`, tagged `tag`.
pub fn write_archive_from_tree(
    root: &Path,
    arch: &str,
    tag: &str,
    out: impl Write,
) -> std::io::Result<()> {
    let mut layer = tempfile::tempfile()?;
    let (diff_id, layer_len) = {
        let mut h = Hashing {
            inner: std::io::BufWriter::new(&mut layer),
            hash: Sha256::new(),
            len: 0,
        };
        crate::image::dirstream::write_tree(root, &mut h)?;
        h.flush()?;
        (hex::encode(h.hash.finalize()), h.len)
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": ["layer.tar"],
    }])
    .to_string();
    let mut w = TarWriter::new(out);
    std::io::Seek::rewind(&mut layer)?;
    w.append(&tar_file("layer.tar", layer_len), &mut layer)?;
    w.append(
        &tar_file("config.json", config.len() as u64),
        &mut config.as_bytes(),
    )?;
    w.append(
        &tar_file("manifest.json", manifest.len() as u64),
        &mut manifest.as_bytes(),
    )?;
    w.finish()?.flush()
}

/// Writes the image `image` of `layout` as a `docker load` archive into `out`, tagged
/// `tag`: its own config and layers (decompressed, since engines before Docker 23 cannot
/// read zstd layers), each layer checked against its diff_id on the way.
pub fn write_archive_from_layers(
    layout: &Layout,
    image: &ResolvedImage,
    tag: &str,
    out: impl Write,
) -> Result<(), String> {
    let config = layout
        .read_json_blob(&image.manifest.config)
        .map_err(|e| format!("reading the image config: {}", chain(&e)))?;
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        return Err(format!(
            "the manifest has {} layers, the config {} diff_ids",
            image.manifest.layers.len(),
            diff_ids.len()
        ));
    }
    let mut w = TarWriter::new(out);
    let io = |e: std::io::Error| format!("writing the archive: {e}");
    let mut names = Vec::new();
    for (i, (desc, diff_id)) in image.manifest.layers.iter().zip(diff_ids).enumerate() {
        let blob = layout
            .open_blob(&desc.digest)
            .map_err(|e| format!("layer {i}: {}", chain(&e)))?;
        let compression = Compression::from_media_type(&desc.media_type)
            .map_err(|e| format!("layer {i}: {e}"))?;
        let mut reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(blob).map_err(|e| format!("layer {i}: {e}"))?,
            ),
        };
        let mut plain = tempfile::tempfile().map_err(io)?;
        let (got, len) = {
            let mut h = Hashing {
                inner: std::io::BufWriter::new(&mut plain),
                hash: Sha256::new(),
                len: 0,
            };
            std::io::copy(&mut reader, &mut h).map_err(|e| format!("layer {i}: {e}"))?;
            h.flush().map_err(io)?;
            (format!("sha256:{}", hex::encode(h.hash.finalize())), h.len)
        };
        if got != diff_id.to_string() {
            return Err(format!(
                "layer {i} unpacks to {got}, but its diff_id is {diff_id}"
            ));
        }
        std::io::Seek::rewind(&mut plain).map_err(io)?;
        let name = format!("layer-{i}.tar");
        w.append(&tar_file(&name, len), &mut plain).map_err(io)?;
        names.push(name);
    }
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": names,
    }])
    .to_string();
    w.append(
        &tar_file("config.json", config.len() as u64),
        &mut config.as_slice(),
    )
    .map_err(io)?;
    w.append(
        &tar_file("manifest.json", manifest.len() as u64),
        &mut manifest.as_bytes(),
    )
    .map_err(io)?;
    w.finish().map_err(io)?.flush().map_err(io)
}

fn tar_file(name: &str, size: u64) -> Header {
    let mut h = Header::new(name, Kind::File, 0o644);
    h.size = size;
    h
}

/// Where the image to load comes from.
pub enum Subject<'a> {
    /// The image as shipped: its layers from an OCI layout.
    Layers(&'a Layout, &'a ResolvedImage),
    /// A root filesystem tree (a `dir:` subject), as one layer.
    Tree(&'a Path, &'a str),
}

impl Engine {
    /// Connects to the engine `DOCKER_HOST` names (else the local socket) and agrees on an
    /// API version. `Err` says why there is no engine to use.
    pub fn connect() -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an async runtime: {e}"))?;
        let docker = Docker::connect_with_defaults().map_err(|e| chain(&e))?;
        let docker = rt
            .block_on(async {
                tokio::time::timeout(CONNECT_DEADLINE, docker.negotiate_version()).await
            })
            .map_err(|_| format!("the engine did not answer within {CONNECT_DEADLINE:?}"))?
            .map_err(|e| chain(&e))?;
        Ok(Self { rt, docker })
    }

    /// Loads the subject into the engine under a fresh tag.
    pub fn load(&self, subject: Subject<'_>) -> Result<Loaded<'_>, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tag = format!(
            "bootyard-conformance/subject:{}-{nanos}",
            std::process::id()
        );
        let mut archive = tempfile::tempfile().map_err(|e| format!("temporary file: {e}"))?;
        let out = std::io::BufWriter::new(&mut archive);
        match subject {
            Subject::Layers(layout, image) => write_archive_from_layers(layout, image, &tag, out),
            Subject::Tree(root, arch) => {
                write_archive_from_tree(root, arch, &tag, out).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| format!("cannot archive the image for the engine: {e}"))?;
        std::io::Seek::rewind(&mut archive).map_err(|e| e.to_string())?;
        // Streamed in chunks: an image can be large.
        let chunks = futures_util::stream::unfold(archive, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let opts = ImportImageOptionsBuilder::new().quiet(true).build();
        let loaded = Loaded { engine: self, tag };
        self.rt
            .block_on(async {
                tokio::time::timeout(LOAD_DEADLINE, async {
                    let mut s = self.docker.import_image_stream(opts, chunks, None);
                    while let Some(item) = s.next().await {
                        item.map_err(|e| chain(&e))?;
                    }
                    Ok::<(), String>(())
                })
                .await
            })
            .map_err(|_| format!("loading did not finish within {LOAD_DEADLINE:?}"))?
            .map_err(|e| format!("the engine refused the image: {e}"))?;
        Ok(loaded)
    }

    /// Runs `cmd` in a fresh container of `image` with no network, waits up to `deadline`,
    /// and removes the container.
    pub fn run(&self, image: &str, cmd: &[&str], deadline: Duration) -> Result<RunOutput, String> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            entrypoint: Some(Vec::new()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.rt.block_on(async {
            let created = self
                .docker
                .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
                .await
                .map_err(|e| format!("cannot create a container: {}", chain(&e)))?;
            let id = created.id;
            let result = async {
                match self.docker.start_container(&id, None).await {
                    Ok(()) => {}
                    // The engine answers 400 when the runtime cannot execute the command in
                    // the image (no such file, no loader, wrong format): the image's failure,
                    // reported as a shell would (127), not the harness's.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 400,
                        message,
                    }) => {
                        return Ok(RunOutput {
                            exit: 127,
                            stdout: String::new(),
                            stderr: message,
                        })
                    }
                    Err(e) => return Err(format!("cannot start the container: {}", chain(&e))),
                }
                let exit = tokio::time::timeout(deadline, async {
                    let mut w = self.docker.wait_container(&id, None);
                    match w.next().await {
                        Some(Ok(r)) => Ok(r.status_code),
                        // bollard reports a non-zero exit as an error carrying the code.
                        Some(Err(bollard::errors::Error::DockerContainerWaitError {
                            code,
                            ..
                        })) => Ok(code),
                        Some(Err(e)) => Err(format!("waiting for the container: {}", chain(&e))),
                        None => Err("the engine ended the wait without a status".to_string()),
                    }
                })
                .await;
                let exit = match exit {
                    Ok(exit) => exit?,
                    // Still running at the deadline: the command hangs, which is the image's
                    // failure (reported as `timeout` does, 124). The container is removed below.
                    Err(_) => {
                        return Ok(RunOutput {
                            exit: 124,
                            stdout: String::new(),
                            stderr: format!("did not exit within {deadline:?}"),
                        })
                    }
                };
                let mut out = (Vec::new(), Vec::new());
                let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
                let mut logs = self.docker.logs(&id, Some(opts));
                while let Some(item) = logs.next().await {
                    match item.map_err(|e| format!("reading its output: {}", chain(&e)))? {
                        // Kept up to OUTPUT_MAX a stream; the rest is read and dropped.
                        bollard::container::LogOutput::StdOut { message } => {
                            keep(&mut out.0, &message)
                        }
                        bollard::container::LogOutput::StdErr { message } => {
                            keep(&mut out.1, &message)
                        }
                        _ => {}
                    }
                }
                let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                Ok(RunOutput {
                    exit,
                    stdout: text(out.0),
                    stderr: text(out.1),
                })
            }
            .await;
            let rm = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self.docker.remove_container(&id, Some(rm)).await;
            result
        })
    }
}

/// Appends what still fits under [`OUTPUT_MAX`].
fn keep(buf: &mut Vec<u8>, more: &[u8]) {
    let room = OUTPUT_MAX.saturating_sub(buf.len());
    buf.extend_from_slice(&more[..more.len().min(room)]);
}

/// How a command's run reads in a failure reason: its status and the start of each stream.
fn describe(cmd: &str, o: &RunOutput) -> String {
    let first = |t: &str| t.trim().lines().take(5).collect::<Vec<_>>().join(" | ");
    let mut s = format!("`{cmd}` exited {}", o.exit);
    for (name, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        let t = first(text);
        if !t.is_empty() {
            s.push_str(&format!("; {name}: {t}"));
        }
    }
    s
}

/// A check's answer: `Err` when the engine failed (no verdict), else the image's
/// pass (`Ok(Ok(()))`) or failure with its reason.
pub type Checked = Result<Result<(), String>, String>;

/// CTR-001: a shell runs.
pub fn shell_runs(e: &Engine, image: &str) -> Checked {
    let o = e.run(image, &["/bin/sh", "-c", "echo ok"], RUN_DEADLINE)?;
    Ok(if o.exit == 0 && o.stdout.trim() == "ok" {
        Ok(())
    } else {
        Err(describe("/bin/sh -c 'echo ok'", &o))
    })
}

/// CTR-002: the agent runs and prints a version.
pub fn agent_version(e: &Engine, image: &str) -> Checked {
    let o = e.run(image, &["/usr/bin/bootyard", "--version"], RUN_DEADLINE)?;
    let printed = o.stdout.trim();
    Ok(
        if o.exit == 0 && printed.chars().any(|c| c.is_ascii_digit()) {
            Ok(())
        } else {
            Err(describe("/usr/bin/bootyard --version", &o))
        },
    )
}

/// The os-release file, printed with shell builtins only (no `cat` needed).
const PRINT_OS_RELEASE: &str = "f=/etc/os-release; [ -e \"$f\" ] || f=/usr/lib/os-release; \
    while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < \"$f\"";

/// CTR-003: the running container's os-release says what the unpacked image's does.
pub fn release_reads_back(e: &Engine, image: &str, root: &Path) -> Checked {
    let read = |rel: &str| -> Option<BTreeMap<String, String>> {
        let b = super::image_checks::file(root, rel, 1 << 16).ok()?;
        Some(parse_release(&String::from_utf8_lossy(&b)))
    };
    let Some(want) = read("etc/os-release").or_else(|| read("usr/lib/os-release")) else {
        return Ok(Err(
            "the unpacked image has no os-release file to compare with (IMG-006)".into(),
        ));
    };
    let o = e.run(image, &["/bin/sh", "-c", PRINT_OS_RELEASE], RUN_DEADLINE)?;
    if o.exit != 0 {
        return Ok(Err(describe("reading /etc/os-release", &o)));
    }
    let got = parse_release(&o.stdout);
    for k in ["ID", "VERSION_ID"] {
        if got.get(k) != want.get(k) {
            return Ok(Err(format!(
                "{k} reads {:?} in the container, {:?} in the unpacked image",
                got.get(k),
                want.get(k)
            )));
        }
    }
    Ok(Ok(()))
}
