//! Files from Debian packages, for building test OS images on this machine: `apt-get
//! download` fetches a .deb, `dpkg-deb -x` unpacks it into a cache (no install, no hooks,
//! nothing changes on the host). Kernels come from `linux-image-cloud-amd64`, whose drivers
//! suit QEMU guests.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("failed to fetch Debian package {package}")]
    Tool {
        package: String,
        #[source]
        source: crate::tool::ToolError,
    },
    #[error("package {package} has no {what}")]
    NotInPackage { package: String, what: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(tool_package: &'static str, package: &str, cmd: &mut Command) -> Result<String, DebError> {
    let out = crate::tool::run(cmd, tool_package).map_err(|source| DebError::Tool {
        package: package.into(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unpacks `package` into `cache/<package>/root` (once) and returns that root.
pub fn fetch(package: &str, cache: &Path) -> Result<PathBuf, DebError> {
    let dir = cache.join(package);
    let root = dir.join("root");
    if dir.join(".complete").exists() {
        return Ok(root);
    }
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| DebError::Io { op, path, source }
    };
    std::fs::create_dir_all(cache).map_err(io("create", cache))?;
    // Build in a temp dir and rename, so an interrupted fetch never looks complete.
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache)
        .map_err(io("create temp dir in", cache))?;
    run(
        "apt-get",
        package,
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(tmp.path()),
    )?;
    let deb = std::fs::read_dir(tmp.path())
        .map_err(io("read", tmp.path()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| DebError::NotInPackage {
            package: package.into(),
            what: "downloaded .deb".into(),
        })?;
    let out = tmp.path().join("root");
    run(
        "dpkg-deb",
        package,
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out),
    )?;
    std::fs::write(tmp.path().join(".complete"), b"").map_err(io("write", tmp.path()))?;
    // Another process finished the same fetch meanwhile: keep its copy, which may be in use.
    if dir.join(".complete").exists() {
        return Ok(root);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io("remove stale", &dir))?;
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, &dir) {
        let _ = std::fs::remove_dir_all(&kept);
        // Lost a race with another process's rename: its copy is as good as ours.
        if !dir.join(".complete").exists() {
            return Err(io("move into place", &dir)(e));
        }
    }
    Ok(root)
}

/// A kernel for QEMU guests: the package `linux-image-cloud-amd64` depends on.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` inside the unpacked package.
    pub modules: PathBuf,
    pub version: String,
}

pub fn cloud_kernel(cache: &Path) -> Result<Kernel, DebError> {
    let meta = "linux-image-cloud-amd64";
    let deps = run(
        "apt-cache",
        meta,
        Command::new("apt-cache").args(["depends", meta]),
    )?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| DebError::NotInPackage {
            package: meta.into(),
            what: "linux-image dependency (run apt-get update?)".into(),
        })?
        .to_string();
    let root = fetch(&package, cache)?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(DebError::NotInPackage {
            package,
            what: format!("boot/vmlinuz-{version}"),
        });
    }
    Ok(Kernel {
        vmlinuz,
        modules: root.join(format!("lib/modules/{version}")),
        version,
    })
}

/// A static busybox binary (`busybox-static`).
pub fn busybox(cache: &Path) -> Result<PathBuf, DebError> {
    let root = fetch("busybox-static", cache)?;
    let bin = root.join("bin/busybox");
    if !bin.is_file() {
        return Err(DebError::NotInPackage {
            package: "busybox-static".into(),
            what: "bin/busybox".into(),
        });
    }
    Ok(bin)
}
