//! bootyard-sim: the deterministic discrete-event kernel that the mesh simulator is built on.
//!
//! Time is virtual ([`Instant`] counts microseconds from zero), randomness comes from one
//! seeded [`Rng`], and events with equal timestamps fire in the order they were scheduled, so
//! one seed reproduces a run bit for bit. This crate contains no networking code, never reads
//! the system clock, and has no global state; it does not depend on the bootyard agent.

pub mod kernel;
pub mod net;
pub mod rng;
pub mod swarm;
pub mod time;

pub use kernel::{Kernel, KernelError};
pub use rng::Rng;
pub use time::{Duration, Instant};
