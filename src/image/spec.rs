//! The parts of the OCI image spec bootyard reads and writes: descriptors, manifests,
//! indexes, the image config's rootfs section, and layer media types.
//!
//! Docker's v2 schema 2 media types are accepted on input because registries still serve
//! them; everything bootyard writes is OCI.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Annotation naming a manifest inside an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest manifest, index or config bootyard will read into memory. Real ones are a few KiB;
/// the bound keeps a hostile registry from making us buffer gigabytes.
pub const JSON_BLOB_BYTES_MAX: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayerMediaType(String),
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} has schemaVersion {found}, expected 2")]
    SchemaVersion { what: &'static str, found: u32 },
    #[error("image config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    #[error("image config rootfs type is {0:?}, expected \"layers\"")]
    RootfsType(String),
    #[error("media type {0:?} is neither an image manifest nor an image index")]
    NotAnImage(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Self {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform satisfies this requested one. A request without a
    /// variant accepts any variant; arm64's implied "v8" is treated as equal to none.
    pub fn matches(&self, offered: &Platform) -> bool {
        if self.os != offered.os || self.architecture != offered.architecture {
            return false;
        }
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        match norm(&self.variant) {
            None => true,
            want => want == norm(&offered.variant),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("platform {0:?} is not of the form os/arch[/variant]")]
pub struct PlatformParseError(String);

impl FromStr for Platform {
    type Err = PlatformParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, var] if ok(os) && ok(arch) && ok(var) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(var.to_string()),
            }),
            _ => Err(PlatformParseError(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The image config fields bootyard needs. Unknown fields are kept out on purpose: the config
/// blob is stored verbatim, so nothing is lost by not modelling it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// How a layer blob is compressed, decided by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media: &str) -> Result<Self, SpecError> {
        // Non-distributable layers are the same bytes under another name.
        let media = media.replace(".nondistributable.", ".");
        match media.as_str() {
            MEDIA_OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            MEDIA_OCI_LAYER_GZIP | MEDIA_DOCKER_LAYER_GZIP => Ok(Self::Gzip),
            MEDIA_OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
                Ok(Self::Zstd)
            }
            _ => Err(SpecError::UnsupportedLayerMediaType(media.to_string())),
        }
    }

    pub fn oci_media_type(self) -> &'static str {
        match self {
            Self::None => MEDIA_OCI_LAYER_TAR,
            Self::Gzip => MEDIA_OCI_LAYER_GZIP,
            Self::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// A manifest or an index: what a reference can point at.
#[derive(Debug, Clone)]
pub enum Pointed {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest-or-index blob, trusting the `mediaType` field inside the JSON when the
/// transport did not say (OCI layouts) and the transport's when it did.
pub fn parse_pointed(media_type: Option<&str>, bytes: &[u8]) -> Result<Pointed, SpecError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
        what: "manifest",
        source,
    })?;
    let media = media_type
        .map(str::to_string)
        .or(probe.media_type)
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                MEDIA_OCI_INDEX.into()
            } else {
                MEDIA_OCI_MANIFEST.into()
            }
        });
    match media.as_str() {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
            let index: Index = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
                what: "image index",
                source,
            })?;
            if index.schema_version != 2 {
                return Err(SpecError::SchemaVersion {
                    what: "image index",
                    found: index.schema_version,
                });
            }
            Ok(Pointed::Index(index))
        }
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => {
            let m: Manifest = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
                what: "image manifest",
                source,
            })?;
            if m.schema_version != 2 {
                return Err(SpecError::SchemaVersion {
                    what: "image manifest",
                    found: m.schema_version,
                });
            }
            Ok(Pointed::Manifest(m))
        }
        other => Err(SpecError::NotAnImage(other.to_string())),
    }
}

pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ImageConfig, SpecError> {
    let config: ImageConfig = serde_json::from_slice(bytes).map_err(|source| SpecError::Json {
        what: "image config",
        source,
    })?;
    if config.rootfs.kind != "layers" {
        return Err(SpecError::RootfsType(config.rootfs.kind));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(SpecError::LayerCountMismatch {
            diff_ids: config.rootfs.diff_ids.len(),
            layers,
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let want: Platform = "linux/arm64".parse().unwrap();
        let offered = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert!(want.matches(&offered));
        let want_v7: Platform = "linux/arm/v7".parse().unwrap();
        let v6 = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v6".into()),
        };
        assert!(!want_v7.matches(&v6));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert_eq!(want_v7.to_string(), "linux/arm/v7");
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            Compression::from_media_type(MEDIA_DOCKER_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            )
            .unwrap(),
            Compression::Zstd
        );
        assert!(Compression::from_media_type("application/x-foo").is_err());
    }

    #[test]
    fn config_must_match_layer_count() {
        let cfg =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(matches!(
            parse_config(cfg, 1),
            Err(SpecError::LayerCountMismatch { .. })
        ));
        assert!(parse_config(cfg, 0).is_ok());
    }
}
