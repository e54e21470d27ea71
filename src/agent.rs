//! The node agent's on-node parts: the initrd boot stage, health checks and boot
//! assessment, the agent's configuration, and the Linux calls they make.

pub mod config;
pub mod health;
pub mod kmod;
pub mod stage;
pub mod sys;
