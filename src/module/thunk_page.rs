// SPDX-License-Identifier: GPL-2.0

//! The per-CPU thunk page: the vector stubs the shadow IDT points at, the
//! `syscall` stub, the exit thunk the engine's exit code jumps to, the resume
//! thunk and the NMI stub, encoded with iced-x86. Nothing here touches the
//! kernel, so host tests build the page and check it (`tests/thunk_page.rs`).

use alloc::vec::Vec;
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Register};

/// Vectors of an IDT, each with a stub.
pub(crate) const VECTORS: usize = 256;

/// Vector descriptor bit: the CPU pushed an error code.
pub(crate) const DESC_ERROR_CODE: u64 = 1 << 8;
/// Vector descriptor bit: the stub moved to the CPU's private NMI stack and
/// pushed the address of the hardware frame first (the word above `word`).
pub(crate) const DESC_PRIVATE_STACK: u64 = 1 << 9;

/// The NMI vector, whose stub never writes below the hardware frame.
pub(crate) const NMI_VECTOR: usize = 2;

/// Layout of each region's data page (see `execmem::DATA_BYTES`).
pub(crate) mod data {
    /// The NMI stub saves `rax` here while it switches stacks.
    pub(crate) const SAVED_RAX: usize = 0;
    /// Top of the CPU's private NMI stack.
    pub(crate) const NMI_STACK_TOP: usize = 8;
}

/// Byte layout of one CPU's thunk page (the start of its region).
pub(crate) mod thunks {
    /// 64 bytes per vector stub. From user mode, when this CPU has applied
    /// every code change logged and the vector's user entry is set, straight
    /// into the handler's translation; otherwise into the dispatcher:
    /// ```text
    ///  0 endbr64
    ///  4 pushfq
    ///  5 test byte [rsp + 16 (+ 8 with an error code)], 3   ; interrupted CS
    /// 10 jz slow
    /// 12 push rax
    /// 13 mov rax, [log published]
    /// 23 cmp rax, [rip + LOG_APPLIED]
    /// 30 pop rax
    /// 31 jne slow
    /// 33 popfq
    /// 34 push qword [rip + USER_ENTRIES + 8 * vector]    ; 42 until set
    /// 40 ret                  ; not an indirect jmp: blocks need no endbr64
    /// 41 slow: popfq
    /// 42 push desc
    /// 47 push cpu
    /// 52 jmp idt_common
    /// ```
    pub(crate) const VECTOR_STUB: usize = 64;
    /// Offsets of the instructions in a vector stub.
    pub(crate) const STUB_PUSHFQ: usize = 4;
    pub(crate) const STUB_TEST: usize = 5;
    pub(crate) const STUB_JZ: usize = 10;
    pub(crate) const STUB_PUSH_RAX: usize = 12;
    pub(crate) const STUB_LOAD: usize = 13;
    pub(crate) const STUB_CMP: usize = 23;
    pub(crate) const STUB_POP_RAX: usize = 30;
    pub(crate) const STUB_JNE: usize = 31;
    pub(crate) const STUB_USER_POPFQ: usize = 33;
    pub(crate) const STUB_USER_PUSH: usize = 34;
    pub(crate) const STUB_USER_RET: usize = 40;
    pub(crate) const STUB_SLOW: usize = 41;
    pub(crate) const STUB_PUSH_DESC: usize = 42;
    pub(crate) const STUB_PUSH_CPU: usize = 47;
    pub(crate) const STUB_JMP: usize = 52;
    /// `endbr64`, the kernel's syscall prologue (`syscall::Prologue`), `jmp
    /// [rip + target]`: the `syscall` entry (MSR_LSTAR).
    pub(crate) const SYSCALL: usize = 256 * VECTOR_STUB;
    /// The 8-byte target of the `syscall` stub.
    pub(crate) const SYSCALL_TARGET: usize = SYSCALL + 56;
    /// The exit thunk, the engine's dispatcher entry. It names no CPU, so one
    /// copy can serve a cache that every CPU runs: it finds the CPU id with
    /// `lsl` of the CPUNODE segment (`vdso_read_cpunode`), which needs no GS
    /// base (GS may be the user's in the kernel's entry code). Offsets within it:
    /// ```text
    ///  0 endbr64
    ///  4 pushfq
    ///  5 cli
    ///  6 push rax
    ///  7 mov eax, CPUNODE_SELECTOR
    /// 12 lsl eax, eax
    /// 15 and eax, CPUNODE_CPU_MASK
    /// 20 xchg [rsp], rax       ; the CPU id where `push cpu` used to leave it
    /// 24 jmp exit_common
    /// ```
    pub(crate) const EXIT: usize = SYSCALL + 64;
    pub(crate) const EXIT_PUSHFQ: usize = EXIT + 4;
    pub(crate) const EXIT_CLI: usize = EXIT + 5;
    pub(crate) const EXIT_PUSH_RAX: usize = EXIT + 6;
    pub(crate) const EXIT_MOV: usize = EXIT + 7;
    pub(crate) const EXIT_LSL: usize = EXIT + 12;
    pub(crate) const EXIT_AND: usize = EXIT + 15;
    pub(crate) const EXIT_XCHG: usize = EXIT + 20;
    pub(crate) const EXIT_JMP: usize = EXIT + 24;
    /// `lea rsp, [rip + iret frame]; iretq`.
    pub(crate) const RESUME: usize = SYSCALL + 96;
    const _: () = assert!(EXIT_JMP + 5 <= RESUME);
    pub(crate) const RESUME_IRETQ: usize = RESUME + 7;
    /// The 40-byte iret frame the resume thunk loads.
    pub(crate) const IRET_FRAME: usize = SYSCALL + 128;
    /// A `ud2`, where the dispatcher sends a CPU it cannot resume.
    pub(crate) const UD2: usize = SYSCALL + 192;
    /// The NMI stub. The kernel's NMI entry keeps its nesting state just below
    /// the hardware frame on the NMI stack ("NMI executing", the saved iret
    /// and outermost frames), so this stub writes nothing there: it saves
    /// `rax` in the data page, moves to a private stack and pushes the frame's
    /// address there: `endbr64; mov [rip+d], rax; mov rax, rsp; mov rsp,
    /// [rip+d+8]; push rax; mov rax, [rip+d]; push desc; push cpu; jmp
    /// idt_common`. After `RESUME`: an event inside it nests.
    pub(crate) const NMI_STUB: usize = SYSCALL + 256;
    /// Each vector's user entry: where its stub goes from user mode (the
    /// stub's `push desc` until the dispatcher sets the handler's
    /// translation).
    pub(crate) const USER_ENTRIES: usize = SYSCALL + 512;
    /// The consistency log entries this CPU has applied (the user entries
    /// are used only while it equals the published count).
    pub(crate) const LOG_APPLIED: usize = USER_ENTRIES + 8 * super::VECTORS;
    /// Bytes of thunks at the start of each region, before the engine's arena.
    pub(crate) const SIZE: usize = 20 << 10;
    const _: () = assert!(LOG_APPLIED + 8 <= SIZE && NMI_STUB + 128 <= USER_ENTRIES);
}

/// What a vector stub interrupted at offset `off` (within it) has pushed:
/// `pushed` words to drop, and the word indices (from `rsp`) holding the
/// entry's rflags and rax while the stub has them clobbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StubUndo {
    pub(crate) pushed: u64,
    pub(crate) rflags: Option<u64>,
    pub(crate) rax: Option<u64>,
}

/// The undo of an event at offset `off` of a vector stub; `None` between
/// instructions.
pub(crate) fn stub_undo(off: usize) -> Option<StubUndo> {
    let (pushed, rflags, rax) = match off {
        0 | thunks::STUB_PUSHFQ | thunks::STUB_PUSH_DESC | thunks::STUB_USER_PUSH => {
            (0, None, None)
        }
        thunks::STUB_TEST | thunks::STUB_JZ | thunks::STUB_PUSH_RAX => (1, Some(0), None),
        thunks::STUB_LOAD | thunks::STUB_CMP | thunks::STUB_POP_RAX => (2, Some(1), Some(0)),
        thunks::STUB_JNE | thunks::STUB_USER_POPFQ | thunks::STUB_SLOW => (1, Some(0), None),
        thunks::STUB_USER_RET | thunks::STUB_PUSH_CPU => (1, None, None),
        thunks::STUB_JMP => (2, None, None),
        _ => return None,
    };
    Some(StubUndo {
        pushed,
        rflags,
        rax,
    })
}

/// `__CPUNODE_SEG` (`arch/x86/include/asm/segment.h`, 64-bit): the GDT entry
/// whose limit is `node << 12 | cpu` on every CPU (`setup_getcpu`). kdbt checks
/// on each CPU before it translates there that `lsl` of it gives the CPU's id.
pub(crate) const CPUNODE_SELECTOR: u16 = 15 * 8 + 3;
/// `VDSO_CPUNODE_MASK`: the CPU id's bits of that limit.
pub(crate) const CPUNODE_CPU_MASK: u32 = 0xfff;

/// The CPU id in the running CPU's CPUNODE segment limit, read as the exit
/// thunk reads it (`lsl` works at any privilege level, as for the vDSO);
/// `None` if `lsl` refuses the selector.
pub(crate) fn cpunode_cpu() -> Option<u32> {
    let (limit, valid): (u32, u8);
    // SAFETY: `lsl` only reads the descriptor table; an unusable selector
    // clears ZF and changes nothing.
    unsafe {
        core::arch::asm!(
            "lsl {l:e}, {s:e}",
            "setz {v}",
            s = in(reg) u32::from(CPUNODE_SELECTOR),
            l = lateout(reg) limit,
            v = out(reg_byte) valid,
            options(nostack)
        )
    };
    (valid != 0).then_some(limit & CPUNODE_CPU_MASK)
}

/// The undo of an event at page offset `off` inside the exit thunk: the words
/// it pushed above the exit frame and where it saved the guest's rflags and
/// rax meanwhile; `None` outside it or between instructions.
pub(crate) fn exit_undo(off: usize) -> Option<StubUndo> {
    let (pushed, rflags, rax) = match off {
        thunks::EXIT | thunks::EXIT_PUSHFQ => (0, None, None),
        thunks::EXIT_CLI | thunks::EXIT_PUSH_RAX => (1, Some(0), None),
        thunks::EXIT_MOV | thunks::EXIT_LSL | thunks::EXIT_AND | thunks::EXIT_XCHG => {
            (2, Some(1), Some(0))
        }
        thunks::EXIT_JMP => (2, Some(1), None),
        _ => return None,
    };
    Some(StubUndo {
        pushed,
        rflags,
        rax,
    })
}

/// The exit thunk's instructions (see [`thunks::EXIT`]).
pub(crate) fn exit_thunk(exit_common: u64) -> Option<[Instruction; 9]> {
    Some([
        Instruction::with(Code::Endbr64),
        Instruction::with(Code::Pushfq),
        Instruction::with(Code::Cli),
        Instruction::with1(Code::Push_r64, Register::RAX).ok()?,
        Instruction::with2(
            Code::Mov_r32_imm32,
            Register::EAX,
            u32::from(CPUNODE_SELECTOR),
        )
        .ok()?,
        Instruction::with2(Code::Lsl_r32_r32m16, Register::EAX, Register::EAX).ok()?,
        Instruction::with2(Code::And_EAX_imm32, Register::EAX, CPUNODE_CPU_MASK).ok()?,
        Instruction::with2(
            Code::Xchg_rm64_r64,
            MemoryOperand::with_base(Register::RSP),
            Register::RAX,
        )
        .ok()?,
        Instruction::with_branch(Code::Jmp_rel32_64, exit_common).ok()?,
    ])
}

/// kdbt's entry code the thunks jump to.
#[derive(Clone, Copy)]
pub(crate) struct Entries {
    /// The common IDT entry (vector and NMI stubs).
    pub(crate) idt_common: u64,
    /// The common exit from the code cache (exit thunk).
    pub(crate) exit_common: u64,
    /// The consistency log's published count, which the vector stubs compare
    /// with [`thunks::LOG_APPLIED`].
    pub(crate) log_published: u64,
}

/// Encodes `insns` at page offset `at` (executed at `exec + at`), and puts
/// the page offset where each of the first `ends.len()` of them ends into
/// `ends`; `None` if they do not fit below `limit` or do not encode.
fn emit(
    page: &mut [u8],
    exec: u64,
    at: usize,
    limit: usize,
    insns: &[Instruction],
    ends: &mut [usize],
) -> Option<()> {
    let mut enc = Encoder::new(64);
    let mut pos = at;
    for (i, insn) in insns.iter().enumerate() {
        pos += enc.encode(insn, exec + pos as u64).ok()?;
        if let Some(end) = ends.get_mut(i) {
            *end = pos;
        }
    }
    let bytes = enc.take_buffer();
    page.get_mut(at..at + bytes.len())?.copy_from_slice(&bytes);
    (pos <= limit).then_some(())
}

fn rip_rel(addr: u64) -> MemoryOperand {
    MemoryOperand::with_base_displ(Register::RIP, addr as i64)
}

/// Page offsets of the syscall stub's instructions after its `endbr64`: the
/// kernel's prologue instructions, then the `jmp` into the translation.
pub(crate) type SyscallOffsets = [usize; 4];

/// Writes one CPU's thunks into `page` (executed at `exec`) for CPU `cpu`,
/// whose region's data page executes at `data`; `prologue` is the kernel's
/// syscall prologue (three instructions). Fails if kdbt's entry code is out
/// of rel32 reach or a thunk outgrows its slot.
pub(crate) fn write_thunks(
    page: &mut [u8],
    exec: u64,
    data: u64,
    cpu: u32,
    has_error_code: impl Fn(usize) -> bool,
    prologue: &[Instruction],
    entries: Entries,
) -> Option<SyscallOffsets> {
    let page = page.get_mut(..thunks::SIZE)?;
    page.fill(0xcc);
    let cpu = i32::try_from(cpu).ok()?;
    for vector in 0..VECTORS {
        let at = vector * thunks::VECTOR_STUB;
        let desc = vector as u64
            | if has_error_code(vector) {
                DESC_ERROR_CODE
            } else {
                0
            };
        let cs = 16 + if desc & DESC_ERROR_CODE != 0 { 8 } else { 0 };
        let slow = exec + (at + thunks::STUB_SLOW) as u64;
        let user_entry = exec + (thunks::USER_ENTRIES + 8 * vector) as u64;
        let insns = [
            Instruction::with(Code::Endbr64),
            Instruction::with(Code::Pushfq),
            Instruction::with2(
                Code::Test_rm8_imm8,
                MemoryOperand::with_base_displ(Register::RSP, cs),
                3,
            )
            .ok()?,
            Instruction::with_branch(Code::Je_rel8_64, slow).ok()?,
            Instruction::with1(Code::Push_r64, Register::RAX).ok()?,
            Instruction::with2(
                Code::Mov_RAX_moffs64,
                Register::RAX,
                moffs(entries.log_published),
            )
            .ok()?,
            Instruction::with2(
                Code::Cmp_r64_rm64,
                Register::RAX,
                rip_rel(exec + thunks::LOG_APPLIED as u64),
            )
            .ok()?,
            Instruction::with1(Code::Pop_r64, Register::RAX).ok()?,
            Instruction::with_branch(Code::Jne_rel8_64, slow).ok()?,
            Instruction::with(Code::Popfq),
            Instruction::with1(Code::Push_rm64, rip_rel(user_entry)).ok()?,
            Instruction::with(Code::Retnq),
            Instruction::with(Code::Popfq),
            Instruction::with1(Code::Pushq_imm32, desc as i32).ok()?,
            Instruction::with1(Code::Pushq_imm32, cpu).ok()?,
            Instruction::with_branch(Code::Jmp_rel32_64, entries.idt_common).ok()?,
        ];
        // The dispatcher rolls an IST event inside a stub back by these
        // offsets (`stub_undo`).
        let mut ends = [0; 15];
        emit(page, exec, at, at + thunks::VECTOR_STUB, &insns, &mut ends)?;
        let want = [
            thunks::STUB_PUSHFQ,
            thunks::STUB_TEST,
            thunks::STUB_JZ,
            thunks::STUB_PUSH_RAX,
            thunks::STUB_LOAD,
            thunks::STUB_CMP,
            thunks::STUB_POP_RAX,
            thunks::STUB_JNE,
            thunks::STUB_USER_POPFQ,
            thunks::STUB_USER_PUSH,
            thunks::STUB_USER_RET,
            thunks::STUB_SLOW,
            thunks::STUB_PUSH_DESC,
            thunks::STUB_PUSH_CPU,
            thunks::STUB_JMP,
        ];
        if ends != want.map(|e| at + e) {
            return None;
        }
        set_user_entry(page, exec, vector, None)?;
    }
    page.get_mut(thunks::LOG_APPLIED..thunks::LOG_APPLIED + 8)?
        .fill(0xff);
    let mut syscall: Vec<Instruction> = Vec::new();
    syscall.try_reserve(2 + prologue.len()).ok()?;
    syscall.push(Instruction::with(Code::Endbr64));
    syscall.extend_from_slice(prologue);
    syscall.push(
        Instruction::with1(
            Code::Jmp_rm64,
            rip_rel(exec + thunks::SYSCALL_TARGET as u64),
        )
        .ok()?,
    );
    let mut offsets: SyscallOffsets = [0; 4];
    if syscall.len() != offsets.len() + 1 {
        return None;
    }
    emit(
        page,
        exec,
        thunks::SYSCALL,
        thunks::SYSCALL_TARGET,
        &syscall,
        &mut offsets,
    )?;
    let exit = exit_thunk(entries.exit_common)?;
    // The dispatcher's rollback of an event inside the exit thunk relies on these offsets.
    let mut ends = [0; 8];
    emit(page, exec, thunks::EXIT, thunks::RESUME, &exit, &mut ends)?;
    if ends
        != [
            thunks::EXIT_PUSHFQ,
            thunks::EXIT_CLI,
            thunks::EXIT_PUSH_RAX,
            thunks::EXIT_MOV,
            thunks::EXIT_LSL,
            thunks::EXIT_AND,
            thunks::EXIT_XCHG,
            thunks::EXIT_JMP,
        ]
    {
        return None;
    }
    let resume = [
        Instruction::with2(
            Code::Lea_r64_m,
            Register::RSP,
            rip_rel(exec + thunks::IRET_FRAME as u64),
        )
        .ok()?,
        Instruction::with(Code::Iretq),
    ];
    // An IST event at the `iretq` is rolled forward to the frame it loads.
    let mut ends = [0; 1];
    emit(
        page,
        exec,
        thunks::RESUME,
        thunks::IRET_FRAME,
        &resume,
        &mut ends,
    )?;
    if ends != [thunks::RESUME_IRETQ] {
        return None;
    }
    emit(
        page,
        exec,
        thunks::UD2,
        thunks::NMI_STUB,
        &[Instruction::with(Code::Ud2)],
        &mut [],
    )?;
    let rax_slot = rip_rel(data + data::SAVED_RAX as u64);
    let nmi = [
        Instruction::with(Code::Endbr64),
        Instruction::with2(Code::Mov_rm64_r64, rax_slot, Register::RAX).ok()?,
        Instruction::with2(Code::Mov_r64_rm64, Register::RAX, Register::RSP).ok()?,
        Instruction::with2(
            Code::Mov_r64_rm64,
            Register::RSP,
            rip_rel(data + data::NMI_STACK_TOP as u64),
        )
        .ok()?,
        Instruction::with1(Code::Push_r64, Register::RAX).ok()?,
        Instruction::with2(Code::Mov_r64_rm64, Register::RAX, rax_slot).ok()?,
        Instruction::with1(
            Code::Pushq_imm32,
            (NMI_VECTOR as u64 | DESC_PRIVATE_STACK) as i32,
        )
        .ok()?,
        Instruction::with1(Code::Pushq_imm32, cpu).ok()?,
        Instruction::with_branch(Code::Jmp_rel32_64, entries.idt_common).ok()?,
    ];
    emit(
        page,
        exec,
        thunks::NMI_STUB,
        thunks::USER_ENTRIES,
        &nmi,
        &mut [],
    )?;
    Some(offsets)
}

/// Sets where `vector`'s stub in the thunk `page` (executed at `exec`) goes
/// from user mode: `target`, or the dispatcher (its own `push desc`).
pub(crate) fn set_user_entry(
    page: &mut [u8],
    exec: u64,
    vector: usize,
    target: Option<u64>,
) -> Option<()> {
    // The user path has restored the flags already: past the slow path's `popfq`.
    let dispatcher = exec + (vector * thunks::VECTOR_STUB + thunks::STUB_PUSH_DESC) as u64;
    let at = thunks::USER_ENTRIES + 8 * vector;
    page.get_mut(at..at + 8)?
        .copy_from_slice(&target.unwrap_or(dispatcher).to_le_bytes());
    Some(())
}

/// Sends every vector of the thunk `page` from user mode to the dispatcher,
/// until set again.
pub(crate) fn reset_user_entries(page: &mut [u8], exec: u64) {
    for vector in 0..VECTORS {
        let _ = set_user_entry(page, exec, vector, None);
    }
}

/// Records in the thunk `page` how many consistency log entries its CPU has
/// applied.
pub(crate) fn set_log_applied(page: &mut [u8], applied: u64) {
    if let Some(w) = page.get_mut(thunks::LOG_APPLIED..thunks::LOG_APPLIED + 8) {
        w.copy_from_slice(&applied.to_le_bytes());
    }
}

fn moffs(addr: u64) -> MemoryOperand {
    MemoryOperand::new(
        Register::None,
        Register::None,
        1,
        addr as i64,
        8,
        false,
        Register::None,
    )
}
