//! Elided callees (`Embedder::elided_call`, `Runtime::set_elided_calls`): a direct `call`
//! to an elided target is dropped from translated code (no code, no exit: the block goes
//! on), a direct `jmp` to one (a tail call) is the `ret` the callee would end with, under
//! both policies; the target is never translated. Indirect calls and jumps and conditional
//! branches to it still run it, as does every branch to it when nothing is elided. The
//! kernel module elides its own native-only tracepoint probe this way.

mod common;

use std::arch::global_asm;
use std::ops::Range;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use kdbt_engine::{CallRetPolicy, Rollback, ThunkArray, Thunks};
use kdbt_host::{Options, Placement, RunError, Runtime, TransparentSites};

// Hand-written guest functions (no red zone used). Every function taking a pointer takes
// it in `rdi`; the probes count their runs at `[rdi]` (`[rdi + 128]` for the clobbering
// one).
global_asm!(
    ".balign 16",
    // A probe with visible effects: counts, and returns 0xbad.
    ".globl kdbt_el_probe",
    "kdbt_el_probe:",
    "inc qword ptr [rdi]",
    "mov eax, 0xbad",
    "ret",
    ".globl kdbt_el_probe_end",
    "kdbt_el_probe_end:",
    // A probe that crashes.
    ".globl kdbt_el_trap",
    "kdbt_el_trap:",
    "ud2",
    ".globl kdbt_el_trap_end",
    "kdbt_el_trap_end:",
    // 7 + 1 + 2 past both probes: 10 when they do nothing.
    ".balign 16",
    ".globl kdbt_el_calls",
    "kdbt_el_calls:",
    "mov eax, 7",
    "call kdbt_el_probe",
    "add rax, 1",
    "call kdbt_el_trap",
    "add rax, 2",
    "ret",
    // Counts at [rdi + 128] and clobbers every caller-saved register but rdi.
    ".balign 16",
    ".globl kdbt_el_clobber",
    "kdbt_el_clobber:",
    "inc qword ptr [rdi + 128]",
    "mov rax, -1",
    "mov rcx, -1",
    "mov rdx, -1",
    "mov rsi, -1",
    "mov r8, -1",
    "mov r9, -1",
    "mov r10, -1",
    "mov r11, -1",
    "ret",
    ".globl kdbt_el_clobber_end",
    "kdbt_el_clobber_end:",
    // A static-call trampoline: a tail call.
    ".balign 16",
    ".globl kdbt_el_tail",
    "kdbt_el_tail:",
    "jmp kdbt_el_clobber",
    ".globl kdbt_el_tail_end",
    "kdbt_el_tail_end:",
    // Sets every register to 0x100 + its number, calls the tail call, and stores every
    // register at [rdi + 8 * number] after it (rsp: its change).
    ".balign 16",
    ".globl kdbt_el_tail_caller",
    "kdbt_el_tail_caller:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi + 32], rsp",
    "mov rax, 0x100",
    "mov rcx, 0x101",
    "mov rdx, 0x102",
    "mov rbx, 0x103",
    "mov rbp, 0x105",
    "mov rsi, 0x106",
    "mov r8, 0x108",
    "mov r9, 0x109",
    "mov r10, 0x10a",
    "mov r11, 0x10b",
    "mov r12, 0x10c",
    "mov r13, 0x10d",
    "mov r14, 0x10e",
    "mov r15, 0x10f",
    "call kdbt_el_tail",
    "mov [rdi], rax",
    "mov [rdi + 8], rcx",
    "mov [rdi + 16], rdx",
    "mov [rdi + 24], rbx",
    "sub [rdi + 32], rsp",
    "mov [rdi + 40], rbp",
    "mov [rdi + 48], rsi",
    "mov [rdi + 56], rdi",
    "mov [rdi + 64], r8",
    "mov [rdi + 72], r9",
    "mov [rdi + 80], r10",
    "mov [rdi + 88], r11",
    "mov [rdi + 96], r12",
    "mov [rdi + 104], r13",
    "mov [rdi + 112], r14",
    "mov [rdi + 120], r15",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    // The probe through a register: 0xbad + 1.
    ".balign 16",
    ".globl kdbt_el_indirect_call",
    "kdbt_el_indirect_call:",
    "mov eax, 7",
    "lea rcx, [rip + kdbt_el_probe]",
    "call rcx",
    "add rax, 1",
    "ret",
    // A tail call through a register: 0xbad.
    ".globl kdbt_el_indirect_jmp",
    "kdbt_el_indirect_jmp:",
    "mov eax, 7",
    "lea rcx, [rip + kdbt_el_probe]",
    "jmp rcx",
    // A conditional tail call: 0xbad.
    ".globl kdbt_el_conditional",
    "kdbt_el_conditional:",
    "mov eax, 7",
    "test rdi, rdi",
    "jnz kdbt_el_probe",
    "ret",
    // The probe through rcx's indirect-branch thunk: 8 when it does nothing.
    ".balign 16",
    ".globl kdbt_el_thunked",
    "kdbt_el_thunked:",
    "mov eax, 7",
    "lea rcx, [rip + kdbt_el_probe]",
    "call kdbt_el_thunk_rcx",
    "add rax, 1",
    "ret",
    // A probe that changes no register and no flag: natively, a run passes through
    // every state its translation with the probe elided shows.
    ".balign 16",
    ".globl kdbt_el_quiet",
    "kdbt_el_quiet:",
    "mov qword ptr [rdi], 1",
    "ret",
    ".globl kdbt_el_quiet_end",
    "kdbt_el_quiet_end:",
    ".globl kdbt_el_quiet_tail",
    "kdbt_el_quiet_tail:",
    "lea rax, [rax + 6]",
    "jmp kdbt_el_quiet",
    ".globl kdbt_el_quiet_tail_end",
    "kdbt_el_quiet_tail_end:",
    // 3 + 4 + 6 + 5 = 18 either way.
    ".globl kdbt_el_quiet_caller",
    "kdbt_el_quiet_caller:",
    "mov eax, 3",
    "call kdbt_el_quiet",
    "add rax, 4",
    "call kdbt_el_quiet_tail",
    "add rax, 5",
    "ret",
    // A thunk array (stride 32, as retpolines'), last: no other code is inside it.
    ".balign 32",
    ".globl kdbt_el_thunks",
    "kdbt_el_thunks:",
    "jmp rax",
    ".balign 32",
    ".globl kdbt_el_thunk_rcx",
    "kdbt_el_thunk_rcx:",
    "jmp rcx",
    ".balign 32",
);

extern "C" {
    fn kdbt_el_probe();
    fn kdbt_el_probe_end();
    fn kdbt_el_trap();
    fn kdbt_el_trap_end();
    fn kdbt_el_calls();
    fn kdbt_el_clobber();
    fn kdbt_el_clobber_end();
    fn kdbt_el_tail();
    fn kdbt_el_tail_end();
    fn kdbt_el_tail_caller();
    fn kdbt_el_indirect_call();
    fn kdbt_el_indirect_jmp();
    fn kdbt_el_conditional();
    fn kdbt_el_thunked();
    fn kdbt_el_quiet();
    fn kdbt_el_quiet_end();
    fn kdbt_el_quiet_tail();
    fn kdbt_el_quiet_tail_end();
    fn kdbt_el_quiet_caller();
    fn kdbt_el_thunks();
    fn kdbt_el_thunk_rcx();
}

fn addr(f: unsafe extern "C" fn()) -> u64 {
    f as usize as u64
}

fn range(start: unsafe extern "C" fn(), end: unsafe extern "C" fn()) -> Range<u64> {
    addr(start)..addr(end)
}

/// Fast policy: calls to `start..end` and its `ret`s (and elided tail calls) are
/// Transparent.
fn transparent(start: unsafe extern "C" fn(), end: unsafe extern "C" fn()) -> TransparentSites {
    TransparentSites {
        calls: vec![range(start, end)],
        rets: vec![range(start, end)],
    }
}

const POLICIES: [CallRetPolicy; 2] = [CallRetPolicy::Transparent, CallRetPolicy::Fast];

/// Calls `f` with a runtime eliding `elided` for every policy, placement (Near:
/// RIP-relative operands re-encoded; Low: the kernel's two-register lookups; Far: rewritten
/// through a scratch register) and red zone (128, 0), and its name; one runtime at a time
/// (there are few arena addresses at a placement's distances).
fn each_runtime(elided: &[Range<u64>], thunks: Thunks, mut f: impl FnMut(Runtime, &str)) {
    let near = addr(kdbt_el_probe);
    for policy in POLICIES {
        for placement in [Placement::Near(near), Placement::Low, Placement::Far(near)] {
            for red_zone in [128, 0] {
                let mut opts = Options::new(policy);
                opts.placement = placement;
                opts.red_zone = red_zone;
                opts.thunks = thunks;
                let mut rt = Runtime::new(opts).expect("runtime");
                rt.set_elided_calls(elided.to_vec());
                f(rt, &format!("{policy:?} {placement:?} red zone {red_zone}"));
            }
        }
    }
}

/// Under every runtime eliding `elided`, `entry(&count)` returns `expected` and the probe
/// counts `runs` per run, cold and then linked.
fn assert_runs(entry: unsafe extern "C" fn(), elided: &[Range<u64>], expected: u64, runs: u64) {
    each_runtime(elided, Thunks::NONE, |mut rt, what| {
        for run in 1..=2 {
            let mut count = Box::new(0u64);
            let p = &mut *count as *mut u64 as u64;
            assert_eq!(rt.run(addr(entry), &[p]).expect("run"), expected, "{what}");
            assert_eq!(*count, runs, "{what} run {run}");
        }
    });
}

/// The host instruction at cache address `at`.
fn host_insn(rt: &Runtime, at: u64) -> Instruction {
    let arena = rt.cache().arena().as_ref();
    let i = (at - rt.cache().exec_base()) as usize;
    Decoder::with_ip(64, &arena[i..], at, DecoderOptions::NONE).decode()
}

#[test]
fn a_direct_call_to_an_elided_callee_is_no_code() {
    let elided = [
        range(kdbt_el_probe, kdbt_el_probe_end),
        range(kdbt_el_trap, kdbt_el_trap_end),
    ];
    let entry = addr(kdbt_el_calls);
    assert_runs(kdbt_el_calls, &elided, 10, 0);
    each_runtime(&elided, Thunks::NONE, |mut rt, what| {
        let mut count = 0u64;
        assert_eq!(rt.run(entry, &[&mut count as *mut u64 as u64]), Ok(10));
        // Neither probe was translated, and the copied `add`s follow `mov eax, 7` with
        // nothing between them; each maps to itself alone.
        assert_eq!(rt.cache().lookup(addr(kdbt_el_probe)), None, "{what}");
        assert_eq!(rt.cache().lookup(addr(kdbt_el_trap)), None, "{what}");
        let frag = rt.cache().lookup(entry).expect("translated");
        let mut at = rt.cache().fragment_entry(frag).expect("entry");
        let guest = [
            (entry, Code::Mov_r32_imm32),
            (entry + 10, Code::Add_rm64_imm8),
        ];
        for (pc, code) in guest.into_iter().chain([(entry + 19, Code::Add_rm64_imm8)]) {
            let insn = host_insn(&rt, at);
            assert_eq!(insn.code(), code, "{what} at {at:#x}");
            let mapping = rt.cache().pc_map(at).expect("mapped");
            assert_eq!((mapping.insn_pc, mapping.rollback), (pc, Rollback::at(pc)));
            at = insn.next_ip();
        }
    });
}

#[test]
fn without_elided_callees_the_same_calls_run_their_callees() {
    // Only the crashing probe elided: the counting one runs, once per run.
    let trap = [range(kdbt_el_trap, kdbt_el_trap_end)];
    assert_runs(kdbt_el_calls, &trap, 0xbad + 3, 1);
    // Nothing elided: the crashing one crashes.
    each_runtime(&[], Thunks::NONE, |mut rt, what| {
        let mut count = 0u64;
        let err = rt
            .run(addr(kdbt_el_calls), &[&mut count as *mut u64 as u64])
            .unwrap_err();
        let RunError::Signal(trap) = err else {
            panic!("{what}: {err:?}");
        };
        assert_eq!(trap.signo, libc::SIGILL, "{what}");
        assert_eq!(count, 1, "{what}");
    });
}

/// The registers `kdbt_el_tail_caller` stores after its call when the callee does
/// nothing: each one as set (rsp unchanged, rdi the buffer), no probe run.
fn untouched(buf: u64) -> [u64; 17] {
    let mut regs: [u64; 17] = core::array::from_fn(|n| 0x100 + n as u64);
    regs[4] = 0;
    regs[7] = buf;
    regs[16] = 0;
    regs
}

fn run_tail_caller(rt: &mut Runtime) -> [u64; 17] {
    let mut buf = [0u64; 17];
    let p = buf.as_mut_ptr() as u64;
    rt.run(addr(kdbt_el_tail_caller), &[p]).expect("run");
    buf
}

#[test]
fn a_tail_call_to_an_elided_callee_returns_to_the_callers_caller_with_registers_unchanged() {
    let elided = [range(kdbt_el_clobber, kdbt_el_clobber_end)];
    each_runtime(&elided, Thunks::NONE, |mut rt, what| {
        for run in 0..2 {
            let buf = run_tail_caller(&mut rt);
            assert_eq!(buf, untouched(buf[7]), "{what} run {run}");
        }
        assert_eq!(rt.cache().lookup(addr(kdbt_el_clobber)), None, "{what}");
        // The trampoline's translation is one `ret` (Fast: after its lookup entry).
        let frag = rt.cache().lookup(addr(kdbt_el_tail)).expect("translated");
        let at = rt.cache().fragment_entry(frag).expect("entry");
        let first = host_insn(&rt, at).code();
        let tail = addr(kdbt_el_tail);
        let mapping = rt.cache().pc_map(at).expect("mapped");
        assert_eq!(mapping.insn_pc, tail, "{what}");
        if rt.cache().config().policy == CallRetPolicy::Fast {
            assert_eq!(first, Code::Retnq, "{what}");
            assert_eq!(mapping.rollback, Rollback::at(tail), "{what}");
            assert_eq!(rt.cache().pc_map(at + 1).map(|m| m.insn_pc), None);
        } else {
            assert_ne!(first, Code::Retnq, "{what}: the `ret` is a lookup");
        }
        assert_eq!(rt.cache().stats().site_resumes, 0, "{what}");
    });
}

#[test]
fn an_elided_tail_call_at_a_transparent_ret_pc_of_a_fast_cache_is_a_transparent_ret() {
    let elided = [range(kdbt_el_clobber, kdbt_el_clobber_end)];
    let sites = transparent(kdbt_el_tail, kdbt_el_tail_end);
    each_runtime(&elided, Thunks::NONE, |mut rt, what| {
        if rt.cache().config().policy != CallRetPolicy::Fast {
            return;
        }
        rt.set_transparent_sites(sites.clone());
        for run in 0..2 {
            let buf = run_tail_caller(&mut rt);
            assert_eq!(buf, untouched(buf[7]), "{what} run {run}");
        }
        // The Transparent call pushed the native return address, which the lookup popped:
        // no return site was resumed.
        let frag = rt.cache().lookup(addr(kdbt_el_tail)).expect("translated");
        let at = rt.cache().fragment_entry(frag).expect("entry");
        assert_ne!(host_insn(&rt, at).code(), Code::Retnq, "{what}");
        let s = *rt.cache().stats();
        assert_eq!(s.site_resumes, 0, "{what}: {s:?}");
    });
}

#[test]
fn without_elided_callees_the_same_tail_call_runs_its_callee() {
    each_runtime(&[], Thunks::NONE, |mut rt, what| {
        let buf = run_tail_caller(&mut rt);
        let mut clobbered = untouched(buf[7]);
        for r in [0, 1, 2, 6, 8, 9, 10, 11] {
            clobbered[r] = u64::MAX;
        }
        clobbered[16] = 1;
        assert_eq!(buf, clobbered, "{what}");
    });
}

#[test]
fn indirect_and_conditional_branches_to_an_elided_callee_still_run_it() {
    let elided = [range(kdbt_el_probe, kdbt_el_probe_end)];
    assert_runs(kdbt_el_indirect_call, &elided, 0xbad + 1, 1);
    assert_runs(kdbt_el_indirect_jmp, &elided, 0xbad, 1);
    // Taken (rdi, the counter's address, is not 0).
    assert_runs(kdbt_el_conditional, &elided, 0xbad, 1);
}

#[test]
fn a_call_to_an_elided_thunk_is_elided_before_the_thunks_stand_in() {
    let mut thunks = Thunks::NONE;
    thunks.indirect[0] = ThunkArray {
        base: addr(kdbt_el_thunks),
        stride: 32,
    };
    let thunk = addr(kdbt_el_thunk_rcx);
    let rcx_thunk = thunk..thunk + 32;
    let elided = [rcx_thunk];
    let entry = addr(kdbt_el_thunked);
    for (elided, expected, runs) in [(&elided[..], 8, 0), (&[][..], 0xbad + 1, 1)] {
        each_runtime(elided, thunks, |mut rt, what| {
            let mut count = 0u64;
            let p = &mut count as *mut u64 as u64;
            assert_eq!(rt.run(entry, &[p]), Ok(expected), "{what}");
            assert_eq!(count, runs, "{what}");
            // Either way the thunk itself is never translated: stood in for or elided.
            assert_eq!(rt.cache().lookup(thunk), None, "{what}");
        });
    }
}

#[test]
fn single_stepping_elided_calls_and_tail_calls_shows_only_native_states() {
    let elided = [range(kdbt_el_quiet, kdbt_el_quiet_end)];
    let sites = transparent(kdbt_el_quiet_tail, kdbt_el_quiet_tail_end);
    let entry = addr(kdbt_el_quiet_caller);
    for with_sites in [false, true] {
        each_runtime(&elided, Thunks::NONE, |mut rt, what| {
            if with_sites {
                if rt.cache().config().policy != CallRetPolicy::Fast {
                    return;
                }
                rt.set_transparent_sites(sites.clone());
            }
            let mut word = Box::new(0u64);
            let p = &mut *word as *mut u64 as u64;
            let what = format!("{what}, Transparent sites {with_sites}");
            let (result, seen) =
                common::assert_stepped_states_are_native(&mut rt, entry, &[p], || {}, &what);
            assert_eq!(result, 18, "{what}");
            assert!(seen.steps > 0, "{what}");
            // Natively the probe stored 1; translated it never ran.
            *word = 0;
            assert_eq!(rt.run(entry, &[p]), Ok(18), "{what}");
            assert_eq!(*word, 0, "{what}");
        });
    }
}
