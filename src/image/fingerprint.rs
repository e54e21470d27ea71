//! A comparable description of a directory tree: for every path its type, mode, owner,
//! size, content hash, link target, device number, hardlink group and xattrs. Two trees
//! that unpack the same image must fingerprint the same; the differential test against
//! umoci and the conformance suite compare trees this way.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::Serialize;

use super::digest::{Digest, Hasher};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: Option<Digest>,
    pub link: Option<String>,
    pub rdev: Option<(u32, u32)>,
    /// The first path (in sorted order) sharing this inode, when it is not this one.
    pub hardlink_of: Option<String>,
    pub xattrs: BTreeMap<String, String>,
    /// Modification time in seconds, for everything but directories (whose mtimes every
    /// later write into them disturbs, and unpackers restore differently).
    pub mtime_s: Option<i64>,
}

pub type Fingerprint = BTreeMap<String, Node>;

/// Which xattrs to compare: `user.*` and `security.capability` are image content; others
/// (selinux labels, ACL caches) belong to the host.
fn xattr_wanted(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability" || name.starts_with(b"trusted.")
}

pub fn fingerprint(root: &Path) -> std::io::Result<Fingerprint> {
    let mut out = Fingerprint::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = String::from_utf8_lossy(e.file_name().as_bytes()).into_owned();
            let relp = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = e.path().symlink_metadata()?;
            if md.is_dir() {
                stack.push((e.path(), relp.clone()));
            }
            paths.push((relp, e.path(), md));
        }
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (relp, full, md) in paths {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut content = None;
        if ft.is_file() {
            let mut f = std::fs::File::open(&full)?;
            let mut h = Hasher::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            content = Some(h.finish());
        }
        let hardlink_of = if !ft.is_dir() && md.nlink() > 1 {
            match inodes.get(&(md.dev(), md.ino())) {
                Some(first) => Some(first.clone()),
                None => {
                    inodes.insert((md.dev(), md.ino()), relp.clone());
                    None
                }
            }
        } else {
            None
        };
        let mut xattrs = BTreeMap::new();
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::llistxattr(&full, &mut names) {
            for name in names[..n]
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty() && xattr_wanted(n))
            {
                let mut value = vec![0u8; 64 << 10];
                if let Ok(len) =
                    rustix::fs::lgetxattr(&full, std::ffi::OsStr::from_bytes(name), &mut value)
                {
                    xattrs.insert(
                        String::from_utf8_lossy(name).into_owned(),
                        hex::encode(&value[..len]),
                    );
                }
            }
        }
        out.insert(
            relp,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_file() { md.len() } else { 0 },
                content,
                link: ft
                    .is_symlink()
                    .then(|| {
                        std::fs::read_link(&full)
                            .map(|l| String::from_utf8_lossy(l.as_os_str().as_bytes()).into_owned())
                    })
                    .transpose()?,
                rdev: (ft.is_char_device() || ft.is_block_device())
                    .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))),
                hardlink_of,
                xattrs,
                mtime_s: (!ft.is_dir()).then(|| md.mtime()),
            },
        );
    }
    Ok(out)
}

/// Human-readable differences, at most `max` of them.
pub fn diff(a: &Fingerprint, b: &Fingerprint, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (p, na) in a {
        match b.get(p) {
            None => out.push(format!("only in first: {p} ({})", na.kind)),
            Some(nb) if na != nb => out.push(format!(
                "differs: {p}\n    first:  {na:?}\n    second: {nb:?}"
            )),
            _ => {}
        }
    }
    for (p, nb) in b {
        if !a.contains_key(p) {
            out.push(format!("only in second: {p} ({})", nb.kind));
        }
    }
    out.truncate(max);
    out
}
