//! Disk layout: GUID partition tables written to and read back from image files or block
//! devices, without root or partitioning tools.

pub mod fill;
pub mod gpt;
