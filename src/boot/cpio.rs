//! A newc ("070701") cpio writer, the format the Linux kernel unpacks as an initramfs.

use std::io::{self, Write};

/// `n` rounded up to newc's 4-byte alignment (of names and of file data).
pub fn aligned(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

pub struct CpioWriter<W> {
    w: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = aligned(self.written) - self.written;
        self.put(&[0u8; 3][..rem as usize])
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry_dev(name, mode, data, (0, 0))
    }

    fn entry_dev(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        assert!(
            !name.is_empty() && !name.starts_with('/'),
            "cpio names are relative: {name:?}"
        );
        let ino = self.ino;
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0, // uid
            0, // gid
            0, // mtime: fixed, so the same tree gives the same bytes
            data.len(),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, 0o040000 | (perm & 0o7777), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | (perm & 0o7777), data)
    }

    /// A character device node, such as `dev/console` (5, 1), which the kernel opens for
    /// init's standard streams before any devtmpfs is mounted.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry_dev(name, 0o020000 | (perm & 0o7777), &[], (major, minor))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, 0o120777, target.as_bytes())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_what_cpio_reads() {
        let mut c = CpioWriter::new(Vec::new());
        c.dir("bin", 0o755).unwrap();
        c.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        c.symlink("bin/sh", "busybox").unwrap();
        let out = c.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // Every header is 110 bytes and starts on a 4-byte boundary.
        let second = text
            .find("070701")
            .and_then(|first| text[first + 6..].find("070701").map(|n| n + first + 6))
            .unwrap();
        assert_eq!(second % 4, 0);
    }
}
