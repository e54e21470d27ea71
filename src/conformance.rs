//! The conformance checks that need the image itself (the catalogue, profiles and report
//! formats live in the `bootyard-conformance` crate). This release has the `image` profile's
//! static checks; see `conformance/SPEC.md`.

pub mod boot_checks;
pub mod container;
pub mod decompress;
pub mod elf;
pub mod fixture;
pub mod image_checks;
pub mod initramfs;
pub mod kernel;
pub mod run;

/// An error and its causes on one line (`a: b: c`), for a check's reason.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
