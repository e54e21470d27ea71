//! Just enough of an ELF header to judge a binary: class, machine, whether it is an
//! executable, and which program interpreter it asks for.

/// An architecture an image can be built for, by its OCI name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The OCI / Kairos name (`amd64`, `arm64`); also accepts the kernel's names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    fn from_machine(m: u16) -> Option<Self> {
        match m {
            62 => Some(Arch::Amd64),
            183 => Some(Arch::Arm64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine`.
    pub machine: u16,
    /// The architecture, when it is one images are built for.
    pub arch: Option<Arch>,
    /// Runs as a program: `ET_EXEC`, or `ET_DYN` that asks for an interpreter or is marked
    /// position-independent executable (a static PIE); not a plain shared object.
    pub executable: bool,
    /// `PT_INTERP`: the dynamic loader it needs, if any.
    pub interp: Option<String>,
}

pub(crate) const PT_INTERP: u32 = 3;
pub(crate) const PT_DYNAMIC: u32 = 2;
pub(crate) const DT_FLAGS_1: u64 = 0x6fff_fffb;
pub(crate) const DF_1_PIE: u64 = 0x0800_0000;

/// Parses a 64-bit little-endian ELF file's header; `Err` says why it is not one.
pub fn parse(b: &[u8]) -> Result<ElfInfo, &'static str> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file");
    }
    if b.get(4) != Some(&2) {
        return Err("a 32-bit ELF file");
    }
    if b.get(5) != Some(&1) {
        return Err("a big-endian ELF file");
    }
    let at = |o: usize, n: usize| o.checked_add(n).and_then(|e| b.get(o..e));
    let u16at = |o: usize| at(o, 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u32at = |o: usize| at(o, 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")));
    let u64at = |o: usize| at(o, 8).map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")));
    let (Some(kind), Some(machine), Some(phoff), Some(phentsize), Some(phnum)) = (
        u16at(0x10),
        u16at(0x12),
        u64at(0x20),
        u16at(0x36),
        u16at(0x38),
    ) else {
        return Err("a truncated ELF header");
    };
    let mut interp = None;
    let mut pie = false;
    for i in 0..usize::from(phnum) {
        let ph = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * usize::from(phentsize)))
            .ok_or("program headers out of range")?;
        let (Some(ptype), Some(off), Some(size)) = (
            u32at(ph),
            ph.checked_add(8).and_then(u64at),
            ph.checked_add(32).and_then(u64at),
        ) else {
            return Err("truncated program headers");
        };
        let range = usize::try_from(off)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(o, s)| Some(o..o.checked_add(s)?));
        match ptype {
            PT_INTERP => {
                let raw = range
                    .and_then(|r| b.get(r))
                    .ok_or("PT_INTERP out of range")?;
                let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                interp = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            }
            PT_DYNAMIC => {
                let raw = range
                    .and_then(|r| b.get(r))
                    .ok_or("PT_DYNAMIC out of range")?;
                pie |= raw.chunks_exact(16).any(|d| {
                    let tag = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
                    let val = u64::from_le_bytes(d[8..].try_into().expect("8 bytes"));
                    tag == DT_FLAGS_1 && val & DF_1_PIE != 0
                });
            }
            _ => {}
        }
    }
    let executable = match kind {
        2 => true,
        3 => interp.is_some() || pie,
        _ => false,
    };
    Ok(ElfInfo {
        machine,
        arch: Arch::from_machine(machine),
        executable,
        interp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::fixture::elf;

    #[test]
    fn executables_static_pies_and_shared_objects_are_told_apart() {
        let exec = parse(&elf(2, 62, None, false)).unwrap();
        assert!(exec.executable && exec.interp.is_none());
        assert_eq!(exec.arch, Some(Arch::Amd64));
        let dynamic = parse(&elf(3, 183, Some("/lib/ld-linux-aarch64.so.1"), false)).unwrap();
        assert!(dynamic.executable);
        assert_eq!(dynamic.arch, Some(Arch::Arm64));
        assert_eq!(
            dynamic.interp.as_deref(),
            Some("/lib/ld-linux-aarch64.so.1")
        );
        assert!(parse(&elf(3, 62, None, true)).unwrap().executable);
        assert!(!parse(&elf(3, 62, None, false)).unwrap().executable);
        assert_eq!(parse(&elf(2, 40, None, false)).unwrap().arch, None);
        assert_eq!(parse(b"#!/bin/sh\n"), Err("not an ELF file"));
        let mut b32 = elf(2, 62, None, false);
        b32[4] = 1;
        assert_eq!(parse(&b32), Err("a 32-bit ELF file"));
        assert_eq!(
            parse(&elf(2, 62, None, false)[..40]),
            Err("a truncated ELF header")
        );
        let mut far = elf(2, 62, Some("/lib/ld"), false);
        far[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&far), Err("PT_INTERP out of range"));
        let mut huge = elf(2, 62, Some("/lib/ld"), false);
        huge[0x20..0x28].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        assert!(parse(&huge).is_err());
    }

    #[test]
    fn this_test_binary_parses_as_an_executable_of_this_machine() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = parse(&me).unwrap();
        assert!(info.executable);
        let want = if cfg!(target_arch = "x86_64") {
            Some(Arch::Amd64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Arm64)
        } else {
            None
        };
        assert_eq!(info.arch, want);
    }
}
