//! Reading an initramfs as the kernel does: newc cpio segments, bare or compressed,
//! one after another (an early uncompressed microcode archive, then the main one), in any
//! compression the kernel reads but bzip2 and lzo.

use std::collections::BTreeMap;

use super::decompress::{one_stream, Format};

/// Unpacked bytes read at most, so a hostile archive cannot exhaust memory.
pub const UNPACKED_MAX: u64 = 1 << 30;
/// Entries read at most.
pub const ENTRIES_MAX: usize = 1 << 20;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub mode: u32,
    /// A symlink's target.
    pub link: Option<String>,
}

impl CpioEntry {
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

#[derive(Debug, Default)]
pub struct Initramfs {
    /// By path without a leading `./` or `/` (later segments override earlier ones, as the
    /// kernel's unpacking does).
    pub entries: BTreeMap<String, CpioEntry>,
    /// How each segment was stored (`cpio`, `gzip`, `zstd`), in order.
    pub segments: Vec<&'static str>,
}

impl Initramfs {
    /// Resolves `path` inside the archive as the kernel's root would: symlinks in any
    /// component, relative or absolute, at most 40 of them. `None` when something on the way
    /// is missing (or the links loop).
    pub fn resolve(&self, path: &str) -> Option<&CpioEntry> {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let here = if done.is_empty() {
                c.clone()
            } else {
                format!("{}/{c}", done.join("/"))
            };
            let Some(e) = self.entries.get(&here) else {
                // A directory the archive never listed, only its contents.
                let prefix = format!("{here}/");
                let implied = self
                    .entries
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix));
                if !implied || todo.is_empty() {
                    return None;
                }
                done.push(c);
                continue;
            };
            match &e.link {
                Some(t) => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    if t.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(
                        t.split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                }
                None => done.push(c),
            }
        }
        self.entries.get(&done.join("/"))
    }
}

fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

/// Reads every segment of `b`; `Err` says where and why the archive is broken.
pub fn read(b: &[u8]) -> Result<Initramfs, String> {
    let mut out = Initramfs::default();
    let mut total = 0u64;
    read_into(b, &mut out, &mut total, 0)?;
    if out.segments.is_empty() {
        return Err("empty: no cpio archive in it".into());
    }
    Ok(out)
}

fn read_into(b: &[u8], out: &mut Initramfs, total: &mut u64, depth: u8) -> Result<(), String> {
    let mut pos = 0;
    loop {
        while b.get(pos) == Some(&0) {
            pos += 1;
        }
        let rest = &b[pos..];
        if rest.is_empty() {
            return Ok(());
        }
        if rest.starts_with(b"070701") || rest.starts_with(b"070702") {
            pos += cpio_segment(rest, out).map_err(|e| format!("at byte {pos}: {e}"))?;
            out.segments.push("cpio");
            continue;
        }
        // The rest is compressed streams (one or several, as the kernel reads them), then
        // at most the zero padding the kernel skips.
        let Some(format) = Format::sniff(rest) else {
            let what = if rest.starts_with(b"BZh") {
                "bzip2-compressed, which this check does not read (use zstd, gzip, xz or lz4)"
            } else if rest.starts_with(&[0x89, b'L', b'Z', b'O']) {
                "lzo-compressed, which this check does not read (use zstd, gzip, xz or lz4)"
            } else {
                "neither a newc cpio archive nor a compressed one"
            };
            return Err(format!("at byte {pos}: {what}"));
        };
        let name = format.name();
        if depth > 0 {
            return Err(format!("at byte {pos}: {name} inside a compressed segment"));
        }
        let mut plain = Vec::new();
        let budget = UNPACKED_MAX - *total;
        let mut input: &[u8] = rest;
        loop {
            // The kernel skips zeros between segments.
            while input.first() == Some(&0) {
                input = &input[1..];
            }
            if input.is_empty() {
                break;
            }
            let at = pos + (rest.len() - input.len());
            let left = (budget + 1).saturating_sub(plain.len() as u64);
            let Some(f) = Format::sniff(input) else {
                return Err(format!(
                    "at byte {at}: after the {name} stream, bytes that are neither padding nor another stream"
                ));
            };
            // Each decoder consumes exactly its stream, so `input` is left at the next.
            one_stream(f, &mut input, &mut plain, left)
                .map_err(|e| format!("at byte {at}: {}: {e}", f.name()))?;
            if plain.len() as u64 > budget {
                return Err(format!("unpacks to more than {UNPACKED_MAX} bytes"));
            }
        }
        *total += plain.len() as u64;
        let before = out.segments.len();
        read_into(&plain, out, total, depth + 1).map_err(|e| format!("{name} segment: {e}"))?;
        if out.segments.len() == before {
            return Err(format!(
                "at byte {pos}: the {name} segment holds no cpio archive"
            ));
        }
        // Mark the segments just read as having come out of this compressed one.
        for s in &mut out.segments[before..] {
            *s = name;
        }
        return Ok(());
    }
}

fn hex8(b: &[u8], field: usize) -> Result<u32, String> {
    let at = 6 + field * 8;
    let s = b.get(at..at + 8).ok_or("truncated header")?;
    let s = std::str::from_utf8(s).map_err(|_| "header field not ASCII")?;
    u32::from_str_radix(s, 16).map_err(|_| format!("header field {s:?} is not hex"))
}

fn pad4(n: usize) -> usize {
    crate::boot::cpio::aligned(n as u64) as usize
}

/// One newc archive, up to and including its trailer; returns the bytes it took.
fn cpio_segment(b: &[u8], out: &mut Initramfs) -> Result<usize, String> {
    let mut pos = 0;
    loop {
        let h = &b[pos..];
        if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
            return Err(format!(
                "entry at offset {pos} has no newc magic: the archive is truncated or corrupt"
            ));
        }
        if h.len() < 110 {
            return Err("truncated entry header".into());
        }
        let mode = hex8(h, 1)?;
        let size = hex8(h, 6)? as usize;
        let namesize = hex8(h, 11)? as usize;
        let name_end = 110usize
            .checked_add(namesize)
            .filter(|&e| e <= h.len() && namesize > 0)
            .ok_or("entry name runs past the end")?;
        let name = &h[110..name_end - 1];
        let name = String::from_utf8_lossy(name).into_owned();
        let data_at = pad4(name_end);
        let data_end = data_at
            .checked_add(size)
            .filter(|&e| e <= h.len())
            .ok_or_else(|| format!("{name}: data runs past the end"))?;
        pos += pad4(data_end);
        if name == "TRAILER!!!" {
            return Ok(pos.min(b.len()));
        }
        if out.entries.len() >= ENTRIES_MAX {
            return Err(format!("more than {ENTRIES_MAX} entries"));
        }
        let link = (mode & S_IFMT == S_IFLNK)
            .then(|| String::from_utf8_lossy(&h[data_at..data_end]).into_owned());
        let key = normalize(&name);
        if !key.is_empty() {
            out.entries.insert(key, CpioEntry { mode, link });
        }
        if pos >= b.len() {
            return Err("no TRAILER!!! entry: the archive is truncated".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::cpio::CpioWriter;

    fn archive(init: Option<(&str, u32)>) -> Vec<u8> {
        let mut c = CpioWriter::new(Vec::new());
        c.dir("bin", 0o755).unwrap();
        c.file("bin/busybox", 0o755, b"\x7fELF").unwrap();
        if let Some((name, perm)) = init {
            c.file(name, perm, b"#!/bin/sh\n").unwrap();
        }
        c.finish().unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(b).unwrap();
        g.finish().unwrap()
    }

    #[test]
    fn bare_gzip_zstd_and_an_early_segment_all_read() {
        let plain = archive(Some(("init", 0o755)));
        let r = read(&plain).unwrap();
        assert_eq!(r.segments, ["cpio"]);
        assert!(r.resolve("/init").unwrap().is_file());
        assert_eq!(read(&gzip(&plain)).unwrap().segments, ["gzip"]);
        // Zero padding after a compressed segment, as the kernel allows.
        let mut padded = gzip(&plain);
        padded.extend([0u8; 300]);
        assert_eq!(read(&padded).unwrap().segments, ["gzip"]);
        let z = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(read(&z).unwrap().segments, ["zstd"]);
        // xz (RHEL-family dracut) and legacy lz4 (Ubuntu's initramfs-tools of 2020).
        let mut x = liblzma::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut x, &plain).unwrap();
        let x = x.finish().unwrap();
        let r = read(&x).unwrap();
        assert_eq!(r.segments, ["xz"]);
        assert!(r.resolve("/init").unwrap().is_file());
        let l = crate::conformance::decompress::tests::lz4_legacy_of(&plain, 1000);
        assert_eq!(read(&l).unwrap().segments, ["lz4"]);
        // Two compressed streams with zeros between them, as concatenated files give.
        let mut two = gzip(&plain);
        two.extend([0u8; 3]);
        two.extend(&x);
        assert_eq!(read(&two).unwrap().segments, ["gzip", "gzip"]);
        // Early microcode archive, padding, then the compressed main one.
        let mut early = CpioWriter::new(Vec::new());
        early.dir("kernel", 0o755).unwrap();
        let mut both = early.finish().unwrap();
        both.extend([0u8; 512]);
        both.extend(gzip(&plain));
        let r = read(&both).unwrap();
        assert_eq!(r.segments, ["cpio", "gzip"]);
        assert!(r.entries.contains_key("kernel") && r.entries.contains_key("init"));
    }

    #[test]
    fn symlinks_resolve_inside_the_archive_and_loops_do_not_hang() {
        let mut c = CpioWriter::new(Vec::new());
        c.dir("sbin", 0o755).unwrap();
        c.file("lib/systemd/systemd", 0o755, b"x").unwrap();
        c.symlink("sbin/init", "../lib/systemd/systemd").unwrap();
        c.symlink("init", "/sbin/init").unwrap();
        c.symlink("a", "b").unwrap();
        c.symlink("b", "a").unwrap();
        // A link through a linked directory (merged /usr): /sbin2/init -> /bin/busybox, bin -> usr/bin.
        c.file("usr/bin/busybox", 0o755, b"x").unwrap();
        c.symlink("bin", "usr/bin").unwrap();
        c.symlink("rdinit", "/bin/busybox").unwrap();
        let r = read(&c.finish().unwrap()).unwrap();
        assert!(r.resolve("init").unwrap().is_file());
        assert!(r.resolve("/rdinit").unwrap().is_file());
        assert!(r.resolve("a").is_none());
        assert!(r.resolve("missing").is_none());
    }

    #[test]
    fn broken_archives_say_why() {
        let plain = archive(None);
        let cut = &plain[..plain.len() - 200];
        assert!(read(cut).unwrap_err().contains("past the end") || read(cut).is_err());
        let no_trailer = &plain[..plain.len() - 124];
        assert!(read(no_trailer).is_err());
        assert!(read(b"not an archive")
            .unwrap_err()
            .contains("neither a newc cpio"));
        assert!(read(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2])
            .unwrap_err()
            .starts_with("at byte 0: xz"));
        assert!(read(b"BZh91AY&SY")
            .unwrap_err()
            .contains("bzip2-compressed"));
        assert!(read(&[0u8; 64]).unwrap_err().contains("empty"));
        let mut bad_gzip = gzip(&plain);
        let n = bad_gzip.len();
        bad_gzip.truncate(n / 2);
        assert!(read(&bad_gzip).unwrap_err().starts_with("at byte 0: gzip"));
        // A compressed stream of nothing but zeros holds no archive.
        assert!(read(&gzip(&[0u8; 100]))
            .unwrap_err()
            .contains("holds no cpio"));
    }
}
