//! Reading this process's own memory without risking a fault.

use kdbt_engine::{GuestMemory, MemoryFault};

/// The current process's memory as guest memory. Reads go through `process_vm_readv`, so
/// an unmapped address is an error, never a SIGSEGV.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessMemory;

impl ProcessMemory {
    /// Reads the 8-byte little-endian value at `addr`.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        (self.read(addr, &mut buf).ok()? == 8).then(|| u64::from_le_bytes(buf))
    }
}

impl GuestMemory for ProcessMemory {
    fn read(&self, pc: u64, buf: &mut [u8]) -> Result<usize, MemoryFault> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: pc as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is writable for its length; the kernel
        // validates `remote` and reports unmapped pages as an error or a short count.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(MemoryFault { addr: pc }),
        }
    }
}
