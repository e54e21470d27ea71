//! A small tar writer (ustar headers, PAX records when a value does not fit) used to build
//! layers: sample and test images, and the stream that `dir:` sources feed to the unpacker.
//! Output is deterministic: the same entries give the same bytes.

use std::io::{self, Read, Write};

use super::tar::BLOCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Hardlink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Hardlink => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::BlockDevice => b'4',
            Kind::Directory => b'5',
            Kind::Fifo => b'6',
        }
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime_s: i64,
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Header {
    pub fn new(path: impl Into<Vec<u8>>, kind: Kind, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_s: 1_700_000_000,
            link: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }
}

pub struct TarWriter<W> {
    w: W,
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    if s.len() > field.len() - 1 {
        return false;
    }
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        Self { w }
    }

    /// Writes one entry; `data` must yield exactly `h.size` bytes for files.
    pub fn append(&mut self, h: &Header, data: &mut dyn Read) -> io::Result<()> {
        let mut pax = Vec::new();
        let mut block = [0u8; BLOCK];
        if h.path.len() <= 100 {
            block[..h.path.len()].copy_from_slice(&h.path);
        } else {
            pax_record(&mut pax, b"path", &h.path);
            let cut = &h.path[..100];
            block[..100].copy_from_slice(cut);
        }
        if h.link.len() <= 100 {
            block[157..157 + h.link.len()].copy_from_slice(&h.link);
        } else {
            pax_record(&mut pax, b"linkpath", &h.link);
        }
        octal(&mut block[100..108], u64::from(h.mode & 0o7777));
        if !octal(&mut block[108..116], h.uid) {
            pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
        }
        if !octal(&mut block[116..124], h.gid) {
            pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
        }
        if !octal(&mut block[124..136], h.size) {
            pax_record(&mut pax, b"size", h.size.to_string().as_bytes());
        }
        octal(&mut block[136..148], h.mtime_s.max(0) as u64);
        block[156] = h.kind.flag();
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        octal(&mut block[329..337], u64::from(h.dev_major));
        octal(&mut block[337..345], u64::from(h.dev_minor));
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut ph = [0u8; BLOCK];
            ph[..14].copy_from_slice(b"././@PaxHeader");
            octal(&mut ph[100..108], 0o644);
            octal(&mut ph[108..116], 0);
            octal(&mut ph[116..124], 0);
            octal(&mut ph[124..136], pax.len() as u64);
            octal(&mut ph[136..148], 0);
            ph[156] = b'x';
            ph[257..263].copy_from_slice(b"ustar\0");
            ph[263..265].copy_from_slice(b"00");
            checksum(&mut ph);
            self.w.write_all(&ph)?;
            self.w.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        checksum(&mut block);
        self.w.write_all(&block)?;
        if h.kind == Kind::File && h.size > 0 {
            let copied = io::copy(&mut data.take(h.size), &mut self.w)?;
            if copied != h.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being archived",
                ));
            }
            self.pad(h.size)?;
        }
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64;
        self.w.write_all(&[0u8; BLOCK][..rem as usize])
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; BLOCK * 2])?;
        Ok(self.w)
    }
}

fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::tar::{EntryKind, TarReader};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn written_entries_read_back_identically(
            name in "[a-z]{1,8}(/[a-z]{1,30}){0,6}",
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            uid in 0u64..(1 << 32),
            mode in 0u32..0o7777,
            xattr in proptest::option::of("[a-z]{1,10}"),
        ) {
            let mut h = Header::new(name.as_bytes(), Kind::File, mode);
            h.size = data.len() as u64;
            h.uid = uid;
            if let Some(x) = &xattr {
                h.xattrs.push((format!("user.{x}").into_bytes(), x.as_bytes().to_vec()));
            }
            let mut w = TarWriter::new(Vec::new());
            w.append(&h, &mut &data[..]).unwrap();
            let bytes = w.finish().unwrap();
            let mut r = TarReader::new(&bytes[..], 1 << 20);
            let e = r.next_entry().unwrap().unwrap();
            prop_assert_eq!(&e.path, &h.path);
            prop_assert_eq!(e.kind, EntryKind::File);
            prop_assert_eq!((e.uid, e.mode, e.size), (uid, mode, data.len() as u64));
            prop_assert_eq!(e.xattrs, h.xattrs.clone());
            let mut back = Vec::new();
            r.copy_data(|s| { back.extend_from_slice(s); Ok(()) }).unwrap();
            prop_assert_eq!(back, data);
            prop_assert!(r.next_entry().unwrap().is_none());
        }
    }
}
