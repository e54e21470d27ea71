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
        check_registry_host(reference.registry()).map_err(|reason| SourceError::BadReference {
            input: s.to_string(),
            reason,
        })?;
        Ok(Source::Registry(reference))
    }
}

/// `HOST[:PORT]` as a registry is named: a DNS name or IPv4 address, or `[IPv6]`, and a
/// port of 1..=65535. (The reference parser takes `host:99999`; the HTTP client then fails
/// with an error that names nothing.)
pub fn check_registry_host(hostport: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{hostport:?}: an IPv6 address needs its closing ]"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{hostport:?}: expected :PORT after the address"))?,
                ),
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(hostport), None),
        }
    };
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
            return Err(format!("{h:?} is not a host name or IPv4 address"));
        }
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("port {p:?} is not a number in 1..=65535")),
        }
    }
    Ok(())
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
    #[error("the image is for {image}, not the requested platform {wanted} (its config says so)")]
    WrongPlatform { wanted: Platform, image: String },
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

/// The platform an image's config names must be the one asked for: a tag that points at a
/// single manifest never passed through an index's platform choice. A config that names
/// no platform cannot be checked.
pub fn check_config_platform(
    config: &spec::ImageConfig,
    wanted: &Platform,
) -> Result<(), ResolveError> {
    if config.os.is_empty() && config.architecture.is_empty() {
        return Ok(());
    }
    let offered = Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: None,
    };
    // Only os and architecture: the config's variant is not read, so no variant is judged.
    let wanted_plain = Platform {
        variant: None,
        ..wanted.clone()
    };
    if wanted_plain.matches(&offered) {
        Ok(())
    } else {
        Err(ResolveError::WrongPlatform {
            wanted: wanted.clone(),
            image: format!("{}/{}", config.os, config.architecture),
        })
    }
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
                check_config_platform(&config, wanted)?;
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
    fn r19_a_registry_with_a_bad_host_or_port_is_refused() {
        for bad in [
            "localhost:99999/os:v1",
            "localhost:0/os:v1",
            "localhost:/os:v1",
            "bad_host:5000/os:v1",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
        for good in [
            "127.0.0.1:5000/os:v1",
            "registry.example.org/os/debian:v2",
            "localhost/os:v1",
        ] {
            assert!(good.parse::<Source>().is_ok(), "{good}");
        }
        assert!(check_registry_host("not a host").is_err());
        assert!(check_registry_host("[::1]").is_ok());
        assert!(check_registry_host("10.0.2.2:5000").is_ok());
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
