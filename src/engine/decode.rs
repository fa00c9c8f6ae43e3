//! Fetching and decoding guest instructions.

use alloc::vec;
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
    /// Reads up to [`WINDOW`] bytes at `pc`.
    pub fn fetch(mem: &dyn GuestMemory, pc: u64) -> Result<Window, Error> {
        // On the heap: the kernel stack is small.
        let mut w = Window { pc, bytes: vec![0; WINDOW], len: 0 };
        w.len = mem.read(pc, &mut w.bytes).map_err(|_| Error::GuestMemory { pc })?.min(WINDOW);
        if w.len == 0 {
            return Err(Error::GuestMemory { pc });
        }
        Ok(w)
    }

    /// The guest bytes of `insn` (empty if outside the window).
    pub fn insn_bytes(&self, insn: &Instruction) -> &[u8] {
        let start = insn.ip().wrapping_sub(self.pc) as usize;
        start
            .checked_add(insn.len())
            .and_then(|end| self.bytes.get(..self.len)?.get(start..end))
            .unwrap_or(&[])
    }

    /// Decodes the instruction at guest address `ip`.
    pub fn decode(&self, ip: u64) -> Result<Instruction, Error> {
        let start = ip.wrapping_sub(self.pc) as usize;
        let data = self.bytes.get(..self.len).and_then(|b| b.get(start..)).unwrap_or(&[]);
        let mut decoder = Decoder::with_ip(64, data, ip, DecoderOptions::NONE);
        let insn = decoder.decode();
        match decoder.last_error() {
            DecoderError::None => Ok(insn),
            DecoderError::NoMoreBytes => Err(Self::truncated(data, ip)),
            _ => Err(Error::Undecodable { pc: ip }),
        }
    }

    /// The error for bytes that end before an instruction does: `Undecodable` if no
    /// continuation could make them valid (checked by padding them to the maximum
    /// instruction length with zeros, which iced rejects only for invalid prefixes and
    /// opcodes), else `GuestMemory` (the rest is unreadable).
    fn truncated(data: &[u8], ip: u64) -> Error {
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
