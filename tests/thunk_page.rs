//! kdbt's per-CPU thunk page (`src/module/thunk_page.rs`, compiled here as it is in the
//! module) and the engine's fragments, checked for IBT: every address the CPU can reach
//! through an IDT gate, `syscall` or an indirect branch into kdbt code begins with
//! `endbr64`. The gates point at the vector and NMI stubs, MSR_LSTAR at the syscall stub,
//! and the only indirect branch in emitted code (`jmp [rip + slot]` to the dispatcher when
//! it is out of rel32 reach) at the exit thunk; lookup hits continue with `ret`, which IBT
//! does not track (the kernel's Transparent policy). Under the Fast policy lookup hits
//! `jmp rcx` to a fragment's lookup entry, which begins with `endbr64`.

extern crate alloc;

#[allow(dead_code)] // the module uses more of it than these tests
#[path = "../src/module/thunk_page.rs"]
mod thunk_page;

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, MemoryOperand, Register};
use kdbt_engine::CallRetPolicy;
use kdbt_host::{Options, Placement, Runtime};
use thunk_page::{exit_undo, stub_undo, thunks, Entries, StubUndo, NMI_VECTOR, VECTORS};

const EXEC: u64 = 0xffff_ffff_c000_0000;
const DATA: u64 = EXEC + 0x80_0000;
const LOG_PUBLISHED: u64 = EXEC - 0x20_0000;

fn first(page: &[u8], off: usize) -> Instruction {
    Decoder::with_ip(64, &page[off..], EXEC + off as u64, DecoderOptions::NONE).decode()
}

/// The kernel's syscall prologue as `syscall::prologue` hands it over.
fn prologue() -> Vec<Instruction> {
    let gs = |d| MemoryOperand::new(Register::None, Register::None, 1, d, 4, false, Register::GS);
    vec![
        Instruction::with(Code::Swapgs),
        Instruction::with2(Code::Mov_rm64_r64, gs(0x6014), Register::RSP).unwrap(),
        Instruction::with2(Code::Mov_r64_rm64, Register::RSP, gs(0x3f18)).unwrap(),
    ]
}

fn page() -> Vec<u8> {
    page_of_cpu(3)
}

fn page_of_cpu(cpu: u32) -> Vec<u8> {
    let mut page = vec![0u8; thunks::SIZE];
    let entries = Entries {
        idt_common: EXEC - 0x10_0000,
        exit_common: EXEC - 0x10_0100,
        log_published: LOG_PUBLISHED,
    };
    thunk_page::write_thunks(
        &mut page,
        EXEC,
        DATA,
        cpu,
        |v| v == 14,
        &prologue(),
        entries,
    )
    .expect("thunk page");
    page
}

#[test]
fn every_gate_syscall_and_exit_target_begins_with_endbr64() {
    let page = page();
    let mut targets: Vec<(String, usize)> = (0..VECTORS)
        .filter(|&v| v != NMI_VECTOR)
        .map(|v| (format!("vector {v}"), v * thunks::VECTOR_STUB))
        .collect();
    targets.push(("NMI stub".into(), thunks::NMI_STUB));
    targets.push(("syscall stub".into(), thunks::SYSCALL));
    targets.push(("exit thunk".into(), thunks::EXIT));
    for (what, off) in targets {
        assert_eq!(
            first(&page, off).code(),
            Code::Endbr64,
            "{what} at {off:#x}"
        );
    }
}

#[test]
fn thunk_offsets_the_dispatcher_rolls_back_by_match_the_encoding() {
    let page = page();
    let mut off = thunks::EXIT;
    let mut ends = Vec::new();
    for _ in 0..8 {
        off += first(&page, off).len();
        ends.push(off);
    }
    let want = [
        thunks::EXIT_PUSHFQ,
        thunks::EXIT_CLI,
        thunks::EXIT_PUSH_RAX,
        thunks::EXIT_MOV,
        thunks::EXIT_LSL,
        thunks::EXIT_AND,
        thunks::EXIT_XCHG,
        thunks::EXIT_JMP,
    ];
    assert_eq!(ends, want);
    assert_eq!(first(&page, thunks::EXIT_PUSHFQ).code(), Code::Pushfq);
    assert_eq!(first(&page, thunks::RESUME_IRETQ).code(), Code::Iretq);
}

/// The exit thunk pushes what the common exit expects (the guest's rflags, then the CPU
/// id, rax unchanged), read from the CPUNODE segment, so that its code is the same on
/// every CPU; each instruction boundary has the undo the dispatcher applies there.
#[test]
fn exit_thunk_finds_its_cpu_without_naming_it() {
    let page3 = page_of_cpu(3);
    let page5 = page_of_cpu(5);
    let exit = thunks::EXIT..thunks::EXIT_JMP + 5;
    assert_eq!(page3[exit.clone()], page5[exit.clone()]);
    assert_ne!(
        page3[..thunks::SYSCALL],
        page5[..thunks::SYSCALL],
        "vector stubs name the CPU"
    );

    let mov = first(&page3, thunks::EXIT_MOV);
    assert_eq!(
        (mov.code(), mov.op0_register(), mov.immediate32()),
        (Code::Mov_r32_imm32, Register::EAX, 15 * 8 + 3)
    );
    let lsl = first(&page3, thunks::EXIT_LSL);
    assert_eq!(
        (lsl.code(), lsl.op0_register(), lsl.op1_register()),
        (Code::Lsl_r32_r32m16, Register::EAX, Register::EAX)
    );
    let and = first(&page3, thunks::EXIT_AND);
    assert_eq!(
        (and.code(), and.immediate32()),
        (Code::And_EAX_imm32, 0xfff)
    );
    let xchg = first(&page3, thunks::EXIT_XCHG);
    assert_eq!(
        (
            xchg.code(),
            xchg.memory_base(),
            xchg.memory_displacement64(),
            xchg.op1_register()
        ),
        (Code::Xchg_rm64_r64, Register::RSP, 0, Register::RAX)
    );
    let jmp = first(&page3, thunks::EXIT_JMP);
    assert_eq!(
        (jmp.code(), jmp.near_branch_target()),
        (Code::Jmp_rel32_64, EXEC - 0x10_0100)
    );

    let undo = |pushed, rflags, rax| {
        Some(StubUndo {
            pushed,
            rflags,
            rax,
        })
    };
    assert_eq!(exit_undo(thunks::EXIT), undo(0, None, None));
    assert_eq!(exit_undo(thunks::EXIT_PUSHFQ), undo(0, None, None));
    assert_eq!(exit_undo(thunks::EXIT_CLI), undo(1, Some(0), None));
    assert_eq!(exit_undo(thunks::EXIT_PUSH_RAX), undo(1, Some(0), None));
    for at in [
        thunks::EXIT_MOV,
        thunks::EXIT_LSL,
        thunks::EXIT_AND,
        thunks::EXIT_XCHG,
    ] {
        assert_eq!(exit_undo(at), undo(2, Some(1), Some(0)), "offset {at:#x}");
    }
    assert_eq!(exit_undo(thunks::EXIT_JMP), undo(2, Some(1), None));
    // Nothing but instruction boundaries inside the thunk.
    let boundaries: Vec<usize> = (thunks::EXIT..thunks::RESUME)
        .filter(|&o| exit_undo(o).is_some())
        .collect();
    let mut want = vec![thunks::EXIT];
    let mut off = thunks::EXIT;
    while off < thunks::EXIT_JMP {
        off += first(&page3, off).len();
        want.push(off);
    }
    assert_eq!(boundaries, want);
}

#[test]
fn vector_stubs_go_straight_to_the_user_entry_only_from_user_mode_with_the_log_applied() {
    let page = page();
    for vector in [13usize, 14] {
        let at = vector * thunks::VECTOR_STUB;
        let mut insns = Vec::new();
        let mut off = at;
        while off < at + thunks::STUB_JMP + 1 {
            let insn = first(&page, off);
            insns.push((off - at, insn));
            off += insn.len();
        }
        let code = |o: usize| insns.iter().find(|(x, _)| *x == o).map(|(_, i)| i.code());
        // Vector 14 has an error code: CS is one word further up.
        let cs = if vector == 14 { 24 } else { 16 };
        let test = insns[2].1;
        assert_eq!(
            (
                test.code(),
                test.memory_base(),
                test.memory_displacement64(),
                test.immediate8()
            ),
            (Code::Test_rm8_imm8, Register::RSP, cs, 3)
        );
        let slow = EXEC + (at + thunks::STUB_SLOW) as u64;
        assert_eq!(
            (insns[3].1.code(), insns[3].1.near_branch_target()),
            (Code::Je_rel8_64, slow)
        );
        let load = insns[5].1;
        assert_eq!(
            (load.code(), load.memory_displacement64()),
            (Code::Mov_RAX_moffs64, LOG_PUBLISHED)
        );
        let cmp = insns[6].1;
        assert_eq!(
            cmp.ip_rel_memory_address(),
            EXEC + thunks::LOG_APPLIED as u64
        );
        assert_eq!(
            (insns[8].1.code(), insns[8].1.near_branch_target()),
            (Code::Jne_rel8_64, slow)
        );
        let push = insns[10].1;
        let entry = thunks::USER_ENTRIES + 8 * vector;
        assert_eq!(
            (push.code(), push.ip_rel_memory_address()),
            (Code::Push_rm64, EXEC + entry as u64)
        );
        assert_eq!(code(thunks::STUB_USER_RET), Some(Code::Retnq));
        // Until the dispatcher sets it, the user entry is the slow path past its `popfq`
        // (the user path restored the flags already).
        let word = u64::from_le_bytes(page[entry..entry + 8].try_into().unwrap());
        assert_eq!(word, EXEC + (at + thunks::STUB_PUSH_DESC) as u64);
        assert_eq!(code(thunks::STUB_PUSH_DESC), Some(Code::Pushq_imm32));
        assert_eq!(code(thunks::STUB_SLOW), Some(Code::Popfq));
        assert_eq!(code(thunks::STUB_JMP), Some(Code::Jmp_rel32_64));
        // Every instruction start has an undo, nothing between them does.
        for o in 0..thunks::STUB_JMP + 1 {
            let starts = insns.iter().any(|(x, _)| *x == o);
            assert_eq!(stub_undo(o).is_some(), starts, "vector {vector} offset {o}");
        }
    }
    // An applied count no published count equals: slow until the dispatcher writes it.
    let applied = &page[thunks::LOG_APPLIED..thunks::LOG_APPLIED + 8];
    assert_eq!(u64::from_le_bytes(applied.try_into().unwrap()), u64::MAX);
}

#[test]
fn an_event_inside_a_vector_stub_undoes_what_the_stub_saved() {
    // After `push rax`, rax is the top word and rflags the next; after `popfq`, nothing.
    let undo = |pushed, rflags, rax| {
        Some(StubUndo {
            pushed,
            rflags,
            rax,
        })
    };
    assert_eq!(stub_undo(0), undo(0, None, None));
    assert_eq!(stub_undo(thunks::STUB_TEST), undo(1, Some(0), None));
    assert_eq!(stub_undo(thunks::STUB_POP_RAX), undo(2, Some(1), Some(0)));
    assert_eq!(stub_undo(thunks::STUB_USER_POPFQ), undo(1, Some(0), None));
    assert_eq!(stub_undo(thunks::STUB_USER_PUSH), undo(0, None, None));
    assert_eq!(stub_undo(thunks::STUB_USER_RET), undo(1, None, None));
    assert_eq!(stub_undo(thunks::STUB_PUSH_CPU), undo(1, None, None));
    assert_eq!(stub_undo(thunks::STUB_JMP), undo(2, None, None));
}

/// A function with a direct call, an indirect call, an indirect jump and returns.
fn guest() -> Vec<u8> {
    let mut c = vec![
        0x48, 0x8d, 0x05, 0x0c, 0, 0, 0, // lea rax, [rip + g] (g at 0x13)
        0xff, 0xd0, // call rax
        0xe8, 0x04, 0, 0, 0,    // call h (at 0x12)
        0xc3, // ret
        0xcc, 0xcc, 0xcc, // padding
        0xc3, // h: ret
    ];
    // g: lea rcx, [rip + k]; jmp rcx; k: ret
    c.extend_from_slice(&[0x48, 0x8d, 0x0d, 0x02, 0, 0, 0, 0xff, 0xe1, 0xc3]);
    c
}

#[test]
fn emitted_code_branches_indirectly_only_to_the_exit_thunk() {
    let code = guest();
    let mut page = kdbt_host::ExecMemory::new(4096).expect("page");
    page.as_mut()[..code.len()].copy_from_slice(&code);
    // Far from the dispatcher trampoline, exits reach it through the arena's slot.
    let dispatcher = kdbt_host::kdbt_host_trampolines_start as *const () as u64;
    let policies = [CallRetPolicy::Transparent, CallRetPolicy::Fast];
    for (policy, placement) in policies
        .into_iter()
        .flat_map(|p| [(p, Placement::Anywhere), (p, Placement::Far(dispatcher))])
    {
        let mut opts = Options::new(policy);
        opts.placement = placement;
        let mut rt = Runtime::new(opts).expect("runtime");
        rt.run(page.base(), &[]).expect("run");
        let cache = rt.cache();
        let slot = cache.exec_base() + kdbt_engine::DISPATCHER_SLOT_OFFSET as u64;
        let arena = rt.arena_range();
        let bytes = cache.arena().as_ref();
        let mut indirect = 0;
        // Each fragment, from its entry for as long as the PC map covers its code.
        for off in 0..code.len() as u64 {
            let Some(id) = cache.lookup(page.base() + off) else {
                continue;
            };
            let mut at = cache.lookup_entry(id).expect("entry");
            let first = (at - arena.start) as usize;
            if policy == CallRetPolicy::Fast {
                assert_eq!(bytes[first..first + 4], [0xf3, 0x0f, 0x1e, 0xfa], "endbr64");
            }
            while cache.pc_map(at).is_some() {
                let i = (at - arena.start) as usize;
                let insn = Decoder::with_ip(64, &bytes[i..], at, DecoderOptions::NONE).decode();
                let hit = insn.code() == Code::Jmp_rm64 && insn.op0_register() == Register::RCX;
                if policy == CallRetPolicy::Fast && hit {
                    at = insn.next_ip();
                    continue;
                }
                if matches!(
                    insn.flow_control(),
                    FlowControl::IndirectBranch | FlowControl::IndirectCall
                ) {
                    indirect += 1;
                    assert!(
                        insn.is_ip_rel_memory_operand() && insn.ip_rel_memory_address() == slot,
                        "{policy:?} {placement:?}: {:?} at {at:#x} branches indirectly elsewhere than the dispatcher slot",
                        insn.code()
                    );
                }
                at = insn.next_ip();
            }
        }
        if matches!(placement, Placement::Far(_)) {
            assert!(indirect > 0, "far placement: no exit went through the slot");
        }
    }
}

/// The selector and mask the exit thunk uses give the CPU id on a real kernel: `lsl`
/// works at CPL 3 too (the vDSO's `getcpu`), so `cpunode_cpu`, the check `install` makes,
/// run by this process pinned to each CPU in turn reads that CPU's id.
#[test]
fn cpunode_selector_names_the_running_cpu() {
    // SAFETY: plain libc calls on this thread's own affinity.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .take(8)
        .collect();
    assert!(!cpus.is_empty());
    for cpu in cpus {
        // SAFETY: plain libc calls on this thread's own affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
        assert_eq!(thunk_page::cpunode_cpu(), Some(cpu as u32));
    }
    // SAFETY: gives this thread its affinity back.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&allowed), &allowed) };
}
