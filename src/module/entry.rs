// SPDX-License-Identifier: GPL-2.0

//! Kernel entries into the dispatcher: the common IDT entry, the common exit
//! from the code cache, and the per-CPU thunks written into each CPU's region.
//!
//! The IDT entry first decides whether the dispatcher may run at all: if this
//! CPU is already inside it (its `busy` word), or the interrupted PC is kdbt's
//! entry code, the event *nests* inside kdbt, and the kernel's own handler
//! runs at once, natively, with the hardware frame exactly as the CPU pushed
//! it and no kdbt state touched. Otherwise both entries save the registers in
//! an [`EntryFrame`] on the current stack, clear DF, make this CPU's kernel GS
//! base live (the base is compared with the one kdbt recorded for the CPU: a
//! GS base that user space forged decides nothing), mark the CPU busy, switch
//! to its dispatcher stack and call Rust. Rust leaves in [`EntryFrame::word`]
//! where to continue: the resume thunk (which loads rip, rsp and rflags with
//! one `iretq`, so no interrupt lands half-way through a resume) or, for IST
//! vectors, the kernel's handler with the frame in place.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::dispatch;
pub(crate) use crate::thunk_page::{data, thunks, DESC_ERROR_CODE, DESC_PRIVATE_STACK, NMI_VECTOR};
use crate::thunk_page::{Entries, VECTORS};

/// Per-CPU words the entry asm reads, indexed by CPU id.
///
/// # Invariants
/// While `thunks` is non-zero, `stack_top` is the top of this CPU's
/// dispatcher stack and `kernel_gs` its kernel GS base.
#[repr(C)]
pub(crate) struct SlotInfo {
    pub(crate) stack_top: AtomicU64,
    pub(crate) kernel_gs: AtomicU64,
    /// Execution address of the CPU's thunk page; 0 while it is native.
    pub(crate) thunks: AtomicU64,
    /// Non-zero while the CPU runs the dispatcher.
    pub(crate) busy: AtomicU64,
}

const SLOT_SHIFT: u32 = 5;
const _: () = assert!(size_of::<SlotInfo>() == 1 << SLOT_SHIFT);

impl SlotInfo {
    pub(crate) const fn new() -> Self {
        SlotInfo { stack_top: AtomicU64::new(0), kernel_gs: AtomicU64::new(0), thunks: AtomicU64::new(0), busy: AtomicU64::new(0) }
    }
}

/// The `SlotInfo` array, one per possible CPU id (set at load, cleared at unload).
#[no_mangle]
static KDBT_SLOTS: AtomicPtr<SlotInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The kernel's handler of each vector, where nested events go.
#[no_mangle]
static KDBT_NATIVE_HANDLERS: [AtomicU64; VECTORS] = [const { AtomicU64::new(0) }; VECTORS];

/// Publishes the slot array for the entry asm.
///
/// # Safety
/// `slots` must stay valid (and one entry per CPU id that can enter) until
/// replaced by a null pointer after every shadow IDT is gone.
pub(crate) unsafe fn publish_slots(slots: *mut SlotInfo) {
    KDBT_SLOTS.store(slots, Ordering::Release);
}

/// Records the kernel's handlers (the same on every CPU).
pub(crate) fn set_native_handlers(handlers: impl Iterator<Item = u64>) {
    for (slot, h) in KDBT_NATIVE_HANDLERS.iter().zip(handlers) {
        slot.store(h, Ordering::Relaxed);
    }
}

/// The kernel's handler of `vector`.
pub(crate) fn native_handler(vector: usize) -> u64 {
    KDBT_NATIVE_HANDLERS.get(vector).map_or(0, |h| h.load(Ordering::Relaxed))
}

/// A `ud2` in kdbt's entry text: where a CPU goes that cannot be resumed.
pub(crate) fn ud2_address() -> u64 {
    kdbt_ud2 as usize as u64
}

/// What the entry paths save on the interrupted stack, lowest address first.
#[repr(C)]
pub(crate) struct EntryFrame {
    pub(crate) r15: u64,
    pub(crate) r14: u64,
    pub(crate) r13: u64,
    pub(crate) r12: u64,
    pub(crate) r11: u64,
    pub(crate) r10: u64,
    pub(crate) r9: u64,
    pub(crate) r8: u64,
    pub(crate) rbp: u64,
    pub(crate) rdi: u64,
    pub(crate) rsi: u64,
    pub(crate) rbx: u64,
    pub(crate) rdx: u64,
    pub(crate) rcx: u64,
    pub(crate) rax: u64,
    /// The CPU id the thunk pushed.
    pub(crate) slot: u64,
    /// On entry: the vector descriptor (IDT; [`DESC_ERROR_CODE`] | vector) or
    /// the guest rflags (cache exit). On return: where to continue.
    pub(crate) word: u64,
}

/// The interrupt frame the CPU pushes (above the error code, if any).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct HwFrame {
    pub(crate) rip: u64,
    pub(crate) cs: u64,
    pub(crate) rflags: u64,
    pub(crate) rsp: u64,
    pub(crate) ss: u64,
}

/// What the engine's exit code leaves above the exit thunk's pushes.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitFrame {
    pub(crate) exit_id: u64,
    pub(crate) aux: u64,
}

const _: () = assert!(size_of::<ExitFrame>() as u64 == kdbt_engine::FRAME_SIZE as u64);
const _: () = assert!(offset_of!(ExitFrame, exit_id) as u64 == kdbt_engine::EXIT_ID_OFFSET as u64);
const _: () = assert!(offset_of!(ExitFrame, aux) as u64 == kdbt_engine::AUX_OFFSET as u64);

/// Offset of the slot word once `rax`, `rcx` and `rdx` are pushed.
const SLOT_AFTER_3: usize = offset_of!(EntryFrame, slot) - offset_of!(EntryFrame, rdx);
const _: () = assert!(offset_of!(EntryFrame, r15) == 0);
const _: () = assert!(offset_of!(EntryFrame, rax) == 14 * 8);
const _: () = assert!(offset_of!(EntryFrame, word) == offset_of!(EntryFrame, slot) + 8);
const _: () = assert!(size_of::<EntryFrame>() == 17 * 8);
const _: () = assert!(size_of::<HwFrame>() == 40);

macro_rules! dispatch_asm {
    ($handler:literal) => {
        concat!(
            "push rbx\n push rsi\n push rdi\n push rbp\n push r8\n push r9\n push r10\n push r11\n",
            "push r12\n push r13\n push r14\n push r15\n",
            "mov rbx, rcx\n",
            "cld\n",
            "mov r12, rsp\n",
            "mov ecx, 0xc0000101\n rdmsr\n shl rdx, 32\n or rax, rdx\n",
            "mov r13, rax\n xor r14d, r14d\n",
            "cmp rax, [rbx + {kernel_gs}]\n je 4f\n",
            "mov rax, [rbx + {kernel_gs}]\n mov rdx, rax\n shr rdx, 32\n wrmsr\n mov r14d, 1\n",
            "4:\n mov qword ptr [rbx + {busy}], 1\n",
            "mov rsp, [rbx + {stack_top}]\n",
            "mov rdi, r12\n call ", $handler, "\n",
            "mov qword ptr [rbx + {busy}], 0\n",
            "test r14d, r14d\n jz 5f\n",
            "mov ecx, 0xc0000101\n mov rax, r13\n mov rdx, r13\n shr rdx, 32\n wrmsr\n",
            "5:\n mov rsp, r12\n",
            "pop r15\n pop r14\n pop r13\n pop r12\n pop r11\n pop r10\n pop r9\n pop r8\n",
            "pop rbp\n pop rdi\n pop rsi\n pop rbx\n pop rdx\n pop rcx\n pop rax\n",
            // Drop the slot word; `ret` takes the continuation from `word`.
            "lea rsp, [rsp + 8]\n ret\n",
        )
    };
}

core::arch::global_asm!(
    ".pushsection .text",
    ".globl kdbt_entry_start",
    "kdbt_entry_start:",
    "kdbt_idt_common:",
    "push rax\n push rcx\n push rdx\n",
    "mov rcx, [rsp + {slot3}]\n shl rcx, {shift}\n add rcx, [rip + KDBT_SLOTS]\n",
    // rdx: the hardware frame, above the error code if there is one.
    "lea rdx, [rsp + {slot3} + 16]\n",
    "test dword ptr [rsp + {slot3} + 8], {desc_ec}\n jz 1f\n add rdx, 8\n",
    "1:\n test dword ptr [rsp + {slot3} + 8], {desc_private}\n jz 7f\n mov rdx, [rsp + {slot3} + 16]\n",
    "7:\n cmp qword ptr [rcx + {busy}], 0\n jne 3f\n",
    "mov rax, [rdx]\n lea rdx, [rip + kdbt_entry_start]\n cmp rax, rdx\n jb 6f\n",
    "lea rdx, [rip + kdbt_entry_end]\n cmp rax, rdx\n jb 3f\n",
    "6:\n sub rax, [rcx + {thunks}]\n",
    "cmp rax, {thunk_size}\n jae 2f\n",
    "cmp rax, {iret_frame}\n jb 2f\n",
    // Nested: the kernel's handler, with the frame as the CPU left it.
    "3:\n movzx eax, byte ptr [rsp + {slot3} + 8]\n",
    "lea rdx, [rip + KDBT_NATIVE_HANDLERS]\n mov rax, [rdx + rax * 8]\n",
    "test dword ptr [rsp + {slot3} + 8], {desc_private}\n jnz 8f\n",
    "mov [rsp + {slot3} + 8], rax\n",
    "pop rdx\n pop rcx\n pop rax\n lea rsp, [rsp + 8]\n ret\n",
    // From the private stack: the handler's address goes in the word just
    // below the hardware frame (the kernel's NMI entry's own scratch slot, its
    // first `push`), and `kdbt_private_return` moves there and `ret`s.
    "8:\n mov rdx, [rsp + {slot3} + 16]\n mov [rdx - 8], rax\n lea rax, [rdx - 8]\n",
    "mov [rsp + {slot3} + 16], rax\n lea rax, [rip + kdbt_private_return]\n mov [rsp + {slot3} + 8], rax\n",
    "pop rdx\n pop rcx\n pop rax\n lea rsp, [rsp + 8]\n ret\n",
    "kdbt_private_return:\n mov rsp, [rsp]\n ret\n",
    "2:\n",
    dispatch_asm!("kdbt_dispatch_idt"),
    "kdbt_exit_common:",
    "push rax\n push rcx\n push rdx\n",
    "mov rcx, [rsp + {slot3}]\n shl rcx, {shift}\n add rcx, [rip + KDBT_SLOTS]\n",
    dispatch_asm!("kdbt_dispatch_exit"),
    "kdbt_ud2:\n ud2\n",
    ".globl kdbt_entry_end",
    "kdbt_entry_end:",
    ".popsection",
    slot3 = const SLOT_AFTER_3,
    shift = const SLOT_SHIFT,
    desc_ec = const DESC_ERROR_CODE,
    desc_private = const DESC_PRIVATE_STACK,
    busy = const offset_of!(SlotInfo, busy),
    thunks = const offset_of!(SlotInfo, thunks),
    kernel_gs = const offset_of!(SlotInfo, kernel_gs),
    stack_top = const offset_of!(SlotInfo, stack_top),
    thunk_size = const thunks::SIZE,
    iret_frame = const thunks::IRET_FRAME,
);

/// The exit id the return gate pushes: no exit of the engine's has it.
pub(crate) const GATE_EXIT: u64 = u64::MAX;

// The return gate. kdbt's own functions run natively; one called (or
// tail-called) from translated code gets `kdbt_gate_return` as its return
// address, one word below the real one (`dispatch::on_cache_exit`; kdbt's
// callbacks take no stack arguments). Its `ret` lands here, with the real
// return address on top of the stack: pushing `GATE_EXIT` makes that an
// exit frame (id, aux = the return address) for this CPU's exit thunk, and
// the dispatcher goes on in the translation of the return address. A CPU
// not translating (disabled since the call, or never enabled) has
// `kdbt_gate_native` in `kdbt_gate` instead, which drops the id and returns.
// `jmp gs:` reads this CPU's slot in one instruction: a migration between
// the two instructions cannot make it use another CPU's exit thunk.
core::arch::global_asm!(
    ".pushsection .text",
    "kdbt_gate_return:",
    "push {gate_exit}",
    "jmp qword ptr gs:[rip + kdbt_gate]",
    "kdbt_gate_native:",
    "endbr64",
    "lea rsp, [rsp + 8]",
    "ret",
    ".popsection",
    gate_exit = const GATE_EXIT as i64,
);

extern "C" {
    fn kdbt_gate_return();
    fn kdbt_gate_native();
    fn kdbt_idt_common();
    fn kdbt_exit_common();
    fn kdbt_ud2();
    fn kdbt_private_return();
}

/// Where an event that came in on the private NMI stack continues: it moves
/// to the word below the hardware frame, which holds the handler, and `ret`s.
pub(crate) fn private_return_address() -> u64 {
    kdbt_private_return as usize as u64
}

/// The return address kdbt functions called from translated code get.
pub(crate) fn gate_return() -> u64 {
    kdbt_gate_return as usize as u64
}

/// Where the gate goes on a CPU that does not translate.
pub(crate) fn gate_native() -> u64 {
    kdbt_gate_native as usize as u64
}

/// kdbt's common entry and exit, where the thunk page's stubs jump.
pub(crate) fn entries() -> Entries {
    Entries {
        idt_common: kdbt_idt_common as usize as u64,
        exit_common: kdbt_exit_common as usize as u64,
        log_published: crate::consistency::published_address(),
    }
}

/// # Safety
/// Called only by `kdbt_idt_common`, with `frame` pointing at the frame it built.
#[no_mangle]
unsafe extern "C" fn kdbt_dispatch_idt(frame: *mut EntryFrame) {
    // SAFETY: the asm passes its frame, which lives until it returns.
    unsafe { dispatch::on_idt_entry(&mut *frame) }
}

/// # Safety
/// Called only by `kdbt_exit_common`, with `frame` pointing at the frame it built.
#[no_mangle]
unsafe extern "C" fn kdbt_dispatch_exit(frame: *mut EntryFrame) {
    // SAFETY: the asm passes its frame, which lives until it returns.
    unsafe { dispatch::on_cache_exit(&mut *frame) }
}
