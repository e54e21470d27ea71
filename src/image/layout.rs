//! OCI image layout directories: reading (`oci-layout:DIR[:tag]`) and writing (the local
//! blob cache that registry pulls land in, and images bootyard builds).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::spec::{
    self, Descriptor, Index, Pointed, SpecError, ANNOTATION_REF_NAME, JSON_BLOB_BYTES_MAX,
    MEDIA_OCI_INDEX,
};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0} is not an OCI image layout (no oci-layout file)")]
    NotALayout(PathBuf),
    #[error("OCI layout {dir} has no image tagged {tag:?} (tags: {available})")]
    NoSuchTag {
        dir: PathBuf,
        tag: String,
        available: String,
    },
    #[error("OCI layout {dir} holds {count} images; name one with :TAG (tags: {available})")]
    Ambiguous {
        dir: PathBuf,
        count: usize,
        available: String,
    },
    #[error("OCI layout {0} holds no images")]
    Empty(PathBuf),
    #[error("blob {digest} is missing from {dir}")]
    MissingBlob { dir: PathBuf, digest: Digest },
    #[error("blob {digest} in {dir} has digest {actual} (corrupt file)")]
    CorruptBlob {
        dir: PathBuf,
        digest: Digest,
        actual: Digest,
    },
    #[error("the descriptor of blob {digest} says {said} bytes; the blob has {actual}")]
    SizeMismatch {
        digest: Digest,
        said: u64,
        actual: u64,
    },
    #[error("blob {digest} is {size} bytes, more than the {max} bytes allowed for metadata")]
    BlobTooLarge { digest: Digest, size: u64, max: u64 },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io { op, path, source }
}

pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Self, LayoutError> {
        if !dir.join("oci-layout").is_file() {
            return Err(LayoutError::NotALayout(dir.to_path_buf()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens `dir` as a layout, creating an empty one if there is nothing there yet.
    pub fn create(dir: &Path) -> Result<Self, LayoutError> {
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_at("create", dir))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !dir.join("index.json").exists() {
            let index = Index {
                schema_version: 2,
                media_type: Some(MEDIA_OCI_INDEX.into()),
                manifests: vec![],
                annotations: BTreeMap::new(),
            };
            write_atomic(
                &dir.join("index.json"),
                &serde_json::to_vec_pretty(&index).expect("index serializes"),
            )?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn index(&self) -> Result<Index, LayoutError> {
        let path = self.dir.join("index.json");
        let bytes = read_bounded(&path, JSON_BLOB_BYTES_MAX)?;
        match spec::parse_pointed(Some(MEDIA_OCI_INDEX), &bytes)? {
            Pointed::Index(i) => Ok(i),
            Pointed::Manifest(_) => unreachable!("parsed as index"),
        }
    }

    /// The descriptor `tag` names in index.json, or the only one when no tag is given.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let tags: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str))
            .collect();
        let available = if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        };
        match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t))
                .cloned()
                .ok_or(LayoutError::NoSuchTag {
                    dir: self.dir.clone(),
                    tag: t.to_string(),
                    available,
                }),
            None => match index.manifests.len() {
                0 => Err(LayoutError::Empty(self.dir.clone())),
                1 => Ok(index.manifests[0].clone()),
                n => Err(LayoutError::Ambiguous {
                    dir: self.dir.clone(),
                    count: n,
                    available,
                }),
            },
        }
    }

    /// Reads a small blob (manifest, index, config) whole, verifying its digest.
    pub fn read_json_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        if desc.size > JSON_BLOB_BYTES_MAX {
            return Err(LayoutError::BlobTooLarge {
                digest: desc.digest,
                size: desc.size,
                max: JSON_BLOB_BYTES_MAX,
            });
        }
        let path = self.blob_path(&desc.digest);
        if !path.exists() {
            return Err(LayoutError::MissingBlob {
                dir: self.dir.clone(),
                digest: desc.digest,
            });
        }
        let bytes = read_bounded(&path, JSON_BLOB_BYTES_MAX)?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(LayoutError::CorruptBlob {
                dir: self.dir.clone(),
                digest: desc.digest,
                actual,
            });
        }
        // The digest matched, so the descriptor's size is what lies: a writer that got its
        // own descriptor wrong, which a registry would refuse too.
        if bytes.len() as u64 != desc.size {
            return Err(LayoutError::SizeMismatch {
                digest: desc.digest,
                said: desc.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Opens a (layer) blob for streaming; the reader's consumer verifies the digest.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, LayoutError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LayoutError::MissingBlob {
                    dir: self.dir.clone(),
                    digest: *digest,
                }
            } else {
                LayoutError::Io {
                    op: "open blob",
                    path,
                    source: e,
                }
            }
        })
    }

    /// Stores an in-memory blob and returns its descriptor.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, LayoutError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Points `tag` at `desc` in index.json, replacing any earlier image with that tag.
    pub fn set_tag(&self, mut desc: Descriptor, tag: &str) -> Result<(), LayoutError> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag));
        desc.annotations
            .insert(ANNOTATION_REF_NAME.into(), tag.into());
        index.manifests.push(desc);
        let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
        write_atomic(&self.dir.join("index.json"), &bytes)
    }
}

pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, LayoutError> {
    let f = File::open(path).map_err(io_at("open", path))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at("read", path))?;
    if bytes.len() as u64 > max {
        return Err(LayoutError::BlobTooLarge {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Writes via a temp file and rename, so readers see the old or the new content, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_at("create temp file in", dir))?;
    tmp.write_all(bytes).map_err(io_at("write", path))?;
    tmp.as_file().sync_all().map_err(io_at("sync", path))?;
    tmp.persist(path).map_err(|e| LayoutError::Io {
        op: "rename into",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}
