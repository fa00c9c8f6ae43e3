//! Fetching and decoding guest instructions.

use alloc::vec::Vec;
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use crate::error::Error;
use crate::memory::GuestMemory;

/// Most guest instructions in one fragment. 64 * 15 bytes fit in [`WINDOW`], so a block is
/// never cut short by the fetch window.
pub(crate) const MAX_BLOCK_INSNS: usize = 64;
/// Guest bytes fetched per fragment.
pub(crate) const WINDOW: usize = 1024;

/// Guest code bytes fetched for one fragment.
///
/// # Invariants
/// `bytes[..len]` are the guest bytes at `pc..pc + len`; the byte after them is unreadable
/// when `len < WINDOW`.
pub(crate) struct Window {
    pub pc: u64,
    pub bytes: Vec<u8>,
    pub len: usize,
}

impl Window {
    /// Reads up to [`WINDOW`] bytes at `pc` into `buf` (reused, reserved by the caller with
    /// room for [`WINDOW`] bytes; on the heap because the kernel stack is small). On error the
    /// buffer is lost (the next translation reserves it anew, fallibly).
    pub fn fetch(mem: &dyn GuestMemory, pc: u64, mut buf: Vec<u8>) -> Result<Window, Error> {
        buf.resize(WINDOW, 0);
        let len = mem
            .read(pc, &mut buf)
            .map_err(|_| Error::GuestMemory { pc })?
            .min(WINDOW);
        if len == 0 {
            return Err(Error::GuestMemory { pc });
        }
        Ok(Window {
            pc,
            bytes: buf,
            len,
        })
    }

    /// The guest bytes of `insn` (empty if outside the window).
    pub fn insn_bytes(&self, insn: &Instruction) -> &[u8] {
        let start = insn.ip().wrapping_sub(self.pc) as usize;
        start
            .checked_add(insn.len())
            .and_then(|end| self.bytes.get(..self.len)?.get(start..end))
            .unwrap_or(&[])
    }

    /// A decoder over the window, positioned at its start.
    pub fn decoder(&self) -> BlockDecoder<'_> {
        let data = self.bytes.get(..self.len).unwrap_or(&[]);
        BlockDecoder {
            decoder: Decoder::with_ip(64, data, self.pc, DecoderOptions::NONE),
            data,
            pc: self.pc,
        }
    }

    /// The error for bytes that end before an instruction does: `Undecodable` if no
    /// continuation could make them valid (checked by padding them to the maximum
    /// instruction length with zeros, which iced rejects only for invalid prefixes and
    /// opcodes), else `GuestMemory` (the rest is unreadable).
    pub(crate) fn truncated(data: &[u8], ip: u64) -> Error {
        let mut padded = [0u8; 15];
        let n = data.len().min(15);
        if let (Some(dst), Some(src)) = (padded.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        let mut decoder = Decoder::with_ip(64, &padded, ip, DecoderOptions::NONE);
        let _ = decoder.decode();
        match decoder.last_error() {
            DecoderError::InvalidInstruction => Error::Undecodable { pc: ip },
            _ => Error::GuestMemory { pc: ip },
        }
    }
}

/// Decodes and encodes one instruction, so that iced builds its decoder and encoder tables
/// (one-time allocations behind `lazy_static`) now rather than in the first translation.
pub(crate) fn warm_up(buf: &mut Vec<u8>) {
    let mut decoder = Decoder::with_ip(64, &[0x90], 0, DecoderOptions::NONE);
    let nop = decoder.decode();
    let mut encoder = iced_x86::Encoder::new(64);
    buf.clear();
    encoder.set_buffer(core::mem::take(buf));
    let _ = encoder.encode(&nop, 0);
    *buf = encoder.take_buffer();
    buf.clear();
}

/// Decodes a block's instructions one after the other (one iced decoder per block).
pub(crate) struct BlockDecoder<'w> {
    decoder: Decoder<'w>,
    data: &'w [u8],
    /// Guest address of `data[0]`.
    pc: u64,
}

impl BlockDecoder<'_> {
    /// Decodes the next instruction, which starts at guest address `ip`.
    pub fn next(&mut self, ip: u64) -> Result<Instruction, Error> {
        let mut insn = Instruction::default();
        self.decoder.decode_out(&mut insn);
        match self.decoder.last_error() {
            DecoderError::None => Ok(insn),
            DecoderError::NoMoreBytes => {
                let start = usize::try_from(ip.wrapping_sub(self.pc)).unwrap_or(usize::MAX);
                Err(Window::truncated(self.data.get(start..).unwrap_or(&[]), ip))
            }
            _ => Err(Error::Undecodable { pc: ip }),
        }
    }
}
