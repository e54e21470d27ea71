//! Where a command may write a file it makes. Most outputs are built beside the destination
//! and renamed over it, which is right for a regular file and wrong for anything else: a
//! rename over `/dev/null` replaces the device with a file, a rename over a FIFO or socket
//! removes it, a rename over a symlink replaces the link, not what it names. So an output
//! path is inspected first: a regular file (or nothing yet) may be replaced, a block device
//! is written in place where the command writes disks, and anything else is refused.
//!
//! The scratch files and directories commands make beside their outputs carry the
//! process's id in their names (`.bootyard-WHAT-PID-…`), so a later run can tell a dead
//! run's leftovers from a live one's and remove them ([`sweep_dead_scratch`]), and a run
//! stopped by SIGINT or SIGTERM removes its own first ([`sweep_own_scratch`], from the
//! binary's signal thread, in the directories [`scratch_dir`] registered).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path} is {kind}: only {wanted} can be written there")]
    NotAFile {
        path: PathBuf,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("the output {output} {how} the input {input}: writing it would destroy what it reads")]
    Overlaps {
        input: PathBuf,
        output: PathBuf,
        how: &'static str,
    },
    #[error("cannot inspect {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is at an output path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    /// Replaced by renaming a finished file over it.
    RegularFile,
    /// Written in place, never renamed over.
    BlockDevice,
}

/// An output path, inspected: what is there, and the path to write (symlinks resolved, so
/// a rename replaces the file a link names rather than the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    pub existing: Existing,
    pub path: PathBuf,
}

/// Inspects `path` as the destination of a file; `block_ok` where a block device may be
/// written (disks).
pub fn file_output(path: &Path, block_ok: bool) -> Result<FileOutput, OutputError> {
    let wanted = if block_ok {
        "a regular file or a block device"
    } else {
        "a regular file"
    };
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Nothing there, or a dangling link: refuse the link (a rename would replace
            // it, a create would follow it to wherever it points).
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(OutputError::NotAFile {
                    path: path.to_path_buf(),
                    kind: "a symlink to nothing",
                    wanted,
                });
            }
            return Ok(FileOutput {
                existing: Existing::Nothing,
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(OutputError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let t = md.file_type();
    let existing = if t.is_file() {
        Existing::RegularFile
    } else if t.is_block_device() && block_ok {
        Existing::BlockDevice
    } else {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(OutputError::NotAFile {
            path: path.to_path_buf(),
            kind,
            wanted,
        });
    };
    let path = std::fs::canonicalize(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(FileOutput { existing, path })
}

/// `p` made absolute with every symlink resolved, also where its last components do not
/// exist yet (they are appended to the deepest ancestor that does).
fn resolved(p: &Path) -> Result<PathBuf, OutputError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| OutputError::Io {
                path: p.to_path_buf(),
                source,
            })?
            .join(p)
    };
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        match std::fs::canonicalize(at) {
            Ok(mut c) => {
                for part in rest.iter().rev() {
                    c.push(part);
                }
                return Ok(c);
            }
            Err(_) => match (at.parent(), at.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    at = parent;
                }
                // `..` or the root itself: nothing further to resolve.
                _ => return Ok(abs),
            },
        }
    }
}

/// Refuses an output that is, contains, or lies inside the input (`pull dir:rec --out
/// rec/inner`, `pull oci-layout:L --out L --force`), through any symlinks.
pub fn refuse_overlap(input: &Path, output: &Path) -> Result<(), OutputError> {
    let (i, o) = (resolved(input)?, resolved(output)?);
    let how = if i == o {
        "is"
    } else if o.starts_with(&i) {
        "lies inside"
    } else if i.starts_with(&o) {
        "contains"
    } else {
        return Ok(());
    };
    Err(OutputError::Overlaps {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        how,
    })
}

/// The name prefix of a scratch file or directory: `.bootyard-WHAT-PID-` (the rest is
/// random, from `tempfile`).
pub fn scratch_prefix(what: &str) -> String {
    assert!(
        !what.is_empty() && !what.contains(['-', '/']),
        "scratch kinds are one word: {what:?}"
    );
    format!(".bootyard-{what}-{}-", std::process::id())
}

/// The pid in a scratch name made by [`scratch_prefix`], or in an unpack's staging
/// directory (`.NAME.bootyard-partial-PID`).
fn scratch_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(".bootyard-") {
        let (_what, rest) = rest.split_once('-')?;
        let (pid, _random) = rest.split_once('-')?;
        return pid.parse().ok();
    }
    let (_, pid) = name.rsplit_once(".bootyard-partial-")?;
    if !name.starts_with('.') {
        return None;
    }
    pid.parse().ok()
}

/// Directories where this process makes scratch files: what a signal makes it clean up.
/// Process-wide, as signals are.
static SCRATCH_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
/// Bound on the directories remembered (a command uses one or two).
const SCRATCH_DIRS_MAX: usize = 64;

/// Notes that this process makes scratch files in `dir`, and removes what dead runs left
/// there. Call before making any.
pub fn scratch_dir(dir: &Path) {
    sweep_dead_scratch(dir);
    let dir = resolved(dir).unwrap_or_else(|_| dir.to_path_buf());
    // A poisoned lock only means a panicking thread held it; the list is still whole.
    let mut dirs = SCRATCH_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.contains(&dir) && dirs.len() < SCRATCH_DIRS_MAX {
        dirs.push(dir);
    }
}

fn sweep(dir: &Path, doomed: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = scratch_pid(&name) else {
            continue;
        };
        if doomed(pid) {
            let p = e.path();
            // Leftovers are garbage: failing to remove one must not fail the command.
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
}

/// Removes scratch that runs no longer alive left in `dir` (killed, or cut off by a power
/// loss). A pid that is alive may be another run's: it is left alone.
pub fn sweep_dead_scratch(dir: &Path) {
    let me = std::process::id();
    sweep(dir, |pid| {
        pid != me && !Path::new(&format!("/proc/{pid}")).exists()
    });
}

/// Removes this process's own scratch in every directory it registered: for the signal
/// thread, just before the process exits.
pub fn sweep_own_scratch() {
    let me = std::process::id();
    let dirs = SCRATCH_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for d in dirs {
        sweep(&d, |pid| pid == me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_carry_their_pid_and_only_dead_runs_lose_theirs() {
        assert_eq!(scratch_pid(".bootyard-upgrade-123-Ab9x"), Some(123));
        assert_eq!(scratch_pid(".rootfs.bootyard-partial-77"), Some(77));
        assert_eq!(scratch_pid("bootyard-upgrade-123-x"), None);
        assert_eq!(scratch_pid(".bootyard-upgrade-x"), None);
        let d = tempfile::tempdir().unwrap();
        // No process has pid u32::MAX - 1 (pid_max is at most 2^22).
        let dead = u32::MAX - 1;
        let mine = std::process::id();
        let names = [
            format!(".bootyard-upgrade-{dead}-aaaa"),
            format!(".out.bootyard-partial-{dead}"),
            format!(".bootyard-install-{mine}-bbbb"),
            ".bootyard-install-1-cccc".to_string(), // init: alive
            "unrelated".to_string(),
        ];
        for n in &names {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("f"), b"x").unwrap();
        }
        sweep_dead_scratch(d.path());
        let left = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(left(d.path()), {
            let mut v = names[2..].to_vec();
            v.sort();
            v
        });
        scratch_dir(d.path());
        sweep_own_scratch();
        assert_eq!(
            left(d.path()),
            vec![
                ".bootyard-install-1-cccc".to_string(),
                "unrelated".to_string()
            ]
        );
    }

    #[test]
    fn r19_an_output_that_is_in_or_around_its_input_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        for (out, how) in [
            (src.clone(), "is"),
            (link.clone(), "is"),
            (src.join("inner/deeper"), "lies inside"),
            (link.join("inner"), "lies inside"),
            (d.path().to_path_buf(), "contains"),
        ] {
            let e = refuse_overlap(&src, &out).unwrap_err();
            assert!(e.to_string().contains(how), "{out:?}: {e}");
        }
        refuse_overlap(&src, &d.path().join("src2")).unwrap();
        refuse_overlap(&src, &d.path().join("other/src")).unwrap();
    }

    #[test]
    fn r19_a_device_fifo_or_directory_is_never_an_output_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        crate::testkit::mkfifo(&fifo).unwrap();
        for (p, kind) in [
            (Path::new("/dev/null"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (d.path(), "a directory"),
        ] {
            for block_ok in [false, true] {
                let e = file_output(p, block_ok).unwrap_err();
                assert!(e.to_string().contains(kind), "{p:?}: {e}");
            }
        }
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(file_output(&dangling, true).is_err());
    }

    #[test]
    fn a_link_to_a_file_is_written_through() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.img");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link.img");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let o = file_output(&link, false).unwrap();
        assert_eq!(o.existing, Existing::RegularFile);
        assert_eq!(o.path, std::fs::canonicalize(&real).unwrap());
        let new = d.path().join("new.img");
        assert_eq!(
            file_output(&new, true).unwrap(),
            FileOutput {
                existing: Existing::Nothing,
                path: new
            }
        );
    }
}
