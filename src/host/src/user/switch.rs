//! Switching this thread between the runner (Rust) and a translated guest *process*.
//!
//! Unlike `kdbt_host`'s function-call trampolines, a guest process owns its stack, its TLS
//! (FS base) and its SIMD/x87 state, and may be interrupted at any block boundary with
//! vector registers live (glibc's AVX2 string functions). So every transition swaps all of
//! it, and the runner never runs on the guest stack:
//!
//! - [`GuestContext::resume`] (`kdbt_user_resume`): saves the runner's callee-saved
//!   registers and `rsp`, installs the guest FS base and extended state (`xrstor`), loads
//!   every guest register from [`GuestFrame`] and jumps to `frame.pc` (a code-cache address).
//! - `kdbt_user_exit`: the engine's dispatcher entry. Stores every guest register, `rflags`,
//!   the exit id and aux value in the frame (`rsp` = the guest's, per the engine's frame
//!   contract), saves the guest extended state (`xsaveopt`), gives the runner back what the
//!   C ABI preserves across a call (empty x87 stack, MXCSR and x87 control words, DF clear,
//!   callee-saved registers; vector registers are caller-saved), its FS base and stack, and
//!   returns from `resume`.
//!
//! Everything lives in statics: one guest per process (each runs in a forked child).

use std::arch::global_asm;
use std::ptr::addr_of_mut;

use super::fsbase::FsSwitch;

/// Bytes the engine keeps below the guest `rsp` untouched (System V red zone).
pub const RED_ZONE: u32 = 128;
const XSAVE_AREA: usize = 4096;
/// Extended-state components switched: all but AMX tile config and data (bits 17, 18),
/// which need a per-process permission no guest here asks for, and whose 8 KiB would not
/// fit the save area. The assembly spells this mask as `0xfff9ffff`.
const XSAVE_MASK: u64 = !(3 << 17);

/// The guest's registers while it is not running. Field offsets are used by the assembly
/// below (checked by a test).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestFrame {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rflags: u64,
    /// Code-cache address [`resume`] jumps to.
    pub pc: u64,
    /// Exit id and aux value of the last exit (engine frame contract).
    pub exit_id: u64,
    pub aux: u64,
}

/// Runner state the assembly needs while guest code runs.
#[repr(C)]
struct HostCtx {
    rsp: u64,
    fs_base: u64,
    guest_fs_base: u64,
    /// Non-zero: switch FS with `wrfsbase`; zero: with `arch_prctl`.
    wrfsbase: u64,
    /// The runner's MXCSR (low 32 bits) and x87 control word (low 16 bits), which the C ABI
    /// says survive a call.
    mxcsr: u64,
    fcw: u64,
}

#[repr(C, align(64))]
struct XsaveArea([u8; XSAVE_AREA]);

static mut FRAME: GuestFrame = GuestFrame {
    rax: 0,
    rcx: 0,
    rdx: 0,
    rbx: 0,
    rsp: 0,
    rbp: 0,
    rsi: 0,
    rdi: 0,
    r8: 0,
    r9: 0,
    r10: 0,
    r11: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rflags: 0,
    pc: 0,
    exit_id: 0,
    aux: 0,
};
static mut HOST: HostCtx = HostCtx {
    rsp: 0,
    fs_base: 0,
    guest_fs_base: 0,
    wrfsbase: 0,
    mxcsr: 0,
    fcw: 0,
};
static mut GUEST_XSTATE: XsaveArea = XsaveArea([0; XSAVE_AREA]);

extern "C" {
    fn kdbt_user_resume();
    fn kdbt_user_exit();
}

global_asm!(
    ".text",
    ".p2align 4",
    // rax = new FS base. Clobbers rax, rcx, rdi, rsi, r11.
    "kdbt_user_set_fs:",
    "cmp qword ptr [rip + {host} + 24], 0",
    "je 1f",
    "wrfsbase rax",
    "ret",
    "1:",
    "mov rsi, rax",
    "mov edi, 0x1002",
    "mov eax, 158",
    "syscall",
    "ret",

    ".globl kdbt_user_resume",
    "kdbt_user_resume:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rip + {host}], rsp",
    "mov eax, 0xfff9ffff",
    "mov edx, -1",
    "xrstor64 [rip + {gx}]",
    "mov rax, [rip + {host} + 16]",
    "call kdbt_user_set_fs",
    // rflags go just below the red zone, then popfq and a flag-free lea restore rsp.
    "mov rsp, [rip + {frame} + 32]",
    "lea rsp, [rsp - 136]",
    "mov rax, [rip + {frame} + 128]",
    "mov [rsp], rax",
    "mov rax, [rip + {frame}]",
    "mov rcx, [rip + {frame} + 8]",
    "mov rdx, [rip + {frame} + 16]",
    "mov rbx, [rip + {frame} + 24]",
    "mov rbp, [rip + {frame} + 40]",
    "mov rsi, [rip + {frame} + 48]",
    "mov rdi, [rip + {frame} + 56]",
    "mov r8, [rip + {frame} + 64]",
    "mov r9, [rip + {frame} + 72]",
    "mov r10, [rip + {frame} + 80]",
    "mov r11, [rip + {frame} + 88]",
    "mov r12, [rip + {frame} + 96]",
    "mov r13, [rip + {frame} + 104]",
    "mov r14, [rip + {frame} + 112]",
    "mov r15, [rip + {frame} + 120]",
    "popfq",
    "lea rsp, [rsp + 128]",
    "jmp qword ptr [rip + {frame} + 136]",

    ".p2align 4",
    ".globl kdbt_user_exit",
    "kdbt_user_exit:",
    "mov [rip + {frame}], rax",
    "mov [rip + {frame} + 8], rcx",
    "mov [rip + {frame} + 16], rdx",
    "mov [rip + {frame} + 24], rbx",
    "mov [rip + {frame} + 40], rbp",
    "mov [rip + {frame} + 48], rsi",
    "mov [rip + {frame} + 56], rdi",
    "mov [rip + {frame} + 64], r8",
    "mov [rip + {frame} + 72], r9",
    "mov [rip + {frame} + 80], r10",
    "mov [rip + {frame} + 88], r11",
    "mov [rip + {frame} + 96], r12",
    "mov [rip + {frame} + 104], r13",
    "mov [rip + {frame} + 112], r14",
    "mov [rip + {frame} + 120], r15",
    "pushfq",
    "pop rax",
    "mov [rip + {frame} + 128], rax",
    "mov rax, [rsp]",
    "mov [rip + {frame} + 144], rax",
    "mov rax, [rsp + 8]",
    "mov [rip + {frame} + 152], rax",
    // Engine contract: guest rsp = rsp + 16 (exit id, aux) + red zone.
    "lea rax, [rsp + 144]",
    "mov [rip + {frame} + 32], rax",
    "cld",
    "mov eax, 0xfff9ffff",
    "mov edx, -1",
    "xsaveopt64 [rip + {gx}]",
    // The runner's vector registers are caller-saved around kdbt_user_resume; only the
    // x87 stack (empty) and the MXCSR and x87 control words are the runner's to get back.
    "fninit",
    "fldcw [rip + {host} + 40]",
    "ldmxcsr [rip + {host} + 32]",
    "mov rax, [rip + {host} + 8]",
    "call kdbt_user_set_fs",
    "mov rsp, [rip + {host}]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    frame = sym FRAME,
    host = sym HOST,
    gx = sym GUEST_XSTATE,
);

/// The engine's dispatcher address for a guest run with [`resume`].
pub fn dispatcher() -> u64 {
    kdbt_user_exit as *const () as u64
}

/// Bytes `xsave` writes for [`XSAVE_MASK`] (standard format: each enabled component at its
/// fixed offset), or `None` without OS-enabled xsave.
fn xsave_size() -> Option<usize> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(1).ecx & (1 << 27) == 0 {
        return None;
    }
    let leaf = __cpuid_count(0xd, 0);
    let enabled = (u64::from(leaf.edx) << 32 | u64::from(leaf.eax)) & XSAVE_MASK;
    // x87 and SSE live in the 512-byte legacy area, followed by the 64-byte header.
    let ends = (2..64).filter(|i| enabled & (1 << i) != 0).map(|i| {
        let c = __cpuid_count(0xd, i);
        (c.ebx + c.eax) as usize
    });
    Some(ends.fold(576, usize::max))
}

/// Exclusive access to the single guest context of this process. Guarantees: while the
/// value exists nobody else resumes guest code, and the guest starts with this thread's
/// current x87/SSE/AVX control state and an FS base of 0, as a fresh Linux process does.
pub struct GuestContext {
    _not_send: std::marker::PhantomData<*mut ()>,
}

impl GuestContext {
    /// Claims the context; returns `None` if the CPU lacks `xsave` (needed to keep the
    /// guest's vector registers apart from the runner's) or its state exceeds our buffer,
    /// or if the context was claimed already in this process.
    pub fn claim(switch: FsSwitch) -> Option<GuestContext> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        if xsave_size().is_none_or(|n| n > XSAVE_AREA) || CLAIMED.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: the claim above makes this the only user of the statics; xsave writes
        // at most `leaf_d.ebx` bytes into the zeroed, 64-byte aligned guest area.
        unsafe {
            let host = &mut *addr_of_mut!(HOST);
            host.fs_base = switch.read();
            host.wrfsbase = u64::from(switch == FsSwitch::Instructions);
            std::arch::asm!("stmxcsr [{}]", "fnstcw [{}]", in(reg) addr_of_mut!(host.mxcsr), in(reg) addr_of_mut!(host.fcw), options(nostack));
            std::arch::asm!("xsave64 [{}]", in(reg) addr_of_mut!(GUEST_XSTATE), in("eax") XSAVE_MASK as u32, in("edx") (XSAVE_MASK >> 32) as u32, options(nostack));
        }
        Some(GuestContext {
            _not_send: std::marker::PhantomData,
        })
    }

    /// The guest's registers (read them after [`Self::resume`] returns, edit them before).
    pub fn frame(&mut self) -> &mut GuestFrame {
        // SAFETY: `&mut self` is the only access path to FRAME while the context exists and
        // guest code is not running (it runs only inside `resume`).
        unsafe { &mut *addr_of_mut!(FRAME) }
    }

    /// Sets the FS base installed whenever guest code runs.
    pub fn set_guest_fs_base(&mut self, base: u64) {
        // SAFETY: as in `frame`: exclusive, guest not running.
        unsafe { (*addr_of_mut!(HOST)).guest_fs_base = base };
    }

    /// Runs translated guest code from `frame().pc` until it exits to the dispatcher;
    /// the frame then holds the guest state and the exit id and aux value.
    ///
    /// # Safety
    /// `frame().pc` must be translated code whose exits go to [`dispatcher`], and the frame
    /// a guest state that code may run with (a valid stack at `rsp`, red zone included).
    pub unsafe fn resume(&mut self) {
        // SAFETY: forwarded to the caller; the assembly restores everything the C ABI
        // requires (callee-saved registers, rsp, DF clear, MXCSR and x87 control word, an
        // empty x87 stack) and the runner's FS base.
        unsafe { kdbt_user_resume() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn the_switched_extended_state_fits_the_save_area() {
        let n = xsave_size().expect("xsave");
        assert!((576..=XSAVE_AREA).contains(&n), "{n}");
        assert_eq!(XSAVE_MASK as u32, 0xfff9_ffff);
    }

    #[test]
    fn frame_offsets_match_the_assembly() {
        assert_eq!(offset_of!(GuestFrame, rsp), 32);
        assert_eq!(offset_of!(GuestFrame, r15), 120);
        assert_eq!(offset_of!(GuestFrame, rflags), 128);
        assert_eq!(offset_of!(GuestFrame, pc), 136);
        assert_eq!(offset_of!(GuestFrame, exit_id), 144);
        assert_eq!(offset_of!(GuestFrame, aux), 152);
        assert_eq!(offset_of!(HostCtx, guest_fs_base), 16);
        assert_eq!(offset_of!(HostCtx, wrfsbase), 24);
        assert_eq!(offset_of!(HostCtx, mxcsr), 32);
        assert_eq!(offset_of!(HostCtx, fcw), 40);
    }
}
