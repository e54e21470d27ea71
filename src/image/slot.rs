//! Slot images: an ext4 filesystem image built from a root filesystem tree with
//! `mkfs.ext4 -d`, so no root, loop devices or mounts are needed.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("filesystem label {0:?} is longer than 16 bytes")]
    LabelTooLong(String),
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("built image {path} does not read back as ext4 labelled {label:?}")]
    ReadBack { path: PathBuf, label: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub schema_version: u32,
    pub image: PathBuf,
    pub label: String,
    pub size_bytes: u64,
    pub content_bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone)]
pub struct SlotOptions {
    pub label: String,
    /// Extra space beyond the content, as a fraction of it.
    pub headroom_ratio: f64,
    /// Extra space in absolute terms, so small trees still have room to boot.
    pub headroom_bytes: u64,
    /// Exact size; overrides the computed one.
    pub size_bytes: Option<u64>,
}

impl Default for SlotOptions {
    fn default() -> Self {
        Self {
            label: "COS_ACTIVE".into(),
            headroom_ratio: 0.2,
            headroom_bytes: 64 << 20,
            size_bytes: None,
        }
    }
}

const BLOCK_BYTES: u64 = 4096;
const INODE_BYTES: u64 = 256;

/// Space the tree needs on ext4: whole blocks per file and directory, plus inodes.
fn measure(root: &Path) -> Result<(u64, u64), SlotError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| SlotError::Io {
            op: "read",
            path: dir.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| SlotError::Io {
                op: "read",
                path: dir.clone(),
                source,
            })?;
            let md = e
                .path()
                .symlink_metadata()
                .map_err(|source| SlotError::Io {
                    op: "inspect",
                    path: e.path(),
                    source,
                })?;
            if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            inodes += 1;
            bytes += md.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
            if md.is_dir() {
                bytes += BLOCK_BYTES;
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

pub fn build_slot(rootfs: &Path, out: &Path, opts: &SlotOptions) -> Result<SlotReport, SlotError> {
    if !rootfs.is_dir() {
        return Err(SlotError::NotADirectory(rootfs.to_path_buf()));
    }
    if opts.label.len() > 16 {
        return Err(SlotError::LabelTooLong(opts.label.clone()));
    }
    // The finished image is renamed over `out`: only a regular file may be there.
    let out = &crate::output::file_output(out, false)?.path;
    let (content_bytes, inodes) = measure(rootfs)?;
    let inode_count = inodes + inodes / 5 + 1024;
    let size = opts.size_bytes.unwrap_or_else(|| {
        let raw = content_bytes as f64 * (1.0 + opts.headroom_ratio)
            + (inode_count * INODE_BYTES) as f64
            + opts.headroom_bytes as f64;
        (raw as u64).div_ceil(1 << 20) << 20
    });
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::output::scratch_dir(dir);
    let tmp = tempfile::Builder::new()
        .prefix(&crate::output::scratch_prefix("slot"))
        .suffix(".img")
        .tempfile_in(dir)
        .map_err(|source| SlotError::Io {
            op: "create temp image in",
            path: dir.to_path_buf(),
            source,
        })?;
    tmp.as_file()
        .set_len(size)
        .map_err(|source| SlotError::Io {
            op: "size",
            path: tmp.path().to_path_buf(),
            source,
        })?;
    crate::tool::run(
        Command::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-b",
                "4096",
                "-I",
                "256",
                "-L",
                &opts.label,
                "-N",
                &inode_count.to_string(),
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(rootfs)
            .arg(tmp.path()),
        "e2fsprogs",
    )?;
    if read_label(tmp.path()).as_deref() != Some(opts.label.as_str()) {
        return Err(SlotError::ReadBack {
            path: out.to_path_buf(),
            label: opts.label.clone(),
        });
    }
    tmp.persist(out).map_err(|e| SlotError::Io {
        op: "move into place",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(SlotReport {
        schema_version: 1,
        image: out.to_path_buf(),
        label: opts.label.clone(),
        size_bytes: size,
        content_bytes,
        inodes,
    })
}

/// Reads the volume label from an ext2/3/4 superblock, or `None` if it is not one.
pub fn read_label(image: &Path) -> Option<String> {
    let mut f = std::fs::File::open(image).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}
