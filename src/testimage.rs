//! Pieces of test OS images built on this machine from Debian packages: a busybox initramfs
//! around a given init script, and a minimal bootable root filesystem (kernel, initrd,
//! os-release). `bootyard build-test-image` will grow from here.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::boot::cpio::CpioWriter;

/// A gzip'd newc initramfs: static busybox as `/bin/busybox` and `/bin/sh`, `/dev/console`,
/// empty `/proc`, `/sys`, `/mnt`, and `init` as `/init`.
pub fn busybox_initramfs(busybox: &Path, init: &str) -> io::Result<Vec<u8>> {
    let mut c = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for d in ["bin", "dev", "proc", "sys", "mnt"] {
        c.dir(d, 0o755)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.file("bin/busybox", 0o755, &std::fs::read(busybox)?)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("init", 0o755, init.as_bytes())?;
    c.finish()?.finish()
}

/// An init that prints `BOOTYARD-INIT version=VERSION <kernel cmdline>` and powers off.
pub fn reporting_init(version: &str) -> String {
    format!("#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho \"BOOTYARD-INIT version={version} $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n")
}

/// Writes a minimal bootable root filesystem into `root`.
pub fn boot_rootfs(root: &Path, kernel: &Path, initrd: &[u8], version: &str) -> io::Result<()> {
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(kernel, root.join("boot/vmlinuz"))?;
    std::fs::File::create(root.join("boot/initrd"))?.write_all(initrd)?;
    std::fs::write(
        root.join("etc/os-release"),
        format!("ID=bootyard-test\nNAME=\"bootyard test OS\"\nVERSION_ID={version}\n"),
    )?;
    std::fs::write(
        root.join("etc/kairos-release"),
        format!(
            "ID=bootyard-test\nVERSION={version}\nFLAVOR=busybox\nFAMILY=busybox\nARCH=amd64\n"
        ),
    )?;
    Ok(())
}

/// Which test OS: `busybox` (busybox init, no systemd) or `debian` (bookworm with systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    Busybox,
    Debian,
}

/// Deliberately bad versions, for proving that a bad image cannot brick a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Breakage {
    /// The kernel panics at boot (the initrd has no /init, so no root can be mounted).
    Panic,
    /// init hangs before userspace comes up; only the watchdog ends the boot.
    Hang,
    /// Boots fine but never runs its boot assessment, so it never marks itself good.
    NeverGood,
    /// Boots, but a health check fails.
    HealthFails,
}

#[derive(Debug, Clone)]
pub struct TestImageSpec {
    pub flavor: Flavor,
    pub version: String,
    pub breakage: Option<Breakage>,
    /// Seconds an unproven boot may run before the watchdog resets it.
    pub watchdog_sec: u32,
    /// A statically linked bootyard, run inside the guest.
    pub agent: PathBuf,
    /// Where Debian packages are cached.
    pub cache: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    #[error(transparent)]
    Deb(#[from] crate::debpkg::DebError),
    #[error(transparent)]
    Kmod(#[from] crate::agent::kmod::KmodError),
    #[error("{0} is not a statically linked x86-64 executable: the guest has no matching libc (build one with `./x guest-agent`)")]
    AgentNotStatic(PathBuf),
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error("failed to write the OCI layout")]
    Layout(#[from] crate::image::layout::LayoutError),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn tio(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TestImageError {
    let path = path.to_path_buf();
    move |source| TestImageError::Io { op, path, source }
}

/// True for an x86-64 ELF executable without a program interpreter (no dynamic loader
/// needed).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    crate::conformance::elf::parse(bytes).is_ok_and(|e| {
        e.executable && e.interp.is_none() && e.arch == Some(crate::conformance::elf::Arch::Amd64)
    })
}

/// Drivers the stage loads: disks (virtio, IDE), loop for slot images, overlay, the
/// watchdog, and the virtio NIC for upgrades over the network.
pub const INITRD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ata_piix",
    "sd_mod",
    "loop",
    "overlay",
    "softdog",
    "qemu_fw_cfg",
];

/// Where a test image looks for the harness's commands (QEMU `-fw_cfg name=...`).
pub const HOOK_FW_CFG: &str = "opt/bootyard/run";

/// The test-image hook: runs the script the harness passed through fw_cfg (if any), says
/// how it went, and powers off. Test images only: a real OS has no such back door.
fn hook(poweroff: &str) -> String {
    format!(
        r#"#!/bin/sh
f=/sys/firmware/qemu_fw_cfg/by_name/opt/bootyard/run/raw
if [ -r "$f" ]; then
  echo "BOOTYARD-HOOK-START" >/dev/console
  sh "$f" >/dev/console 2>&1
  echo "BOOTYARD-HOOK-DONE rc=$?" >/dev/console
  sync
  {poweroff}
fi
"#
    )
}

/// The initrd: bootyard as `/init` (the boot stage) and the kernel modules it loads.
/// `Breakage::Panic` leaves `/init` out, so the kernel panics looking for a root.
pub fn stage_initrd(
    agent: &Path,
    kernel: &crate::debpkg::Kernel,
    breakage: Option<Breakage>,
) -> Result<Vec<u8>, TestImageError> {
    let bin = std::fs::read(agent).map_err(tio("read", agent))?;
    if !is_static_elf(&bin) {
        return Err(TestImageError::AgentNotStatic(agent.to_path_buf()));
    }
    let index = crate::agent::kmod::ModuleIndex::scan(&kernel.modules)?;
    let modules = index.closure(INITRD_MODULES)?;
    let mut c = CpioWriter::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let w = |e: io::Error| TestImageError::Io {
        op: "write",
        path: "initrd".into(),
        source: e,
    };
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        c.dir(d, 0o755).map_err(w)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1).map_err(w)?;
    c.file("bin/bootyard", 0o755, &bin).map_err(w)?;
    if breakage != Some(Breakage::Panic) {
        c.symlink("init", "bin/bootyard").map_err(w)?;
    }
    let mut list = String::new();
    for m in &modules {
        let name = m
            .file_name()
            .expect("module files have names")
            .to_string_lossy();
        let rel = format!("lib/modules/{name}");
        c.file(&rel, 0o644, &std::fs::read(m).map_err(tio("read", m))?)
            .map_err(w)?;
        list.push_str(&rel);
        list.push('\n');
    }
    c.file(crate::agent::stage::MODULE_LIST, 0o644, list.as_bytes())
        .map_err(w)?;
    c.finish().map_err(w)?.finish().map_err(w)
}

/// Puts the kernel's modules for `INITRD_MODULES` under `/lib/modules/<version>` of the image
/// (the image contract: exactly one kernel there), with the package's module lists and the
/// indexes `depmod` makes for modprobe.
fn install_modules(root: &Path, kernel: &crate::debpkg::Kernel) -> Result<(), TestImageError> {
    let index = crate::agent::kmod::ModuleIndex::scan(&kernel.modules)?;
    let dest = root.join("lib/modules").join(&kernel.version);
    for m in index.closure(INITRD_MODULES)? {
        let rel = m
            .strip_prefix(&kernel.modules)
            .expect("found under the modules dir");
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().expect("has parent")).map_err(tio("create", &to))?;
        std::fs::copy(&m, &to).map_err(tio("copy", &m))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let from = kernel.modules.join(f);
        if from.exists() {
            std::fs::copy(&from, dest.join(f)).map_err(tio("copy", &from))?;
        }
    }
    crate::tool::run(
        std::process::Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.version),
        "kmod",
    )?;
    Ok(())
}

/// Copies a host executable and the shared libraries `ldd` says it needs (with the
/// dynamic loader) into `root`, at the same paths.
fn copy_with_libs(bin: &Path, root: &Path) -> Result<(), TestImageError> {
    let out = crate::tool::run(std::process::Command::new("ldd").arg(bin), "libc-bin")?;
    let mut files = vec![bin.to_path_buf()];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = l
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dest.parent().expect("has parent"))
            .map_err(tio("create", &dest))?;
        // A busybox applet link may already sit there: replace it, never write through it.
        if dest.symlink_metadata().is_ok() {
            std::fs::remove_file(&dest).map_err(tio("replace", &dest))?;
        }
        // Host symlinks are resolved: the guest gets the real bytes under the linked name.
        std::fs::copy(&f, &dest).map_err(tio("copy", &f))?;
    }
    Ok(())
}

/// `Breakage::Hang`: /sbin/init says so and never gets anywhere.
fn hanging_init(root: &Path) -> Result<(), TestImageError> {
    let init = root.join("sbin/init");
    if init.symlink_metadata().is_ok() {
        std::fs::remove_file(&init).map_err(tio("remove", &init))?;
    }
    write(
        &init,
        0o755,
        "#!/bin/sh\necho 'BOOTYARD-TEST init hangs (deliberately broken image)'\nwhile :; do sleep 3600; done\n",
    )
}

fn write(path: &Path, mode: u32, text: &str) -> Result<(), TestImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("has parent")).map_err(tio("create", path))?;
    std::fs::write(path, text).map_err(tio("write", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(tio("chmod", path))
}

fn release_files(root: &Path, spec: &TestImageSpec, family: &str) -> Result<(), TestImageError> {
    let flavor = match spec.flavor {
        Flavor::Busybox => "busybox",
        Flavor::Debian => "debian",
    };
    let v = &spec.version;
    write(
        &root.join("etc/os-release"),
        0o644,
        &format!("ID=bootyard-test-{flavor}\nNAME=\"bootyard test OS ({flavor})\"\nVERSION_ID={v}\nPRETTY_NAME=\"bootyard test OS {v} ({flavor})\"\n"),
    )?;
    write(
        &root.join("etc/kairos-release"),
        0o644,
        &format!("ID=bootyard-test\nVERSION={v}\nFLAVOR={flavor}\nFAMILY={family}\nARCH=amd64\n"),
    )?;
    let mut agent = format!("[boot]\nwatchdog_sec = {}\n", spec.watchdog_sec);
    if spec.breakage == Some(Breakage::HealthFails) {
        agent.push_str(
            "\n[[health.checks]]\nname = \"deliberately-broken\"\ncommand = [\"/bin/false\"]\n",
        );
    }
    write(&root.join(crate::agent::config::PATH), 0o644, &agent)
}

/// Builds the root filesystem of a test OS image into `root` (which must not exist).
pub fn build_rootfs(spec: &TestImageSpec, root: &Path) -> Result<(), TestImageError> {
    let kernel = crate::debpkg::cloud_kernel(&spec.cache)?;
    let initrd = stage_initrd(&spec.agent, &kernel, spec.breakage)?;
    match spec.flavor {
        Flavor::Busybox => busybox_rootfs(spec, root)?,
        Flavor::Debian => debian_rootfs(spec, root)?,
    }
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot).map_err(tio("create", &boot))?;
    std::fs::copy(&kernel.vmlinuz, boot.join("vmlinuz")).map_err(tio("copy", &kernel.vmlinuz))?;
    std::fs::write(boot.join("initrd"), initrd).map_err(tio("write", &boot))?;
    install_modules(root, &kernel)?;
    Ok(())
}

fn busybox_rootfs(spec: &TestImageSpec, root: &Path) -> Result<(), TestImageError> {
    let busybox = crate::debpkg::busybox(&spec.cache)?;
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "root",
        "mnt",
        "usr/local",
    ] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(tio("create", &p))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).map_err(tio("copy", &busybox))?;
    let list = crate::tool::run(
        std::process::Command::new(&busybox).arg("--list-full"),
        "busybox-static",
    )?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet == "bin/busybox" || link.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        std::fs::create_dir_all(link.parent().expect("has parent"))
            .map_err(tio("create", &link))?;
        std::os::unix::fs::symlink(&target, &link).map_err(tio("link", &link))?;
    }
    // In-guest upgrades build slot images with mkfs.ext4.
    copy_with_libs(Path::new("/sbin/mke2fs"), root)?;
    let alias = root.join("sbin/mkfs.ext4");
    if alias.symlink_metadata().is_ok() {
        std::fs::remove_file(&alias).map_err(tio("replace", &alias))?;
    }
    std::os::unix::fs::symlink("mke2fs", &alias).map_err(tio("link", &alias))?;
    if Path::new("/etc/mke2fs.conf").exists() {
        std::fs::copy("/etc/mke2fs.conf", root.join("etc/mke2fs.conf"))
            .map_err(tio("copy", Path::new("/etc/mke2fs.conf")))?;
    }
    // The agent's registry client wants the system's CA certificates, even for plain HTTP.
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.exists() {
        let dest = root.join("etc/ssl/certs/ca-certificates.crt");
        std::fs::create_dir_all(dest.parent().expect("has parent"))
            .map_err(tio("create", &dest))?;
        std::fs::copy(ca, &dest).map_err(tio("copy", ca))?;
    }
    let agent_dest = root.join("usr/bin/bootyard");
    std::fs::copy(&spec.agent, &agent_dest).map_err(tio("copy", &spec.agent))?;
    write(
        &root.join("etc/passwd"),
        0o644,
        "root:x:0:0:root:/root:/bin/sh\n",
    )?;
    write(&root.join("etc/group"), 0o644, "root:x:0:\n")?;
    write(&root.join("etc/hostname"), 0o644, "bootyard-test\n")?;
    let v = &spec.version;
    write(
        &root.join("etc/init.d/rcS"),
        0o755,
        &format!(
            "#!/bin/sh\n\
             mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp\n\
             mkdir -p /dev/pts && mount -t devpts devpts /dev/pts\n\
             hostname -F /etc/hostname\n\
             ip link set lo up\n\
             # QEMU user networking: the host is 10.0.2.2.\n\
             if ip link set eth0 up 2>/dev/null; then\n\
             \x20 ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2\n\
             fi\n\
             echo \"BOOTYARD-USERSPACE version={v} flavor=busybox\"\n"
        ),
    )?;
    // Assessment runs to its end before the hook, so a harness's command sees a proven boot;
    // an image that never proves itself runs neither (nothing powers it off: the watchdog
    // must end the boot).
    let assess = if spec.breakage == Some(Breakage::NeverGood) {
        "# deliberately broken: never runs its boot assessment (nor the test hook)\n"
    } else {
        "::wait:/usr/bin/bootyard boot-assess\n::once:/usr/libexec/bootyard-test-hook\n"
    };
    write(
        &root.join("usr/libexec/bootyard-test-hook"),
        0o755,
        &hook("poweroff -f"),
    )?;
    write(
        &root.join("etc/inittab"),
        0o644,
        &format!(
            "::sysinit:/etc/init.d/rcS\n{assess}::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/sync\n::shutdown:/bin/umount -a -r\n"
        ),
    )?;
    if spec.breakage == Some(Breakage::Hang) {
        hanging_init(root)?;
    }
    release_files(root, spec, "busybox")
}

/// Debian packages of the `debian` flavor's base, beyond `minbase`.
const DEBIAN_PACKAGES: &str = "systemd-sysv,udev,iproute2,ca-certificates";
const DEBIAN_SUITE: &str = "bookworm";

/// The Debian base root filesystem as a tarball, built once with mmdebstrap and cached.
fn debian_base(cache: &Path) -> Result<PathBuf, TestImageError> {
    let tar = cache.join(format!(
        "debian-{DEBIAN_SUITE}-{}.tar",
        crate::image::Digest::of(DEBIAN_PACKAGES.as_bytes())
            .to_string()
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or_default()
    ));
    if tar.exists() {
        return Ok(tar);
    }
    std::fs::create_dir_all(cache).map_err(tio("create", cache))?;
    // A private partial file: two builds at once both finish, and the rename is atomic.
    let partial = tempfile::Builder::new()
        .prefix(".debian-")
        .suffix(".tar")
        .tempfile_in(cache)
        .map_err(tio("create a temp file in", cache))?
        .into_temp_path();
    let mirror = std::env::var("BOOTYARD_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    crate::tool::run(
        std::process::Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--mode=root",
                "--variant=minbase",
                &format!("--include={DEBIAN_PACKAGES}"),
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--format=tar",
                DEBIAN_SUITE,
            ])
            .arg(&partial)
            .arg(&mirror),
        "mmdebstrap",
    )?;
    partial.persist(&tar).map_err(|e| TestImageError::Io {
        op: "move into place",
        path: tar.clone(),
        source: e.error,
    })?;
    Ok(tar)
}

fn enable(root: &Path, unit: &str, target: &str) -> Result<(), TestImageError> {
    let dir = root.join(format!("etc/systemd/system/{target}.wants"));
    std::fs::create_dir_all(&dir).map_err(tio("create", &dir))?;
    let link = dir.join(unit);
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).map_err(tio("replace", &link))?;
    }
    let target_path = if root.join("etc/systemd/system").join(unit).exists() {
        format!("/etc/systemd/system/{unit}")
    } else {
        format!("/lib/systemd/system/{unit}")
    };
    std::os::unix::fs::symlink(target_path, &link).map_err(tio("link", &link))
}

fn mask(root: &Path, unit: &str) -> Result<(), TestImageError> {
    let link = root.join("etc/systemd/system").join(unit);
    std::fs::create_dir_all(link.parent().expect("has parent")).map_err(tio("create", &link))?;
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).map_err(tio("replace", &link))?;
    }
    std::os::unix::fs::symlink("/dev/null", &link).map_err(tio("link", &link))
}

/// Debian bookworm with systemd, booted by the same stage; the agent runs as units.
fn debian_rootfs(spec: &TestImageSpec, root: &Path) -> Result<(), TestImageError> {
    let base = debian_base(&spec.cache)?;
    std::fs::create_dir_all(root).map_err(tio("create", root))?;
    crate::tool::run(
        std::process::Command::new("tar")
            .args(["-x", "-p", "--numeric-owner", "-f"])
            .arg(&base)
            .arg("-C")
            .arg(root),
        "tar",
    )?;
    let agent_dest = root.join("usr/bin/bootyard");
    std::fs::copy(&spec.agent, &agent_dest).map_err(tio("copy", &spec.agent))?;
    write(&root.join("etc/hostname"), 0o644, "bootyard-test\n")?;
    // Empty: systemd makes a transient machine id each boot of the read-only image.
    write(&root.join("etc/machine-id"), 0o444, "")?;
    write(
        &root.join("etc/systemd/network/10-qemu.network"),
        0o644,
        "# QEMU user networking: the host is 10.0.2.2.\n[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n",
    )?;
    enable(root, "systemd-networkd.service", "multi-user.target")?;
    // Nobody logs in on the test console; gettys would only add noise to it.
    mask(root, "serial-getty@ttyS0.service")?;
    mask(root, "getty@tty1.service")?;
    let v = &spec.version;
    write(
        &root.join("etc/systemd/system/bootyard-userspace.service"),
        0o644,
        &format!(
            "[Unit]\nDescription=Tell the console that userspace is up\nDefaultDependencies=no\nAfter=local-fs.target\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo BOOTYARD-USERSPACE version={v} flavor=debian >/dev/console'\n\n[Install]\nWantedBy=sysinit.target\n"
        ),
    )?;
    enable(root, "bootyard-userspace.service", "sysinit.target")?;
    write(
        &root.join("etc/systemd/system/bootyard-boot-assess.service"),
        0o644,
        "[Unit]\nDescription=bootyard boot assessment: health checks, then mark this slot good\nAfter=basic.target network.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/bootyard boot-assess\nStandardOutput=journal+console\nStandardError=journal+console\n\n[Install]\nWantedBy=multi-user.target\n",
    )?;
    if spec.breakage != Some(Breakage::NeverGood) {
        enable(root, "bootyard-boot-assess.service", "multi-user.target")?;
    }
    write(
        &root.join("usr/libexec/bootyard-test-hook"),
        0o755,
        &hook("systemctl poweroff --force --force"),
    )?;
    write(
        &root.join("etc/systemd/system/bootyard-test-hook.service"),
        0o644,
        "[Unit]\nDescription=bootyard test hook (test images only)\nAfter=bootyard-boot-assess.service systemd-networkd.service\n\n[Service]\nType=oneshot\nExecStart=/usr/libexec/bootyard-test-hook\n\n[Install]\nWantedBy=multi-user.target\n",
    )?;
    if spec.breakage != Some(Breakage::NeverGood) {
        enable(root, "bootyard-test-hook.service", "multi-user.target")?;
    }
    if spec.breakage == Some(Breakage::Hang) {
        hanging_init(root)?;
    }
    release_files(root, spec, "debian")
}

/// Writes the root filesystem as a one-layer OCI image into the layout at `layout_dir`,
/// tagged `tag`; returns the manifest digest.
pub fn write_oci(
    root: &Path,
    layout_dir: &Path,
    tag: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<crate::image::Digest, TestImageError> {
    use crate::image::layout::Layout;
    use crate::image::spec::{Compression, Platform};
    let layout = if layout_dir.join("index.json").exists() {
        Layout::open(layout_dir)
    } else {
        Layout::create(layout_dir)
    }?;
    let mut tar = Vec::new();
    crate::image::dirstream::write_tree(root, &mut tar).map_err(tio("archive", root))?;
    let desc = crate::image::sample::write_image(
        &layout,
        &[(tar, Compression::Zstd)],
        &Platform::linux_amd64(),
        labels,
    )?;
    let digest = desc.digest;
    layout.set_tag(desc, tag)?;
    Ok(digest)
}
