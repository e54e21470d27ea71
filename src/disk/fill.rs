//! Copying filesystem images into partitions of a disk image, keeping the disk sparse.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::gpt::Partition;

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("{image} is {image_bytes} bytes; partition {partition} holds {partition_bytes}")]
    TooLarge {
        image: PathBuf,
        image_bytes: u64,
        partition: String,
        partition_bytes: u64,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const CHUNK_BYTES: usize = 1 << 20;

/// Copies `image` to the start of `part`; all-zero chunks are skipped (the disk file reads
/// zeros there already when it was freshly created).
pub fn copy_into_partition(disk: &File, part: &Partition, image: &Path) -> Result<u64, FillError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| FillError::Io { op, path, source }
    };
    let mut src = File::open(image).map_err(io("open", image))?;
    let image_bytes = src.metadata().map_err(io("inspect", image))?.len();
    if image_bytes > part.size_bytes() {
        return Err(FillError::TooLarge {
            image: image.to_path_buf(),
            image_bytes,
            partition: part.name.clone(),
            partition_bytes: part.size_bytes(),
        });
    }
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut off = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..]).map_err(io("read", image))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            disk.write_all_at(&buf[..filled], part.offset_bytes() + off)
                .map_err(io("write partition from", image))?;
        }
        off += filled as u64;
    }
    Ok(off)
}
