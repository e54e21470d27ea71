//! Booting from A/B slots: the GRUB environment block codec and the pure boot-assessment
//! model (tries counter, good/bad marks, which slot GRUB boots next).

pub mod assessment;
pub mod cpio;
pub mod grub;
pub mod grubcfg;
pub mod grubenv;
