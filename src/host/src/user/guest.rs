//! A guest program made ready to run: image loaded, initial stack written.

use super::{elf, image, stack};
use std::io;

/// Bytes reserved for the guest's program break (address space only: MAP_NORESERVE). It
/// ends below the code cache, which goes within 256 MiB of the image so that the guest's
/// RIP-relative operands stay in reach; glibc's malloc falls back to mmap past it.
const BRK_RESERVE: u64 = 128 << 20;
const STACK_SIZE: u64 = 8 << 20;

/// A guest whose first instruction can run: its image is mapped, and `rsp` points at
/// argc on a fresh stack with argv, envp and auxv as Linux lays them out.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    pub image: image::Image,
    pub rsp: u64,
}

impl Guest {
    /// Loads the static executable `path` into this process with `args` (argv[0] first)
    /// and `env`. Call it once per process, in a child that the guest may take over.
    pub fn load(path: &str, args: &[Vec<u8>], env: &[Vec<u8>]) -> io::Result<Guest> {
        let file = std::fs::read(path)?;
        let exe = elf::parse(&file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
        let image = image::load(&exe, &file, BRK_RESERVE)?;
        let top = image::map_stack(STACK_SIZE)?;
        let initial = stack::InitialStack::build(
            top,
            args,
            env,
            &stack::value_aux(&image),
            stack::random16(),
        );
        // SAFETY: the stack mapping is fresh, writable and STACK_SIZE long, and the initial
        // stack (a few KiB of strings and pointers) fits below its top.
        unsafe { initial.write() };
        Ok(Guest {
            image,
            rsp: initial.rsp,
        })
    }

    /// Runs the guest natively from its entry point, as the kernel would after execve.
    ///
    /// # Safety
    /// The guest takes over this process for good (it ends with exit_group): call only in a
    /// disposable child process.
    pub unsafe fn enter_natively(&self) -> ! {
        // SAFETY: `rsp` holds the initial stack and `entry` is mapped executable code; rdx=0
        // tells _start there is no dynamic-linker destructor to register.
        unsafe {
            std::arch::asm!(
                "mov rsp, rcx",
                "xor edx, edx",
                "xor ebp, ebp",
                "jmp rax",
                in("rax") self.image.entry,
                in("rcx") self.rsp,
                options(noreturn)
            )
        }
    }
}
