//! The Linux calls the agent makes on a node: mounts, loop devices, the watchdog, ext4
//! checkpoints, reboot. Thin and typed, so the stage and the upgrade read as steps.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no block device labelled {label} appeared within {waited_ms} ms (saw: {seen})")]
    NoDevice {
        label: String,
        waited_ms: u64,
        seen: String,
    },
}

pub fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SysError {
    let path = path.to_path_buf();
    move |source| SysError::Io { op, path, source }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from the agent have no NUL")
}

fn check(rc: libc::c_int, op: &'static str, path: &Path) -> Result<(), SysError> {
    if rc != 0 {
        return Err(io(op, path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// mount(2). `data` is the filesystem's option string.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SysError> {
    let src = CString::new(source).expect("no NUL");
    let fs = CString::new(fstype).expect("no NUL");
    let data = data.map(|d| CString::new(d).expect("no NUL"));
    let t = cstr(target);
    // SAFETY: every pointer is a live NUL-terminated string or null for no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            t.as_ptr(),
            fs.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(rc, "mount", target)
}

/// Moves the mount at `from` to `to` (MS_MOVE).
pub fn move_mount(from: &Path, to: &Path) -> Result<(), SysError> {
    let (f, t) = (cstr(from), cstr(to));
    // SAFETY: live NUL-terminated strings; MS_MOVE ignores fstype and data.
    let rc = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    check(rc, "move mount to", to)
}

pub fn chroot(path: &Path) -> Result<(), SysError> {
    let p = cstr(path);
    // SAFETY: a live NUL-terminated string.
    check(unsafe { libc::chroot(p.as_ptr()) }, "chroot into", path)
}

/// The ext4 label of a block device or image, if it holds ext2/3/4.
pub fn ext4_label(dev: &Path) -> Option<String> {
    crate::image::slot::read_label(dev)
}

/// Waits for a block device whose ext4 label is `label`. The initrd has no udev to wait
/// on and disks are probed asynchronously, so sysfs is re-read every 25 ms until the
/// deadline: a bounded poll, and the boot fails with what was seen when it runs out.
pub fn wait_for_label(label: &str, deadline: Duration) -> Result<PathBuf, SysError> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
            let mut names: Vec<_> = rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                let dev = PathBuf::from("/dev").join(&n);
                match ext4_label(&dev) {
                    Some(l) if l == label => return Ok(dev),
                    Some(l) => seen.push(format!("{n}={l}")),
                    None => seen.push(n),
                }
            }
        }
        if start.elapsed() >= deadline {
            return Err(SysError::NoDevice {
                label: label.into(),
                waited_ms: start.elapsed().as_millis() as u64,
                seen: if seen.is_empty() {
                    "no block devices".into()
                } else {
                    seen.join(", ")
                },
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// <linux/loop.h>
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

/// Attaches `image` read-only to a free loop device, detached again when unmounted. The
/// returned handle must stay open until the device is mounted: with autoclear, the last
/// close of an unmounted loop device detaches it.
pub fn loop_attach(image: &Path) -> Result<(PathBuf, File), SysError> {
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = File::open(ctl_path).map_err(io("open", ctl_path))?;
    let img = File::open(image).map_err(io("open", image))?;
    // Another process may take the free device between the two calls: try a few times.
    let mut last = None;
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io("get a free loop device from", ctl_path)(
                std::io::Error::last_os_error(),
            ));
        }
        let dev_path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = File::open(&dev_path).map_err(io("open", &dev_path))?;
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor, open for the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, img.as_raw_fd()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                last = Some(e);
                continue;
            }
            return Err(io("attach a loop device to", image)(e));
        }
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = image.as_os_str().as_bytes();
        let n = name.len().min(info.lo_file_name.len() - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        // SAFETY: LOOP_SET_STATUS64 reads a loop_info64 that lives across the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &info) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // Not autoclear yet: detach by hand, or the device stays bound.
            // SAFETY: LOOP_CLR_FD takes no argument.
            unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
            return Err(io("configure loop device", &dev_path)(e));
        }
        return Ok((dev_path, dev));
    }
    Err(io("attach a loop device to", image)(last.unwrap_or_else(
        || std::io::Error::other("no free loop device"),
    )))
}

const WATCHDOG: &str = "/dev/watchdog";
/// _IOWR('W', 6, int)
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// Starts the watchdog with `seconds` and lets go of it without the magic close: nobody
/// pets it, so the kernel resets the machine when the time is up unless [`watchdog_disarm`]
/// runs first.
pub fn watchdog_arm(seconds: u32) -> Result<(), SysError> {
    let p = Path::new(WATCHDOG);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(io("open", p))?;
    let mut t = seconds as libc::c_int;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int that lives across the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT, &mut t) };
    check(rc, "set the timeout of", p)?;
    f.write_all(b"\0").map_err(io("ping", p))
}

/// Stops the watchdog: the magic close ('V' before closing).
pub fn watchdog_disarm() -> Result<(), SysError> {
    let p = Path::new(WATCHDOG);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(io("open", p))?;
    f.write_all(b"V").map_err(io("stop", p))
}

/// _IOW('f', 43, __u32)
const EXT4_IOC_CHECKPOINT: libc::c_ulong = 0x4004_662B;

/// Makes everything written under `dir` durable *in place*: fsync, then an ext4 journal
/// checkpoint. GRUB reads ext4 without replaying the journal, so a step is only done for
/// the bootloader once its metadata has left the journal.
pub fn durable(dir: &Path) -> Result<(), SysError> {
    let d = File::open(dir).map_err(io("open", dir))?;
    d.sync_all().map_err(io("sync", dir))?;
    // SAFETY: syncfs on an open fd.
    check(
        unsafe { libc::syncfs(d.as_raw_fd()) },
        "sync the filesystem of",
        dir,
    )?;
    let flags: u32 = 0;
    // SAFETY: EXT4_IOC_CHECKPOINT reads one u32 of flags.
    let rc = unsafe { libc::ioctl(d.as_raw_fd(), EXT4_IOC_CHECKPOINT, &flags) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // No journal (ENODEV: the metadata is already in place), not ext4, a kernel before
        // 5.13, or no CAP_SYS_ADMIN (tests as a user; the agent runs as root): the sync
        // above is all there is.
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENODEV | libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM)
        ) {
            return Err(io("checkpoint the journal of", dir)(e));
        }
    }
    Ok(())
}

/// True when `dir` is on a tmpfs (memory).
pub fn on_tmpfs(dir: &Path) -> bool {
    let p = cstr(dir);
    // SAFETY: statfs fills the struct it is given; all-zero is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a live NUL-terminated path and a struct that outlives the call.
    let rc = unsafe { libc::statfs(p.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// Syncs and reboots at once (no init involved: this is also what pid 1 does when the
/// boot cannot go on).
pub fn reboot_now() -> std::io::Error {
    // SAFETY: sync takes nothing; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::io::Error::last_os_error()
}

/// Writes one line to the console, where the harness reads it whatever init runs the
/// agent (systemd gives services the journal, not the console); stderr when there is none.
pub fn console_line(line: &str) {
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if wrote.is_err() {
        eprintln!("{line}");
    }
}
