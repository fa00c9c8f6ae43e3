//! Context-switch code between Rust and translated guest code.
//!
//! - `kdbt_host_enter(ctx)`: saves the host callee-saved registers and `rsp` in the
//!   [`EnterCtx`], switches to the guest stack, pushes a native return address
//!   (`kdbt_host_return`) and jumps to `ctx.entry` with the arguments in `rdi, rsi, rdx,
//!   rcx, r8, r9`, every other GPR zero and `rflags = ctx.rflags`.
//! - `kdbt_host_return`: reached when the guest function returns; falls into
//!   `kdbt_host_leave`.
//! - `kdbt_host_leave` (`rdi` = ctx): restores the host stack and registers and returns
//!   from `kdbt_host_enter` with the guest's `rax`.
//! - `kdbt_host_dispatch_entry`: the engine's dispatcher entry (frame contract in
//!   `docs/engine.md`, red zone 128). Saves the guest GPRs and flags as a
//!   [`DispatchFrame`] and the extended state (`xsave`, since the dispatcher is Rust code
//!   calling libc), calls `kdbt_host_dispatch` with TF and DF clear, restores, and resumes
//!   at the returned address with `ret 136`, which restores `rip` and the guest `rsp` at
//!   once. `kdbt_host_dispatch_entry_rz0` does the same for red zone 0 (`ret 8`).

use core::arch::global_asm;

/// Red zone of x86-64 System V user code; `kdbt_host_dispatch_entry` resumes with
/// `ret 136` (8 + 128). `kdbt_host_dispatch_entry_rz0` is the same for red zone 0 (the
/// kernel's), resuming with `ret 8`.
pub const RED_ZONE: u32 = 128;

/// Arguments of `kdbt_host_enter`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EnterCtx {
    /// Host `rsp` after saving callee-saved registers (written by the trampoline).
    pub host_rsp: u64,
    /// Top of the guest stack, 16-byte aligned.
    pub stack_top: u64,
    /// Where to start executing (cache or native address).
    pub entry: u64,
    /// Initial guest `rflags`.
    pub rflags: u64,
    /// Arguments for `rdi, rsi, rdx, rcx, r8, r9`.
    pub args: [u64; 6],
}

/// The guest state saved by `kdbt_host_dispatch_entry`, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct DispatchFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub rflags: u64,
    /// Exit id; overwritten with the resume address.
    pub exit_id: u64,
    /// Aux value (indirect target).
    pub aux: u64,
}

extern "C" {
    pub fn kdbt_host_enter(ctx: *mut EnterCtx) -> u64;
    pub fn kdbt_host_return();
    pub fn kdbt_host_leave();
    pub fn kdbt_host_dispatch_entry();
    pub fn kdbt_host_dispatch_entry_rz0();
    pub fn kdbt_host_trampolines_start();
    pub fn kdbt_host_trampolines_end();
}

global_asm!(
    ".text",
    ".p2align 4",
    ".globl kdbt_host_trampolines_start",
    "kdbt_host_trampolines_start:",
    ".globl kdbt_host_enter",
    "kdbt_host_enter:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, [rdi + 8]",
    "push rdi",
    "push 0",
    "lea rax, [rip + kdbt_host_return]",
    "push rax",
    "push qword ptr [rdi + 16]",
    "push qword ptr [rdi + 24]",
    "mov rsi, [rdi + 40]",
    "mov rdx, [rdi + 48]",
    "mov rcx, [rdi + 56]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov rdi, [rdi + 32]",
    "xor eax, eax",
    "xor ebx, ebx",
    "xor ebp, ebp",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    "popfq",
    "ret",
    ".globl kdbt_host_return",
    "kdbt_host_return:",
    "mov rdi, [rsp + 8]",
    ".globl kdbt_host_leave",
    "kdbt_host_leave:",
    "mov rsp, [rdi]",
    "pushfq",
    "and qword ptr [rsp], -0x501",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
);

/// The dispatcher entry for red zone `$rz`: `$ret` = 8 + `$rz`.
macro_rules! dispatch_entry {
    ($name:literal, $ret:literal) => {
        global_asm!(
            ".text",
            ".p2align 4",
            concat!(".globl ", $name),
            concat!($name, ":"),
            "pushfq",
            "push rax",
            "push rcx",
            "push rdx",
            "push rbx",
            "push rbp",
            "push rsi",
            "push rdi",
            "push r8",
            "push r9",
            "push r10",
            "push r11",
            "push r12",
            "push r13",
            "push r14",
            "push r15",
            "pushfq",
            "and qword ptr [rsp], -0x501",
            "popfq",
            "mov rbx, rsp",
            // The dispatcher is Rust calling libc: save the guest's x87/SSE/AVX/AVX-512 state.
            "sub rsp, 4096",
            "and rsp, -64",
            "xor eax, eax",
            "mov ecx, 8",
            "2:",
            "mov [rsp + rcx * 8 + 504], rax",
            "loop 2b",
            // x87, SSE, AVX, MPX, AVX-512, PKRU: at most 2696 bytes (not AMX tiles, 8 KiB).
            "mov eax, 0x2ff",
            "xor edx, edx",
            "xsave [rsp]",
            "mov rdi, rbx",
            "call {dispatch}",
            "mov [rbx + 128], rax",
            "mov eax, 0x2ff",
            "xor edx, edx",
            "xrstor [rsp]",
            "mov rsp, rbx",
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rdi",
            "pop rsi",
            "pop rbp",
            "pop rbx",
            "pop rdx",
            "pop rcx",
            "pop rax",
            "popfq",
            concat!("ret ", $ret),
            dispatch = sym crate::context::kdbt_host_dispatch,
        );
    };
}

dispatch_entry!("kdbt_host_dispatch_entry", 136);
dispatch_entry!("kdbt_host_dispatch_entry_rz0", 8);

global_asm!(
    ".text",
    ".globl kdbt_host_trampolines_end",
    "kdbt_host_trampolines_end:"
);
