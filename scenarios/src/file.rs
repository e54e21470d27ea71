//! Scenario files (`scenarios/*.toml`): a name; the test OS images a run builds; the steps it
//! takes (install, boot, upgrade, rollback, status); and the phases every boot must reach
//! before their deadlines, recognised by a marker on the machine's console.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// The format version this crate reads.
pub const SCENARIO_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub schema: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Test OS flavors the scenario runs on (`busybox`, `debian`); one run per flavor.
    #[serde(default = "default_flavors")]
    pub flavors: Vec<String>,
    /// Boot attempts a newly written slot gets.
    #[serde(default = "default_tries")]
    pub tries: u8,
    /// Seconds an unproven boot may run before the node's watchdog resets it.
    #[serde(default = "default_watchdog_sec")]
    pub watchdog_sec: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// `bios` (SeaBIOS) or `efi` (OVMF); installed disks boot either way.
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default, rename = "image")]
    pub images: Vec<ImageSpec>,
    #[serde(default, rename = "step")]
    pub steps: Vec<StepSpec>,
    #[serde(rename = "phase")]
    pub phases: Vec<PhaseSpec>,
}

fn default_flavors() -> Vec<String> {
    vec!["busybox".into()]
}
fn default_tries() -> u8 {
    3
}
fn default_watchdog_sec() -> u32 {
    60
}
fn default_memory_mib() -> u32 {
    512
}

pub const FLAVORS: &[&str] = &["busybox", "debian"];
pub const BREAKAGES: &[&str] = &["panic", "hang", "never-good", "health-fails"];

/// A test OS image the run builds, by the version it calls itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub version: String,
    /// Make it deliberately bad: one of [`BREAKAGES`].
    #[serde(default)]
    pub breakage: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    #[default]
    Bios,
    Efi,
}

/// Where an upgrade runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeFrom {
    /// `bootyard upgrade` inside the booted node, pulling from the harness's registry.
    #[default]
    Node,
    /// `bootyard upgrade --disk` on the host, for preparing a state fast.
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StepSpec {
    /// Install an image onto a fresh disk.
    Install { image: String },
    /// Power on `times` times; every boot is checked against the boot-assessment model.
    Boot {
        #[serde(default = "one")]
        times: u32,
    },
    /// Upgrade to an image (a boot in itself when it runs on the node).
    Upgrade {
        image: String,
        #[serde(default)]
        from: UpgradeFrom,
    },
    /// Manual rollback on the node (a boot in itself).
    Rollback,
    /// Read the slots back from the disk; they must match the model.
    Status {
        #[serde(default)]
        why_contains: Option<String>,
    },
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    /// Seconds allowed from the end of the previous phase.
    pub deadline_s: u64,
    /// Text whose appearance on the console completes the phase.
    pub marker: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// Longest deadline accepted for one phase: a day. Anything longer is a typo, not a test.
pub const PHASE_DEADLINE_S_MAX: u64 = 86_400;

impl ScenarioFile {
    pub fn parse(text: &str, path: &str) -> Result<Self, ScenarioError> {
        let f: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let invalid = |problem: String| {
            Err(ScenarioError::Invalid {
                path: path.into(),
                problem,
            })
        };
        if f.schema != SCENARIO_SCHEMA {
            return invalid(format!(
                "schema {} is not supported (this bootyard reads schema {SCENARIO_SCHEMA})",
                f.schema
            ));
        }
        if f.name.trim().is_empty() {
            return invalid("name is empty".into());
        }
        if f.phases.is_empty() {
            return invalid("has no [[phase]]".into());
        }
        for fl in &f.flavors {
            if !FLAVORS.contains(&fl.as_str()) {
                return invalid(format!("flavor {fl:?} is not one of {FLAVORS:?}"));
            }
        }
        if f.tries == 0 || f.tries > 9 {
            return invalid(format!("tries {} is not in 1..=9", f.tries));
        }
        let mut versions = BTreeSet::new();
        for i in &f.images {
            if i.version.is_empty()
                || !i
                    .version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return invalid(format!(
                    "image version {:?} must be letters, digits, '.', '_' or '-' (it becomes a tag)",
                    i.version
                ));
            }
            if !versions.insert(i.version.as_str()) {
                return invalid(format!("image {:?} appears twice", i.version));
            }
            if let Some(b) = &i.breakage {
                if !BREAKAGES.contains(&b.as_str()) {
                    return invalid(format!(
                        "image {:?}: breakage {b:?} is not one of {BREAKAGES:?}",
                        i.version
                    ));
                }
            }
        }
        for (n, st) in f.steps.iter().enumerate() {
            let image = match st {
                StepSpec::Install { image } | StepSpec::Upgrade { image, .. } => Some(image),
                StepSpec::Boot { times: 0 } => {
                    return invalid(format!("step {}: boot times must be at least 1", n + 1))
                }
                _ => None,
            };
            if let Some(image) = image {
                if !versions.contains(image.as_str()) {
                    return invalid(format!(
                        "step {}: image {image:?} is not one of the [[image]]s",
                        n + 1
                    ));
                }
            }
            if n == 0 && !f.steps.is_empty() && !matches!(st, StepSpec::Install { .. }) {
                return invalid("the first step must install an image".into());
            }
        }
        let mut seen = BTreeSet::new();
        for p in &f.phases {
            if !seen.insert(p.name.as_str()) {
                return invalid(format!("phase {:?} appears twice", p.name));
            }
            if p.deadline_s == 0 || p.deadline_s > PHASE_DEADLINE_S_MAX {
                return invalid(format!(
                    "phase {:?} has deadline_s {}, expected 1..={PHASE_DEADLINE_S_MAX}",
                    p.name, p.deadline_s
                ));
            }
            if p.marker.is_empty() {
                return invalid(format!("phase {:?} has an empty marker", p.name));
            }
        }
        Ok(f)
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema = 1
name = "boot"
[[phase]]
name = "kernel"
deadline_s = 30
marker = "Linux version"
[[phase]]
name = "agent"
deadline_s = 60
marker = "bootyard: boot-complete"
"#;

    #[test]
    fn parses_a_valid_file() {
        let f = ScenarioFile::parse(GOOD, "t.toml").unwrap();
        assert_eq!(f.phases.len(), 2);
        assert_eq!(f.phases[1].marker, "bootyard: boot-complete");
    }

    #[test]
    fn clear_errors_for_bad_files() {
        let cases = [
            (GOOD.replace("schema = 1", "schema = 9"), "schema 9"),
            (GOOD.replace("\"agent\"", "\"kernel\""), "appears twice"),
            (
                GOOD.replace("deadline_s = 60", "deadline_s = 0"),
                "deadline_s 0",
            ),
            (
                GOOD.replace("deadline_s = 60", "deadline_s = \"soon\""),
                "not valid",
            ),
            (
                GOOD.replace(
                    "marker = \"Linux version\"",
                    "marker = \"Linux version\"\ntypo = 1",
                ),
                "unknown field",
            ),
        ];
        for (text, needle) in cases {
            let err = ScenarioFile::parse(&text, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} does not mention {needle}");
        }
    }
}
