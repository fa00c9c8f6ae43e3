// SPDX-License-Identifier: GPL-2.0

//! Kernel entries into the dispatcher: the common IDT entry, the common exit
//! from the code cache, and the per-CPU thunks written into each CPU's region.
//!
//! Every path saves the interrupted registers in a [`Regs`] on the current
//! stack, makes sure the kernel GS base is live (the guest may be between
//! `swapgs` and `iretq`/`sysretq`), switches to this CPU's dispatcher stack
//! and calls Rust. Rust fills this CPU's iret frame slot and stores the
//! address of this CPU's resume thunk in `Regs::slot`; the asm restores the
//! registers and `ret`s into the resume thunk, which loads the iret frame and
//! runs `iretq`, restoring rip, rsp and rflags in one instruction so that no
//! interrupt can land half-way through the resume.

use crate::dispatch;

/// Most CPUs kdbt handles; more are refused at enable.
pub(crate) const MAX_CPUS: usize = 8;

/// Top of each CPU's dispatcher stack, indexed by kdbt's CPU slot. Written at
/// enable, before any entry can use it.
#[no_mangle]
pub(crate) static mut KDBT_DISPATCH_STACKS: [u64; MAX_CPUS] = [0; MAX_CPUS];

/// The registers saved by the entry paths, lowest address first.
#[repr(C)]
pub(crate) struct Regs {
    pub(crate) rax: u64,
    pub(crate) rbx: u64,
    pub(crate) rcx: u64,
    pub(crate) rdx: u64,
    pub(crate) rsi: u64,
    pub(crate) rdi: u64,
    pub(crate) rbp: u64,
    pub(crate) r8: u64,
    pub(crate) r9: u64,
    pub(crate) r10: u64,
    pub(crate) r11: u64,
    pub(crate) r12: u64,
    pub(crate) r13: u64,
    pub(crate) r14: u64,
    pub(crate) r15: u64,
    /// kdbt's CPU slot on entry; the resume thunk's address on return.
    pub(crate) slot: u64,
}

/// Words above `Regs` on an IDT entry: the vector, then the hardware frame
/// (error code first for vectors that have one).
pub(crate) const IDT_VECTOR_WORD: usize = 0;
/// Words above `Regs` on an exit from the cache: guest rflags, then the
/// engine's exit frame (exit id, aux), then the guest stack.
pub(crate) const EXIT_RFLAGS_WORD: usize = 0;
pub(crate) const EXIT_FRAME_WORD: usize = 1;

macro_rules! entry_asm {
    ($name:literal, $handler:literal) => {
        concat!(
            ".globl ", $name, "\n",
            ".type ", $name, ", @function\n",
            $name, ":\n",
            "push r15\n push r14\n push r13\n push r12\n push r11\n push r10\n push r9\n push r8\n",
            "push rbp\n push rdi\n push rsi\n push rdx\n push rcx\n push rbx\n push rax\n",
            "mov r12, rsp\n",
            // Kernel GS bases are kernel addresses (bit 63 set).
            "mov ecx, 0xc0000101\n rdmsr\n xor r13d, r13d\n test edx, edx\n js 7f\n",
            "swapgs\n mov r13d, 1\n",
            "7:\n mov rax, [r12 + 15*8]\n",
            "mov rsp, qword ptr [rax*8 + KDBT_DISPATCH_STACKS]\n",
            "mov rdi, r12\n call ", $handler, "\n",
            "test r13d, r13d\n jz 8f\n swapgs\n",
            "8:\n mov rsp, r12\n",
            "pop rax\n pop rbx\n pop rcx\n pop rdx\n pop rsi\n pop rdi\n pop rbp\n",
            "pop r8\n pop r9\n pop r10\n pop r11\n pop r12\n pop r13\n pop r14\n pop r15\n",
            "ret\n",
            ".size ", $name, ", . - ", $name, "\n",
        )
    };
}

core::arch::global_asm!(
    ".pushsection .text",
    entry_asm!("kdbt_idt_common", "kdbt_dispatch_idt"),
    entry_asm!("kdbt_exit_common", "kdbt_dispatch_exit"),
    ".popsection",
);

extern "C" {
    fn kdbt_idt_common();
    fn kdbt_exit_common();
}

/// Address of the common IDT entry.
pub(crate) fn idt_common() -> u64 {
    kdbt_idt_common as usize as u64
}

/// Address of the common exit from the code cache.
pub(crate) fn exit_common() -> u64 {
    kdbt_exit_common as usize as u64
}

/// # Safety
/// Called only by `kdbt_idt_common`, with `regs` pointing at the frame it built.
#[no_mangle]
unsafe extern "C" fn kdbt_dispatch_idt(regs: *mut Regs) {
    // SAFETY: the asm passes its frame, which lives until it returns.
    unsafe { dispatch::on_idt_entry(&mut *regs) }
}

/// # Safety
/// Called only by `kdbt_exit_common`, with `regs` pointing at the frame it built.
#[no_mangle]
unsafe extern "C" fn kdbt_dispatch_exit(regs: *mut Regs) {
    // SAFETY: the asm passes its frame, which lives until it returns.
    unsafe { dispatch::on_cache_exit(&mut *regs) }
}

/// Byte layout of one CPU's thunk page (the first page of its region).
pub(crate) mod thunks {
    /// 16 bytes per vector stub: `push imm32 vector; push imm8 slot; jmp rel32 idt_common`.
    pub(crate) const VECTOR_STUB: usize = 16;
    /// `jmp [rip + slot]`, the `syscall` entry (MSR_LSTAR).
    pub(crate) const SYSCALL: usize = 4096;
    /// The 8-byte target of the `syscall` stub.
    pub(crate) const SYSCALL_TARGET: usize = SYSCALL + 8;
    /// `pushfq; cli; push imm8 slot; jmp rel32 exit_common`: the engine's dispatcher entry.
    pub(crate) const EXIT: usize = SYSCALL + 32;
    /// `lea rsp, [rip + iret frame]; iretq`.
    pub(crate) const RESUME: usize = SYSCALL + 64;
    /// The 40-byte iret frame the resume thunk loads.
    pub(crate) const IRET_FRAME: usize = SYSCALL + 128;
    /// A `ud2`, where the dispatcher sends a CPU it cannot resume.
    pub(crate) const UD2: usize = SIZE - 2;
    /// Bytes of thunks at the start of each region, before the engine's arena.
    pub(crate) const SIZE: usize = 8192;
}

fn rel32(from_end: u64, to: u64) -> Option<[u8; 4]> {
    let d = to.wrapping_sub(from_end) as i64;
    i32::try_from(d).ok().map(i32::to_le_bytes)
}

/// Writes one CPU's thunks into `page` (the first `thunks::SIZE` bytes of its
/// region, executed at `exec`). Fails if module text is out of rel32 reach.
pub(crate) fn write_thunks(page: &mut [u8], exec: u64, slot: u8) -> Option<()> {
    let page = page.get_mut(..thunks::SIZE)?;
    page.fill(0xcc);
    for vector in 0..256usize {
        let at = vector * thunks::VECTOR_STUB;
        let s = page.get_mut(at..at + 12)?;
        s[0] = 0x68;
        s[1..5].copy_from_slice(&(vector as u32).to_le_bytes());
        s[5] = 0x6a;
        s[6] = slot;
        s[7] = 0xe9;
        s[8..12].copy_from_slice(&rel32(exec + at as u64 + 12, idt_common())?);
    }
    let s = page.get_mut(thunks::SYSCALL..thunks::SYSCALL + 6)?;
    s[..2].copy_from_slice(&[0xff, 0x25]);
    let disp = (thunks::SYSCALL_TARGET - (thunks::SYSCALL + 6)) as u32;
    s[2..6].copy_from_slice(&disp.to_le_bytes());
    let s = page.get_mut(thunks::EXIT..thunks::EXIT + 9)?;
    s[..4].copy_from_slice(&[0x9c, 0xfa, 0x6a, slot]);
    s[4] = 0xe9;
    s[5..9].copy_from_slice(&rel32(exec + thunks::EXIT as u64 + 9, exit_common())?);
    let s = page.get_mut(thunks::RESUME..thunks::RESUME + 9)?;
    s[..3].copy_from_slice(&[0x48, 0x8d, 0x25]);
    let disp = (thunks::IRET_FRAME - (thunks::RESUME + 7)) as u32;
    s[3..7].copy_from_slice(&disp.to_le_bytes());
    s[7..9].copy_from_slice(&[0x48, 0xcf]);
    page.get_mut(thunks::UD2..thunks::UD2 + 2)?.copy_from_slice(&[0x0f, 0x0b]);
    Some(())
}
