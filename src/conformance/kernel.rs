//! Linux kernel images, judged by their headers: an x86 bzImage (the boot protocol's setup
//! header) or an arm64 `Image`, bare, compressed whole (`Image.gz`, as Debian ships it) or
//! in an EFI zboot wrapper (a PE file whose payload is the compressed `Image`).

use super::decompress::{one_stream, Format};
use super::elf::Arch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    pub arch: Arch,
    /// The release (`6.1.0-28-amd64`): the first word of the version string.
    pub release: Option<String>,
}

/// The oldest x86 boot protocol accepted: 2.06 (Linux 2.6.22), which every boot loader in
/// use speaks.
const BOOT_PROTOCOL_MIN: u16 = 0x0206;

fn le16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|x| u16::from_le_bytes([x[0], x[1]]))
}

/// A compressed kernel unpacks to at most this much.
const UNPACKED_MAX: u64 = 256 << 20;

/// Parses `b` as a Linux kernel image; `Err` says what is wrong.
pub fn parse(b: &[u8]) -> Result<KernelInfo, String> {
    if b.get(0x38..0x3c) == Some(b"ARM\x64") {
        return Ok(KernelInfo {
            arch: Arch::Arm64,
            release: linux_banner(b),
        });
    }
    if let Some(f) = Format::sniff(b) {
        return compressed_arm64(f, b, &format!("a {}-compressed file", f.name()));
    }
    if b.starts_with(b"MZ") && b.get(4..8) == Some(b"zimg") {
        return zboot(b);
    }
    if b.get(0x1fe..0x200) != Some(&[0x55, 0xaa]) {
        return Err(
            "no boot sector signature (0x55AA at 0x1FE): not an x86 bzImage, nor an arm64 Image"
                .into(),
        );
    }
    if b.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no `HdrS` setup header: a pre-2.00 boot protocol or not a kernel".into());
    }
    let version = le16(b, 0x206).ok_or("truncated setup header")?;
    if version < BOOT_PROTOCOL_MIN {
        return Err(format!(
            "boot protocol {}.{:02}, older than 2.06",
            version >> 8,
            version & 0xff
        ));
    }
    let loadflags = *b.get(0x211).ok_or("truncated setup header")?;
    if loadflags & 1 == 0 {
        return Err("a zImage loaded low (loadflags bit 0 clear), not a bzImage".into());
    }
    // xloadflags (protocol 2.12, Linux 3.8): bit 0 says the kernel has a 64-bit entry point.
    // Without it this is a 32-bit kernel, or one too old to say.
    if version < 0x020c || b.get(0x236).is_none_or(|x| x & 1 == 0) {
        return Err(
            "not a 64-bit x86 kernel (boot protocol xloadflags lacks XLF_KERNEL_64)".into(),
        );
    }
    let setup_sects = match b.get(0x1f1).copied().ok_or("truncated setup header")? {
        0 => 4,
        n => usize::from(n),
    };
    let payload = (setup_sects + 1) * 512;
    if b.len() <= payload {
        return Err(format!(
            "truncated: {} bytes, but the setup code alone takes {payload}",
            b.len()
        ));
    }
    // kernel_version: an offset from 0x200 to a NUL-terminated string in the setup code.
    let release = le16(b, 0x20e).filter(|&o| o != 0).and_then(|o| {
        let s = b.get(0x200 + usize::from(o)..payload)?;
        let end = s.iter().position(|&c| c == 0)?;
        let text = std::str::from_utf8(&s[..end]).ok()?;
        text.split_whitespace().next().map(str::to_string)
    });
    Ok(KernelInfo {
        arch: Arch::Amd64,
        release,
    })
}

/// A compressed whole kernel: only arm64 ships one (x86 compresses inside the bzImage).
fn compressed_arm64(f: Format, b: &[u8], what: &str) -> Result<KernelInfo, String> {
    let mut input = b;
    let mut inner = Vec::new();
    one_stream(f, &mut input, &mut inner, UNPACKED_MAX + 1)
        .map_err(|e| format!("{what} that does not decompress: {e}"))?;
    if inner.len() as u64 > UNPACKED_MAX {
        return Err(format!(
            "{what} that unpacks to more than {UNPACKED_MAX} bytes"
        ));
    }
    if inner.get(0x38..0x3c) != Some(b"ARM\x64") {
        return Err(format!("{what} that does not hold an arm64 Image"));
    }
    Ok(KernelInfo {
        arch: Arch::Arm64,
        release: linux_banner(&inner),
    })
}

/// An EFI zboot kernel: "zimg" at 4, then the payload's offset and size (little-endian
/// u32s at 8 and 12) and its compression's name (NUL-terminated, at 24).
fn zboot(b: &[u8]) -> Result<KernelInfo, String> {
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes(x.try_into().expect("four bytes")) as usize)
    };
    let (off, len) = u32_at(8)
        .zip(u32_at(12))
        .ok_or("an EFI zboot kernel with a truncated header")?;
    let kind = b
        .get(24..32)
        .and_then(|n| n.split(|&c| c == 0).next())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let payload = off
        .checked_add(len)
        .and_then(|end| b.get(off..end))
        .ok_or("an EFI zboot kernel whose payload runs past the end of the file")?;
    let f = match kind.as_str() {
        "gzip" => Format::Gzip,
        "zstd" | "zstd22" => Format::Zstd,
        "xzkern" | "xz" => Format::Xz,
        "lz4" => Format::Lz4Legacy,
        other => {
            return Err(format!(
                "an EFI zboot kernel compressed with {other:?}, which this check does not read \
                 (use gzip, zstd, xz or lz4)"
            ))
        }
    };
    compressed_arm64(f, payload, &format!("an EFI zboot kernel ({kind})"))
}

/// The release in an uncompressed kernel's `Linux version X ...` banner.
fn linux_banner(b: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let at = b.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let rest = &b[at..b.len().min(at + 128)];
    let end = rest
        .iter()
        .position(|c| c.is_ascii_whitespace() || *c == 0)?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::fixture::bzimage;

    #[test]
    fn a_bzimage_gives_its_release() {
        let k = parse(&bzimage("6.1.0-28-amd64")).unwrap();
        assert_eq!(k.arch, Arch::Amd64);
        assert_eq!(k.release.as_deref(), Some("6.1.0-28-amd64"));
    }

    #[test]
    fn broken_headers_say_what_is_wrong() {
        let good = bzimage("6.1.0");
        let mut no_sig = good.clone();
        no_sig[0x1fe] = 0;
        assert!(parse(&no_sig).unwrap_err().contains("boot sector"));
        let mut no_hdrs = good.clone();
        no_hdrs[0x202] = b'X';
        assert!(parse(&no_hdrs).unwrap_err().contains("HdrS"));
        let mut old = good.clone();
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        assert!(parse(&old).unwrap_err().contains("2.04"));
        let mut low = good.clone();
        low[0x211] = 0;
        assert!(parse(&low).unwrap_err().contains("zImage"));
        let mut i386 = good.clone();
        i386[0x236] = 0;
        assert!(parse(&i386).unwrap_err().contains("64-bit"));
        assert!(parse(&good[..2048]).unwrap_err().contains("truncated"));
        assert!(parse(b"\x7fELF\x02\x01").is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn an_arm64_image_gives_its_banner_release() {
        let mut b = vec![0u8; 4096];
        b[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let banner = b"Linux version 6.6.1-arm64 (x@y) #1";
        b[1000..1000 + banner.len()].copy_from_slice(banner);
        let k = parse(&b).unwrap();
        assert_eq!(k.arch, Arch::Arm64);
        assert_eq!(k.release.as_deref(), Some("6.6.1-arm64"));

        // Image.gz, as Debian's arm64 kernels are.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(parse(&gz).unwrap(), k);

        // EFI zboot: a PE header, then the zstd-compressed Image as its payload.
        let payload = zstd::encode_all(&b[..], 3).unwrap();
        let mut z = vec![0u8; 512];
        z[..2].copy_from_slice(b"MZ");
        z[4..8].copy_from_slice(b"zimg");
        z[8..12].copy_from_slice(&512u32.to_le_bytes());
        z[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        z[24..29].copy_from_slice(b"zstd\0");
        z.extend(&payload);
        assert_eq!(parse(&z).unwrap(), k);
        let mut lzo = z.clone();
        lzo[24..29].copy_from_slice(b"lzo\0\0");
        assert!(parse(&lzo).unwrap_err().contains("\"lzo\""));
        assert!(parse(&z[..z.len() - 1])
            .unwrap_err()
            .contains("past the end"));
        // A compressed file that is not a kernel at all.
        let mut junk = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut junk, b"hello").unwrap();
        assert!(parse(&junk.finish().unwrap())
            .unwrap_err()
            .contains("does not hold an arm64 Image"));
    }
}
