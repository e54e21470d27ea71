//! Our GPT against an independent implementation: sgdisk (gdisk) verifies and lists what we
//! write, and we read what sgdisk writes.

use std::process::Command;

use bootyard::disk::gpt::{self, Guid, PartitionSpec};
use bootyard::testkit::require_tool;

fn sgdisk(args: &[&str], disk: &std::path::Path) -> String {
    let o = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sgdisk {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn sgdisk_accepts_our_tables_and_we_read_its() {
    if !require_tool(
        "sgdisk_accepts_our_tables_and_we_read_its",
        "sgdisk",
        "gdisk",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    f.set_len(2 << 30).unwrap();
    let p = |name: &str, t: Guid, mib: Option<u64>| PartitionSpec {
        name: name.into(),
        type_guid: t,
        size_bytes: mib.map(|m| m << 20),
    };
    let specs = vec![
        p("bios", Guid::BIOS_BOOT, Some(1)),
        p("efi", Guid::EFI_SYSTEM, Some(32)),
        p("oem", Guid::LINUX_DATA, Some(64)),
        p("state", Guid::LINUX_DATA, Some(1024)),
        p("persistent", Guid::LINUX_DATA, None),
    ];
    let g = gpt::plan(2 << 30, &specs, Guid::derived(b"sgdisk-test", 0)).unwrap();
    gpt::write(&f, &g).unwrap();

    let verify = sgdisk(&["-v"], &disk);
    assert!(verify.contains("No problems found"), "{verify}");
    let listing = sgdisk(&["-p"], &disk);
    for (i, s) in specs.iter().enumerate() {
        let row = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&(i + 1).to_string()))
            .unwrap_or_else(|| panic!("no row {}: {listing}", i + 1));
        assert!(row.ends_with(&s.name), "{row}");
        assert!(
            row.contains(&g.partitions[i].first_lba.to_string()),
            "{row}"
        );
    }
    let info = sgdisk(&["-i", "1"], &disk);
    assert!(
        info.contains("21686148-6449-6E6F-744E-656564454649"),
        "{info}"
    );
    assert!(listing.contains(&g.disk_guid.to_string()), "{listing}");

    // The other way round.
    let other = tmp.path().join("theirs.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    sgdisk(
        &[
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef02",
            "-c",
            "1:BIOS",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            "-c",
            "2:COS_PERSISTENT",
        ],
        &other,
    );
    let theirs = gpt::read(&std::fs::File::open(&other).unwrap()).unwrap();
    assert_eq!(theirs.partitions.len(), 2);
    assert_eq!(theirs.partitions[0].type_guid, Guid::BIOS_BOOT);
    assert_eq!(theirs.partitions[1].name, "COS_PERSISTENT");
    assert_eq!(theirs.partitions[0].first_lba, 2048);
}
