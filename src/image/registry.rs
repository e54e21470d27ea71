//! Fetching images from OCI registries into the local blob cache (an OCI layout), with
//! oci-client underneath. Every blob is verified (size and sha256) before it becomes visible
//! in the cache; transient failures are retried a bounded number of times with backoff.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::auth;
use super::digest::{Digest, Hasher};
use super::layout::{Layout, LayoutError};
use super::source::{select_platform, ResolveError, ResolvedImage};
use super::spec::{self, Descriptor, Platform, Pointed, JSON_BLOB_BYTES_MAX};

const ACCEPTED_MANIFESTS: &[&str] = &[
    spec::MEDIA_OCI_MANIFEST,
    spec::MEDIA_OCI_INDEX,
    spec::MEDIA_DOCKER_MANIFEST,
    spec::MEDIA_DOCKER_LIST,
];

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    pub platform: Platform,
    /// Tries per request, the first included.
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    /// Docker config file with credentials; `None` means the usual places.
    pub docker_config: Option<PathBuf>,
    pub timeout_connect: Duration,
    pub timeout_read: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            platform: Platform::linux_amd64(),
            attempts_max: 5,
            backoff_initial: Duration::from_millis(200),
            docker_config: None,
            timeout_connect: Duration::from_secs(10),
            timeout_read: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} refused access to {what} (401/403): check credentials in the docker config ({hint})")]
    Unauthorized {
        registry: String,
        what: String,
        hint: String,
    },
    #[error("{what} not found in registry {registry} (404)")]
    NotFound { registry: String, what: String },
    #[error("{what} from {registry} failed after {attempts} attempts")]
    Exhausted {
        registry: String,
        what: String,
        attempts: u32,
        #[source]
        source: OciDistributionError,
    },
    #[error("{what} from {registry} failed")]
    Failed {
        registry: String,
        what: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{what} from {registry} has digest {actual}, expected {expected} (corrupt blob in the registry, or tampering)")]
    DigestMismatch {
        registry: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} from {registry} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        registry: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} from {registry} exceeds {max} bytes")]
    TooLarge {
        registry: String,
        what: String,
        max: u64,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Auth,
    NotFound,
    Transient,
    Fatal,
}

fn classify(e: &OciDistributionError) -> Class {
    use OciDistributionError as E;
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Class::Auth,
        E::ImageManifestNotFoundError(_) => Class::NotFound,
        E::ServerError {
            code: 401 | 403, ..
        } => Class::Auth,
        E::ServerError { code: 404, .. } => Class::NotFound,
        E::ServerError { code, .. } if *code == 429 || *code >= 500 => Class::Transient,
        E::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code).to_ascii_lowercase())
                .collect();
            if codes
                .iter()
                .any(|c| c.contains("unauthorized") || c.contains("denied"))
            {
                Class::Auth
            } else if codes.iter().any(|c| c.contains("unknown")) {
                Class::NotFound
            } else if codes.iter().any(|c| c.contains("toomanyrequests")) {
                Class::Transient
            } else {
                Class::Fatal
            }
        }
        E::RequestError(_) | E::IoError(_) => Class::Transient,
        _ => Class::Fatal,
    }
}

struct Fetcher<'a> {
    client: Client,
    auth: RegistryAuth,
    reference: &'a Reference,
    opts: &'a RegistryOptions,
    auth_hint: String,
}

impl Fetcher<'_> {
    fn registry(&self) -> String {
        self.reference.resolve_registry().to_string()
    }

    fn map_final(&self, what: &str, e: OciDistributionError, attempts: u32) -> RegistryError {
        let (registry, what) = (self.registry(), what.to_string());
        match classify(&e) {
            Class::Auth => RegistryError::Unauthorized {
                registry,
                what,
                hint: self.auth_hint.clone(),
            },
            Class::NotFound => RegistryError::NotFound { registry, what },
            Class::Transient => RegistryError::Exhausted {
                registry,
                what,
                attempts,
                source: e,
            },
            Class::Fatal => RegistryError::Failed {
                registry,
                what,
                source: e,
            },
        }
    }

    /// Waits before a retry. A real pause is the point here: a registry that dropped us or
    /// answered 429/5xx needs time to recover, and retrying at once only adds load. The wait
    /// doubles per attempt (capped at 64x) and attempts are bounded by `attempts_max`.
    async fn backoff(&self, attempt: u32) {
        let factor = 1u32 << attempt.min(6);
        tokio::time::sleep(self.opts.backoff_initial * factor).await;
    }

    /// Fetches a manifest or index by tag or digest and checks it against `expect`.
    async fn manifest(
        &self,
        reference: &Reference,
        expect: Option<Digest>,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let what = format!("manifest {}", reference.whole());
        let mut attempt = 0;
        let bytes = loop {
            attempt += 1;
            match self
                .client
                .pull_manifest_raw(reference, &self.auth, ACCEPTED_MANIFESTS)
                .await
            {
                Ok((bytes, _)) => break bytes,
                Err(e) if classify(&e) == Class::Transient && attempt < self.opts.attempts_max => {
                    self.backoff(attempt).await
                }
                Err(e) => return Err(self.map_final(&what, e, attempt)),
            }
        };
        if bytes.len() as u64 > JSON_BLOB_BYTES_MAX {
            return Err(RegistryError::TooLarge {
                registry: self.registry(),
                what,
                max: JSON_BLOB_BYTES_MAX,
            });
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = expect {
            if actual != expected {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry(),
                    what,
                    expected,
                    actual,
                });
            }
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Streams one blob into `sink`, verifying size and digest. Transient failures are
    /// retried, resuming with a range request where the registry supports one.
    async fn blob(
        &self,
        desc: &Descriptor,
        sink: &mut dyn FnMut(SinkOp<'_>) -> std::io::Result<()>,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<(), RegistryError> {
        enum Failure {
            Net(OciDistributionError),
            Local(std::io::Error),
        }
        let what = format!("blob {}", desc.digest);
        let digest_str = desc.digest.to_string();
        let local = |e: std::io::Error| {
            RegistryError::Layout(LayoutError::Io {
                op: "store download of",
                path: PathBuf::from(&digest_str),
                source: e,
            })
        };
        // Survives failed attempts: a retry resumes where the last one stopped. It only ever
        // counts bytes the sink accepted.
        let mut hasher = Hasher::new();
        sink(SinkOp::Restart).map_err(local)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: Result<(), Failure> = async {
                let mut stream = if hasher.is_empty() {
                    self.client
                        .pull_blob_stream(self.reference, digest_str.as_str())
                        .await
                        .map_err(Failure::Net)?
                } else {
                    let offset = hasher.len();
                    match self
                        .client
                        .pull_blob_stream_partial(self.reference, digest_str.as_str(), offset, None)
                        .await
                        .map_err(Failure::Net)?
                    {
                        BlobResponse::Partial(s) => {
                            sink(SinkOp::ResumeAt(offset)).map_err(Failure::Local)?;
                            s
                        }
                        // The registry ignored the range: start over.
                        BlobResponse::Full(s) => {
                            hasher = Hasher::new();
                            sink(SinkOp::Restart).map_err(Failure::Local)?;
                            s
                        }
                    }
                };
                while let Some(chunk) = stream.stream.next().await {
                    let chunk = chunk.map_err(|e| Failure::Net(e.into()))?;
                    if hasher.len() + chunk.len() as u64 > desc.size {
                        // More than the descriptor allows: count it, keep none of it.
                        hasher.update(&chunk);
                        break;
                    }
                    sink(SinkOp::Data(&chunk)).map_err(Failure::Local)?;
                    hasher.update(&chunk);
                    if let Some(p) = progress {
                        p.inc(chunk.len() as u64);
                    }
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    let got = std::mem::take(&mut hasher);
                    if got.len() != desc.size {
                        return Err(RegistryError::SizeMismatch {
                            registry: self.registry(),
                            what,
                            expected: desc.size,
                            actual: got.len(),
                        });
                    }
                    let actual = got.finish();
                    if actual != desc.digest {
                        return Err(RegistryError::DigestMismatch {
                            registry: self.registry(),
                            what,
                            expected: desc.digest,
                            actual,
                        });
                    }
                    return Ok(());
                }
                Err(Failure::Local(e)) => return Err(local(e)),
                Err(Failure::Net(e)) if is_digest_failure(&e) => {
                    // oci-client's own verifier fired at the end of a full stream, after every
                    // byte reached us: our hash of them names the digest actually served.
                    let actual = std::mem::take(&mut hasher).finish();
                    return Err(RegistryError::DigestMismatch {
                        registry: self.registry(),
                        what,
                        expected: desc.digest,
                        actual,
                    });
                }
                Err(Failure::Net(e))
                    if classify(&e) == Class::Transient && attempt < self.opts.attempts_max =>
                {
                    if let Some(p) = progress {
                        p.set_message(format!(
                            "retrying {} (attempt {})",
                            desc.digest.short(),
                            attempt + 1
                        ));
                    }
                    self.backoff(attempt).await;
                }
                Err(Failure::Net(e)) => return Err(self.map_final(&what, e, attempt)),
            }
        }
    }
}

/// What a download asks of the place it writes to.
pub enum SinkOp<'a> {
    /// Drop everything written so far.
    Restart,
    /// Keep exactly the first N bytes; more follow from there.
    ResumeAt(u64),
    Data(&'a [u8]),
}

fn is_digest_failure(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::DigestError(_) => true,
        OciDistributionError::IoError(io) => io.to_string().to_ascii_lowercase().contains("digest"),
        _ => false,
    }
}

/// Pulls the image `reference` names (resolving an index to `opts.platform`) into `cache`,
/// tags it there with the reference's full name, and returns the resolved image.
pub fn fetch(
    reference: &Reference,
    cache: &Layout,
    opts: &RegistryOptions,
    progress: Option<indicatif::ProgressBar>,
) -> Result<ResolvedImage, RegistryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(fetch_async(reference, cache, opts, progress))
}

fn client_for(opts: &RegistryOptions) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.insecure.clone()),
        platform_resolver: None,
        connect_timeout: Some(opts.timeout_connect),
        read_timeout: Some(opts.timeout_read),
        user_agent: concat!("bootyard/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    })
}

async fn fetch_async(
    reference: &Reference,
    cache: &Layout,
    opts: &RegistryOptions,
    progress: Option<indicatif::ProgressBar>,
) -> Result<ResolvedImage, RegistryError> {
    let creds = auth::lookup(reference.resolve_registry(), opts.docker_config.as_deref())?;
    let auth_hint = creds.source.clone();
    let f = Fetcher {
        client: client_for(opts),
        auth: creds.auth,
        reference,
        opts,
        auth_hint,
    };

    let expect = reference
        .digest()
        .map(|d| d.parse::<Digest>())
        .transpose()
        .map_err(|e| spec::SpecError::NotAnImage(e.to_string()))?;
    let (bytes, top_digest) = f.manifest(reference, expect).await?;
    let top_media = media_type_of(&bytes);
    let top_desc = cache.put_blob(&top_media, &bytes)?;
    debug_assert_eq!(top_desc.digest, top_digest);

    let (manifest_bytes, manifest_digest) = match spec::parse_pointed(None, &bytes)? {
        Pointed::Manifest(_) => (bytes, top_digest),
        Pointed::Index(index) => {
            let child = select_platform(&index, &opts.platform)?;
            let child_ref = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                child.digest.to_string(),
            );
            let (b, d) = f.manifest(&child_ref, Some(child.digest)).await?;
            cache.put_blob(&child.media_type, &b)?;
            (b, d)
        }
    };
    let manifest = match spec::parse_pointed(None, &manifest_bytes)? {
        Pointed::Manifest(m) => m,
        Pointed::Index(_) => return Err(ResolveError::TooDeep(1).into()),
    };

    if manifest.config.size > JSON_BLOB_BYTES_MAX {
        return Err(RegistryError::TooLarge {
            registry: f.registry(),
            what: "image config".into(),
            max: JSON_BLOB_BYTES_MAX,
        });
    }
    let mut config_bytes = Vec::new();
    f.blob(
        &manifest.config,
        &mut |op| {
            match op {
                SinkOp::Restart => config_bytes.clear(),
                SinkOp::ResumeAt(n) => config_bytes.truncate(n as usize),
                SinkOp::Data(c) => config_bytes.extend_from_slice(c),
            }
            Ok(())
        },
        None,
    )
    .await?;
    let config = spec::parse_config(&config_bytes, manifest.layers.len())?;
    super::source::check_config_platform(&config, &opts.platform)?;
    cache.put_blob(&manifest.config.media_type, &config_bytes)?;

    let missing: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| !cache.has_blob(&l.digest))
        .collect();
    if let Some(p) = &progress {
        p.set_length(missing.iter().map(|l| l.size).sum());
        p.set_message("downloading");
    }
    for layer in missing {
        spec::Compression::from_media_type(&layer.media_type)?;
        download_layer(&f, cache, layer, progress.as_ref()).await?;
    }
    cache.set_tag(top_desc, &reference.whole())?;
    let platform = format!("{}/{}", config.os, config.architecture);
    Ok(ResolvedImage {
        manifest_digest,
        config_digest: manifest.config.digest,
        manifest,
        config,
        platform,
    })
}

async fn download_layer(
    f: &Fetcher<'_>,
    cache: &Layout,
    layer: &Descriptor,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(), RegistryError> {
    let dir = cache
        .blob_path(&layer.digest)
        .parent()
        .expect("blob path has a parent")
        .to_path_buf();
    crate::output::scratch_dir(&dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::output::scratch_prefix("download"))
        .tempfile_in(&dir)
        .map_err(|e| LayoutError::Io {
            op: "create temp file in",
            path: dir.clone(),
            source: e,
        })?;
    {
        let file = tmp.as_file_mut();
        let mut sink = |op: SinkOp<'_>| -> std::io::Result<()> {
            match op {
                SinkOp::Restart => {
                    file.set_len(0)?;
                    std::io::Seek::rewind(file)?;
                    Ok(())
                }
                SinkOp::ResumeAt(n) => {
                    // A failed write may have left part of a chunk behind: cut back to what
                    // was hashed.
                    file.set_len(n)?;
                    std::io::Seek::seek(file, std::io::SeekFrom::Start(n))?;
                    Ok(())
                }
                SinkOp::Data(c) => file.write_all(c),
            }
        };
        f.blob(layer, &mut sink, progress).await?;
    }
    let dest = cache.blob_path(&layer.digest);
    tmp.as_file().sync_all().map_err(|e| LayoutError::Io {
        op: "sync",
        path: dest.clone(),
        source: e,
    })?;
    tmp.persist(&dest).map_err(|e| LayoutError::Io {
        op: "rename into",
        path: dest.clone(),
        source: e.error,
    })?;
    Ok(())
}

fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => spec::MEDIA_OCI_INDEX.into(),
        _ => spec::MEDIA_OCI_MANIFEST.into(),
    }
}

/// Pushes an image (manifest or index, with everything it references) from a layout to a
/// registry under `reference`.
pub fn push(
    layout: &Layout,
    top: &Descriptor,
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<Digest, RegistryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(push_async(layout, top, reference, opts))
}

async fn push_async(
    layout: &Layout,
    top: &Descriptor,
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<Digest, RegistryError> {
    let creds = auth::lookup(reference.resolve_registry(), opts.docker_config.as_deref())?;
    let client = client_for(opts);
    let registry = reference.resolve_registry().to_string();
    let fail = |what: String| {
        let registry = registry.clone();
        move |source| RegistryError::Failed {
            registry,
            what,
            source,
        }
    };
    client
        .auth(reference, &creds.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(fail("authenticate".into()))?;

    // Depth-first: blobs, then child manifests, then the top, so nothing dangles.
    let mut manifests: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    let mut blobs: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    let mut queue = vec![top.clone()];
    while let Some(desc) = queue.pop() {
        let bytes = layout.read_json_blob(&desc)?;
        match spec::parse_pointed(Some(&desc.media_type), &bytes)? {
            Pointed::Index(i) => queue.extend(i.manifests),
            Pointed::Manifest(m) => {
                blobs.insert(m.config.digest, m.config.clone());
                for l in m.layers {
                    blobs.insert(l.digest, l);
                }
            }
        }
        manifests.push((desc, bytes));
    }
    for desc in blobs.values() {
        let digest = desc.digest.to_string();
        if client
            .blob_exists(reference, &digest)
            .await
            .map_err(fail(format!("check blob {digest}")))?
        {
            continue;
        }
        let data = std::fs::read(layout.blob_path(&desc.digest)).map_err(|e| LayoutError::Io {
            op: "read",
            path: layout.blob_path(&desc.digest),
            source: e,
        })?;
        client
            .push_blob(reference, data, &digest)
            .await
            .map_err(fail(format!("push blob {digest}")))?;
    }
    for (desc, bytes) in manifests.iter().rev() {
        let target = if desc.digest == top.digest {
            reference.clone()
        } else {
            Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                desc.digest.to_string(),
            )
        };
        let ct = reqwest_header(&desc.media_type);
        client
            .push_manifest_raw(&target, bytes.clone(), ct)
            .await
            .map_err(fail(format!("push manifest {}", desc.digest)))?;
    }
    Ok(top.digest)
}

fn reqwest_header(media: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(media).expect("media types are valid header values")
}
