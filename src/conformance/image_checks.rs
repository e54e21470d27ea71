//! The `image` profile: static checks on an unpacked root filesystem. Nothing runs from
//! the image and nothing needs root; every path is resolved inside the root (an absolute
//! symlink in the image points into the image, never at this machine).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bootyard_conformance::Verdict;

use super::elf::{self, Arch};
use super::{initramfs, kernel};

/// Kernel and initrd bytes read at most.
const BOOT_FILE_MAX: u64 = 512 << 20;
/// IMG-013's limits.
pub const ROOTFS_BYTES_MAX: u64 = 3 << 30;
pub const BOOT_BYTES_MAX: u64 = 256 << 20;

/// Modules a slot cannot boot without (IMG-005).
pub const SLOT_MODULES: &[&str] = &["loop", "ext4"];

/// The OCI image config's platform, when the subject came from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// The image under test: what the checks read, each once.
pub struct Image {
    root: PathBuf,
    platform: Option<Platform>,
    kernel: Result<kernel::KernelInfo, String>,
    kernel_bytes: Option<u64>,
    initrd: Result<initramfs::Initramfs, String>,
    initrd_bytes: Option<u64>,
}

/// Resolves `rel` inside `root`, following symlinks as the image would see them (at most 40),
/// without ever leaving `root`. `None` when something on the way does not exist.
pub fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(p) = todo.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&p);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                parts.clear();
            }
            let comps: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            todo.extend(comps.into_iter().rev());
        } else {
            parts.push(p);
        }
    }
    Some(root.join(parts.iter().collect::<PathBuf>()))
}

/// The agent binary read at most.
const AGENT_MAX: u64 = 1 << 30;
/// modules.dep, modules.builtin and other index files read at most.
const INDEX_FILE_MAX: u64 = 16 << 20;
/// Unit files, init scripts, inittab and release files read at most.
const CONFIG_FILE_MAX: u64 = 1 << 20;

/// A directory, judged without following a symlink (paths from [`resolve`] are already
/// resolved).
fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The size of the regular file at `rel`, if there is one.
fn file_len(root: &Path, rel: &str) -> Option<u64> {
    let m = std::fs::metadata(resolve(root, rel)?).ok()?;
    m.is_file().then_some(m.len())
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(out)
}

/// A regular file at `rel` (resolved inside `root`), read whole, at most `max` bytes.
pub fn file(root: &Path, rel: &str, max: u64) -> Result<Vec<u8>, String> {
    let p = resolve(root, rel).ok_or_else(|| format!("/{rel} does not exist"))?;
    let m = std::fs::metadata(&p).map_err(|e| format!("/{rel}: {e}"))?;
    if !m.is_file() {
        return Err(format!("/{rel} is not a regular file"));
    }
    read_bounded(&p, max).map_err(|e| format!("/{rel}: {e}"))
}

/// os-release syntax: `KEY=value`, values optionally quoted.
pub fn parse_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.insert(k.trim().to_string(), v.replace("\\\"", "\""));
    }
    out
}

fn release_keys(
    root: &Path,
    paths: &[&str],
    keys: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let (path, bytes) = paths
        .iter()
        .find_map(|p| file(root, p, 1 << 16).ok().map(|b| (*p, b)))
        .ok_or_else(|| format!("/{} does not exist (or is not a file)", paths[0]))?;
    let kv = parse_release(&String::from_utf8_lossy(&bytes));
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| kv.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("/{path} lacks {}", missing.join(", ")));
    }
    Ok(kv)
}

impl Image {
    /// The architecture the image claims: its config, else its kernel.
    fn arch(&self) -> Option<Arch> {
        self.platform
            .as_ref()
            .and_then(|p| Arch::parse(&p.architecture))
            .or_else(|| self.kernel.as_ref().ok().map(|k| k.arch))
    }

    fn img_001(&self) -> Result<(), String> {
        let k = self.kernel.as_ref().map_err(|e| e.clone())?;
        match self.arch() {
            Some(a) if a != k.arch => Err(format!(
                "/boot/vmlinuz is an {} kernel in an {} image",
                k.arch.name(),
                a.name()
            )),
            _ => Ok(()),
        }
    }

    fn img_002(&self) -> Result<(), String> {
        self.initrd.as_ref().map(|_| ()).map_err(|e| e.clone())
    }

    fn img_003(&self) -> Result<(), String> {
        let r = self
            .initrd
            .as_ref()
            .map_err(|e| format!("the initramfs cannot be read: {e}"))?;
        match r.resolve("init") {
            None if r.entries.contains_key("init") => {
                Err("/init is a symlink that does not resolve inside the initramfs".into())
            }
            None => Err("the initramfs has no /init".into()),
            Some(e) if !e.is_file() => Err("/init is not a regular file".into()),
            Some(e) if e.mode & 0o111 == 0 => Err("/init is not executable".into()),
            Some(_) => Ok(()),
        }
    }

    /// The module trees: (release, path relative to the root), one per release found under
    /// `/lib/modules` and `/usr/lib/modules` (the same tree through a merged-/usr link counts
    /// once).
    fn module_trees(&self) -> Result<Vec<(String, String)>, String> {
        let mut seen = Vec::new();
        let mut trees = Vec::new();
        for base in ["lib/modules", "usr/lib/modules"] {
            let Some(d) = resolve(&self.root, base).filter(|d| is_dir(d)) else {
                continue;
            };
            if seen.contains(&d) {
                continue;
            }
            seen.push(d.clone());
            let rd = std::fs::read_dir(&d).map_err(|e| format!("/{base}: {e}"))?;
            for e in rd {
                let e = e.map_err(|e| format!("/{base}: {e}"))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = format!("{base}/{name}");
                if resolve(&self.root, &rel).is_some_and(|p| is_dir(&p)) {
                    trees.push((name, rel));
                }
            }
        }
        trees.sort();
        trees.dedup_by(|a, b| a.0 == b.0);
        Ok(trees)
    }

    fn img_004(&self) -> Result<(), String> {
        let trees = self.module_trees()?;
        let names: Vec<&str> = trees.iter().map(|(n, _)| n.as_str()).collect();
        let release = match &self.kernel {
            Ok(kernel::KernelInfo {
                release: Some(r), ..
            }) => r.clone(),
            Ok(_) => return Err("the kernel carries no version string to match".into()),
            Err(e) => return Err(format!("the kernel cannot be read: {e}")),
        };
        match names.as_slice() {
            [] => Err("no module tree under /lib/modules".into()),
            [one] if *one == release => Ok(()),
            [one] => Err(format!(
                "the module tree is for {one}, but the kernel is {release}"
            )),
            many => Err(format!(
                "{} module trees ({}); exactly one, {release}, is wanted",
                many.len(),
                many.join(", ")
            )),
        }
    }

    fn img_005(&self) -> Result<(), String> {
        let trees = self.module_trees()?;
        let release = self.kernel.as_ref().ok().and_then(|k| k.release.clone());
        let (name, dir) = match (trees.as_slice(), release) {
            ([], _) => return Err("no module tree under /lib/modules".into()),
            ([only], _) => only.clone(),
            (many, Some(r)) => many
                .iter()
                .find(|(n, _)| *n == r)
                .cloned()
                .ok_or("no module tree for the kernel's release")?,
            (_, None) => {
                return Err("several module trees and no kernel release to pick one".into())
            }
        };
        // Missing index files read as empty (nothing built in, nothing listed).
        let read = |f: &str| {
            file(&self.root, &format!("{dir}/{f}"), INDEX_FILE_MAX)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let stem = |path: &str| -> Option<String> {
            let base = path.rsplit('/').next()?;
            let base = [".gz", ".xz", ".zst"]
                .iter()
                .find_map(|z| base.strip_suffix(z))
                .unwrap_or(base);
            base.strip_suffix(".ko").map(|s| s.replace('-', "_"))
        };
        let builtin: Vec<String> = read("modules.builtin")
            .unwrap_or_default()
            .lines()
            .filter_map(stem)
            .collect();
        let dep = read("modules.dep").map_err(|e| format!("kernel {name}: {e}"))?;
        let mut missing = Vec::new();
        for m in SLOT_MODULES {
            if builtin.iter().any(|b| b == m) {
                continue;
            }
            let listed = dep
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(p, _)| stem(p).as_deref() == Some(*m));
            match listed {
                Some((p, _))
                    if resolve(&self.root, &format!("{dir}/{p}"))
                        .is_some_and(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file())) => {}
                Some((p, _)) => {
                    missing.push(format!("{m} (modules.dep lists {p}, which is missing)"))
                }
                None => missing.push(format!("{m} (neither built in nor in modules.dep)")),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("kernel {name} lacks {}", missing.join(", ")))
        }
    }

    fn img_006(&self) -> Result<(), String> {
        release_keys(
            &self.root,
            &["etc/os-release", "usr/lib/os-release"],
            &["ID", "NAME", "VERSION_ID"],
        )
        .map(|_| ())
    }

    fn img_007(&self) -> Result<(), String> {
        let kv = release_keys(
            &self.root,
            &["etc/kairos-release"],
            &["ID", "VERSION", "FLAVOR", "FAMILY", "ARCH"],
        )?;
        let arch = &kv["ARCH"];
        let Some(a) = Arch::parse(arch) else {
            return Err(format!("ARCH={arch} is not amd64 or arm64"));
        };
        match self.arch() {
            Some(want) if want != a => {
                Err(format!("ARCH={arch}, but the image is {}", want.name()))
            }
            _ => Ok(()),
        }
    }

    fn img_008(&self) -> Result<(), String> {
        let rel = "usr/bin/bootyard";
        let p = resolve(&self.root, rel).ok_or("/usr/bin/bootyard does not exist")?;
        let m = std::fs::metadata(&p).map_err(|e| format!("/{rel}: {e}"))?;
        if !m.is_file() {
            return Err(format!("/{rel} is not a regular file"));
        }
        if std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 == 0 {
            return Err(format!("/{rel} is not executable"));
        }
        let b = read_bounded(&p, AGENT_MAX).map_err(|e| format!("/{rel}: {e}"))?;
        let info = elf::parse(&b).map_err(|e| format!("/{rel} is {e}"))?;
        if !info.executable {
            return Err(format!("/{rel} is a shared object, not an executable"));
        }
        match (info.arch, self.arch()) {
            (None, _) => return Err(format!("/{rel} is for ELF machine {}", info.machine)),
            (Some(a), Some(want)) if a != want => {
                return Err(format!(
                    "/{rel} is an {} binary in an {} image",
                    a.name(),
                    want.name()
                ))
            }
            _ => {}
        }
        if let Some(interp) = info.interp {
            if resolve(&self.root, &interp).is_none_or(|p| !p.is_file()) {
                return Err(format!(
                    "/{rel} needs the loader {interp}, which the image lacks"
                ));
            }
        }
        Ok(())
    }

    /// The regular files in the directory `rel` (resolved inside the root), by name.
    fn files_in(&self, rel: &str) -> Vec<String> {
        let Some(dir) = resolve(&self.root, rel).filter(|d| is_dir(d)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The non-comment lines of the file at `rel` that run the boot stage: they name both
    /// `bootyard` and `boot-assess` (an ExecStart=, an OpenRC `command`/`command_args` pair
    /// on one line or two, an inittab action), filtered by `keep`.
    fn runs_stage(&self, rel: &str, keep: impl Fn(&str) -> bool) -> bool {
        let Ok(b) = file(&self.root, rel, CONFIG_FILE_MAX) else {
            return false;
        };
        let text = String::from_utf8_lossy(&b);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && keep(l))
            .collect();
        lines.iter().any(|l| l.contains("bootyard"))
            && lines.iter().any(|l| l.contains("boot-assess"))
    }

    fn img_009(&self) -> Result<(), String> {
        let init_name = resolve(&self.root, "sbin/init")
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(init_name) = init_name else {
            return Err("no init system: /sbin/init does not exist".into());
        };
        if init_name == "systemd" {
            // A unit enabled in a target every boot reaches, whose ExecStart runs the stage.
            const BOOT_TARGETS: &[&str] = &[
                "sysinit.target",
                "basic.target",
                "multi-user.target",
                "graphical.target",
                "default.target",
            ];
            for base in [
                "etc/systemd/system",
                "usr/lib/systemd/system",
                "lib/systemd/system",
            ] {
                for target in BOOT_TARGETS {
                    let wants = format!("{base}/{target}.wants");
                    for unit in self.files_in(&wants) {
                        if self
                            .runs_stage(&format!("{wants}/{unit}"), |l| l.starts_with("ExecStart"))
                        {
                            return Ok(());
                        }
                    }
                }
            }
            return Err(format!(
                "systemd: no unit enabled in {} runs `bootyard boot-assess`",
                BOOT_TARGETS.join(", ")
            ));
        }
        // OpenRC (its own init, or busybox/sysvinit running openrc) and busybox init.
        let openrc = resolve(&self.root, "etc/runlevels").is_some_and(|d| is_dir(&d));
        if openrc {
            for level in ["sysinit", "boot", "default"] {
                for svc in self.files_in(&format!("etc/runlevels/{level}")) {
                    if self.runs_stage(&format!("etc/init.d/{svc}"), |l| l.starts_with("command")) {
                        return Ok(());
                    }
                }
            }
        }
        let inittab_runs = |l: &str| {
            let f: Vec<&str> = l.splitn(4, ':').collect();
            f.len() == 4
                && ["sysinit", "wait", "once", "respawn"].contains(&f[2])
                && f[3].contains("bootyard")
                && f[3].contains("boot-assess")
        };
        let busybox = init_name == "busybox";
        if busybox {
            if let Ok(tab) = file(&self.root, "etc/inittab", CONFIG_FILE_MAX) {
                let tab = String::from_utf8_lossy(&tab);
                if tab
                    .lines()
                    .map(str::trim)
                    .any(|l| !l.starts_with('#') && inittab_runs(l))
                {
                    return Ok(());
                }
            }
        }
        match (openrc, busybox) {
            (true, _) => Err("OpenRC: no service in the sysinit, boot or default runlevel runs `bootyard boot-assess`".into()),
            (false, true) => Err("busybox init: no /etc/inittab action runs `bootyard boot-assess`".into()),
            (false, false) => Err(format!(
                "/sbin/init is {init_name}: not systemd, OpenRC or busybox init"
            )),
        }
    }

    fn img_010(&self) -> Result<(), String> {
        let dir = resolve(&self.root, "etc/ssh");
        let mut keys: Vec<String> = dir
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
            .collect();
        keys.sort();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "baked host keys: /etc/ssh/{}",
                keys.join(", /etc/ssh/")
            ))
        }
    }

    fn img_011(&self) -> Result<(), String> {
        // Absent is fine; anything there must be empty or `uninitialized`.
        let baked = |rel: &str| -> Option<String> {
            resolve(&self.root, rel)?;
            let b = match file(&self.root, rel, 4096) {
                Ok(b) => b,
                Err(e) => return Some(format!("{e}: not an empty machine-id")),
            };
            let t = String::from_utf8_lossy(&b).trim().to_string();
            (!t.is_empty() && t != "uninitialized").then(|| format!("/{rel} holds {t}"))
        };
        if let Some(e) = baked("etc/machine-id") {
            return Err(e);
        }
        // D-Bus's copy is fine when it is the same file as /etc/machine-id.
        let same = resolve(&self.root, "var/lib/dbus/machine-id").is_some()
            && resolve(&self.root, "var/lib/dbus/machine-id")
                == resolve(&self.root, "etc/machine-id");
        if !same {
            if let Some(e) = baked("var/lib/dbus/machine-id") {
                return Err(e);
            }
        }
        Ok(())
    }

    fn img_012(&self) -> Option<Result<(), String>> {
        let p = self.platform.as_ref()?;
        Some((|| {
            if p.os != "linux" {
                return Err(format!("the image config says os {}", p.os));
            }
            let want = Arch::parse(&p.architecture)
                .ok_or_else(|| format!("the image config says architecture {}", p.architecture))?;
            if let Ok(k) = &self.kernel {
                if k.arch != want {
                    return Err(format!(
                        "the config says {}, the kernel is {}",
                        want.name(),
                        k.arch.name()
                    ));
                }
            }
            let agent = file(&self.root, "usr/bin/bootyard", AGENT_MAX)
                .ok()
                .and_then(|b| elf::parse(&b).ok());
            if let Some(a) = agent.and_then(|i| i.arch) {
                if a != want {
                    return Err(format!(
                        "the config says {}, the agent is {}",
                        want.name(),
                        a.name()
                    ));
                }
            }
            Ok(())
        })())
    }

    fn img_013(&self) -> Result<(), String> {
        let boot = self.kernel_bytes.unwrap_or(0) + self.initrd_bytes.unwrap_or(0);
        if boot > BOOT_BYTES_MAX {
            return Err(format!(
                "kernel and initrd take {} MiB, over {} MiB",
                boot >> 20,
                BOOT_BYTES_MAX >> 20
            ));
        }
        let total = tree_bytes(&self.root).map_err(|e| format!("cannot size the tree: {e}"))?;
        if total > ROOTFS_BYTES_MAX {
            return Err(format!(
                "the root filesystem takes {} MiB, over {} MiB",
                total >> 20,
                ROOTFS_BYTES_MAX >> 20
            ));
        }
        Ok(())
    }
}

/// The bytes of regular files under `root` (symlinks not followed).
fn tree_bytes(root: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

fn verdict(r: Result<(), String>) -> Verdict {
    match r {
        Ok(()) => Verdict::Pass,
        Err(reason) => Verdict::Fail { reason },
    }
}

impl Image {
    /// Reads the kernel and initrd of the root filesystem at `root`; `platform` is the image
    /// config's, when the subject is an image (IMG-012 is skipped without it).
    pub fn read(root: &Path, platform: Option<Platform>) -> Self {
        let boot_file = |rel: &str| file(root, rel, BOOT_FILE_MAX);
        let kernel_raw = boot_file("boot/vmlinuz");
        let initrd_raw = boot_file("boot/initrd");
        Image {
            root: root.to_path_buf(),
            platform,
            // Sizes from the file system: a file too large to read still counts in full.
            kernel_bytes: file_len(root, "boot/vmlinuz"),
            initrd_bytes: file_len(root, "boot/initrd"),
            kernel: kernel_raw
                .and_then(|b| kernel::parse(&b).map_err(|e| format!("/boot/vmlinuz: {e}"))),
            initrd: initrd_raw
                .and_then(|b| initramfs::read(&b).map_err(|e| format!("/boot/initrd: {e}"))),
        }
    }

    /// Runs one `image` check (a failure is `Fail` whatever the check's level; the run
    /// weighs it).
    pub fn check(&self, id: &str) -> Verdict {
        match id {
            "IMG-001" => verdict(self.img_001()),
            "IMG-002" => verdict(self.img_002()),
            "IMG-003" => verdict(self.img_003()),
            "IMG-004" => verdict(self.img_004()),
            "IMG-005" => verdict(self.img_005()),
            "IMG-006" => verdict(self.img_006()),
            "IMG-007" => verdict(self.img_007()),
            "IMG-008" => verdict(self.img_008()),
            "IMG-009" => verdict(self.img_009()),
            "IMG-010" => verdict(self.img_010()),
            "IMG-011" => verdict(self.img_011()),
            "IMG-012" => self.img_012().map_or_else(
                || Verdict::Skip {
                    reason: "no image config: the subject is a directory, not an OCI image".into(),
                },
                verdict,
            ),
            "IMG-013" => verdict(self.img_013()),
            other => Verdict::Error {
                reason: format!("{other} is not an image check this build knows"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::fixture::{bzimage, elf, good_rootfs as good, initrd, put, RELEASE};
    use bootyard_conformance::{catalogue, CheckDef};
    use std::collections::BTreeSet;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Makes the image a systemd one: /sbin/init is systemd, and a unit whose [Service]
    /// section is `service` is enabled in `wants`.
    fn systemd_with(r: &Path, wants: &str, service: &str) {
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        put(r, "lib/systemd/systemd", 0o755, &elf(2, 62, None, false)).unwrap();
        symlink("/lib/systemd/systemd", r.join("sbin/init")).unwrap();
        let unit =
            format!("[Unit]\nDescription=boot assessment\n\n[Service]\nType=oneshot\n{service}\n");
        put(
            r,
            "etc/systemd/system/bootyard-boot-assess.service",
            0o644,
            unit.as_bytes(),
        )
        .unwrap();
        std::fs::create_dir_all(r.join(format!("etc/systemd/system/{wants}"))).unwrap();
        symlink(
            "/etc/systemd/system/bootyard-boot-assess.service",
            r.join(format!(
                "etc/systemd/system/{wants}/bootyard-boot-assess.service"
            )),
        )
        .unwrap();
    }

    /// Makes busybox init start OpenRC, with the boot stage's service in `runlevel`.
    fn openrc_with(r: &Path, runlevel: &str) {
        put(r, "etc/inittab", 0o644, b"::sysinit:/sbin/openrc sysinit\n").unwrap();
        let svc =
            b"#!/sbin/openrc-run\ncommand=\"/usr/bin/bootyard\"\ncommand_args=\"boot-assess\"\n";
        put(r, "etc/init.d/bootyard", 0o755, svc).unwrap();
        std::fs::create_dir_all(r.join(format!("etc/runlevels/{runlevel}"))).unwrap();
        let link = r.join(format!("etc/runlevels/{runlevel}/bootyard"));
        symlink("/etc/init.d/bootyard", link).unwrap();
    }

    /// Every `image` check on the root filesystem at `root`, in catalogue order.
    fn run(root: &Path, platform: Option<Platform>) -> Vec<(&'static CheckDef, Verdict)> {
        let img = Image::read(root, platform);
        catalogue::of_profiles(&[catalogue::Profile::Image])
            .map(|c| (c, img.check(c.id)))
            .collect()
    }

    fn amd64() -> Option<Platform> {
        Some(Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        })
    }

    /// The IDs that did not pass.
    fn failing(root: &Path, platform: Option<Platform>) -> BTreeSet<&'static str> {
        run(root, platform)
            .into_iter()
            .filter(|(_, v)| *v != Verdict::Pass)
            .map(|(c, v)| {
                assert!(matches!(v, Verdict::Fail { .. }), "{}: {v:?}", c.id);
                c.id
            })
            .collect()
    }

    #[test]
    fn a_good_image_passes_every_check_and_each_breakage_fails_exactly_its_checks() {
        type Break = fn(&Path);
        let cases: Vec<(&str, Break, Option<Platform>, &[&str])> = vec![
            ("nothing broken", |_| {}, amd64(), &[]),
            (
                "missing kernel",
                |r| std::fs::remove_file(r.join("boot/vmlinuz")).unwrap(),
                amd64(),
                &["IMG-001", "IMG-004"],
            ),
            (
                "kernel is not a bzImage",
                |r| put(r, "boot/vmlinuz", 0o644, &[0u8; 8192]).unwrap(),
                amd64(),
                &["IMG-001", "IMG-004"],
            ),
            (
                "kernel/modules version mismatch",
                |r| put(r, "boot/vmlinuz", 0o644, &bzimage("6.2.0-other")).unwrap(),
                amd64(),
                &["IMG-004"],
            ),
            (
                "two module trees",
                |r| put(r, "lib/modules/5.10.0-old/modules.dep", 0o644, b"").unwrap(),
                amd64(),
                &["IMG-004"],
            ),
            (
                "no ext4",
                |r| {
                    put(
                        r,
                        &format!("lib/modules/{RELEASE}/modules.dep"),
                        0o644,
                        b"kernel/drivers/block/loop.ko:\n",
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-005"],
            ),
            (
                "loop listed but its file gone",
                |r| {
                    std::fs::remove_file(r.join(format!(
                        "lib/modules/{RELEASE}/kernel/drivers/block/loop.ko"
                    )))
                    .unwrap()
                },
                amd64(),
                &["IMG-005"],
            ),
            (
                "no init in the initramfs",
                |r| put(r, "boot/initrd", 0o644, &initrd(false).unwrap()).unwrap(),
                amd64(),
                &["IMG-003"],
            ),
            (
                "initrd truncated",
                |r| {
                    let b = initrd(true).unwrap();
                    put(r, "boot/initrd", 0o644, &b[..b.len() / 2]).unwrap()
                },
                amd64(),
                &["IMG-002", "IMG-003"],
            ),
            (
                "os-release without VERSION_ID",
                |r| put(r, "etc/os-release", 0o644, b"ID=testos\nNAME=x\n").unwrap(),
                amd64(),
                &["IMG-006"],
            ),
            (
                "release file without FAMILY",
                |r| {
                    put(
                        r,
                        "etc/kairos-release",
                        0o644,
                        b"ID=t\nVERSION=1\nFLAVOR=b\nARCH=amd64\n",
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-007"],
            ),
            (
                "release file names another arch",
                |r| {
                    put(
                        r,
                        "etc/kairos-release",
                        0o644,
                        b"ID=t\nVERSION=1\nFLAVOR=b\nFAMILY=b\nARCH=arm64\n",
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-007"],
            ),
            (
                "agent missing",
                |r| std::fs::remove_file(r.join("usr/bin/bootyard")).unwrap(),
                amd64(),
                &["IMG-008"],
            ),
            (
                "agent not executable",
                |r| {
                    std::fs::set_permissions(
                        r.join("usr/bin/bootyard"),
                        std::fs::Permissions::from_mode(0o644),
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-008"],
            ),
            (
                "agent is a script",
                |r| put(r, "usr/bin/bootyard", 0o755, b"#!/bin/sh\n").unwrap(),
                amd64(),
                &["IMG-008"],
            ),
            (
                "agent's loader missing",
                |r| {
                    put(
                        r,
                        "usr/bin/bootyard",
                        0o755,
                        &elf(3, 62, Some("/lib64/ld-linux-x86-64.so.2"), false),
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-008"],
            ),
            (
                "agent for the wrong architecture",
                |r| put(r, "usr/bin/bootyard", 0o755, &elf(2, 183, None, false)).unwrap(),
                amd64(),
                &["IMG-008", "IMG-012"],
            ),
            (
                "boot stage not wired",
                |r| put(r, "etc/inittab", 0o644, b"::sysinit:/etc/init.d/rcS\n").unwrap(),
                amd64(),
                &["IMG-009"],
            ),
            (
                "no init system",
                |r| std::fs::remove_file(r.join("sbin/init")).unwrap(),
                amd64(),
                &["IMG-009"],
            ),
            (
                "baked SSH host keys",
                |r| put(r, "etc/ssh/ssh_host_ed25519_key", 0o600, b"key").unwrap(),
                amd64(),
                &["IMG-010"],
            ),
            (
                "baked machine-id",
                |r| {
                    put(
                        r,
                        "etc/machine-id",
                        0o444,
                        b"0123456789abcdef0123456789abcdef\n",
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-011"],
            ),
            (
                "config says arm64",
                |_| {},
                Some(Platform {
                    os: "linux".into(),
                    architecture: "arm64".into(),
                }),
                &["IMG-001", "IMG-007", "IMG-008", "IMG-012"],
            ),
            (
                "oversized boot files",
                |r| {
                    let f = std::fs::File::create(r.join("boot/zz-pad")).unwrap();
                    f.set_len(1).unwrap();
                    let mut k = bzimage(RELEASE);
                    k.resize((BOOT_BYTES_MAX + 1) as usize, 0);
                    put(r, "boot/vmlinuz", 0o644, &k).unwrap()
                },
                amd64(),
                &["IMG-013"],
            ),
            (
                "a 32-bit x86 kernel",
                |r| {
                    let mut k = bzimage(RELEASE);
                    k[0x236] = 0;
                    put(r, "boot/vmlinuz", 0o644, &k).unwrap()
                },
                amd64(),
                &["IMG-001", "IMG-004"],
            ),
            (
                "the boot stage only in a comment",
                |r| {
                    put(
                        r,
                        "etc/inittab",
                        0o644,
                        b"::sysinit:/etc/init.d/rcS\n#::wait:/usr/bin/bootyard boot-assess\n",
                    )
                    .unwrap()
                },
                amd64(),
                &["IMG-009"],
            ),
            (
                "modules.dep links out of the image",
                |r| {
                    let dep = r.join(format!("lib/modules/{RELEASE}/modules.dep"));
                    std::fs::remove_file(&dep).unwrap();
                    symlink("/etc/hostname", &dep).unwrap();
                },
                amd64(),
                &["IMG-005"],
            ),
            (
                "busybox init running OpenRC, the stage in the default runlevel",
                |r| openrc_with(r, "default"),
                amd64(),
                &[],
            ),
            (
                "OpenRC without the stage in a runlevel",
                |r| openrc_with(r, "shutdown"),
                amd64(),
                &["IMG-009"],
            ),
            (
                "systemd with the stage enabled in multi-user.target",
                |r| {
                    systemd_with(
                        r,
                        "multi-user.target.wants",
                        "ExecStart=/usr/bin/bootyard boot-assess",
                    )
                },
                amd64(),
                &[],
            ),
            (
                "systemd with the stage enabled only at shutdown",
                |r| {
                    systemd_with(
                        r,
                        "shutdown.target.wants",
                        "ExecStart=/usr/bin/bootyard boot-assess",
                    )
                },
                amd64(),
                &["IMG-009"],
            ),
            (
                "systemd with the stage's ExecStart commented out",
                |r| {
                    systemd_with(
                        r,
                        "multi-user.target.wants",
                        "#ExecStart=/usr/bin/bootyard boot-assess\nExecStart=/bin/true",
                    )
                },
                amd64(),
                &["IMG-009"],
            ),
            (
                "a baked D-Bus machine-id behind a link that only looks like /etc's",
                |r| {
                    put(
                        r,
                        "opt/etc/machine-id",
                        0o444,
                        b"0123456789abcdef0123456789abcdef\n",
                    )
                    .unwrap();
                    std::fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
                    symlink("/opt/etc/machine-id", r.join("var/lib/dbus/machine-id")).unwrap();
                },
                amd64(),
                &["IMG-011"],
            ),
            (
                "D-Bus's machine-id is /etc's",
                |r| {
                    std::fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
                    symlink("../../../etc/machine-id", r.join("var/lib/dbus/machine-id")).unwrap();
                },
                amd64(),
                &[],
            ),
        ];
        for (name, brk, platform, want) in cases {
            let t = tempfile::tempdir().unwrap();
            good(t.path()).unwrap();
            brk(t.path());
            let got = failing(t.path(), platform);
            let want: BTreeSet<&str> = want.iter().copied().collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn without_an_image_config_the_platform_check_is_skipped_not_passed() {
        let t = tempfile::tempdir().unwrap();
        good(t.path()).unwrap();
        let r = run(t.path(), None);
        let (_, v) = r.iter().find(|(c, _)| c.id == "IMG-012").unwrap();
        assert!(matches!(v, Verdict::Skip { .. }), "{v:?}");
        assert_eq!(
            r.len(),
            catalogue::of_profiles(&[catalogue::Profile::Image]).count()
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root_and_never_escape_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        good(&root).unwrap();
        // An absolute symlink points into the image.
        std::fs::rename(
            root.join("boot/vmlinuz"),
            root.join(format!("boot/vmlinuz-{RELEASE}")),
        )
        .unwrap();
        symlink(
            format!("/boot/vmlinuz-{RELEASE}"),
            root.join("boot/vmlinuz"),
        )
        .unwrap();
        // A merged /usr: /lib is a link to usr/lib.
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::rename(root.join("lib/modules"), root.join("usr/lib/modules")).unwrap();
        std::fs::remove_dir(root.join("lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        assert_eq!(failing(&root, amd64()), BTreeSet::new());
        // A file outside the root, reached by `..` or an absolute path, is not found.
        put(
            t.path(),
            "outside-release",
            0o644,
            b"ID=x\nNAME=x\nVERSION_ID=1\n",
        )
        .unwrap();
        std::fs::remove_file(root.join("etc/os-release")).unwrap();
        symlink(
            "../../../../../../../outside-release",
            root.join("etc/os-release"),
        )
        .unwrap();
        assert!(t.path().join("outside-release").is_file());
        assert_eq!(resolve(&root, "etc/os-release"), None);
        assert_eq!(failing(&root, amd64()), BTreeSet::from(["IMG-006"]));
        // A loop of links ends.
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert_eq!(resolve(&root, "a"), None);
    }

    #[test]
    fn release_files_parse_quotes_and_comments() {
        let kv = parse_release("# c\nID=debian\nNAME=\"Debian GNU/Linux\"\nX='q'\nBAD\n");
        assert_eq!(kv["ID"], "debian");
        assert_eq!(kv["NAME"], "Debian GNU/Linux");
        assert_eq!(kv["X"], "q");
        assert_eq!(kv.len(), 3);
    }
}
