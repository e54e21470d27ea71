//! Kernel modules for the initrd. On the build side: which `.ko` files a list of drivers
//! needs, in load order, from each module's own `depends=` (the `.modinfo` ELF section), so
//! no `depmod` run or `modules.dep` is needed. On the node: loading them with
//! `finit_module(2)`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("{path}: not a 64-bit little-endian ELF module ({why})")]
    NotElf { path: PathBuf, why: &'static str },
    #[error("kernel module {name} is neither in {dir} nor built in (needed by {needed_by})")]
    Missing {
        name: String,
        dir: PathBuf,
        needed_by: String,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KmodError {
    let path = path.to_path_buf();
    move |source| KmodError::Io { path, source }
}

/// Module names compare with `-` and `_` as the same character, as the kernel does.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<String>, &'static str> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("no ELF magic");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not ELF64 little-endian");
    }
    let shoff = le_u64(elf, 0x28).ok_or("truncated header")? as usize;
    let shentsize = le_u16(elf, 0x3A).ok_or("truncated header")? as usize;
    let shnum = le_u16(elf, 0x3C).ok_or("truncated header")? as usize;
    let shstrndx = le_u16(elf, 0x3E).ok_or("truncated header")? as usize;
    if shentsize < 64 || shstrndx >= shnum {
        return Err("bad section header table");
    }
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            le_u32(elf, h)?,
            le_u64(elf, h + 24)? as usize,
            le_u64(elf, h + 32)? as usize,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or("truncated section headers")?;
    let names = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or("truncated section names")?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or("truncated section headers")?;
        let name = names
            .get(name as usize..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let data = elf
                .get(off..off.saturating_add(size))
                .ok_or("truncated .modinfo")?;
            return Ok(data
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }
    Err("no .modinfo section")
}

/// The modules under `lib/modules/<version>` of an unpacked kernel package.
pub struct ModuleIndex {
    dir: PathBuf,
    by_name: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    pub fn scan(modules_dir: &Path) -> Result<Self, KmodError> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io(&d))? {
                let e = e.map_err(io(&d))?;
                let p = e.path();
                if e.file_type().map_err(io(&p))?.is_dir() {
                    stack.push(p);
                } else if let Some(stem) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    by_name.insert(normalize(stem), p.clone());
                }
            }
        }
        // modules.builtin lists paths like kernel/fs/ext4/ext4.ko.
        let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(normalize))
            .collect();
        Ok(Self {
            dir: modules_dir.to_path_buf(),
            by_name,
            builtin,
        })
    }

    fn depends(&self, path: &Path) -> Result<Vec<String>, KmodError> {
        let elf = std::fs::read(path).map_err(io(path))?;
        let info = modinfo(&elf).map_err(|why| KmodError::NotElf {
            path: path.to_path_buf(),
            why,
        })?;
        Ok(info
            .iter()
            .filter_map(|kv| kv.strip_prefix("depends="))
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
            .map(normalize)
            .collect())
    }

    /// The module files `wanted` needs, dependencies before dependents, each once. Modules
    /// built into the kernel are skipped.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<PathBuf>, KmodError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&normalize(w), "the request", &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        done: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), KmodError> {
        // Inserted before the recursion: module dependencies are acyclic, and a cycle in a
        // broken package must not recurse forever.
        if !done.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = self.by_name.get(name) else {
            if self.builtin.contains(name) {
                return Ok(());
            }
            return Err(KmodError::Missing {
                name: name.into(),
                dir: self.dir.clone(),
                needed_by: needed_by.into(),
            });
        };
        for dep in self.depends(path)? {
            self.visit(&dep, name, done, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Loads one module file into the running kernel; already loaded is fine.
pub fn load(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    let params = c"";
    // SAFETY: finit_module takes an open fd, a NUL-terminated parameter string and flags;
    // both pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and a `.modinfo` section.
    fn elf_with_modinfo(info: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        let names_at = e.len();
        e.extend_from_slice(names);
        let info_at = e.len();
        e.extend_from_slice(info);
        let shoff = e.len();
        e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        e[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        e[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, names_at, names.len()),
            (11, info_at, info.len()),
        ] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            e.extend_from_slice(&h);
        }
        e
    }

    #[test]
    fn reads_modinfo_strings() {
        let elf = elf_with_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0\0name=virtio_blk\0");
        assert_eq!(
            modinfo(&elf).unwrap(),
            [
                "license=GPL",
                "depends=virtio,virtio_ring",
                "name=virtio_blk"
            ]
        );
        assert_eq!(modinfo(b"\x7fELF\x01"), Err("not ELF64 little-endian"));
        let mut truncated = elf.clone();
        truncated.truncate(100);
        assert!(modinfo(&truncated).is_err());
    }

    #[test]
    fn closure_puts_dependencies_first_and_skips_builtins() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        for (name, deps) in [
            ("virtio_blk", "virtio,virtio-ring,crc32c"),
            ("virtio", ""),
            ("virtio-ring", "virtio"),
        ] {
            std::fs::write(
                k.join(format!("{name}.ko")),
                elf_with_modinfo(format!("depends={deps}\0").as_bytes()),
            )
            .unwrap();
        }
        std::fs::write(
            tmp.path().join("modules.builtin"),
            "kernel/crypto/crc32c.ko\n",
        )
        .unwrap();
        let idx = ModuleIndex::scan(tmp.path()).unwrap();
        let got: Vec<_> = idx
            .closure(&["virtio_blk", "virtio"])
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["virtio.ko", "virtio-ring.ko", "virtio_blk.ko"]);
        assert!(matches!(
            idx.closure(&["nosuch"]),
            Err(KmodError::Missing { .. })
        ));
    }
}
