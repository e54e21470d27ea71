//! A throwaway OCI registry on 127.0.0.1: Debian's `docker-registry` (distribution 2.x) run
//! as a child process with its own storage directory. The quick start serves its sample
//! image from one; the integration tests push to and pull from one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalRegistryError {
    #[error("docker-registry is not installed (Debian: apt-get install docker-registry)")]
    Missing,
    #[error("docker-registry did not answer on {addr} within {timeout_s} s; its log: {log}")]
    NotReady {
        addr: SocketAddr,
        timeout_s: u64,
        log: String,
    },
    #[error("cannot {op}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running registry; stopped and its storage removed on drop.
pub struct LocalRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Credentials to require, as (user, bcrypt hash of the password).
pub struct Htpasswd {
    pub user: String,
    pub bcrypt_hash: String,
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS_MAX: u32 = 5;

impl LocalRegistry {
    pub fn start(auth: Option<&Htpasswd>) -> Result<Self, LocalRegistryError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS_MAX {
            match Self::try_start(auth) {
                Ok(r) => return Ok(r),
                // Another process may have taken the port between probe and bind: try another.
                Err(e @ LocalRegistryError::NotReady { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_start(auth: Option<&Htpasswd>) -> Result<Self, LocalRegistryError> {
        let io = |op| move |source| LocalRegistryError::Io { op, source };
        let dir = tempfile::Builder::new()
            .prefix("bootyard-registry-")
            .tempdir()
            .map_err(io("create registry directory"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("find a free port"))?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some(a) = auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{}\n", a.user, a.bcrypt_hash))
                .map_err(io("write htpasswd"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bootyard\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io("write registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(io("create registry log"))?;
        let log2 = log.try_clone().map_err(io("dup registry log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    LocalRegistryError::Missing
                } else {
                    LocalRegistryError::Io {
                        op: "start docker-registry",
                        source: e,
                    }
                }
            })?;
        let mut reg = Self { child, addr, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = reg.child.try_wait() {
                break;
            }
            if probe(addr) {
                return Ok(reg);
            }
            // Polling a condition with a deadline; the registry starts in well under a second.
            std::thread::sleep(Duration::from_millis(25));
        }
        let log = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
        Err(LocalRegistryError::NotReady {
            addr,
            timeout_s: READY_TIMEOUT.as_secs(),
            log: log.chars().take(2000).collect(),
        })
    }

    /// `127.0.0.1:PORT`, the form image references and `--insecure-registry` take.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry's storage root (distribution's filesystem driver layout).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Path of a blob's data file inside the storage root.
    pub fn blob_data_path(&self, digest: &crate::image::Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    // 200 (open) and 401 (auth configured) both mean the registry is serving.
    s.read_exact(&mut buf).is_ok()
        && buf.starts_with(b"HTTP/1.")
        && (buf[9..12] == *b"200" || buf[9..12] == *b"401")
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        // The child may already have exited; either way it must not outlive us.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
