//! A 512-byte BIOS boot sector that prints one character on the first serial port and
//! asks QEMU to exit through the `isa-debug-exit` device. It needs no kernel and no disk
//! image beyond itself, so it probes whether an accelerator actually runs guest code, and it
//! gives the runner's tests a guest that boots in a fraction of a second.

/// The `isa-debug-exit` device the sector writes to, as a `-device` argument.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// The value written to the device; QEMU exits with `(value << 1) | 1`.
pub const EXIT_VALUE: u8 = 0x10;
/// QEMU's exit status when the sector ran to its end.
pub const EXIT_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;

/// A sector that prints `marker` and a newline on COM1, then exits QEMU. With `exit` false
/// it prints and then spins forever, for tests that need a guest that stays up.
pub fn sector(marker: u8, exit: bool) -> [u8; 512] {
    let mut code = vec![
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, marker, // mov al, marker
        0xEE,   // out dx, al
        0xB0, b'\n', // mov al, '\n'
        0xEE,  // out dx, al
    ];
    if exit {
        code.extend_from_slice(&[0xB0, EXIT_VALUE, 0xE6, 0xF4]); // mov al, EXIT_VALUE; out 0xf4, al
    }
    code.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp back to hlt
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn sector_is_bootable_and_carries_the_marker() {
        let s = super::sector(b'Q', true);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        assert_eq!(s[4], b'Q');
    }
}
