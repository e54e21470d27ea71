//! bootyard-conformance: the building blocks of the conformance suite that distro
//! maintainers and CI gates run against an OS image.
//!
//! It defines stable check identifiers ([`CheckId`]), verdicts, the event stream a run emits,
//! and reporters that turn one event stream into JUnit XML, JSON Lines or TAP, each generic
//! over `io::Write`. It runs no checks itself and does not depend on the bootyard agent.

pub mod catalogue;
pub mod check;
pub mod event;
pub mod report;

pub use catalogue::{CheckDef, Level, Profile, CATALOGUE_VERSION, CHECKS};
pub use check::{CheckId, CheckIdError, Verdict};
pub use event::{CheckResult, Event, Outcome, RunInfo, Summary};
pub use report::{Console, JsonLines, Junit, Reporter, Tap};
