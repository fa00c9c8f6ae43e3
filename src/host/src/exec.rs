//! Executable memory for the code cache and guest stacks.

use std::io;
use std::ptr::NonNull;

/// An anonymous read-write-execute mapping, unmapped on drop.
///
/// # Invariants
/// `ptr..ptr + len` is mapped readable, writable and executable for the lifetime of the
/// value and aliased by nothing else in safe code.
pub struct ExecMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it between threads is fine.
unsafe impl Send for ExecMemory {}

impl ExecMemory {
    fn map(len: usize, hint: usize, extra: i32, prot: i32) -> io::Result<Self> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra;
        // SAFETY: an anonymous mapping; `extra` is MAP_FIXED_NOREPLACE (never replaces
        // existing mappings), MAP_32BIT or nothing.
        let p = unsafe { libc::mmap(hint as *mut libc::c_void, len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(ExecMemory { ptr, len })
    }

    /// `len` bytes anywhere.
    pub fn new(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            0,
            0,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    }

    /// `len` bytes in the low 2 GiB (`MAP_32BIT`), where absolute disp32 addresses reach
    /// them as they reach a kernel code cache in the top 2 GiB.
    pub fn low(len: usize) -> io::Result<Self> {
        let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let m = Self::map(len, 0, libc::MAP_32BIT, prot)?;
        if (m.ptr.as_ptr() as u64).saturating_add(len as u64) > 1 << 31 {
            return Err(io::Error::other("MAP_32BIT mapping above 2 GiB"));
        }
        Ok(m)
    }

    /// `len` bytes within ±1 GiB of `addr` (so code there reaches `addr` with rel32).
    pub fn near(len: usize, addr: u64) -> io::Result<Self> {
        Self::at_offsets(
            len,
            addr,
            &[
                1 << 28,
                -(1 << 28),
                1 << 29,
                -(1 << 29),
                3 << 28,
                -(3 << 28),
            ],
        )
    }

    /// `len` bytes more than 4 GiB away from `addr` (so RIP-relative references to `addr`
    /// are out of reach).
    pub fn far(len: usize, addr: u64) -> io::Result<Self> {
        Self::at_offsets(
            len,
            addr,
            &[
                1 << 33,
                -(1 << 33),
                1 << 34,
                -(1 << 34),
                1 << 36,
                -(1 << 36),
            ],
        )
    }

    fn at_offsets(len: usize, addr: u64, offsets: &[i64]) -> io::Result<Self> {
        let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        for off in offsets {
            let hint = (addr as i64).wrapping_add(*off) as u64 & !0xfff_u64;
            if hint < 0x10000 || hint >= (1 << 47) - len as u64 {
                continue;
            }
            if let Ok(m) = Self::map(len, hint as usize, libc::MAP_FIXED_NOREPLACE, prot) {
                return Ok(m);
            }
        }
        Err(io::Error::other(
            "no free address range at the requested distance",
        ))
    }

    /// Runtime address of the first byte.
    pub fn base(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mmap rejects zero lengths).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for ExecMemory {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: per the invariant the range is mapped and readable. (Translated code may
        // run from it, but it never writes to it.)
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for ExecMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: per the invariant the range is mapped writable and `&mut self` is unique.
        // (In a shared cache other threads execute the mapping meanwhile: machine code,
        // not Rust accesses, and the engine's stores there are ones that code tolerates.)
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ExecMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
