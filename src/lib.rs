//! bootyard: a conformance and simulation harness, with a reference node agent, for
//! container-native immutable Linux.
//!
//! This library is the agent (image pipeline so far) plus the glue between the agent and
//! the harness crates (`bootyard-sim`, `bootyard-scenarios`, `bootyard-conformance`), which
//! never depend on it. The `bootyard` binary is a thin CLI over this library.

pub mod accel;
pub mod agent;
pub mod allocator;
pub mod boot;
pub mod cli;
pub mod conformance;
pub mod debpkg;
pub mod disk;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzzing;
pub mod image;
pub mod install;
pub mod localreg;
pub mod mesh;
pub mod meshsim;
pub mod output;
pub mod rollback;
pub mod scenario;
pub mod testimage;
pub mod testkit;
pub mod tool;
pub mod upgrade;
