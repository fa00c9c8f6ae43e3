// SPDX-License-Identifier: GPL-2.0

//! Load-time proof that iced-x86 runs inside the kernel: decode the first
//! instructions of a real kernel function and log them, so the host can
//! compare them with `objdump` of the same function in `vmlinux`.

use alloc::vec::Vec;
use iced_x86::{Decoder, DecoderOptions, Encoder, Instruction};
use kernel::prelude::*;

/// Instructions decoded from the start of the function.
const COUNT: usize = 8;
/// Upper bound on their bytes (8 instructions of at most 15 bytes).
const WINDOW: usize = COUNT * 15;

pub(crate) fn decode_kernel_function() -> Result {
    let start = kernel::bindings::kfree as usize;
    // SAFETY: `kfree` is a function in the kernel's text, which stays mapped
    // and readable; its first WINDOW bytes lie inside kernel text (functions
    // are followed by more text, never by a hole, within 120 bytes).
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, WINDOW) };
    let mut decoder = Decoder::with_ip(64, bytes, start as u64, DecoderOptions::NONE);
    let mut instrs: Vec<Instruction> = Vec::new();
    instrs.try_reserve(COUNT).map_err(|_| ENOMEM)?;
    while instrs.len() < COUNT && decoder.can_decode() {
        let instr = decoder.decode();
        if instr.is_invalid() {
            pr_err!("undecodable instruction at {:#x}\n", instr.ip());
            return Err(EINVAL);
        }
        instrs.push(instr);
    }
    for instr in &instrs {
        let off = (instr.ip() as usize) - start;
        let mut hex = [0u8; 45];
        let n = hex_bytes(&bytes[off..off + instr.len()], &mut hex);
        let text = core::str::from_utf8(&hex[..n]).unwrap_or("?");
        pr_info!("decode kfree {:#x} {} {:?}\n", instr.ip(), text, instr.mnemonic());
    }
    // Encoding them back must give the same bytes. This also builds iced-x86's
    // encoder tables now, in the heap's load-time chunk, where they stay.
    let mut encoder = Encoder::new(64);
    for instr in &instrs {
        encoder.encode(instr, instr.ip()).map_err(|_| EINVAL)?;
    }
    let encoded = encoder.take_buffer();
    let decoded_len: usize = instrs.iter().map(Instruction::len).sum();
    if encoded.get(..) != bytes.get(..decoded_len) {
        pr_err!("iced-x86 does not encode kfree's instructions back to their bytes\n");
        return Err(EINVAL);
    }
    Ok(())
}

/// Writes `bytes` as lowercase hex without separators; returns the length.
fn hex_bytes(bytes: &[u8], out: &mut [u8; 45]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut n = 0;
    for b in bytes.iter().take(out.len() / 2) {
        out[n] = DIGITS[usize::from(b >> 4)];
        out[n + 1] = DIGITS[usize::from(b & 15)];
        n += 2;
    }
    n
}
