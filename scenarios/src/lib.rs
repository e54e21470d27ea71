//! bootyard-scenarios: scenario files and the machinery that runs them.
//!
//! So far: the scenario file format ([`file`]) and a sans-IO phase tracker ([`phase`]) that
//! turns console lines and the passage of time (both given by the caller) into phase events
//! with deadlines. Launching QEMU and building network-namespace topologies come next; this
//! crate does not depend on the bootyard agent.

pub mod file;
pub mod phase;

pub use file::{PhaseSpec, ScenarioError, ScenarioFile};
pub use phase::{PhaseEvent, PhaseTracker};
