//! Where an image comes from (`SOURCE` on the command line) and how it resolves to one
//! platform's manifest and config.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use super::digest::Digest;
use super::layout::{Layout, LayoutError};
use super::spec::{self, Descriptor, ImageConfig, Index, Manifest, Platform, Pointed};

#[derive(Debug, Clone)]
pub enum Source {
    /// `host[:port]/name[:tag][@sha256:...]` (optionally prefixed `docker://`).
    Registry(oci_client::Reference),
    /// `oci-layout:DIR[:tag]`
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:tag]`: a tar of an OCI layout.
    Archive { file: PathBuf, tag: Option<String> },
    /// `dir:PATH`: a root filesystem tree, applied as a single layer.
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image reference {input:?} is invalid: {reason}")]
    BadReference { input: String, reason: String },
    #[error("{kind} source needs a path: {input:?}")]
    MissingPath { kind: &'static str, input: String },
}

/// Splits `PATH[:tag]`; a suffix containing `/` is part of the path, not a tag.
fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.is_empty() && !tag.contains('/') && !path.is_empty() => {
            (PathBuf::from(path), Some(tag.to_string()))
        }
        _ => (PathBuf::from(rest), None),
    }
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let need = |kind: &'static str, rest: &str| {
            if rest.is_empty() {
                Err(SourceError::MissingPath {
                    kind,
                    input: s.to_string(),
                })
            } else {
                Ok(())
            }
        };
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            need("oci-layout", rest)?;
            let (dir, tag) = split_tag(rest);
            return Ok(Source::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            need("oci-archive", rest)?;
            let (file, tag) = split_tag(rest);
            return Ok(Source::Archive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("dir:") {
            need("dir", rest)?;
            return Ok(Source::Dir(PathBuf::from(rest)));
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        if r.is_empty() || r.contains(char::is_whitespace) {
            return Err(SourceError::BadReference {
                input: s.to_string(),
                reason: "empty or contains whitespace".into(),
            });
        }
        if let Some((_, d)) = r.split_once('@') {
            d.parse::<Digest>().map_err(|e| SourceError::BadReference {
                input: s.to_string(),
                reason: e.to_string(),
            })?;
        }
        let reference =
            r.parse::<oci_client::Reference>()
                .map_err(|e| SourceError::BadReference {
                    input: s.to_string(),
                    reason: e.to_string(),
                })?;
        Ok(Source::Registry(reference))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "{}", r.whole()),
            Source::Layout { dir, tag } => write!(
                f,
                "oci-layout:{}{}",
                dir.display(),
                tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default()
            ),
            Source::Archive { file, tag } => write!(
                f,
                "oci-archive:{}{}",
                file.display(),
                tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default()
            ),
            Source::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// One platform's image, fully resolved: what the unpacker needs.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedImage {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    #[serde(skip)]
    pub manifest: Manifest,
    #[serde(skip)]
    pub config: ImageConfig,
    pub platform: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("image index offers no manifest for platform {wanted} (offered: {offered})")]
    NoPlatform { wanted: Platform, offered: String },
    #[error("image indexes nest deeper than {0} levels")]
    TooDeep(usize),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Index nesting bound: real images nest at most once.
const INDEX_DEPTH_MAX: usize = 4;

pub fn select_platform(index: &Index, wanted: &Platform) -> Result<Descriptor, ResolveError> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect();
            ResolveError::NoPlatform {
                wanted: wanted.clone(),
                offered: if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                },
            }
        })
}

/// Resolves a descriptor in a layout (manifest or index) to one platform's image.
pub fn resolve_in_layout(
    layout: &Layout,
    top: &Descriptor,
    wanted: &Platform,
) -> Result<ResolvedImage, ResolveError> {
    let mut desc = top.clone();
    for _ in 0..INDEX_DEPTH_MAX {
        let bytes = layout.read_json_blob(&desc)?;
        match spec::parse_pointed(Some(&desc.media_type), &bytes).map_err(LayoutError::from)? {
            Pointed::Index(index) => desc = select_platform(&index, wanted)?,
            Pointed::Manifest(manifest) => {
                let config_bytes = layout.read_json_blob(&manifest.config)?;
                let config = spec::parse_config(&config_bytes, manifest.layers.len())
                    .map_err(LayoutError::from)?;
                let platform = format!("{}/{}", config.os, config.architecture);
                return Ok(ResolvedImage {
                    manifest_digest: desc.digest,
                    config_digest: manifest.config.digest,
                    manifest,
                    config,
                    platform,
                });
            }
        }
    }
    Err(ResolveError::TooDeep(INDEX_DEPTH_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_source_kind() {
        assert!(
            matches!("oci-layout:/tmp/x:v1".parse().unwrap(), Source::Layout { dir, tag: Some(t) } if dir.as_os_str() == "/tmp/x" && t == "v1")
        );
        assert!(matches!(
            "oci-layout:./a/b".parse().unwrap(),
            Source::Layout { tag: None, .. }
        ));
        assert!(matches!(
            "oci-archive:img.tar".parse().unwrap(),
            Source::Archive { tag: None, .. }
        ));
        assert!(matches!("dir:/srv/root".parse().unwrap(), Source::Dir(_)));
        match "127.0.0.1:5000/os/debian:v2".parse().unwrap() {
            Source::Registry(r) => {
                assert_eq!(r.registry(), "127.0.0.1:5000");
                assert_eq!(r.repository(), "os/debian");
                assert_eq!(r.tag(), Some("v2"));
            }
            other => panic!("{other:?}"),
        }
        let d = format!("localhost:5000/os@sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse().unwrap(), Source::Registry(r) if r.digest().is_some()));
    }

    #[test]
    fn rejects_bad_references() {
        assert!("localhost:5000/os@sha256:abc".parse::<Source>().is_err());
        assert!("dir:".parse::<Source>().is_err());
        assert!("host:5000//double-slash:v1".parse::<Source>().is_err());
        assert!("host:5000/name:bad/tag:x".parse::<Source>().is_err());
        assert!("".parse::<Source>().is_err());
    }
}
