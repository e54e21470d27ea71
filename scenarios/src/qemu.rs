//! QEMU machines launched as processes: the serial console captured to a file and handed
//! over line by line as it arrives, a QMP socket for power and fault injection, and an
//! accelerator probe with a deadline. Every wait takes a deadline; nothing sleeps a fixed
//! time. A machine is killed when its handle is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bootsector;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{binary} is not installed (Debian: apt-get install qemu-system-x86)")]
    Missing { binary: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "machine {machine}: {what} did not happen within {timeout_ms} ms (console log: {console})"
    )]
    Timeout {
        machine: String,
        what: String,
        timeout_ms: u64,
        console: PathBuf,
    },
    #[error(
        "machine {machine} exited ({status}) while waiting for {what} (console log: {console})"
    )]
    Exited {
        machine: String,
        status: String,
        what: String,
        console: PathBuf,
    },
    #[error("QMP {command} failed: {message}")]
    Qmp { command: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// `virtio`, `ide`, `floppy`...
    pub interface: String,
}

#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub name: String,
    pub binary: String,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub drives: Vec<Drive>,
    /// Extra `-device` arguments.
    pub devices: Vec<String>,
    /// QEMU user networking (`-nic user`), with the guest reaching the host's loopback at
    /// 10.0.2.2.
    pub user_net: bool,
    /// Files handed to the guest through QEMU's fw_cfg (`opt/...` names), readable under
    /// /sys/firmware/qemu_fw_cfg/by_name/ in the guest.
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Have SeaBIOS mirror its screen to the serial console, so the firmware phase shows
    /// in the console (GRUB's screen output then shows twice).
    pub firmware_serial: bool,
    /// Firmware image for `-bios` (OVMF for EFI); `None` is QEMU's SeaBIOS.
    pub bios: Option<PathBuf>,
    /// Where the console log, QMP socket and QEMU's own stderr go.
    pub workdir: PathBuf,
}

impl MachineSpec {
    pub fn new(name: &str, workdir: &Path) -> Self {
        Self {
            name: name.into(),
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            kernel: None,
            initrd: None,
            append: None,
            drives: Vec::new(),
            devices: Vec::new(),
            user_net: false,
            fw_cfg: Vec::new(),
            firmware_serial: false,
            bios: None,
            workdir: workdir.to_path_buf(),
        }
    }

    pub fn console_log(&self) -> PathBuf {
        self.workdir.join(format!("{}.console.log", self.name))
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.workdir.join(format!("{}.qmp", self.name))
    }

    /// SeaBIOS reads `etc/sercon-port` as a little-endian integer: COM1's I/O port.
    fn sercon_file(&self) -> PathBuf {
        self.workdir.join("sercon-port.bin")
    }

    /// The full command line, for the launch event and for a person to rerun by hand.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-accel".into(), self.accel.arg().into()];
        a.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ]);
        a.extend(
            [
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
                "-serial",
                "stdio",
            ]
            .map(String::from),
        );
        a.extend([
            "-qmp".into(),
            // QEMU connects to our listener at startup, so nobody polls for a socket to appear.
            format!("unix:{}", self.qmp_socket().display()),
        ]);
        if let Some(b) = &self.bios {
            a.extend(["-bios".into(), b.display().to_string()]);
        }
        if let Some(k) = &self.kernel {
            a.extend(["-kernel".into(), k.display().to_string()]);
        }
        if let Some(i) = &self.initrd {
            a.extend(["-initrd".into(), i.display().to_string()]);
        }
        if let Some(c) = &self.append {
            a.extend(["-append".into(), c.clone()]);
        }
        for d in &self.drives {
            a.extend([
                "-drive".into(),
                format!(
                    "file={},format={},if={}",
                    d.path.display(),
                    d.format,
                    d.interface
                ),
            ]);
        }
        for d in &self.devices {
            a.extend(["-device".into(), d.clone()]);
        }
        if self.user_net {
            // No option ROM: iPXE's banner costs seconds per boot and nothing netboots.
            a.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-pci,netdev=net0,romfile=".into(),
            ]);
        }
        if self.firmware_serial {
            a.extend([
                "-fw_cfg".into(),
                format!("name=etc/sercon-port,file={}", self.sercon_file().display()),
            ]);
        }
        for (name, file) in &self.fw_cfg {
            a.extend([
                "-fw_cfg".into(),
                format!("name={name},file={}", file.display()),
            ]);
        }
        a
    }
}

/// Drops ANSI escape sequences (GRUB and consoles clear the screen and move the cursor);
/// the console log keeps them, the lines handed to callers do not.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// One line of serial console output, with when it arrived (ms since launch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    pub at_ms: u64,
    pub text: String,
}

/// Console lines buffered between QEMU and the caller; QEMU blocks on a full pipe rather
/// than losing output.
const CONSOLE_QUEUE_MAX: usize = 4096;
/// Longest console line kept whole; longer ones are split (a guest printing without
/// newlines must not grow memory without bound).
const CONSOLE_LINE_BYTES_MAX: usize = 16 << 10;

pub struct Machine {
    spec: MachineSpec,
    pid: rustix::process::Pid,
    started: Instant,
    lines: Receiver<ConsoleLine>,
    exit: Receiver<ExitStatus>,
    exited: Option<ExitStatus>,
    /// Bound before launch; QEMU connects to it once. Taken by [`Machine::qmp`].
    qmp_listener: Option<UnixListener>,
    /// A pidfd, opened before the waiter thread can reap QEMU, so a [`Stopper`] never
    /// signals a recycled pid.
    pidfd: std::sync::Arc<std::os::fd::OwnedFd>,
}

/// Kills a machine from another thread (the one that owns it may be blocked reading its
/// console). Signalling a QEMU that is gone does nothing.
#[derive(Clone)]
pub struct Stopper {
    pidfd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl Stopper {
    pub fn kill(&self) {
        // ESRCH: it has exited already, which is what we wanted.
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, rustix::process::Signal::KILL);
    }
}

impl Machine {
    pub fn launch(spec: MachineSpec) -> Result<Self, QemuError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| QemuError::Io { op, path, source }
        };
        std::fs::create_dir_all(&spec.workdir).map_err(io("create", &spec.workdir))?;
        if spec.firmware_serial {
            std::fs::write(spec.sercon_file(), 0x3f8u16.to_le_bytes())
                .map_err(io("write", &spec.sercon_file()))?;
        }
        // A stale socket from an earlier run would make bind fail; if there is none, fine.
        let _ = std::fs::remove_file(spec.qmp_socket());
        let qmp_listener =
            UnixListener::bind(spec.qmp_socket()).map_err(io("listen on", &spec.qmp_socket()))?;
        let stderr_path = spec.workdir.join(format!("{}.qemu.log", spec.name));
        let stderr = std::fs::File::create(&stderr_path).map_err(io("create", &stderr_path))?;
        let mut child = Command::new(&spec.binary)
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    QemuError::Missing {
                        binary: spec.binary.clone(),
                    }
                } else {
                    QemuError::Io {
                        op: "launch",
                        path: PathBuf::from(&spec.binary),
                        source: e,
                    }
                }
            })?;
        let started = Instant::now();
        let pid = rustix::process::Pid::from_child(&child);
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => std::sync::Arc::new(fd),
            Err(e) => {
                // Without it the machine could not be stopped from elsewhere: do not run it.
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::Io {
                    op: "open a pidfd for",
                    path: PathBuf::from(&spec.binary),
                    source: e.into(),
                });
            }
        };
        let stdout = child.stdout.take().expect("stdout was piped");
        let log_path = spec.console_log();
        let mut log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
        let (tx, lines) = sync_channel(CONSOLE_QUEUE_MAX);
        std::thread::Builder::new()
            .name(format!("console-{}", spec.name))
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match (&mut r)
                        .take(CONSOLE_LINE_BYTES_MAX as u64)
                        .read_until(b'\n', &mut buf)
                    {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    // The log is an artifact for people; losing it must not stop the run.
                    let _ = log.write_all(&buf);
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let line = ConsoleLine {
                        at_ms: started.elapsed().as_millis() as u64,
                        text,
                    };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .map_err(io("spawn console reader for", &log_path))?;
        let (exit_tx, exit) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("wait-{}", spec.name))
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = exit_tx.send(status);
                }
            })
            .map_err(io("spawn waiter for", &log_path))?;
        Ok(Self {
            spec,
            pid,
            started,
            lines,
            exit,
            exited: None,
            qmp_listener: Some(qmp_listener),
            pidfd,
        })
    }

    /// A handle that kills this machine from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            pidfd: self.pidfd.clone(),
        }
    }

    pub fn spec(&self) -> &MachineSpec {
        &self.spec
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The next console line, waiting at most until `deadline`.
    pub fn next_line(&mut self, deadline: Instant, what: &str) -> Result<ConsoleLine, QemuError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(self.timeout(what, timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self
                    .wait_exit(deadline)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                Err(QemuError::Exited {
                    machine: self.spec.name.clone(),
                    status,
                    what: what.into(),
                    console: self.spec.console_log(),
                })
            }
        }
    }

    /// Waits for a console line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<ConsoleLine, QemuError> {
        let deadline = Instant::now() + timeout;
        let what = format!("console output {needle:?}");
        loop {
            let line = self.next_line(deadline, &what)?;
            if line.text.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus, QemuError> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.exit.recv_timeout(timeout) {
            Ok(s) => {
                self.exited = Some(s);
                Ok(s)
            }
            Err(_) => Err(self.timeout("QEMU to exit", timeout)),
        }
    }

    fn timeout(&self, what: &str, timeout: Duration) -> QemuError {
        QemuError::Timeout {
            machine: self.spec.name.clone(),
            what: what.into(),
            timeout_ms: timeout.as_millis() as u64,
            console: self.spec.console_log(),
        }
    }

    /// The machine's QMP connection: QEMU connects to us at startup, once.
    pub fn qmp(&mut self, timeout: Duration) -> Result<Qmp, QemuError> {
        let path = self.spec.qmp_socket();
        let listener = self.qmp_listener.take().ok_or_else(|| QemuError::Qmp {
            command: "connect".into(),
            message: "QMP connection already taken".into(),
        })?;
        let deadline = Instant::now() + timeout;
        let mut fds = [rustix::event::PollFd::new(
            &listener,
            rustix::event::PollFlags::IN,
        )];
        let wait = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let ready = rustix::event::poll(&mut fds, Some(&wait)).map_err(|e| QemuError::Io {
            op: "wait for QMP on",
            path: path.clone(),
            source: e.into(),
        })?;
        if ready == 0 {
            return Err(self.timeout("QEMU to connect to QMP", timeout));
        }
        let (stream, _) = listener.accept().map_err(|source| QemuError::Io {
            op: "accept QMP on",
            path: path.clone(),
            source,
        })?;
        Qmp::over(stream, &path, deadline)
    }

    /// Power cut: SIGKILL, no chance for the guest or QEMU to flush anything.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            // ESRCH means it is already gone, which is what we want.
            let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
        // Reap it so no zombie outlives the run; it dies at once after SIGKILL.
        let _ = self.wait_exit(Instant::now() + Duration::from_secs(5));
    }
}

/// A QMP connection: JSON commands in, JSON replies out, asynchronous events set aside.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

/// QMP replies and events are small; a longer line is a broken peer.
const QMP_LINE_BYTES_MAX: u64 = 1 << 20;

impl Qmp {
    /// Speaks QMP over an accepted connection: reads the greeting, negotiates capabilities.
    pub fn over(stream: UnixStream, path: &Path, deadline: Instant) -> Result<Self, QemuError> {
        let io = |op| {
            let path = path.to_path_buf();
            move |source| QemuError::Io { op, path, source }
        };
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100)),
            ))
            .map_err(io("configure QMP socket"))?;
        let writer = stream.try_clone().map_err(io("clone QMP socket"))?;
        let mut q = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::Qmp {
                command: "greeting".into(),
                message: greeting.to_string(),
            });
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self, command: &str) -> Result<Value, QemuError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(QMP_LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
            .map_err(|e| QemuError::Qmp {
                command: command.into(),
                message: e.to_string(),
            })?;
        if n == 0 {
            return Err(QemuError::Qmp {
                command: command.into(),
                message: "QEMU closed the QMP connection".into(),
            });
        }
        serde_json::from_slice(&line).map_err(|e| QemuError::Qmp {
            command: command.into(),
            message: format!("bad JSON from QEMU: {e}"),
        })
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| QemuError::Qmp {
            command: command.into(),
            message: e.to_string(),
        })?;
        loop {
            let m = self.read_message(command)?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QemuError::Qmp {
                    command: command.into(),
                    message: e.to_string(),
                });
            }
            if m.get("event").is_some() {
                self.events.push(m);
                continue;
            }
            return Err(QemuError::Qmp {
                command: command.into(),
                message: format!("unexpected reply {m}"),
            });
        }
    }

    /// `running`, `paused`, `shutdown`...
    pub fn status(&mut self) -> Result<String, QemuError> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}

/// Boots the test boot sector (it exits QEMU through the debug-exit port); returns how
/// long it took. It proves QEMU and the accelerator run firmware, not that they run Linux:
/// the root package's `accel::probe` boots a kernel to choose an accelerator.
pub fn run_probe(
    binary: &str,
    workdir: &Path,
    accel: Accel,
    deadline: Duration,
) -> Result<u64, QemuError> {
    let img = workdir.join("probe-sector.img");
    std::fs::create_dir_all(workdir).map_err(|source| QemuError::Io {
        op: "create",
        path: workdir.to_path_buf(),
        source,
    })?;
    std::fs::write(&img, bootsector::sector(b'K', true)).map_err(|source| QemuError::Io {
        op: "write",
        path: img.clone(),
        source,
    })?;
    let mut spec = MachineSpec::new(&format!("probe-{}", accel.arg()), workdir);
    spec.binary = binary.into();
    spec.accel = accel;
    spec.memory_mib = 16;
    spec.drives.push(Drive {
        path: img,
        format: "raw".into(),
        interface: "floppy".into(),
    });
    spec.devices.push(bootsector::DEBUG_EXIT_DEVICE.into());
    let mut m = Machine::launch(spec)?;
    let end = Instant::now() + deadline;
    let status = m.wait_exit(end)?;
    if status.code() != Some(bootsector::EXIT_STATUS) {
        return Err(QemuError::Exited {
            machine: m.spec.name.clone(),
            status: status.to_string(),
            what: "the probe to finish".into(),
            console: m.spec.console_log(),
        });
    }
    Ok(m.elapsed_ms())
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[H\u{1b}[J\u{1b}[1;1Hbootyard: booting slot active"),
            "bootyard: booting slot active"
        );
        assert_eq!(strip_ansi("plain \u{1b}[0mtext\u{1b}[?25l"), "plain text");
        assert_eq!(strip_ansi("no escapes"), "no escapes");
    }
}
