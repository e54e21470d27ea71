//! The event stream of a conformance run: one stream, many reporters.

use serde::{Deserialize, Serialize};

use crate::catalogue::Level;
use crate::check::{CheckId, Verdict};

/// Version of the event and report formats; bumped on any incompatible change.
/// 2: the `property` event (facts about the run learnt while it ran, such as the
/// accelerator the boots ran under).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The suite's catalogue version, so reports name what they were checked against.
    pub catalogue_version: String,
    /// The profiles run, comma-separated (`image,container`).
    pub profile: String,
    /// What was checked (an image reference or a disk image path).
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub id: CheckId,
    pub title: String,
    pub level: Level,
    pub verdict: Verdict,
    pub duration_ms: u64,
    /// Files that explain the verdict (a failed boot's console log), as paths.
    pub attachments: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub warned: u32,
    pub skipped: u32,
    pub errored: u32,
    pub duration_ms: u64,
}

impl Summary {
    pub fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail { .. } => self.failed += 1,
            Verdict::Warn { .. } => self.warned += 1,
            Verdict::Skip { .. } => self.skipped += 1,
            Verdict::Error { .. } => self.errored += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.passed + self.failed + self.warned + self.skipped + self.errored
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        schema_version: u32,
        run: RunInfo,
        planned: u32,
    },
    CheckFinished {
        result: CheckResult,
    },
    /// A fact about the run, known once some checks have run (which accelerator the boots
    /// ran under, and why). A later property of the same name replaces an earlier one.
    Property {
        name: String,
        value: String,
    },
    RunFinished {
        summary: Summary,
    },
}

/// What a run tells a gate, as the process's exit status. A failed MUST check outweighs a
/// harness error, which outweighs a MUST check that could not run: a gate that only looks at
/// the exit status never reads a skip or an error as a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check passed or warned (SHOULD/MAY failures, denylisted failures), and no MUST
    /// check was skipped. Exit status 0.
    Passed,
    /// At least one MUST check failed. Exit status 1.
    Failed,
    /// No MUST check failed, but at least one check could not reach a verdict. Exit status 5.
    Errored,
    /// Nothing failed or errored, but a MUST check was skipped (no container engine, no QEMU,
    /// no image config): the image was not fully judged. Exit status 6.
    Incomplete,
}

impl Outcome {
    pub fn of(results: &[CheckResult]) -> Self {
        let any = |f: fn(&CheckResult) -> bool| results.iter().any(f);
        if any(|r| matches!(r.verdict, Verdict::Fail { .. })) {
            Outcome::Failed
        } else if any(|r| matches!(r.verdict, Verdict::Error { .. })) {
            Outcome::Errored
        } else if any(|r| r.level == Level::Must && matches!(r.verdict, Verdict::Skip { .. })) {
            Outcome::Incomplete
        } else {
            Outcome::Passed
        }
    }

    /// The process exit status. 2 is left to usage errors, and 3 and 4 to the image and
    /// source errors every bootyard command shares (a corrupt image, an unreachable registry).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Failed => 1,
            Outcome::Errored => 5,
            Outcome::Incomplete => 6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(level: Level, verdict: Verdict) -> CheckResult {
        CheckResult {
            id: "IMG-001".parse().unwrap(),
            title: "t".into(),
            level,
            verdict,
            duration_ms: 0,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn the_exit_status_never_reads_a_skip_or_an_error_as_a_pass() {
        let why = || "why".to_string();
        let pass = r(Level::Must, Verdict::Pass);
        let warn = r(Level::Should, Verdict::Warn { reason: why() });
        let fail = r(Level::Must, Verdict::Fail { reason: why() });
        let error = r(Level::Should, Verdict::Error { reason: why() });
        let must_skip = r(Level::Must, Verdict::Skip { reason: why() });
        let may_skip = r(Level::May, Verdict::Skip { reason: why() });
        let code = |rs: &[&CheckResult]| {
            Outcome::of(&rs.iter().map(|r| (*r).clone()).collect::<Vec<_>>()).exit_code()
        };
        assert_eq!(code(&[&pass, &warn, &may_skip]), 0);
        assert_eq!(code(&[&pass, &must_skip]), 6);
        assert_eq!(code(&[&must_skip, &error]), 5);
        assert_eq!(code(&[&error, &fail, &must_skip]), 1);
        assert_eq!(code(&[]), 0);
    }
}
