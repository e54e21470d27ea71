//! The compressed formats a boot loader hands the kernel: initramfs segments and compressed
//! arm64 kernels come as gzip, zstd, xz or lz4 (the legacy frame format `lz4 -l` writes,
//! which is the one the kernel reads). Each decoder reads exactly one stream from the front
//! of its input and leaves the input after it, so concatenated streams read one by one.

use std::io::{self, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
    Xz,
    Lz4Legacy,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const LZ4_LEGACY: u32 = 0x184c_2102;
/// Uncompressed bytes per block of the legacy lz4 format.
const LZ4_BLOCK: usize = 8 << 20;

impl Format {
    /// The format whose magic `b` starts with.
    pub fn sniff(b: &[u8]) -> Option<Self> {
        if b.starts_with(GZIP) {
            Some(Self::Gzip)
        } else if b.starts_with(ZSTD) {
            Some(Self::Zstd)
        } else if b.starts_with(XZ) {
            Some(Self::Xz)
        } else if b.starts_with(&LZ4_LEGACY.to_le_bytes()) {
            Some(Self::Lz4Legacy)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Lz4Legacy => "lz4",
        }
    }
}

/// Decompresses the stream at the front of `input` onto `out`, appending at most `limit`
/// bytes (the caller sees the cap reached as `out` having grown by `limit`); `input` is left
/// just after the stream.
pub fn one_stream(f: Format, input: &mut &[u8], out: &mut Vec<u8>, limit: u64) -> io::Result<()> {
    match f {
        Format::Gzip => flate2::bufread::GzDecoder::new(input)
            .take(limit)
            .read_to_end(out)
            .map(drop),
        Format::Zstd => zstd::stream::read::Decoder::with_buffer(input)
            .map(|d| d.single_frame())
            .and_then(|d| d.take(limit).read_to_end(out))
            .map(drop),
        Format::Xz => liblzma::bufread::XzDecoder::new(input)
            .take(limit)
            .read_to_end(out)
            .map(drop),
        Format::Lz4Legacy => lz4_legacy(input, out, limit),
    }
}

/// The legacy lz4 frame: the magic, then blocks of a little-endian compressed size and that
/// many bytes, each up to 8 MiB once decompressed. The stream ends at the end of the input,
/// at zero padding, or at anything that cannot be a block size; a repeated magic (the kernel
/// accepts one between blocks) is skipped.
fn lz4_legacy(input: &mut &[u8], out: &mut Vec<u8>, limit: u64) -> io::Result<()> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    *input = &input[4..];
    let start = out.len();
    // The most a block of LZ4_BLOCK bytes can take compressed (LZ4_compressBound).
    let bound = LZ4_BLOCK + LZ4_BLOCK / 255 + 16;
    let mut block = vec![0u8; LZ4_BLOCK];
    while input.len() >= 4 {
        let size = u32::from_le_bytes(input[..4].try_into().expect("four bytes"));
        if size == LZ4_LEGACY {
            *input = &input[4..];
            continue;
        }
        if size == 0 || size as usize > bound {
            break;
        }
        let data = input
            .get(4..4 + size as usize)
            .ok_or_else(|| bad(format!("a block of {size} bytes runs past the end")))?;
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| bad(format!("corrupt block: {e}")))?;
        let room = (start as u64 + limit).saturating_sub(out.len() as u64);
        out.extend_from_slice(&block[..n.min(room as usize)]);
        *input = &input[4 + size as usize..];
        if (out.len() - start) as u64 >= limit {
            break;
        }
    }
    if out.len() == start {
        return Err(bad("no block after the magic".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    /// `b` in the legacy lz4 format, in blocks of `block` bytes.
    pub fn lz4_legacy_of(b: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY.to_le_bytes().to_vec();
        for chunk in b.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            out.extend((c.len() as u32).to_le_bytes());
            out.extend(c);
        }
        out
    }

    fn xz(b: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_format_reads_one_stream_and_leaves_what_follows() {
        let plain = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        for (f, packed) in [
            (Format::Gzip, gz.finish().unwrap()),
            (Format::Zstd, zstd::encode_all(&plain[..], 1).unwrap()),
            (Format::Xz, xz(&plain)),
            (Format::Lz4Legacy, lz4_legacy_of(&plain, 300_000)),
        ] {
            assert_eq!(Format::sniff(&packed), Some(f));
            let mut both = packed.clone();
            both.extend([0, 0, 0, 0, 7, 7]);
            let mut input = &both[..];
            let mut out = Vec::new();
            one_stream(f, &mut input, &mut out, u64::MAX).unwrap();
            assert!(out == plain, "{f:?}");
            assert_eq!(input, &[0, 0, 0, 0, 7, 7], "{f:?}");
            // Capped: exactly the limit comes out.
            let mut input = &packed[..];
            let mut out = Vec::new();
            one_stream(f, &mut input, &mut out, 1000).unwrap();
            assert_eq!(out.len(), 1000, "{f:?}");
        }
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let plain = sample();
        for (f, mut packed) in [
            (Format::Xz, xz(&plain)),
            (Format::Lz4Legacy, lz4_legacy_of(&plain, 300_000)),
        ] {
            let n = packed.len();
            packed.truncate(n / 2);
            let mut input = &packed[..];
            assert!(
                one_stream(f, &mut input, &mut Vec::new(), u64::MAX).is_err(),
                "{f:?}"
            );
        }
    }
}
