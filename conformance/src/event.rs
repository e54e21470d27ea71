//! The event stream of a conformance run: one stream, many reporters.

use serde::{Deserialize, Serialize};

use crate::check::{CheckId, Verdict};

/// Version of the event and report formats; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The suite's catalogue version, so reports name what they were checked against.
    pub catalogue_version: String,
    pub profile: String,
    /// What was checked (an image reference or a disk image path).
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub id: CheckId,
    pub title: String,
    pub verdict: Verdict,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub errored: u32,
    pub duration_ms: u64,
}

impl Summary {
    pub fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail { .. } => self.failed += 1,
            Verdict::Skip { .. } => self.skipped += 1,
            Verdict::Error { .. } => self.errored += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.passed + self.failed + self.skipped + self.errored
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
    RunFinished {
        summary: Summary,
    },
}
