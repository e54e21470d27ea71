//! Turns a directory tree into a tar stream, so `dir:` sources go through the same unpack
//! path (and the same safety checks) as image layers. Entries come out sorted by name;
//! hardlinks, symlinks, special files, ownership and xattrs are kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::tarwrite::{Header, Kind, TarWriter};

/// Writes `root` as a tar stream into `out`.
pub fn write_tree(root: &Path, out: impl Write) -> io::Result<()> {
    let mut w = TarWriter::new(io::BufWriter::with_capacity(256 << 10, out));
    let mut seen: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    // Explicit stack instead of recursion: depth is bounded by memory, not the thread stack.
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let full = dir.join(&name);
            let mut relp = rel.clone();
            if !relp.is_empty() {
                relp.push(b'/');
            }
            relp.extend_from_slice(name.as_bytes());
            let md = fs::symlink_metadata(&full)?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Directory
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() {
                Kind::CharDevice
            } else if ft.is_block_device() {
                Kind::BlockDevice
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_file() {
                Kind::File
            } else {
                continue; // sockets cannot be archived
            };
            let mut h = Header::new(relp.clone(), kind, md.mode() & 0o7777);
            h.uid = u64::from(md.uid());
            h.gid = u64::from(md.gid());
            h.mtime_s = md.mtime();
            h.xattrs = read_xattrs(&full);
            if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
                h.dev_major = rustix::fs::major(md.rdev());
                h.dev_minor = rustix::fs::minor(md.rdev());
            }
            match kind {
                Kind::Symlink => h.link = fs::read_link(&full)?.as_os_str().as_bytes().to_vec(),
                Kind::File if md.nlink() > 1 => {
                    if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                        h.kind = Kind::Hardlink;
                        h.link = first.clone();
                    } else {
                        seen.insert((md.dev(), md.ino()), relp.clone());
                    }
                }
                _ => {}
            }
            if h.kind == Kind::File {
                h.size = md.len();
                let mut f = fs::File::open(&full)?;
                w.append(&h, &mut f)?;
            } else {
                w.append(&h, &mut io::empty())?;
            }
            if kind == Kind::Directory {
                subdirs.push((full, relp));
            }
        }
        // Reversed so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    w.finish()?.flush()
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        // No xattr support or too many to list: the tree is still worth copying without them.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 << 10];
        if let Ok(len) = rustix::fs::lgetxattr(path, std::ffi::OsStr::from_bytes(name), &mut value)
        {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}
