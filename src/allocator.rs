//! Tuning for the mimalloc allocator the `bootyard` binary and the benches run on.
//!
//! A simulated mesh builds up its state in its first virtual seconds, frees and reallocates
//! millions of small buffers, and ends. mimalloc by default gives freed memory back to the
//! operating system after a second and faults it in again when it is needed: every page comes
//! back zeroed by the kernel. On the development VM that was 0.07–0.35 s of system time in
//! a 1.5 s run of 1,000 nodes. A run keeps its freed memory instead: its peak is what it
//! is either way, and the process gives everything back when it exits. The agent, which
//! runs for months, keeps the default.

use std::ffi::{c_int, c_long};

// The functions below live in mimalloc's C library, linked through this crate.
use mimalloc as _;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h of the
/// libmimalloc-sys version in Cargo.lock): milliseconds before freed memory is returned
/// to the OS, -1 for never. Checked by the test below against the option's default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// Keeps freed memory in the process for reuse (see the module docs). Takes effect for
/// memory freed from now on; call it before the run starts.
pub fn keep_freed_memory() {
    // SAFETY: mimalloc's option calls take plain integers and may be called at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// The purge delay now in force (milliseconds; -1: never).
pub fn purge_delay() -> c_long {
    // SAFETY: as above.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_index_names_the_purge_delay() {
        // The default purge delay is 1,000 ms, and no other option of v3 defaults to
        // 1,000 (unless the environment overrides it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay(), 1000);
        }
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
