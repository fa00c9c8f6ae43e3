//! Access to guest code bytes. The engine never dereferences guest addresses itself.

/// Guest code could not be read at the given address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    /// First unreadable address.
    pub addr: u64,
}

/// Source of guest code bytes.
pub trait GuestMemory {
    /// Copies guest bytes starting at `pc` into `buf` and returns how many were copied.
    /// A short count means the bytes after it are unreadable; `Err` (or `Ok(0)`) means not
    /// even the first byte is readable.
    fn read(&self, pc: u64, buf: &mut [u8]) -> Result<usize, MemoryFault>;
}

/// Guest memory backed by a byte slice that is mapped at guest address `base`.
///
/// # Invariants
/// Byte `i` of `bytes` is the guest byte at `base + i`; every other address is unreadable.
#[derive(Clone, Copy, Debug)]
pub struct SliceMemory<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> SliceMemory<'a> {
    /// Guest memory in which `bytes` sit at guest address `base`.
    pub fn new(base: u64, bytes: &'a [u8]) -> Self {
        SliceMemory { base, bytes }
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn read(&self, pc: u64, buf: &mut [u8]) -> Result<usize, MemoryFault> {
        let start = pc
            .checked_sub(self.base)
            .and_then(|off| usize::try_from(off).ok())
            .filter(|&off| off < self.bytes.len())
            .ok_or(MemoryFault { addr: pc })?;
        let src = self.bytes.get(start..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }
}
