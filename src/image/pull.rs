//! `image pull`: resolve a source, fetch what is missing into the blob cache, verify, and
//! unpack into the destination atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::apply::{Applier, ApplyError, ApplyOptions, Limits};
use super::layout::{Layout, LayoutError};
use super::registry::{self, RegistryError, RegistryOptions};
use super::source::{resolve_in_layout, ResolveError, ResolvedImage, Source};
use super::spec::{Compression, SpecError};
use super::unpack::{
    replace_dir_atomically, unpack_into, BlobCheck, LayerInput, UnpackError, UnpackReport,
};

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    pub cache_dir: PathBuf,
    pub limits: Limits,
    pub apply: ApplyOptions,
    /// Replace a non-empty destination.
    pub force: bool,
    /// Recompute every layer blob's digest while unpacking from a local layout. Off by
    /// default: diff_ids authenticate the unpacked content, and registry pulls verify blob
    /// digests as they download. A failed unpack always checks the blob to say why.
    pub verify_blobs: bool,
    pub progress: bool,
}

impl PullOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            registry: RegistryOptions::default(),
            cache_dir,
            limits: Limits::default(),
            apply: ApplyOptions::for_current_user(),
            force: false,
            verify_blobs: false,
            progress: false,
        }
    }
}

/// The default blob cache: `$XDG_CACHE_HOME/bootyard/oci`, else `~/.cache/bootyard/oci`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("bootyard/oci")
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("failed to fetch the image")]
    Registry(#[from] RegistryError),
    #[error("failed to read the OCI layout")]
    Layout(#[from] LayoutError),
    #[error("failed to resolve the image")]
    Resolve(#[from] ResolveError),
    #[error("failed to unpack the image")]
    Unpack(#[from] UnpackError),
    #[error("failed to extract the OCI archive")]
    Archive(#[source] ApplyError),
    #[error("{0} is not an OCI archive: it holds no oci-layout file at its root")]
    NotAnArchive(PathBuf),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub schema_version: u32,
    pub source: String,
    pub destination: PathBuf,
    pub image: Option<ResolvedImage>,
    /// Blobs fetched from a registry had their size and digest checked as they downloaded.
    pub fetched_from_registry: bool,
    pub fetch_ms: u64,
    pub unpack: UnpackReport,
}

pub const PULL_REPORT_SCHEMA: u32 = 1;

fn bar(enabled: bool, len: u64, msg: &'static str) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("template is valid")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    Some(pb)
}

/// Layer inputs for a resolved image whose blobs are all in `layout`.
pub fn layer_inputs(
    layout: &Layout,
    image: &ResolvedImage,
    verify_blobs: bool,
) -> Result<Vec<LayerInput>, PullError> {
    let mut inputs = Vec::with_capacity(image.manifest.layers.len());
    for (desc, diff_id) in image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
    {
        let file = layout.open_blob(&desc.digest)?;
        let second: Box<dyn std::io::Read + Send> = Box::new(layout.open_blob(&desc.digest)?);
        inputs.push(LayerInput {
            reader: Box::new(file),
            blob_check: if verify_blobs {
                BlobCheck::Parallel(second)
            } else {
                BlobCheck::OnFailure(second)
            },
            compression: Compression::from_media_type(&desc.media_type)?,
            digest: Some(desc.digest),
            size: Some(desc.size),
            diff_id: Some(*diff_id),
        });
    }
    Ok(inputs)
}

/// Unpacks an already-resolved image from `layout` into `dest`.
pub fn unpack_image(
    layout: &Layout,
    image: &ResolvedImage,
    dest: &Path,
    opts: &PullOptions,
) -> Result<UnpackReport, PullError> {
    let inputs = layer_inputs(layout, image, opts.verify_blobs)?;
    let total: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
    let pb = bar(opts.progress, total, "unpacking");
    let report = replace_dir_atomically(dest, opts.force, |staging| {
        unpack_into(staging, inputs, opts.apply, opts.limits, pb.clone()).map_err(PullError::from)
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(report)
}

pub fn pull(source: &Source, dest: &Path, opts: &PullOptions) -> Result<PullReport, PullError> {
    let started = Instant::now();
    // The destination is replaced whole: it must not be, hold, or sit inside what is read.
    let input = match source {
        Source::Registry(_) => &opts.cache_dir,
        Source::Layout { dir, .. } => dir,
        Source::Archive { file, .. } => file,
        Source::Dir(path) => path,
    };
    crate::output::refuse_overlap(input, dest)?;
    let (image, unpack) = match source {
        Source::Registry(reference) => {
            let cache = Layout::create(&opts.cache_dir)?;
            let pb = bar(opts.progress, 0, "downloading");
            let image = registry::fetch(reference, &cache, &opts.registry, pb.clone())?;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let fetch_ms = started.elapsed().as_millis() as u64;
            let unpack = unpack_image(&cache, &image, dest, opts)?;
            return Ok(PullReport {
                schema_version: PULL_REPORT_SCHEMA,
                source: source.to_string(),
                destination: dest.to_path_buf(),
                image: Some(image),
                fetched_from_registry: true,
                fetch_ms,
                unpack,
            });
        }
        Source::Layout { dir, tag } => {
            let layout = Layout::open(dir)?;
            let top = layout.find(tag.as_deref())?;
            let image = resolve_in_layout(&layout, &top, &opts.registry.platform)?;
            let unpack = unpack_image(&layout, &image, dest, opts)?;
            (Some(image), unpack)
        }
        Source::Archive { file, tag } => {
            let scratch = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            crate::output::scratch_dir(scratch);
            let tmp = tempfile::Builder::new()
                .prefix(&crate::output::scratch_prefix("archive"))
                .tempdir_in(scratch)
                .map_err(|source| PullError::Io {
                    path: file.clone(),
                    source,
                })?;
            extract_archive(file, tmp.path(), opts.limits)?;
            let layout = Layout::open(tmp.path())?;
            let top = layout.find(tag.as_deref())?;
            let image = resolve_in_layout(&layout, &top, &opts.registry.platform)?;
            let unpack = unpack_image(&layout, &image, dest, opts)?;
            (Some(image), unpack)
        }
        Source::Dir(path) => {
            if !path.is_dir() {
                return Err(PullError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
                });
            }
            let (reader, writer) = std::io::pipe().map_err(|source| PullError::Io {
                path: path.clone(),
                source,
            })?;
            let root = path.clone();
            let walker = std::thread::spawn(move || super::dirstream::write_tree(&root, writer));
            let input = LayerInput {
                reader: Box::new(reader),
                compression: Compression::None,
                digest: None,
                size: None,
                diff_id: None,
                blob_check: BlobCheck::Inline,
            };
            let result = replace_dir_atomically(dest, opts.force, |staging| {
                unpack_into(staging, vec![input], opts.apply, opts.limits, None)
                    .map_err(PullError::from)
            });
            let walked = walker.join().expect("directory walker panicked");
            let unpack = result?;
            walked.map_err(|source| PullError::Io {
                path: path.clone(),
                source,
            })?;
            (None, unpack)
        }
    };
    Ok(PullReport {
        schema_version: PULL_REPORT_SCHEMA,
        source: source.to_string(),
        destination: dest.to_path_buf(),
        image,
        fetched_from_registry: false,
        fetch_ms: 0,
        unpack,
    })
}

/// Extracts an OCI archive (a tar of a layout) with the same safety rules as layers, but
/// without ownership or special files: it holds only blobs and JSON.
pub fn extract_archive(file: &Path, into: &Path, limits: Limits) -> Result<(), PullError> {
    let f = std::fs::File::open(file).map_err(|source| PullError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let mut applier = Applier::new(
        into,
        ApplyOptions {
            preserve_owner: false,
            special_files: false,
        },
        limits,
    )
    .map_err(PullError::Archive)?;
    applier
        .apply_layer(std::io::BufReader::with_capacity(256 << 10, f))
        .map_err(PullError::Archive)?;
    applier.finish().map_err(PullError::Archive)?;
    // An archive that unpacks to something other than a layout (nothing at all, for an
    // empty file) is not an image archive.
    if !into.join("oci-layout").is_file() {
        return Err(PullError::NotAnArchive(file.to_path_buf()));
    }
    Ok(())
}
