//! Scenario files (`scenarios/*.toml`): a name, and phases that must each be reached before a
//! deadline, recognised by a marker on the machine's console.

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
    #[serde(rename = "phase")]
    pub phases: Vec<PhaseSpec>,
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
