//! The conformance checks that need the image itself (the catalogue, profiles and report
//! formats live in the `bootyard-conformance` crate). This release has the `image` profile's
//! static checks; see `conformance/SPEC.md`.

pub mod container;
pub mod elf;
pub mod fixture;
pub mod image_checks;
pub mod initramfs;
pub mod kernel;
pub mod run;
