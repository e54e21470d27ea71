//! Applies tar layer entries to a root directory, following the OCI image-spec's changeset
//! rules: whiteouts, opaque directories, hardlinks (also to files from lower layers),
//! replacement of existing paths, ownership, modes, mtimes, xattrs and special files.
//!
//! Containment works on two levels. The applier keeps an exact model of every symlink it has
//! created (it is the only writer into a fresh staging root), resolves each entry's parent
//! path through that model in memory, and refuses entries that would climb out of the root.
//! The kernel then enforces the result: parents are opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, and final components are created with `O_NOFOLLOW`/`O_EXCL` or
//! `*at` calls that never follow a final symlink. A bug in the model becomes an error, never
//! a write outside the root.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use rustix::io::Errno;
use serde::Serialize;

use super::tar::{Entry, EntryKind, TarError, TarReader};

/// Bounds that turn a hostile or broken layer into an error instead of a full disk or an
/// exhausted process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Entries across all layers.
    pub entries_max: u64,
    /// Decompressed bytes across all layers (tar headers and padding included).
    pub unpacked_bytes_max: u64,
    /// One PAX header or GNU long name.
    pub header_bytes_max: u64,
    /// One path or link target, as the kernel's PATH_MAX.
    pub path_bytes_max: usize,
    /// Symlinks followed while resolving one entry's parent, as the kernel's MAXSYMLINKS.
    pub symlink_hops_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            entries_max: 4_000_000,
            unpacked_bytes_max: 64 << 30,
            header_bytes_max: 1 << 20,
            path_bytes_max: 4096,
            symlink_hops_max: 40,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Set uid/gid from the layer (needs root) instead of leaving files owned by the caller.
    pub preserve_owner: bool,
    /// Create device nodes (needs root); FIFOs are created whenever this is set.
    pub special_files: bool,
}

impl ApplyOptions {
    /// What the current process can do: everything as root, a rootless subset otherwise.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        Self {
            preserve_owner: root,
            special_files: root,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub special_files: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub file_bytes: u64,
    pub skipped: u64,
    pub xattrs_skipped: u64,
}

/// Directory handles kept open between entries.
const PARENT_CACHE_MAX: usize = 16;

/// Warnings kept for the report; later ones are only counted.
const WARNINGS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("layer entry {path:?} is unsafe: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("layer entry {path:?} would be written through symlink {link:?}, which points outside the root")]
    SymlinkEscape { path: String, link: String },
    #[error("resolving layer entry {path:?} followed more than {max} symlinks")]
    SymlinkLoop { path: String, max: u32 },
    #[error("layer has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("layer entry path or link target of {len} bytes exceeds {max} bytes")]
    PathTooLong { len: usize, max: usize },
    #[error("layer entry {path:?} needs {parent:?} to be a directory, but it is not")]
    NotADirectory { path: String, parent: String },
    #[error("hardlink {path:?} -> {target:?}: {reason}")]
    Hardlink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("cannot {op} {path:?}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tar(#[from] TarError),
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn io_err<'a>(op: &'static str, path: &'a [u8]) -> impl FnOnce(Errno) -> ApplyError + 'a {
    move |e| ApplyError::Io {
        op,
        path: show(path),
        source: e.into(),
    }
}

/// Drops `path` and everything below it (`prefix` is `path` + `/`) from a path-keyed map.
fn remove_subtree<V>(map: &mut BTreeMap<RelPath, V>, path: &[u8], prefix: &[u8]) {
    map.remove(path);
    let doomed: Vec<RelPath> = map
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// A normalized, root-relative path: components joined by `/`, no leading slash, "" = root.
type RelPath = Vec<u8>;

fn join(parent: &[u8], name: &[u8]) -> RelPath {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn os(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}

/// Turns a tar path into components, refusing anything that names a place outside the root.
fn normalize<'a>(raw: &'a [u8], limits: &Limits) -> Result<Vec<&'a [u8]>, ApplyError> {
    if raw.len() > limits.path_bytes_max {
        return Err(ApplyError::PathTooLong {
            len: raw.len(),
            max: limits.path_bytes_max,
        });
    }
    if raw.contains(&0) {
        return Err(ApplyError::UnsafePath {
            path: show(raw),
            reason: "contains a NUL byte",
        });
    }
    if raw.first() == Some(&b'/') {
        return Err(ApplyError::UnsafePath {
            path: show(raw),
            reason: "absolute path",
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(ApplyError::UnsafePath {
                    path: show(raw),
                    reason: "contains a '..' component",
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

pub struct Applier {
    root: OwnedFd,
    root_path: PathBuf,
    opts: ApplyOptions,
    limits: Limits,
    /// Every symlink in the tree: real path -> target. Exact because nothing else writes here.
    symlinks: BTreeMap<RelPath, Vec<u8>>,
    /// Real paths written by the current layer; opaque markers keep these and drop the rest.
    layer_paths: HashSet<RelPath>,
    /// Directory mtimes, set last because later entries modify their directories.
    dir_times: BTreeMap<RelPath, (i64, u32)>,
    /// Recently used parent directories, most recent last. Tar streams visit a handful of
    /// directories in turn (docs, binaries, libraries of one package), so a few handles save
    /// most of the openat2 calls.
    parent_cache: Vec<(RelPath, OwnedFd)>,
    /// Directories with the setgid bit: files created in them take the directory's group.
    setgid_dirs: HashSet<RelPath>,
    /// Who creates files, and the umask they are created under: when an entry's owner and
    /// mode are what creation gives anyway, the chown and chmod calls are skipped.
    creator: (u32, u32),
    umask: u32,
    stats: ApplyStats,
    warnings: Vec<String>,
}

impl Applier {
    /// `root` must be an empty directory that only this applier writes to.
    pub fn new(root: &Path, opts: ApplyOptions, limits: Limits) -> Result<Self, ApplyError> {
        let root_fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ApplyError::Io {
            op: "open unpack root",
            path: root.display().to_string(),
            source: e.into(),
        })?;
        let root_setgid = rfs::fstat(&root_fd)
            .map(|st| st.st_mode & 0o2000 != 0)
            .unwrap_or(true);
        let mut this = Self {
            root: root_fd,
            root_path: root.to_path_buf(),
            opts,
            limits,
            symlinks: BTreeMap::new(),
            layer_paths: HashSet::new(),
            dir_times: BTreeMap::new(),
            parent_cache: Vec::with_capacity(PARENT_CACHE_MAX),
            setgid_dirs: HashSet::new(),
            creator: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            umask: current_umask(),
            stats: ApplyStats::default(),
            warnings: Vec::new(),
        };
        if root_setgid {
            this.setgid_dirs.insert(Vec::new());
        }
        Ok(this)
    }

    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn warn(&mut self, msg: String) {
        if self.warnings.len() < WARNINGS_MAX {
            self.warnings.push(msg);
        }
    }

    pub fn begin_layer(&mut self) {
        self.layer_paths.clear();
    }

    /// Applies every entry of one layer's tar stream, then reads the stream to its end so the
    /// caller's digest covers every byte.
    pub fn apply_layer<R: BufRead>(&mut self, stream: R) -> Result<R, ApplyError> {
        self.begin_layer();
        let mut tar = TarReader::new(stream, self.limits.header_bytes_max);
        while let Some(entry) = tar.next_entry()? {
            self.apply(&entry, &mut tar)?;
        }
        let mut rest = tar.into_inner();
        loop {
            let n = rest.fill_buf().map_err(TarError::Io)?.len();
            if n == 0 {
                break;
            }
            rest.consume(n);
        }
        Ok(rest)
    }

    pub fn apply<R: BufRead>(
        &mut self,
        entry: &Entry,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.entries_max {
            return Err(ApplyError::TooManyEntries {
                max: self.limits.entries_max,
            });
        }
        let comps = normalize(&entry.path, &self.limits)?;
        // u32::MAX is chown's "leave unchanged"; anything at or above it is not an owner.
        if entry.uid >= u64::from(u32::MAX) || entry.gid >= u64::from(u32::MAX) {
            return Err(ApplyError::UnsafePath {
                path: show(&entry.path),
                reason: "uid or gid out of range",
            });
        }
        let Some((&name, parent_comps)) = comps.split_last() else {
            return self.apply_root(entry);
        };
        let parent = self.resolve(parent_comps, &entry.path)?;

        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(&parent, hidden, &entry.path);
        }
        let path = join(&parent, name);
        self.layer_paths.insert(path.clone());
        let pfd = self.take_parent_fd(&parent, &entry.path)?;
        let result = match entry.kind {
            EntryKind::Directory => self.make_dir(pfd.as_fd(), name, &path, entry),
            EntryKind::File => self.make_file(pfd.as_fd(), name, &path, entry, tar),
            EntryKind::Symlink => self.make_symlink(pfd.as_fd(), name, &path, entry),
            EntryKind::Hardlink => self.make_hardlink(pfd.as_fd(), name, &path, entry),
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                self.make_special(pfd.as_fd(), name, &path, entry)
            }
            EntryKind::Other(t) => {
                self.stats.skipped += 1;
                self.warn(format!(
                    "skipped {:?}: unknown tar entry type {:?}",
                    show(&path),
                    t as char
                ));
                Ok(())
            }
        };
        // An entry only changes its own name inside the parent, so the handle stays valid.
        self.cache_parent(parent, pfd);
        result
    }

    /// `./` entries carry the root directory's own metadata.
    fn apply_root(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if entry.kind != EntryKind::Directory {
            return Err(ApplyError::UnsafePath {
                path: show(&entry.path),
                reason: "replaces the root with a non-directory",
            });
        }
        let root = self.root.try_clone().map_err(|e| ApplyError::Io {
            op: "dup root",
            path: "/".into(),
            source: e,
        })?;
        self.set_owner_mode(root.as_fd(), b"", entry, true)?;
        self.dir_times
            .insert(Vec::new(), (entry.mtime_s, entry.mtime_ns));
        Ok(())
    }

    /// Resolves parent components through the symlink model to a real path with no symlinks.
    fn resolve(&self, comps: &[&[u8]], entry_path: &[u8]) -> Result<RelPath, ApplyError> {
        let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut cur: Vec<Vec<u8>> = Vec::with_capacity(comps.len());
        let mut hops = 0u32;
        // The symlink being followed, to name it when its target climbs out.
        let mut last_link: RelPath = Vec::new();
        while let Some(c) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    // Only reachable through a symlink target; normalize() refused it in entries.
                    if cur.pop().is_none() {
                        return Err(ApplyError::SymlinkEscape {
                            path: show(entry_path),
                            link: show(&last_link),
                        });
                    }
                    continue;
                }
                _ => {}
            }
            let candidate = join(&cur.join(&b'/'), &c);
            if let Some(target) = self.symlinks.get(&candidate) {
                hops += 1;
                if hops > self.limits.symlink_hops_max {
                    return Err(ApplyError::SymlinkLoop {
                        path: show(entry_path),
                        max: self.limits.symlink_hops_max,
                    });
                }
                if target.first() == Some(&b'/') {
                    cur.clear();
                }
                let mut depth = cur.len() as i64;
                for t in target.split(|&b| b == b'/') {
                    match t {
                        b"" | b"." => {}
                        b".." => depth -= 1,
                        _ => depth += 1,
                    }
                    if depth < 0 {
                        return Err(ApplyError::SymlinkEscape {
                            path: show(entry_path),
                            link: show(&candidate),
                        });
                    }
                }
                for t in target.split(|&b| b == b'/').rev() {
                    queue.push_front(t.to_vec());
                }
                last_link = candidate;
                continue;
            }
            cur.push(c);
        }
        Ok(cur.join(&b'/'))
    }

    /// Opens the real parent directory, creating missing ones (tar streams may omit them).
    /// Entries arrive grouped by directory, so the last one is kept open; the caller puts the
    /// handle back into `parent_cache` when done.
    fn take_parent_fd(&mut self, parent: &[u8], entry_path: &[u8]) -> Result<OwnedFd, ApplyError> {
        if let Some(i) = self.parent_cache.iter().rposition(|(p, _)| p == parent) {
            return Ok(self.parent_cache.remove(i).1);
        }
        let fd = match self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                self.mkdir_all(parent, entry_path)?;
                self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)
                    .map_err(io_err("open directory", parent))?
            }
            Err(Errno::NOTDIR) => {
                return Err(ApplyError::NotADirectory {
                    path: show(entry_path),
                    parent: show(parent),
                });
            }
            Err(e) => return Err(io_err("open directory", parent)(e)),
        };
        Ok(fd)
    }

    fn cache_parent(&mut self, parent: RelPath, fd: OwnedFd) {
        if self.parent_cache.len() == PARENT_CACHE_MAX {
            self.parent_cache.remove(0);
        }
        self.parent_cache.push((parent, fd));
    }

    fn open_beneath(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let path = if path.is_empty() { &b"."[..] } else { path };
        rfs::openat2(
            &self.root,
            os(path),
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn mkdir_all(&mut self, path: &[u8], entry_path: &[u8]) -> Result<(), ApplyError> {
        let mut cur: RelPath = Vec::new();
        for c in path.split(|&b| b == b'/') {
            let dir = self
                .open_beneath(&cur, OFlags::PATH | OFlags::DIRECTORY)
                .map_err(|e| match e {
                    Errno::NOTDIR => ApplyError::NotADirectory {
                        path: show(entry_path),
                        parent: show(&cur),
                    },
                    e => io_err("open directory", &cur)(e),
                })?;
            cur = join(&cur, c);
            match rfs::mkdirat(&dir, os(c), Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err("create directory", &cur)(e)),
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &[u8],
        hidden: &[u8],
        entry_path: &[u8],
    ) -> Result<(), ApplyError> {
        self.stats.whiteouts += 1;
        if hidden == b".wh..opq" {
            self.stats.opaque_dirs += 1;
            return self.make_opaque(parent);
        }
        if hidden.starts_with(b".wh.") {
            // Other `.wh..wh.` names are aufs bookkeeping, not part of the image.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            // `.wh..` and `.wh...` would hide the directory itself or its parent.
            return Err(ApplyError::UnsafePath {
                path: show(entry_path),
                reason: "whiteout names no single entry",
            });
        }
        let target = join(parent, hidden);
        // Whiteouts only hide lower layers; an entry of this same layer stays.
        if self.layer_paths.contains(&target) {
            return Ok(());
        }
        let pfd = match self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            // Nothing below a missing or non-directory parent can need hiding.
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(io_err("open directory", parent)(e)),
        };
        self.remove_existing(pfd.as_fd(), hidden, &target)
    }

    /// Drops everything under `dir` that the current layer did not write.
    fn make_opaque(&mut self, dir: &[u8]) -> Result<(), ApplyError> {
        let fd = match self.open_beneath(dir, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err("open directory", dir)(e)),
        };
        let mut names = Vec::new();
        for item in rfs::Dir::read_from(&fd).map_err(io_err("list directory", dir))? {
            let item = item.map_err(io_err("list directory", dir))?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push((name.to_vec(), item.file_type()));
            }
        }
        for (name, ft) in names {
            let path = join(dir, &name);
            if !self.layer_paths.contains(&path) {
                self.remove_existing(fd.as_fd(), &name, &path)?;
            } else if ft == FileType::Directory {
                self.make_opaque(&path)?;
            }
        }
        Ok(())
    }

    /// Removes whatever is at `path` (a whole tree for directories), never following symlinks.
    fn remove_existing(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), ApplyError> {
        let st = match rfs::statat(pfd, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err("inspect", path)(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // `path` has no symlinks in it (it came out of resolve()), and std's remove_dir_all
            // never follows symlinks inside the tree it removes.
            let full = self.root_path.join(os(path));
            std::fs::remove_dir_all(&full).map_err(|e| ApplyError::Io {
                op: "remove directory",
                path: show(path),
                source: e,
            })?;
            self.forget_subtree(path);
            self.parent_cache.clear();
        } else {
            rfs::unlinkat(pfd, os(name), AtFlags::empty()).map_err(io_err("remove", path))?;
            self.symlinks.remove(path);
        }
        Ok(())
    }

    fn forget_subtree(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        remove_subtree(&mut self.dir_times, path, &prefix);
        remove_subtree(&mut self.symlinks, path, &prefix);
        self.setgid_dirs
            .retain(|d| !(d == path || d.starts_with(&prefix)));
    }

    fn make_dir(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        entry: &Entry,
    ) -> Result<(), ApplyError> {
        let create_mode = if self.opts.preserve_owner {
            entry.mode & 0o777
        } else {
            0o700
        };
        let mut created = true;
        match rfs::mkdirat(pfd, os(name), Mode::from_raw_mode(create_mode)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rfs::statat(pfd, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("inspect", path))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    created = false;
                } else {
                    self.remove_existing(pfd, name, path)?;
                    rfs::mkdirat(pfd, os(name), Mode::from_raw_mode(create_mode))
                        .map_err(io_err("create directory", path))?;
                }
            }
            Err(e) => return Err(io_err("create directory", path)(e)),
        }
        let parent = &path[..path.len().saturating_sub(name.len() + 1)];
        if !created || self.needs_owner_mode(parent, entry) || !entry.xattrs.is_empty() {
            let fd = rfs::openat(
                pfd,
                os(name),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err("open directory", path))?;
            self.set_owner_mode(fd.as_fd(), path, entry, true)?;
            self.set_xattrs_fd(fd.as_fd(), path, entry);
        }
        if entry.mode & 0o2000 != 0 {
            self.setgid_dirs.insert(path.to_vec());
        } else {
            self.setgid_dirs.remove(path);
        }
        self.dir_times
            .insert(path.to_vec(), (entry.mtime_s, entry.mtime_ns));
        self.stats.dirs += 1;
        Ok(())
    }

    /// Whether creation left owner or mode different from what the entry asks for.
    fn needs_owner_mode(&self, parent: &[u8], entry: &Entry) -> bool {
        if !self.opts.preserve_owner {
            return true;
        }
        let owner_ok = entry.uid == u64::from(self.creator.0)
            && entry.gid == u64::from(self.creator.1)
            && !self.setgid_dirs.contains(parent);
        let mode_ok = entry.mode & 0o7000 == 0 && entry.mode & self.umask == 0;
        !(owner_ok && mode_ok)
    }

    fn make_file<R: BufRead>(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        entry: &Entry,
        tar: &mut TarReader<R>,
    ) -> Result<(), ApplyError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create_mode = Mode::from_raw_mode(if self.opts.preserve_owner {
            entry.mode & 0o777
        } else {
            0o600
        });
        let fd = match rfs::openat(pfd, os(name), flags, create_mode) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                self.remove_existing(pfd, name, path)?;
                rfs::openat(pfd, os(name), flags, create_mode)
                    .map_err(io_err("create file", path))?
            }
            Err(e) => return Err(io_err("create file", path)(e)),
        };
        let mut file = File::from(fd);
        let written = tar
            .copy_data(|chunk| file.write_all(chunk))
            .map_err(|e| match e {
                TarError::Io(source) => ApplyError::Io {
                    op: "write file",
                    path: show(path),
                    source,
                },
                other => ApplyError::Tar(other),
            })?;
        self.stats.file_bytes += written;
        let parent = &path[..path.len().saturating_sub(name.len() + 1)];
        if self.needs_owner_mode(parent, entry) {
            self.set_owner_mode(file.as_fd(), path, entry, false)?;
        }
        self.set_xattrs_fd(file.as_fd(), path, entry);
        rfs::futimens(&file, &times(entry)).map_err(io_err("set mtime of", path))?;
        self.stats.files += 1;
        Ok(())
    }

    fn make_symlink(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        entry: &Entry,
    ) -> Result<(), ApplyError> {
        if entry.link.len() > self.limits.path_bytes_max {
            return Err(ApplyError::PathTooLong {
                len: entry.link.len(),
                max: self.limits.path_bytes_max,
            });
        }
        if entry.link.is_empty() || entry.link.contains(&0) {
            return Err(ApplyError::UnsafePath {
                path: show(path),
                reason: "symlink target is empty or has a NUL byte",
            });
        }
        match rfs::symlinkat(os(&entry.link), pfd, os(name)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(pfd, name, path)?;
                rfs::symlinkat(os(&entry.link), pfd, os(name))
                    .map_err(io_err("create symlink", path))?;
            }
            Err(e) => return Err(io_err("create symlink", path)(e)),
        }
        self.symlinks.insert(path.to_vec(), entry.link.clone());
        let parent = &path[..path.len().saturating_sub(name.len() + 1)];
        let owner_ok = entry.uid == u64::from(self.creator.0)
            && entry.gid == u64::from(self.creator.1)
            && !self.setgid_dirs.contains(parent);
        if self.opts.preserve_owner && !owner_ok {
            rfs::chownat(
                pfd,
                os(name),
                Some(uid(entry.uid)),
                Some(gid(entry.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("set owner of", path))?;
        }
        if !entry.xattrs.is_empty() {
            self.stats.xattrs_skipped += entry.xattrs.len() as u64;
        }
        rfs::utimensat(pfd, os(name), &times(entry), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("set mtime of", path))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn make_hardlink(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        entry: &Entry,
    ) -> Result<(), ApplyError> {
        let target_comps = normalize(&entry.link, &self.limits).map_err(|e| match e {
            ApplyError::UnsafePath { reason, .. } => ApplyError::Hardlink {
                path: show(path),
                target: show(&entry.link),
                reason,
            },
            other => other,
        })?;
        let Some((&tname, tparent_comps)) = target_comps.split_last() else {
            return Err(ApplyError::Hardlink {
                path: show(path),
                target: show(&entry.link),
                reason: "target is the root directory",
            });
        };
        let tparent = self.resolve(tparent_comps, &entry.link)?;
        let target = join(&tparent, tname);
        if target == path {
            return Ok(());
        }
        let tpfd = match self.open_beneath(&tparent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
                return Err(ApplyError::Hardlink {
                    path: show(path),
                    target: show(&entry.link),
                    reason: "target does not exist",
                })
            }
            Err(e) => return Err(io_err("open directory", &tparent)(e)),
        };
        let st = match rfs::statat(&tpfd, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                return Err(ApplyError::Hardlink {
                    path: show(path),
                    target: show(&entry.link),
                    reason: "target does not exist",
                })
            }
            Err(e) => return Err(io_err("inspect", &target)(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(ApplyError::Hardlink {
                path: show(path),
                target: show(&entry.link),
                reason: "target is a directory",
            });
        }
        match rfs::linkat(&tpfd, os(tname), pfd, os(name), AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(pfd, name, path)?;
                rfs::linkat(&tpfd, os(tname), pfd, os(name), AtFlags::empty())
                    .map_err(io_err("create hardlink", path))?;
            }
            Err(e) => return Err(io_err("create hardlink", path)(e)),
        }
        if let Some(t) = self.symlinks.get(&target).cloned() {
            self.symlinks.insert(path.to_vec(), t);
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn make_special(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        entry: &Entry,
    ) -> Result<(), ApplyError> {
        if !self.opts.special_files {
            self.stats.skipped += 1;
            self.warn(format!(
                "skipped {:?}: device nodes and FIFOs need root",
                show(path)
            ));
            return Ok(());
        }
        let (ft, dev) = match entry.kind {
            EntryKind::CharDevice => (
                FileType::CharacterDevice,
                rfs::makedev(entry.dev_major, entry.dev_minor),
            ),
            EntryKind::BlockDevice => (
                FileType::BlockDevice,
                rfs::makedev(entry.dev_major, entry.dev_minor),
            ),
            _ => (FileType::Fifo, 0),
        };
        let mode = Mode::from_raw_mode(0o600);
        match rfs::mknodat(pfd, os(name), ft, mode, dev) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(pfd, name, path)?;
                rfs::mknodat(pfd, os(name), ft, mode, dev)
                    .map_err(io_err("create special file", path))?;
            }
            Err(e) => return Err(io_err("create special file", path)(e)),
        }
        // O_PATH gives a handle without opening the device itself.
        let fd = rfs::openat(
            pfd,
            os(name),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open", path))?;
        if self.opts.preserve_owner {
            rfs::chownat(
                &fd,
                "",
                Some(uid(entry.uid)),
                Some(gid(entry.gid)),
                AtFlags::EMPTY_PATH,
            )
            .map_err(io_err("set owner of", path))?;
        }
        rfs::chmodat(
            pfd,
            os(name),
            Mode::from_raw_mode(entry.mode),
            AtFlags::empty(),
        )
        .map_err(io_err("set mode of", path))?;
        rfs::utimensat(pfd, os(name), &times(entry), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("set mtime of", path))?;
        self.stats.special_files += 1;
        Ok(())
    }

    fn set_owner_mode(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        entry: &Entry,
        is_dir: bool,
    ) -> Result<(), ApplyError> {
        if self.opts.preserve_owner {
            rfs::fchown(fd, Some(uid(entry.uid)), Some(gid(entry.gid)))
                .map_err(io_err("set owner of", path))?;
        }
        // chown clears setuid/setgid, so the mode goes on after it. Without root the caller
        // keeps write access to directories it still has to fill.
        let mut mode = entry.mode;
        if is_dir && !self.opts.preserve_owner {
            mode |= 0o700;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err("set mode of", path))
    }

    fn set_xattrs_fd(&mut self, fd: BorrowedFd<'_>, path: &[u8], entry: &Entry) {
        for (k, v) in &entry.xattrs {
            match rfs::fsetxattr(fd, os(k), v, rfs::XattrFlags::empty()) {
                Ok(()) => {}
                // The target filesystem or our privileges decide which namespaces exist.
                Err(
                    e @ (Errno::OPNOTSUPP
                    | Errno::PERM
                    | Errno::ACCESS
                    | Errno::INVAL
                    | Errno::NOSPC
                    | Errno::RANGE),
                ) => {
                    self.stats.xattrs_skipped += 1;
                    let msg = format!(
                        "skipped xattr {:?} on {:?}: {}",
                        show(k),
                        show(path),
                        io::Error::from(e)
                    );
                    self.warn(msg);
                }
                Err(e) => {
                    self.stats.xattrs_skipped += 1;
                    let msg = format!(
                        "skipped xattr {:?} on {:?}: {}",
                        show(k),
                        show(path),
                        io::Error::from(e)
                    );
                    self.warn(msg);
                }
            }
        }
    }

    /// Sets directory mtimes, which every earlier write into them disturbed.
    pub fn finish(mut self) -> Result<(ApplyStats, Vec<String>), ApplyError> {
        self.parent_cache.clear();
        let dir_times = std::mem::take(&mut self.dir_times);
        for (path, (s, ns)) in dir_times.iter().rev() {
            let fd = match self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) => return Err(io_err("open directory", path)(e)),
            };
            let t = Timespec {
                tv_sec: *s,
                tv_nsec: i64::from(*ns),
            };
            rfs::futimens(
                &fd,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .map_err(io_err("set mtime of", path))?;
        }
        Ok((self.stats, self.warnings))
    }
}

/// The process umask, read without changing it (calling umask(2) to read it would race with
/// other threads creating files).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Umask:")
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
        })
        // Unknown: assume the strictest, so every mode is set explicitly.
        .unwrap_or(0o777)
}

fn times(entry: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: entry.mtime_s,
        tv_nsec: i64::from(entry.mtime_ns),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid(v: u64) -> rfs::Uid {
    rfs::Uid::from_raw(v as u32)
}

fn gid(v: u64) -> rfs::Gid {
    rfs::Gid::from_raw(v as u32)
}
