//! GUID Partition Table: protective MBR, primary and backup headers and entry arrays, CRC32s.
//! Every write is read back and compared before it counts as done.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const SECTOR: u64 = 512;
const ENTRIES: u32 = 128;
const ENTRY_BYTES: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_BYTES as u64) / SECTOR;
const HEADER_BYTES: u32 = 92;
/// Partitions start on 1 MiB boundaries, as every modern tool aligns them.
pub const ALIGN_SECTORS: u64 = 2048;

/// A GUID in its textual form; stored on disk with the first three fields little-endian.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);
    /// BIOS boot partition: where GRUB's core.img lives on a GPT disk booted by BIOS.
    pub const BIOS_BOOT: Guid = Guid::from_str_const("21686148-6449-6E6F-744E-656564454649");
    pub const EFI_SYSTEM: Guid = Guid::from_str_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    pub const LINUX_DATA: Guid = Guid::from_str_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

    const fn from_str_const(s: &str) -> Guid {
        let b = s.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if b[i] == b'-' {
                i += 1;
                continue;
            }
            let hi = hexval(b[i]);
            let lo = hexval(b[i + 1]);
            out[n] = hi << 4 | lo;
            n += 1;
            i += 2;
        }
        Guid(out)
    }

    /// A version-4-shaped GUID derived from `seed` and `n`, so the same disk built twice is
    /// byte-identical.
    pub fn derived(seed: &[u8], n: u32) -> Guid {
        let mut h = crate::image::digest::Hasher::new();
        h.update(seed);
        h.update(&n.to_le_bytes());
        let d = h.finish().hex();
        let mut g = [0u8; 16];
        hex::decode_to_slice(&d[..32], &mut g).expect("hex digest");
        g[6] = (g[6] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Guid(g)
    }

    fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        let mut d = g;
        d[0..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
        d[4..6].copy_from_slice(&[g[5], g[4]]);
        d[6..8].copy_from_slice(&[g[7], g[6]]);
        d
    }

    fn from_disk(d: &[u8]) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        g[0..4].copy_from_slice(&[d[3], d[2], d[1], d[0]]);
        g[4..6].copy_from_slice(&[d[5], d[4]]);
        g[6..8].copy_from_slice(&[d[7], d[6]]);
        Guid(g)
    }
}

const fn hexval(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit in GUID constant"),
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A partition to lay out: `size_bytes: None` takes the rest of the disk (last one only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub type_guid: Guid,
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
    pub attributes: u64,
}

impl Partition {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub disk_sectors: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("disk of {disk_bytes} bytes is too small: the partitions need {needed_bytes}")]
    TooSmall { disk_bytes: u64, needed_bytes: u64 },
    #[error("partition {0:?}: only the last partition may take the rest of the disk")]
    RestNotLast(String),
    #[error("partition name {0:?} is longer than 36 UTF-16 units")]
    NameTooLong(String),
    #[error("{0} partitions, GPT holds {ENTRIES}")]
    TooMany(usize),
    #[error("disk size {0} is not a whole number of 512-byte sectors")]
    Unaligned(u64),
    #[error("no valid GPT: {0}")]
    Invalid(String),
    #[error(
        "the disk is {disk_bytes} bytes, but its partition table describes {table_bytes}: it \
         was cut short (truncated, or copied incompletely), and what lay past its end is gone"
    )]
    Truncated { disk_bytes: u64, table_bytes: u64 },
    #[error(
        "partition {name:?} (sectors {first_lba}..={last_lba}) lies outside the usable \
         sectors {first_usable}..={last_usable} of the disk, or overlaps another"
    )]
    OutOfBounds {
        name: String,
        first_lba: u64,
        last_lba: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("GPT read back differs from what was written")]
    ReadBack,
    #[error("disk I/O")]
    Io(#[from] std::io::Error),
}

/// Places partitions one after another on 1 MiB boundaries.
pub fn plan(disk_bytes: u64, specs: &[PartitionSpec], disk_guid: Guid) -> Result<Gpt, GptError> {
    if !disk_bytes.is_multiple_of(SECTOR) {
        return Err(GptError::Unaligned(disk_bytes));
    }
    if specs.len() > ENTRIES as usize {
        return Err(GptError::TooMany(specs.len()));
    }
    let disk_sectors = disk_bytes / SECTOR;
    let last_usable = disk_sectors.saturating_sub(1 + ENTRY_SECTORS + 1);
    let mut next = ALIGN_SECTORS;
    let mut parts = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        if s.name.encode_utf16().count() > 36 {
            return Err(GptError::NameTooLong(s.name.clone()));
        }
        let sectors = match s.size_bytes {
            Some(b) => b.div_ceil(SECTOR),
            None if i + 1 == specs.len() => {
                let end = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS;
                end.saturating_sub(next)
            }
            None => return Err(GptError::RestNotLast(s.name.clone())),
        };
        let needed = (next + sectors.max(1) + 1 + ENTRY_SECTORS + 1) * SECTOR;
        if sectors == 0 || next + sectors - 1 > last_usable {
            return Err(GptError::TooSmall {
                disk_bytes,
                needed_bytes: needed,
            });
        }
        parts.push(Partition {
            name: s.name.clone(),
            type_guid: s.type_guid,
            unique_guid: Guid::derived(&disk_guid.0, i as u32),
            first_lba: next,
            last_lba: next + sectors - 1,
            attributes: 0,
        });
        next = (next + sectors).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    }
    Ok(Gpt {
        disk_guid,
        disk_sectors,
        partitions: parts,
    })
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

fn entries_bytes(g: &Gpt) -> Vec<u8> {
    let mut out = vec![0u8; (ENTRIES * ENTRY_BYTES) as usize];
    for (i, p) in g.partitions.iter().enumerate() {
        let e = &mut out[i * ENTRY_BYTES as usize..(i + 1) * ENTRY_BYTES as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.unique_guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (j, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    out
}

fn header_bytes(
    g: &Gpt,
    my_lba: u64,
    alt_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_BYTES.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&(g.disk_sectors - 2 - ENTRY_SECTORS).to_le_bytes());
    h[56..72].copy_from_slice(&g.disk_guid.to_disk());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_BYTES.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..HEADER_BYTES as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(disk_sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&(u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX)).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Writes the protective MBR (keeping any boot code in its first 440 bytes), both headers
/// and both entry arrays, then reads the table back and compares.
pub fn write(file: &File, g: &Gpt) -> Result<(), GptError> {
    let last = g.disk_sectors - 1;
    let entries = entries_bytes(g);
    let ecrc = crc32(&entries);
    let mut mbr = protective_mbr(g.disk_sectors);
    let mut old = [0u8; 440];
    file.read_exact_at(&mut old, 0)?;
    mbr[..440].copy_from_slice(&old);
    file.write_all_at(&mbr, 0)?;
    file.write_all_at(&header_bytes(g, 1, last, 2, ecrc), SECTOR)?;
    file.write_all_at(&entries, 2 * SECTOR)?;
    file.write_all_at(&entries, (last - ENTRY_SECTORS) * SECTOR)?;
    file.write_all_at(
        &header_bytes(g, last, 1, last - ENTRY_SECTORS, ecrc),
        last * SECTOR,
    )?;
    file.sync_all()?;
    if read(file)? != *g {
        return Err(GptError::ReadBack);
    }
    Ok(())
}

/// The fields of a GPT header this reader uses.
struct Header {
    disk_guid: Guid,
    alt_lba: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries_crc: u32,
}

fn parse_header(h: &[u8], expect_lba: u64) -> Result<Header, String> {
    if &h[0..8] != b"EFI PART" {
        return Err("no GPT signature".into());
    }
    let size = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if size != HEADER_BYTES {
        return Err(format!("header size {size}"));
    }
    let stored = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    let mut copy = h[..HEADER_BYTES as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != stored {
        return Err("header CRC mismatch".into());
    }
    let my = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
    if my != expect_lba {
        return Err(format!(
            "header says it is at LBA {my}, found at {expect_lba}"
        ));
    }
    let n = u32::from_le_bytes(h[80..84].try_into().expect("4 bytes"));
    let esz = u32::from_le_bytes(h[84..88].try_into().expect("4 bytes"));
    if n != ENTRIES || esz != ENTRY_BYTES {
        return Err(format!(
            "{n} entries of {esz} bytes (only 128 x 128 supported)"
        ));
    }
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let first_usable = u64_at(40);
    let last_usable = u64_at(48);
    if first_usable > last_usable {
        return Err(format!(
            "usable sectors {first_usable}..={last_usable} are empty"
        ));
    }
    Ok(Header {
        disk_guid: Guid::from_disk(&h[56..72]),
        alt_lba: u64_at(32),
        first_usable,
        last_usable,
        entries_lba: u64_at(72),
        entries_crc: u32::from_le_bytes(h[88..92].try_into().expect("4 bytes")),
    })
}

/// A table as read, with what is wrong with the copy that was not used (or with both
/// copies' agreement): the disk works, but one more fault would lose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub gpt: Gpt,
    /// Empty when both copies are intact, agree, and sit where the disk's size says.
    pub damaged: Vec<String>,
}

/// Size of a disk image file or a block device (whose metadata says 0 bytes).
pub fn size_of(file: &File) -> std::io::Result<u64> {
    let size = rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))?;
    rustix::fs::seek(file, rustix::fs::SeekFrom::Start(0))?;
    Ok(size)
}

/// Reads the primary table, or the backup when the primary is damaged. A table that
/// describes more disk than there is ([`GptError::Truncated`]) or a partition outside the
/// usable sectors is an error, whichever copy says so.
pub fn read(file: &File) -> Result<Gpt, GptError> {
    Ok(read_checked(file)?.gpt)
}

/// Reads both copies of the table: the one used (the primary when it is intact), and what
/// is wrong with the other.
pub fn read_checked(file: &File) -> Result<Checked, GptError> {
    let disk_bytes = size_of(file)?;
    let disk_sectors = disk_bytes / SECTOR;
    if disk_sectors < 2 * (2 + ENTRY_SECTORS) {
        return Err(GptError::Invalid(format!(
            "disk of {disk_bytes} bytes cannot hold a GPT"
        )));
    }
    let mut problems = Vec::new();
    let mut copies = Vec::new();
    for (lba, which) in [(1, "primary"), (disk_sectors - 1, "backup")] {
        match read_copy(file, lba, disk_sectors) {
            Ok(c) => copies.push((which, c)),
            Err(e) => problems.push(format!("{which}: {e}")),
        }
    }
    let Some((which, (header, gpt))) = copies.first().cloned() else {
        // The primary may still say how big the disk was: a truncated disk has lost its
        // backup, and the reason is the truncation, not a missing copy.
        let mut h = [0u8; SECTOR as usize];
        file.read_exact_at(&mut h, SECTOR)?;
        if let Ok(header) = parse_header(&h, 1) {
            if header.alt_lba >= disk_sectors {
                return Err(GptError::Truncated {
                    disk_bytes,
                    table_bytes: (header.alt_lba + 1) * SECTOR,
                });
            }
        }
        return Err(GptError::Invalid(problems.join("; ")));
    };
    if which == "primary" && header.alt_lba != disk_sectors - 1 {
        if header.alt_lba >= disk_sectors {
            return Err(GptError::Truncated {
                disk_bytes,
                table_bytes: (header.alt_lba + 1) * SECTOR,
            });
        }
        problems.push(format!(
            "the backup table is at sector {}, not at the disk's last sector {} (the disk grew)",
            header.alt_lba,
            disk_sectors - 1
        ));
    }
    if let [(_, (_, a)), (_, (_, b))] = copies.as_slice() {
        if a.partitions != b.partitions || a.disk_guid != b.disk_guid {
            problems.push("the primary and backup tables differ (the backup is ignored)".into());
        }
    }
    Ok(Checked {
        gpt,
        damaged: problems,
    })
}

/// One copy of the table: its header at `lba` and the entries it points to, checked
/// against the disk's size.
fn read_copy(file: &File, lba: u64, disk_sectors: u64) -> Result<(HeaderCopy, Gpt), String> {
    let mut h = [0u8; SECTOR as usize];
    file.read_exact_at(&mut h, lba * SECTOR)
        .map_err(|e| e.to_string())?;
    let header = parse_header(&h, lba)?;
    let entries_end = header
        .entries_lba
        .checked_add(ENTRY_SECTORS)
        .filter(|&end| end <= disk_sectors)
        .ok_or_else(|| {
            format!(
                "its partition entries at sector {} lie past the disk's end",
                header.entries_lba
            )
        })?;
    debug_assert!(entries_end <= disk_sectors);
    let mut entries = vec![0u8; (ENTRIES * ENTRY_BYTES) as usize];
    file.read_exact_at(&mut entries, header.entries_lba * SECTOR)
        .map_err(|e| e.to_string())?;
    if crc32(&entries) != header.entries_crc {
        return Err("partition entries CRC mismatch".into());
    }
    if header.last_usable >= disk_sectors {
        return Err(GptError::Truncated {
            disk_bytes: disk_sectors * SECTOR,
            table_bytes: (header.last_usable.max(header.alt_lba) + 1) * SECTOR,
        }
        .to_string());
    }
    let mut partitions: Vec<Partition> = Vec::new();
    for e in entries.chunks(ENTRY_BYTES as usize) {
        let type_guid = Guid::from_disk(&e[0..16]);
        if type_guid == Guid::ZERO {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let p = Partition {
            name: String::from_utf16_lossy(&units),
            type_guid,
            unique_guid: Guid::from_disk(&e[16..32]),
            first_lba: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            last_lba: u64::from_le_bytes(e[40..48].try_into().expect("8 bytes")),
            attributes: u64::from_le_bytes(e[48..56].try_into().expect("8 bytes")),
        };
        let inside = header.first_usable <= p.first_lba
            && p.first_lba <= p.last_lba
            && p.last_lba <= header.last_usable;
        let overlaps = partitions
            .iter()
            .any(|q| p.first_lba <= q.last_lba && q.first_lba <= p.last_lba);
        if !inside || overlaps {
            return Err(GptError::OutOfBounds {
                name: p.name,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                first_usable: header.first_usable,
                last_usable: header.last_usable,
            }
            .to_string());
        }
        partitions.push(p);
    }
    let gpt = Gpt {
        disk_guid: header.disk_guid,
        disk_sectors,
        partitions,
    };
    Ok((
        HeaderCopy {
            alt_lba: header.alt_lba,
        },
        gpt,
    ))
}

/// What the caller of [`read_copy`] needs of the header besides the table.
#[derive(Debug, Clone, Copy)]
struct HeaderCopy {
    alt_lba: u64,
}

/// Rewrites both copies of the table (and the protective MBR) from `checked`'s table: the
/// repair for a damaged copy. Only for a table [`read_checked`] accepted, which lies inside
/// the disk.
pub fn repair(file: &File, checked: &Checked) -> Result<(), GptError> {
    write(file, &checked.gpt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<PartitionSpec> {
        let p = |name: &str, t: Guid, mib: Option<u64>| PartitionSpec {
            name: name.into(),
            type_guid: t,
            size_bytes: mib.map(|m| m << 20),
        };
        vec![
            p("bios", Guid::BIOS_BOOT, Some(1)),
            p("oem", Guid::LINUX_DATA, Some(64)),
            p("state", Guid::LINUX_DATA, Some(300)),
            p("persistent", Guid::LINUX_DATA, None),
        ]
    }

    #[test]
    fn guid_text_and_disk_forms() {
        assert_eq!(
            Guid::BIOS_BOOT.to_string(),
            "21686148-6449-6E6F-744E-656564454649"
        );
        assert_eq!(
            &Guid::BIOS_BOOT.to_disk()[..8],
            b"Hah!IdontNeedEFI".get(..8).unwrap()
        );
        assert_eq!(
            Guid::from_disk(&Guid::EFI_SYSTEM.to_disk()),
            Guid::EFI_SYSTEM
        );
        let d = Guid::derived(b"disk", 1);
        assert_eq!(d.0[6] >> 4, 4);
        assert_eq!(d, Guid::derived(b"disk", 1));
    }

    #[test]
    fn plan_aligns_and_fills() {
        let g = plan(1 << 30, &specs(), Guid::derived(b"t", 0)).unwrap();
        assert!(g
            .partitions
            .iter()
            .all(|p| p.first_lba % ALIGN_SECTORS == 0));
        assert_eq!(g.partitions[0].size_bytes(), 1 << 20);
        let last = g.partitions.last().unwrap();
        assert!(last.last_lba <= g.disk_sectors - 34);
        assert!(matches!(
            plan(100 << 20, &specs(), Guid::ZERO),
            Err(GptError::TooSmall { .. })
        ));
    }

    #[test]
    fn write_read_back_and_survive_a_damaged_primary() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(1 << 30).unwrap();
        let g = plan(1 << 30, &specs(), Guid::derived(b"t", 0)).unwrap();
        write(&tmp, &g).unwrap();
        assert_eq!(
            read_checked(&tmp).unwrap(),
            Checked {
                gpt: g.clone(),
                damaged: Vec::new()
            }
        );
        tmp.write_all_at(b"garbage!", SECTOR).unwrap();
        let c = read_checked(&tmp).unwrap();
        assert_eq!(c.gpt, g, "the backup header serves");
        assert_eq!(c.damaged, vec!["primary: no GPT signature".to_string()]);
        repair(&tmp, &c).unwrap();
        assert!(read_checked(&tmp).unwrap().damaged.is_empty());
        tmp.write_all_at(b"garbage!", (g.disk_sectors - 1) * SECTOR)
            .unwrap();
        tmp.write_all_at(b"garbage!", SECTOR).unwrap();
        assert!(matches!(read(&tmp), Err(GptError::Invalid(_))));
    }

    /// Issue 19: a disk cut short (`truncate -s 500M` of a bigger one) read as healthy,
    /// with partitions past its end.
    #[test]
    fn r19_a_truncated_disk_is_not_read_as_a_table() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(1 << 30).unwrap();
        let g = plan(1 << 30, &specs(), Guid::derived(b"t", 0)).unwrap();
        write(&tmp, &g).unwrap();
        tmp.set_len(500 << 20).unwrap();
        let e = read(&tmp).unwrap_err();
        assert!(
            matches!(e, GptError::Truncated { disk_bytes, table_bytes }
                if disk_bytes == 500 << 20 && table_bytes == 1 << 30),
            "{e}"
        );
    }

    /// Issue 19: a corrupt primary entry array (`dd ... seek=2 count=4`) was used without
    /// a word.
    #[test]
    fn r19_a_corrupt_primary_entry_array_is_reported_and_repaired() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(1 << 30).unwrap();
        let g = plan(1 << 30, &specs(), Guid::derived(b"t", 0)).unwrap();
        write(&tmp, &g).unwrap();
        tmp.write_all_at(&[0x5a; 4 * SECTOR as usize], 2 * SECTOR)
            .unwrap();
        let c = read_checked(&tmp).unwrap();
        assert_eq!(c.gpt, g);
        assert_eq!(
            c.damaged,
            vec!["primary: partition entries CRC mismatch".to_string()]
        );
        repair(&tmp, &c).unwrap();
        assert!(read_checked(&tmp).unwrap().damaged.is_empty());
    }

    #[test]
    fn a_partition_past_the_usable_sectors_is_refused() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(1 << 30).unwrap();
        let mut g = plan(1 << 30, &specs(), Guid::derived(b"t", 0)).unwrap();
        g.partitions.last_mut().unwrap().last_lba = g.disk_sectors - 1;
        // write() reads back, which refuses; the table is on the disk all the same.
        assert!(matches!(
            write(&tmp, &g),
            Err(GptError::Invalid(m)) if m.contains("outside the usable sectors")
        ));
    }
}
