//! A streaming tar reader: ustar, GNU long names, and PAX (local and global) headers.
//!
//! It reads from a `BufRead` so file contents can be handed to the caller as borrowed slices
//! of the decompressor's buffers, never copied through an intermediate `Vec`. It makes no
//! decision about where anything goes on disk; that is [`super::apply`]'s job. Every header
//! extension it buffers (PAX records, GNU long names) is bounded by `header_bytes_max`.

use std::io::{self, BufRead};

pub const BLOCK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("read layer stream")]
    Io(#[from] io::Error),
    #[error(
        "tar header at byte {offset} has a bad checksum (stored {stored}, computed {computed})"
    )]
    BadChecksum {
        offset: u64,
        stored: u64,
        computed: u64,
    },
    #[error("tar header at byte {offset} has a malformed {field} field")]
    BadNumber { offset: u64, field: &'static str },
    #[error("tar stream ends in the middle of an entry (at byte {offset})")]
    Truncated { offset: u64 },
    #[error("{kind} header of {size} bytes at byte {offset} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        kind: &'static str,
        size: u64,
        offset: u64,
        max: u64,
    },
    #[error("tar entry type {typeflag:?} ({what}) at byte {offset} is not supported")]
    Unsupported {
        typeflag: char,
        what: &'static str,
        offset: u64,
    },
    #[error("malformed PAX record at byte {offset}")]
    BadPax { offset: u64 },
    #[error("tar entry at byte {offset} has an empty path")]
    EmptyPath { offset: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Hardlink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    /// A type this reader does not know; POSIX says to treat it as a file, but a root
    /// filesystem has no use for one, so the applier skips it with a warning.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Raw path bytes as stored (PAX and GNU long names applied, trailing `/` removed).
    pub path: Vec<u8>,
    /// Link target for symlinks and hardlinks.
    pub link: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (07777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from `SCHILY.xattr.*` PAX records, in stream order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Default, Clone)]
struct Overrides {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct TarReader<R> {
    r: R,
    /// Bytes consumed so far, for error messages that point into the stream.
    offset: u64,
    /// Unread data bytes of the current entry, then its padding.
    data_left: u64,
    pad_left: u64,
    global: Overrides,
    header_bytes_max: u64,
    ended: bool,
}

impl<R: BufRead> TarReader<R> {
    pub fn new(r: R, header_bytes_max: u64) -> Self {
        Self {
            r,
            offset: 0,
            data_left: 0,
            pad_left: 0,
            global: Overrides::default(),
            header_bytes_max,
            ended: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    /// Bytes of the stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, or `None` at the end-of-archive marker (or a clean end of stream).
    /// Any unread data of the previous entry is skipped first.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.ended {
            return Ok(None);
        }
        self.skip_data()?;
        let mut local = Overrides::default();
        loop {
            let mut block = [0u8; BLOCK];
            let header_offset = self.offset;
            if !self.read_block(&mut block)? {
                // No end marker at all: some writers omit it. Accept a clean stop at a boundary.
                self.ended = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(&block, header_offset)?;
            let typeflag = block[156];
            let size = parse_number(&block[124..136], header_offset, "size")?;
            match typeflag {
                b'x' | b'g' => {
                    let data = self.read_extension(size, "PAX", header_offset)?;
                    let target = if typeflag == b'x' {
                        &mut local
                    } else {
                        &mut self.global
                    };
                    parse_pax(&data, target, header_offset)?;
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.read_extension(size, "GNU long name", header_offset)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if typeflag == b'L' {
                        local.path = Some(data);
                    } else {
                        local.link = Some(data);
                    }
                    continue;
                }
                b'S' => {
                    return Err(TarError::Unsupported {
                        typeflag: 'S',
                        what: "GNU sparse file",
                        offset: header_offset,
                    })
                }
                b'M' => {
                    return Err(TarError::Unsupported {
                        typeflag: 'M',
                        what: "GNU multi-volume continuation",
                        offset: header_offset,
                    })
                }
                b'V' => {
                    // A volume label names the archive, not a file.
                    self.begin_data(size);
                    self.skip_data()?;
                    continue;
                }
                _ => {}
            }
            return self
                .finish_entry(&block, typeflag, size, header_offset, local)
                .map(Some);
        }
    }

    fn finish_entry(
        &mut self,
        block: &[u8; BLOCK],
        typeflag: u8,
        size: u64,
        offset: u64,
        local: Overrides,
    ) -> Result<Entry, TarError> {
        let kind = match typeflag {
            b'0' | 0 | b'7' => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' => EntryKind::Directory,
            b'6' => EntryKind::Fifo,
            other => EntryKind::Other(other),
        };
        let is_ustar = &block[257..263] == b"ustar\0";
        let mut path = match local.path.clone().or_else(|| self.global.path.clone()) {
            Some(p) => p,
            None => {
                let name = cstr(&block[0..100]);
                let prefix = if is_ustar {
                    cstr(&block[345..500])
                } else {
                    &[][..]
                };
                let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
                if !prefix.is_empty() {
                    p.extend_from_slice(prefix);
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                p
            }
        };
        // Old tars mark directories only by a trailing slash on a regular-file entry.
        let kind = if kind == EntryKind::File && typeflag == 0 && path.ends_with(b"/") {
            EntryKind::Directory
        } else {
            kind
        };
        while path.len() > 1 && path.ends_with(b"/") {
            path.pop();
        }
        if path.is_empty() {
            return Err(TarError::EmptyPath { offset });
        }
        let link = local
            .link
            .clone()
            .or_else(|| self.global.link.clone())
            .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
        let size = local.size.or(self.global.size).unwrap_or(size);
        let uid = match local.uid.or(self.global.uid) {
            Some(v) => v,
            None => parse_number(&block[108..116], offset, "uid")?,
        };
        let gid = match local.gid.or(self.global.gid) {
            Some(v) => v,
            None => parse_number(&block[116..124], offset, "gid")?,
        };
        let (mtime_s, mtime_ns) = match local.mtime.or(self.global.mtime) {
            Some(t) => t,
            None => (parse_number(&block[136..148], offset, "mtime")? as i64, 0),
        };
        let mode = (parse_number(&block[100..108], offset, "mode")? & 0o7777) as u32;
        let (dev_major, dev_minor) =
            if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                let maj = parse_number(&block[329..337], offset, "devmajor")?;
                let min = parse_number(&block[337..345], offset, "devminor")?;
                (
                    u32::try_from(maj).map_err(|_| TarError::BadNumber {
                        offset,
                        field: "devmajor",
                    })?,
                    u32::try_from(min).map_err(|_| TarError::BadNumber {
                        offset,
                        field: "devminor",
                    })?,
                )
            } else {
                (0, 0)
            };
        let mut xattrs = self.global.xattrs.clone();
        xattrs.extend(local.xattrs);
        // Only regular files (and unknown types) carry data; a hardlink or directory that
        // claims a size still has its data blocks in the stream, so skip them.
        self.begin_data(size);
        Ok(Entry {
            path,
            link,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime_s,
            mtime_ns,
            dev_major,
            dev_minor,
            xattrs,
        })
    }

    fn begin_data(&mut self, size: u64) {
        self.data_left = size;
        self.pad_left = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    /// Hands the current entry's remaining data to `sink` in borrowed slices.
    pub fn copy_data(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, TarError> {
        let mut copied = 0;
        while self.data_left > 0 {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(TarError::Truncated {
                    offset: self.offset,
                });
            }
            let n = buf
                .len()
                .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
            sink(&buf[..n])?;
            self.r.consume(n);
            self.offset += n as u64;
            self.data_left -= n as u64;
            copied += n as u64;
        }
        Ok(copied)
    }

    fn skip_data(&mut self) -> Result<(), TarError> {
        self.copy_data(|_| Ok(()))?;
        while self.pad_left > 0 {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(TarError::Truncated {
                    offset: self.offset,
                });
            }
            let n = buf.len().min(self.pad_left as usize);
            self.r.consume(n);
            self.offset += n as u64;
            self.pad_left -= n as u64;
        }
        Ok(())
    }

    fn read_extension(
        &mut self,
        size: u64,
        kind: &'static str,
        offset: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > self.header_bytes_max {
            return Err(TarError::HeaderTooLarge {
                kind,
                size,
                offset,
                max: self.header_bytes_max,
            });
        }
        self.begin_data(size);
        let mut data = Vec::with_capacity(size as usize);
        self.copy_data(|s| {
            data.extend_from_slice(s);
            Ok(())
        })?;
        self.skip_data()?;
        Ok(data)
    }

    /// Reads one block; `false` on a clean end of stream before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(TarError::Truncated {
                    offset: self.offset,
                });
            }
            let n = buf.len().min(BLOCK - filled);
            block[filled..filled + n].copy_from_slice(&buf[..n]);
            self.r.consume(n);
            self.offset += n as u64;
            filled += n;
        }
        Ok(true)
    }
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = parse_number(&block[148..156], offset, "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    // Some historic writers summed signed chars; both are accepted, as GNU tar does.
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(TarError::BadChecksum {
            offset,
            stored,
            computed: unsigned,
        })
    }
}

/// Parses an octal numeric field, or GNU's base-256 form when the high bit is set.
fn parse_number(field: &[u8], offset: u64, name: &'static str) -> Result<u64, TarError> {
    let bad = || TarError::BadNumber {
        offset,
        field: name,
    };
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err(bad()); // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256).ok_or_else(bad)? | u64::from(b);
        }
        return Ok(v);
    }
    let mut v: u64 = 0;
    let mut seen_digit = false;
    for &b in field {
        match b {
            b'0'..=b'7' => {
                v = v.checked_mul(8).ok_or_else(bad)? + u64::from(b - b'0');
                seen_digit = true;
            }
            b' ' if !seen_digit => {}
            b' ' | 0 => break,
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

fn parse_pax(data: &[u8], out: &mut Overrides, offset: u64) -> Result<(), TarError> {
    let bad = || TarError::BadPax { offset };
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let num = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        match key {
            b"path" => out.path = Some(value.to_vec()),
            b"linkpath" => out.link = Some(value.to_vec()),
            b"size" => out.size = Some(num(value)?),
            b"uid" => out.uid = Some(num(value)?),
            b"gid" => out.gid = Some(num(value)?),
            b"mtime" => out.mtime = Some(parse_pax_time(value).ok_or_else(bad)?),
            _ if key.starts_with(b"SCHILY.xattr.") => {
                out.xattrs
                    .push((key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported {
                    typeflag: 'x',
                    what: "PAX sparse file",
                    offset,
                });
            }
            // atime, ctime, uname, gname, comment, charset...: nothing a rootfs needs.
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if frac.is_empty() {
        return Some((secs, 0));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: u32 = digits.parse().ok()?;
    if secs < 0 && ns > 0 {
        // -1.5 means 1.5 s before the epoch: -2 s + 0.5 s.
        return Some((secs - 1, 1_000_000_000 - ns));
    }
    Some((secs, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typeflag: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0001750");
        h[116..123].copy_from_slice(b"0000012");
        let s = format!("{size:011o}");
        h[124..135].copy_from_slice(s.as_bytes());
        h[136..147].copy_from_slice(b"14000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h
    }

    fn set_checksum(h: &mut [u8; BLOCK]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    }

    fn entries(stream: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(stream, 1 << 20);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.copy_data(|s| {
                data.extend_from_slice(s);
                Ok(())
            })?;
            out.push((e, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_ustar_file_with_owner_and_data() {
        let mut s = header("etc/hostname", b'0', 5).to_vec();
        s.extend(padded(b"node\n"));
        s.extend([0u8; 1024]);
        let es = entries(&s).unwrap();
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].0.path, b"etc/hostname");
        assert_eq!((es[0].0.uid, es[0].0.gid, es[0].0.mode), (1000, 10, 0o644));
        assert_eq!(es[0].1, b"node\n");
    }

    #[test]
    fn pax_overrides_path_size_and_collects_xattrs() {
        let long = "a/".repeat(120) + "file";
        let rec = pax(&[
            ("path", &long),
            ("SCHILY.xattr.security.capability", "cap"),
            ("mtime", "1700000000.25"),
        ]);
        let mut s = header("PaxHeaders/x", b'x', rec.len() as u64).to_vec();
        s.extend(padded(&rec));
        s.extend(header("short", b'0', 3));
        s.extend(padded(b"abc"));
        let es = entries(&s).unwrap();
        assert_eq!(es[0].0.path, long.as_bytes());
        assert_eq!(
            es[0].0.xattrs,
            vec![(b"security.capability".to_vec(), b"cap".to_vec())]
        );
        assert_eq!(
            (es[0].0.mtime_s, es[0].0.mtime_ns),
            (1_700_000_000, 250_000_000)
        );
    }

    #[test]
    fn gnu_long_link() {
        let target = "t/".repeat(80);
        let mut s = header("././@LongLink", b'K', target.len() as u64 + 1).to_vec();
        s.extend(padded(format!("{target}\0").as_bytes()));
        s.extend(header("link", b'2', 0));
        let es = entries(&s).unwrap();
        assert_eq!(es[0].0.kind, EntryKind::Symlink);
        assert_eq!(es[0].0.link, target.as_bytes());
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut h = header("f", b'0', 0);
        h[0] = b'g';
        assert!(matches!(
            entries(&h),
            Err(TarError::BadChecksum { offset: 0, .. })
        ));
    }

    #[test]
    fn truncated_data_is_an_error() {
        let mut s = header("f", b'0', 1000).to_vec();
        s.extend([1u8; 100]);
        assert!(matches!(entries(&s), Err(TarError::Truncated { .. })));
    }

    #[test]
    fn oversized_pax_header_is_refused_before_buffering() {
        let mut h = header("PaxHeaders/x", b'x', 0);
        // Base-256 size field: 1 TiB.
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        set_checksum(&mut h);
        let s = h.to_vec();
        assert!(
            matches!(entries(&s), Err(TarError::HeaderTooLarge { size, .. }) if size == 1 << 40)
        );
    }

    #[test]
    fn sparse_files_are_refused() {
        let s = header("sparse", b'S', 0).to_vec();
        assert!(matches!(
            entries(&s),
            Err(TarError::Unsupported { typeflag: 'S', .. })
        ));
    }

    #[test]
    fn base256_numbers() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 0x02;
        f[10] = 0x01;
        assert_eq!(parse_number(&f, 0, "size").unwrap(), 0x0102);
        assert!(parse_number(&[0xff; 8], 0, "uid").is_err());
        assert_eq!(parse_number(b"  0755 \0", 0, "mode").unwrap(), 0o755);
        assert!(parse_number(b"0789", 0, "mode").is_err());
    }

    #[test]
    fn negative_fractional_pax_time() {
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
