//! The agent's sans-IO coordination core: what a node of a mesh knows and decides, as pure
//! state machines (`now` is an argument, randomness comes from a given RNG, no IO). The
//! deterministic simulator and the libp2p driver both run it.
//!
//! - [`token`]: the network token (Kairos format) and what derives from it;
//! - [`ledger`]: the owner-signed, CRDT-merged map nodes converge on;
//! - [`roles`]: role election, Kairos-compatible mode;
//! - [`node`]: one node's state machine: discovery, paths, ledger sync, the default election.

pub mod ledger;
pub mod node;
pub mod roles;
pub mod token;
