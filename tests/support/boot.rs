//! Shared by the QEMU boot tests: test OS images from Debian's kernel and busybox, the
//! bootyard binary with JSON output, and one boot of a disk reporting what came up.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootyard::boot::assessment::Slot;
use bootyard::debpkg;
use bootyard::testimage::{boot_rootfs, busybox_initramfs, reporting_init};
use bootyard::testkit::require_tool;
use bootyard_scenarios::qemu::{ConsoleLine, Drive, Machine, MachineSpec};

/// The tools every boot test needs; false (after printing why) when one is missing here.
pub fn boot_tools(test: &str) -> bool {
    [
        ("grub-mkimage", "grub-pc-bin"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("sgdisk", "gdisk"),
        ("apt-get", "apt"),
    ]
    .iter()
    .all(|(tool, pkg)| require_tool(test, tool, pkg))
}

pub fn asset_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/deb")
}

/// Builds test OS images whose init reports `version=V` and the kernel command line.
pub struct Images {
    dir: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
}

impl Images {
    pub fn new(dir: &Path) -> Self {
        let kernel = debpkg::cloud_kernel(&asset_cache()).unwrap().vmlinuz;
        let busybox = debpkg::busybox(&asset_cache()).unwrap();
        Self {
            dir: dir.to_path_buf(),
            kernel,
            busybox,
        }
    }

    /// A `dir:` root filesystem for version `v`.
    pub fn root(&self, v: &str) -> PathBuf {
        let root = self.dir.join(format!("os-{v}"));
        if !root.exists() {
            boot_rootfs(
                &root,
                &self.kernel,
                &busybox_initramfs(&self.busybox, &reporting_init(v)).unwrap(),
                v,
            )
            .unwrap();
        }
        root
    }

    pub fn source(&self, v: &str) -> String {
        format!("dir:{}", self.root(v).display())
    }
}

/// Runs the bootyard binary with `--json`; panics with its stderr on failure.
pub fn bootyard_json(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_bootyard"))
        .args(args)
        .arg("--json")
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bootyard {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// What one boot brought up.
pub struct Booted {
    pub slot: Slot,
    pub version: String,
    /// GRUB's "booting slot" line and init's report.
    pub grub: ConsoleLine,
    pub init: ConsoleLine,
}

/// Boots `disk` once, to init's report and power-off.
pub fn boot(dir: &Path, disk: &Path, name: &str) -> Booted {
    let mut spec = MachineSpec::new(name, dir);
    spec.memory_mib = 512;
    spec.drives.push(Drive {
        path: disk.to_path_buf(),
        format: "raw".into(),
        interface: "virtio".into(),
    });
    let mut m = Machine::launch(spec).unwrap();
    let grub = m
        .wait_for("bootyard: booting slot", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let init = m
        .wait_for("BOOTYARD-INIT", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{name}: GRUB said {:?}, then {e}", grub.text));
    assert!(
        m.wait_exit(Instant::now() + Duration::from_secs(30))
            .unwrap()
            .success(),
        "{name}: QEMU exit"
    );
    let field = |k: &str| {
        init.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {}", init.text))
            .to_string()
    };
    let slot = match field("bootyard.slot=").as_str() {
        "active" => Slot::Active,
        "passive" => Slot::Passive,
        _ => Slot::Recovery,
    };
    Booted {
        slot,
        version: field("version="),
        grub,
        init,
    }
}

/// A fresh work directory under target/test-runs/: unlike a temp dir it survives a failing
/// test, so the console logs and disks named in the failure are there to read. Tests
/// remove it when they pass.
pub fn run_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-runs")
        .join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// e2fsck -fn on one partition of a disk image must find nothing to fix.
pub fn fsck_clean(disk: &Path, partition: &str, context: &str) {
    let table = bootyard::disk::gpt::read(&std::fs::File::open(disk).unwrap()).unwrap();
    let p = table
        .partitions
        .iter()
        .find(|p| p.name == partition)
        .unwrap();
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={}", disk.display(), p.offset_bytes()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{context}: e2fsck {partition}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Options for a scenario run of the busybox flavor under TCG in `dir`, or `None` (after
/// saying why) when QEMU's tools or the static guest agent are missing here.
pub fn scenario_options(test: &str, dir: &Path) -> Option<bootyard::scenario::RunOptions> {
    if !boot_tools(test) {
        return None;
    }
    let agent = bootyard::testkit::require_guest_agent(test)?;
    Some(bootyard::scenario::RunOptions {
        flavor: bootyard::testimage::Flavor::Busybox,
        workdir: dir.join("run"),
        agent,
        cache: asset_cache(),
        accel: bootyard::accel::AccelChoice::forced(bootyard_scenarios::qemu::Accel::Tcg),
        qemu: "qemu-system-x86_64".into(),
    })
}

/// A QEMU wrapper that fakes the nested-KVM host bootyard was once fooled by: `-accel kvm`
/// runs under TCG on a CPU without long mode, so firmware and GRUB run and a 64-bit kernel
/// never starts (its first instructions halt). With `probe_boots_too` false, boots given
/// `-kernel` (the accelerator probe's) run normally under "kvm", so the probe takes KVM and
/// it is the disk boots that stall. Boots under TCG are passed through untouched.
pub fn stalling_kvm_qemu(dir: &Path, probe_boots_too: bool) -> PathBuf {
    let path = dir.join(if probe_boots_too {
        "qemu-kvm-never-boots-linux"
    } else {
        "qemu-kvm-stalls-from-disk"
    });
    let script = format!(
        r#"#!/bin/bash
args=(); kvm=0; kernel=0
for a in "$@"; do
  case "$a" in
    kvm) kvm=1; args+=(tcg) ;;
    -kernel) kernel=1; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done
if [ $kvm = 1 ] && {{ [ $kernel = 0 ] || [ {probe} = 1 ]; }}; then
  args+=(-cpu qemu64,-lm)
fi
exec qemu-system-x86_64 "${{args[@]}}"
"#,
        probe = u8::from(probe_boots_too)
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether `/dev/kvm` opens here: without it the probe never gets to boot anything under
/// "KVM", so a test of what follows a probe's KVM choice has nothing to test.
pub fn kvm_device_opens(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("{test}: skipped: /dev/kvm cannot be opened here");
    }
    ok
}

/// Runs one debugfs request on COS_STATE of an installed disk (`-w` when `write`); its
/// standard output.
pub fn debugfs(disk: &Path, write: bool, request: &str) -> String {
    let table = bootyard::disk::gpt::read(&std::fs::File::open(disk).unwrap()).unwrap();
    let state = table
        .partitions
        .iter()
        .find(|p| p.name == "COS_STATE")
        .unwrap();
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let o = cmd
        .arg("-R")
        .arg(request)
        .arg(format!(
            "{}?offset={}",
            disk.display(),
            state.offset_bytes()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}
