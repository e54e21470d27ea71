//! The unpack pipeline: one thread reads, verifies and decompresses layer blobs while the
//! calling thread parses tar and applies entries, so both cores work. Everything lands in a
//! staging directory that replaces the destination only when every digest has checked out.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::apply::{Applier, ApplyError, ApplyOptions, ApplyStats, Limits};
use super::digest::{Digest, Hasher};
use super::spec::Compression;

/// Decompressed bytes per message between the threads.
const CHUNK_BYTES: usize = 512 << 10;
/// Messages in flight; bounds the memory between the threads to about 8 MiB.
const CHANNEL_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: blob has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        layer: usize,
        expected: u64,
        actual: u64,
    },
    #[error(
        "layer {layer}: blob digest is {actual}, expected {expected} (corrupt or tampered blob)"
    )]
    DigestMismatch {
        layer: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {layer}: uncompressed digest is {actual}, the image config's diff_id is {expected}"
    )]
    DiffIdMismatch {
        layer: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {layer}: decompressed size exceeds the limit of {max} bytes (decompression bomb?)"
    )]
    TooLarge { layer: usize, max: u64 },
    #[error("layer {layer}: cannot read or decompress the blob ({compression:?})")]
    Read {
        layer: usize,
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: blob is not {compression:?} data (first bytes {magic:02x?})")]
    BadMagic {
        layer: usize,
        compression: Compression,
        magic: Vec<u8>,
    },
    #[error("layer {layer}")]
    Apply {
        layer: usize,
        #[source]
        source: ApplyError,
    },
    #[error("destination {0} exists and is not an empty directory (pass --force to replace it)")]
    DestinationNotEmpty(PathBuf),
    #[error("destination {0} exists and is not a directory")]
    DestinationNotDir(PathBuf),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One layer to apply, lowest first.
pub struct LayerInput {
    pub reader: Box<dyn Read + Send>,
    pub compression: Compression,
    /// Digest and size of the blob as stored (compressed), when known.
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    /// Digest of the uncompressed tar, from the image config, when known.
    pub diff_id: Option<Digest>,
    /// How the blob digest is checked.
    pub blob_check: BlobCheck,
}

/// When and where the compressed blob's digest is computed.
pub enum BlobCheck {
    /// Inline, on the decompressing thread: for sources that can be read only once.
    Inline,
    /// From a second reader of the same blob, on a thread of its own.
    Parallel(Box<dyn Read + Send>),
    /// Only to explain a failure. The diff_ids (from the digest-checked config) already
    /// authenticate every byte unpacked, so a blob that was verified when it was stored
    /// need not be hashed again on the unpack's critical path.
    OnFailure(Box<dyn Read + Send>),
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: Option<Digest>,
    /// Whether the blob's own digest was recomputed during this unpack (the diff_id always is).
    pub blob_digest_verified: bool,
    pub diff_id: Digest,
    pub compression: Compression,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnpackReport {
    pub layers: Vec<LayerReport>,
    pub stats: ApplyStats,
    pub warnings: Vec<String>,
    pub elapsed_ms: u64,
}

enum Msg {
    Chunk(Vec<u8>),
    /// The blob checked out; the consumer, which hashes the chunks, checks the diff_id.
    LayerEnd {
        report: LayerReport,
        expected_diff_id: Option<Digest>,
    },
    Failed(UnpackError),
}

/// A compressed-side reader that hashes and counts what passes through it.
struct Tee<R> {
    inner: R,
    hasher: Hasher,
    hash: bool,
    bytes: u64,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hash {
            self.hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        if let Some(p) = &self.progress {
            p.inc(n as u64);
        }
        Ok(n)
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Producer side: read, verify and decompress every layer, in order.
fn produce(
    layers: Vec<LayerInput>,
    tx: SyncSender<Msg>,
    pool: Receiver<Vec<u8>>,
    unpacked_bytes_max: u64,
    progress: Option<indicatif::ProgressBar>,
) {
    let mut total: u64 = 0;
    for (i, layer) in layers.into_iter().enumerate() {
        let expected_diff_id = layer.diff_id;
        match produce_layer(
            i,
            layer,
            &tx,
            &pool,
            &mut total,
            unpacked_bytes_max,
            progress.clone(),
        ) {
            Ok(report) => {
                if tx
                    .send(Msg::LayerEnd {
                        report,
                        expected_diff_id,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // The consumer may already be gone after its own error; nothing left to tell.
                let _ = tx.send(Msg::Failed(e));
                return;
            }
        }
    }
}

/// Hashes a second reader of the same blob on its own thread, so the compressed digest
/// costs the decompressing thread nothing; the OS spreads the three threads over the cores.
fn spawn_blob_hasher(
    r: Box<dyn Read + Send>,
    size_max: u64,
    cancel: Arc<AtomicBool>,
) -> std::thread::JoinHandle<io::Result<Hasher>> {
    std::thread::Builder::new()
        .name("unpack-blobhash".into())
        .spawn(move || hash_reader(r, size_max, Some(&cancel)))
        .expect("spawn blob hasher thread")
}

fn produce_layer(
    i: usize,
    mut layer: LayerInput,
    tx: &SyncSender<Msg>,
    pool: &Receiver<Vec<u8>>,
    total: &mut u64,
    unpacked_bytes_max: u64,
    progress: Option<indicatif::ProgressBar>,
) -> Result<LayerReport, UnpackError> {
    let compression = layer.compression;
    let read_err = |source| UnpackError::Read {
        layer: i,
        compression,
        source,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let size_max = layer.size.map_or(u64::MAX, |s| s.saturating_add(1));
    let (side, on_failure) = match std::mem::replace(&mut layer.blob_check, BlobCheck::Inline) {
        BlobCheck::Parallel(r) => (Some(spawn_blob_hasher(r, size_max, cancel.clone())), None),
        BlobCheck::OnFailure(r) => (None, Some(r)),
        BlobCheck::Inline => (None, None),
    };
    let inline_hash = side.is_none() && on_failure.is_none() && layer.digest.is_some();
    let mut tee = io::BufReader::with_capacity(
        256 << 10,
        Tee {
            inner: layer.reader,
            hasher: Hasher::new(),
            hash: inline_hash,
            bytes: 0,
            progress,
        },
    );
    // Reads the blob to its end and returns its size and, where computed, its digest.
    let finish = |tee: &mut io::BufReader<Tee<Box<dyn Read + Send>>>,
                  side: Option<std::thread::JoinHandle<io::Result<Hasher>>>|
     -> Result<(u64, Option<Digest>), UnpackError> {
        // Trailing bytes after the compressed stream (or the tar) belong to the blob too.
        io::copy(&mut tee.take(size_max), &mut io::sink()).map_err(read_err)?;
        let t = tee.get_mut();
        match side {
            Some(handle) => {
                let h = handle
                    .join()
                    .expect("blob hasher panicked")
                    .map_err(read_err)?;
                Ok((h.len(), Some(h.finish())))
            }
            None if t.hash => Ok((t.bytes, Some(std::mem::take(&mut t.hasher).finish()))),
            None => Ok((t.bytes, None)),
        }
    };
    let check_blob = |bytes: u64, digest: Option<Digest>| -> Result<(), UnpackError> {
        if let (Some(expected), Some(actual)) = (layer.digest, digest) {
            if expected != actual {
                return Err(UnpackError::DigestMismatch {
                    layer: i,
                    expected,
                    actual,
                });
            }
        }
        if let Some(expected) = layer.size {
            if expected != bytes {
                return Err(UnpackError::SizeMismatch {
                    layer: i,
                    expected,
                    actual: bytes,
                });
            }
        }
        Ok(())
    };

    let mut uncompressed_bytes = 0u64;
    let decoded = (|| {
        let magic = tee
            .fill_buf()
            .map_err(read_err)?
            .iter()
            .take(4)
            .copied()
            .collect::<Vec<u8>>();
        let expect = match compression {
            Compression::Gzip => Some(GZIP_MAGIC),
            Compression::Zstd => Some(ZSTD_MAGIC),
            Compression::None => None,
        };
        if let Some(m) = expect {
            if !magic.starts_with(m) {
                return Err(UnpackError::BadMagic {
                    layer: i,
                    compression,
                    magic,
                });
            }
        }
        decode_into(
            i,
            compression,
            &mut tee,
            &mut uncompressed_bytes,
            tx,
            pool,
            total,
            unpacked_bytes_max,
        )
    })();
    if let Err(e) = decoded {
        if matches!(e, UnpackError::Read { .. } | UnpackError::BadMagic { .. }) {
            // A decoder error on a blob that also fails its digest is corruption, and saying
            // so beats "bad gzip checksum".
            let digest = match (side, on_failure) {
                (Some(handle), _) => handle
                    .join()
                    .expect("blob hasher panicked")
                    .ok()
                    .map(|h| (h.len(), h.finish())),
                (None, Some(r)) => hash_reader(r, size_max, None)
                    .ok()
                    .map(|h| (h.len(), h.finish())),
                (None, None) => finish(&mut tee, None)
                    .ok()
                    .and_then(|(n, d)| d.map(|d| (n, d))),
            };
            if let Some((bytes, digest)) = digest {
                check_blob(bytes, Some(digest))?;
            }
        } else {
            cancel.store(true, Ordering::Relaxed);
            if let Some(h) = side {
                // Only stopping it matters here; its result is moot.
                let _ = h.join();
            }
        }
        return Err(e);
    }
    let (compressed_bytes, digest) = finish(&mut tee, side)?;
    check_blob(compressed_bytes, digest)?;
    // The consumer fills in the diff_id from the chunks it hashed.
    Ok(LayerReport {
        digest: digest.or(layer.digest),
        blob_digest_verified: digest.is_some() && layer.digest.is_some(),
        diff_id: Digest::of(b""),
        compression,
        compressed_bytes,
        uncompressed_bytes,
    })
}

/// Hashes `r` to its end, or one byte past `size_max` (which already proves a mismatch).
fn hash_reader(
    mut r: Box<dyn Read + Send>,
    size_max: u64,
    cancel: Option<&AtomicBool>,
) -> io::Result<Hasher> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::other("cancelled"));
        }
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        if h.len() > size_max {
            return Ok(h);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_into(
    i: usize,
    compression: Compression,
    tee: &mut io::BufReader<Tee<Box<dyn Read + Send>>>,
    uncompressed_bytes: &mut u64,
    tx: &SyncSender<Msg>,
    pool: &Receiver<Vec<u8>>,
    total: &mut u64,
    unpacked_bytes_max: u64,
) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        layer: i,
        compression,
        source,
    };
    let mut decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(tee),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(tee)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(tee).map_err(read_err)?)
        }
    };
    loop {
        let mut buf = pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES));
        buf.resize(CHUNK_BYTES, 0);
        let n = read_full(&mut decoder, &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        *total += n as u64;
        if *total > unpacked_bytes_max {
            return Err(UnpackError::TooLarge {
                layer: i,
                max: unpacked_bytes_max,
            });
        }
        *uncompressed_bytes += n as u64;
        if tx.send(Msg::Chunk(buf)).is_err() {
            // The consumer failed and reports its own error.
            return Err(UnpackError::Read {
                layer: i,
                compression,
                source: io::Error::other("consumer stopped"),
            });
        }
    }
}

/// Consumer side: a `BufRead` over the chunks of one layer; EOF at the layer's end.
/// It also hashes the chunks for the diff_id: on the consumer side, so the decompressing
/// thread (the pipeline's bottleneck) does nothing but decompress.
struct ChunkReader {
    rx: Receiver<Msg>,
    layer: usize,
    diff: Hasher,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    ended: Option<LayerReport>,
    failed: Option<UnpackError>,
}

impl ChunkReader {
    fn next_layer(&mut self, layer: usize) {
        self.ended = None;
        self.layer = layer;
        self.diff = Hasher::new();
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.cur.len() {
            if self.ended.is_some() {
                return Ok(&[]);
            }
            if self.failed.is_some() {
                return Err(io::Error::other("layer stream failed"));
            }
            let spent = std::mem::take(&mut self.cur);
            self.pos = 0;
            // A full pool only means the producer allocates a fresh buffer.
            let _ = self.recycle.try_send(spent);
            match self.rx.recv() {
                Ok(Msg::Chunk(c)) => {
                    self.diff.update(&c);
                    self.cur = c;
                }
                Ok(Msg::LayerEnd {
                    mut report,
                    expected_diff_id,
                }) => {
                    let actual = std::mem::take(&mut self.diff).finish();
                    report.diff_id = actual;
                    match expected_diff_id {
                        Some(expected) if expected != actual => {
                            self.failed = Some(UnpackError::DiffIdMismatch {
                                layer: self.layer,
                                expected,
                                actual,
                            });
                        }
                        _ => self.ended = Some(report),
                    }
                }
                Ok(Msg::Failed(e)) => self.failed = Some(e),
                Err(_) => return Err(io::Error::other("layer producer stopped")),
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.cur.len());
    }
}

/// Applies `layers` in order into the empty directory `root`.
pub fn unpack_into(
    root: &Path,
    layers: Vec<LayerInput>,
    opts: ApplyOptions,
    limits: Limits,
    progress: Option<indicatif::ProgressBar>,
) -> Result<UnpackReport, UnpackError> {
    let started = Instant::now();
    let count = layers.len();
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let (recycle_tx, recycle_rx) = sync_channel(CHANNEL_DEPTH + 2);
    let mut applier = Applier::new(root, opts, limits)
        .map_err(|source| UnpackError::Apply { layer: 0, source })?;
    let producer = std::thread::Builder::new()
        .name("unpack-decompress".into())
        .spawn(move || produce(layers, tx, recycle_rx, limits.unpacked_bytes_max, progress))
        .map_err(|source| UnpackError::Io {
            op: "spawn decompress thread for",
            path: root.to_path_buf(),
            source,
        })?;
    let mut reader = ChunkReader {
        rx,
        layer: 0,
        diff: Hasher::new(),
        recycle: recycle_tx,
        cur: Vec::new(),
        pos: 0,
        ended: None,
        failed: None,
    };
    let mut reports = Vec::with_capacity(count);
    let mut result = Ok(());
    for i in 0..count {
        reader.next_layer(i);
        match applier.apply_layer(&mut reader) {
            Ok(_) => match reader.ended.take() {
                Some(r) => reports.push(r),
                None => {
                    result = Err(reader.failed.take().unwrap_or_else(|| UnpackError::Read {
                        layer: i,
                        compression: Compression::None,
                        source: io::Error::other("layer stream ended early"),
                    }));
                    break;
                }
            },
            Err(source) => {
                // A producer failure (bad digest, bad gzip) explains a broken tar better.
                result = Err(reader
                    .failed
                    .take()
                    .unwrap_or(UnpackError::Apply { layer: i, source }));
                break;
            }
        }
    }
    // Dropping the receiver unblocks a producer still sending.
    drop(reader);
    if producer.join().is_err() {
        panic!("unpack decompress thread panicked");
    }
    result?;
    let (stats, warnings) = applier.finish().map_err(|source| UnpackError::Apply {
        layer: count,
        source,
    })?;
    Ok(UnpackReport {
        layers: reports,
        stats,
        warnings,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Runs `fill` on a fresh staging directory next to `dest` and moves the result into place
/// only if it succeeds. On failure the staging directory is removed and `dest` is untouched.
pub fn replace_dir_atomically<T, E: From<UnpackError>>(
    dest: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { op, path, source }
    }
    let mut replace = false;
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let empty = std::fs::read_dir(dest)
                .map_err(io("read", dest))?
                .next()
                .is_none();
            if !empty && !force {
                return Err(UnpackError::DestinationNotEmpty(dest.to_path_buf()).into());
            }
            replace = true;
        }
        Ok(_) => return Err(UnpackError::DestinationNotDir(dest.to_path_buf()).into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", dest)(e).into()),
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rootfs".into());
    let staging_prefix = format!(".{name}.bootyard-partial-");
    crate::output::scratch_dir(&parent);
    let staging = parent.join(format!("{staging_prefix}{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("remove stale", &staging))?;
    }
    std::fs::create_dir(&staging).map_err(io("create", &staging))?;
    let value = match fill(&staging) {
        Ok(v) => v,
        Err(e) => {
            // Best effort: the error being returned matters more than a leftover temp dir.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if replace {
        // Swap atomically so a reader never sees a missing destination, then drop the old tree.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| io("swap into place", dest)(e.into()))?;
        std::fs::remove_dir_all(&staging).map_err(io("remove old", &staging))?;
    } else {
        std::fs::rename(&staging, dest).map_err(io("move into place", dest))?;
    }
    Ok(value)
}
