//! The agent's configuration, shipped inside the OS image at `/etc/bootyard/agent.toml`:
//! how the boot stage sets the system up and which health checks decide that a boot is good.
//! Every field has a default, so an image without the file boots with sensible behaviour.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const PATH: &str = "etc/bootyard/agent.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub boot: BootConfig,
    pub health: HealthConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BootConfig {
    /// A boot that has not passed its health checks after this many seconds is reset by
    /// the kernel's watchdog, spending one of the slot's tries. 0 disables the watchdog.
    pub watchdog_sec: u32,
    /// Directories of the read-only root given a writable tmpfs overlay for this boot.
    pub overlays: Vec<PathBuf>,
    /// The init the stage hands over to, inside the slot image.
    pub init: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Extra checks, run in order after the built-in ones; each must exit 0 in time.
    pub checks: Vec<CommandCheck>,
    /// Reboot as soon as a check fails (spending a try now rather than at the watchdog).
    pub reboot_on_failure: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    pub name: String,
    /// argv; the first element is the program.
    pub command: Vec<String>,
    #[serde(default = "default_check_timeout")]
    pub timeout_sec: u32,
}

fn default_check_timeout() -> u32 {
    30
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            watchdog_sec: 300,
            overlays: vec!["/etc".into(), "/var".into()],
            init: "/sbin/init".into(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            checks: Vec::new(),
            reboot_on_failure: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

impl AgentConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        for o in &c.boot.overlays {
            if !o.is_absolute()
                || o.components().any(|c| c.as_os_str() == "..")
                || o == Path::new("/")
            {
                return Err(invalid(format!(
                    "overlay {} must be an absolute directory below /",
                    o.display()
                )));
            }
        }
        if !c.boot.init.is_absolute() {
            return Err(invalid(format!(
                "init {} must be an absolute path",
                c.boot.init.display()
            )));
        }
        for ch in &c.health.checks {
            if ch.command.is_empty() {
                return Err(invalid(format!("check {:?} has an empty command", ch.name)));
            }
            if ch.timeout_sec == 0 {
                return Err(invalid(format!("check {:?} has a zero timeout", ch.name)));
            }
        }
        Ok(c)
    }

    /// Reads the configuration of the root filesystem at `root`; no file means defaults.
    pub fn load(root: &Path) -> Result<Self, ConfigError> {
        let path = root.join(PATH);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("agent.toml");
        assert_eq!(AgentConfig::parse("", p).unwrap(), AgentConfig::default());
        let c = AgentConfig::parse(
            "[boot]\nwatchdog_sec = 40\n[[health.checks]]\nname = \"api\"\ncommand = [\"/bin/true\"]\n",
            p,
        )
        .unwrap();
        assert_eq!(c.boot.watchdog_sec, 40);
        assert_eq!(c.boot.overlays, BootConfig::default().overlays);
        assert_eq!(c.health.checks[0].timeout_sec, 30);
    }

    #[test]
    fn bad_configs_are_named() {
        let p = Path::new("agent.toml");
        for (text, says) in [
            ("[boot]\nwatchdog = 1\n", "not a valid"),
            ("[boot]\noverlays = [\"etc\"]\n", "absolute directory"),
            ("[boot]\noverlays = [\"/\"]\n", "absolute directory"),
            (
                "[[health.checks]]\nname = \"x\"\ncommand = []\n",
                "empty command",
            ),
        ] {
            let e = AgentConfig::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
