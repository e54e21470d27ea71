//! bootyard-scenarios: scenario files and the machinery that runs them.
//!
//! The scenario file format ([`file`]); a sans-IO phase tracker ([`phase`]) that turns
//! console lines and the passage of time (both given by the caller) into phase events with
//! deadlines; and QEMU machines launched as processes ([`qemu`]) with a live serial console,
//! QMP, and a test boot sector ([`bootsector`]). Choosing an accelerator needs a kernel to boot,
//! so it lives in the root package (`bootyard::accel`). Network-namespace topologies come next.
//! This crate does not depend on the bootyard agent.

pub mod bootsector;
pub mod bootwatch;
pub mod file;
pub mod phase;
pub mod qemu;

pub use file::{PhaseSpec, ScenarioError, ScenarioFile};
pub use phase::{PhaseEvent, PhaseTracker};
