//! Fast-policy indirect calls: each is a real `call` into its inline lookup, whose pushed
//! return address is the registered return site, so the callee's copied `ret` returns
//! where the CPU's return stack predicts; lookup hits jump (`jmp rcx`, no `ret`) to the
//! target's lookup entry (`endbr64`, the spilled registers popped, `rsp` restored).
//! Checked on the emitted code, on results (rsp-relative operands read after the real
//! `call` pushed 8 bytes) and by single-stepping every host instruction back to a native
//! state.

mod common;

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, Register};
use kdbt_engine::{CallRetPolicy, RipSource, TABLE_OFFSET};
use kdbt_host::{ExecMemory, Options, Placement, Runtime};

const G: usize = 0x100;
/// `h`, far enough into the guest mapping that the stack below it holds the host
/// dispatcher's frame (it runs on the guest stack).
const H: usize = 0x3_0000;
const GUEST_LEN: usize = 0x4_0000;

/// Appends `op` (opcode and ModRM of a RIP-relative operand) with the rel32 reaching page
/// offset `target`.
fn rip_rel(c: &mut Vec<u8>, op: &[u8], target: usize) {
    c.extend_from_slice(op);
    let next = c.len() + 4;
    c.extend_from_slice(&(target as i32 - next as i32).to_le_bytes());
}

/// `main(a, b)` at offset 0 calls `g` (at `G`: `a + 2 * x + 1`, reading `a` from its
/// caller's stack at `[rsp + 8]`) through `[rsp + 8]`, `rax` and `[rsp + rcx*8 + 8]`, then
/// `h` (at `H`: `x + 5`) with `call rsp`, the stack moved to `h` itself. The result
/// is `15a + 12 + b`.
fn guest() -> Vec<u8> {
    let mut c = vec![0x53]; // push rbx
    rip_rel(&mut c, &[0x48, 0x8d, 0x05], G); // lea rax, [rip + g]
    c.extend([
        0x50, // push rax
        0x57, // push rdi                 ; [rsp] = a, [rsp + 8] = g
        0x48, 0x89, 0xf3, // mov rbx, rsi
        0xff, 0x54, 0x24, 0x08, // call [rsp + 8]
        0x48, 0x89, 0xc7, // mov rdi, rax
        0x48, 0x8b, 0x44, 0x24, 0x08, // mov rax, [rsp + 8]
        0xff, 0xd0, // call rax
        0x48, 0x89, 0xc7, // mov rdi, rax
        0x31, 0xc9, // xor ecx, ecx
        0xff, 0x54, 0xcc, 0x08, // call [rsp + rcx*8 + 8]
        0x48, 0x89, 0xc7, // mov rdi, rax
    ]);
    rip_rel(&mut c, &[0x48, 0x8d, 0x0d], H); // lea rcx, [rip + h]
    c.extend([
        0x48, 0x87, 0xcc, // xchg rsp, rcx
        0xff, 0xd4, // call rsp
        0x48, 0x89, 0xcc, // mov rsp, rcx
        0x48, 0x01, 0xd8, // add rax, rbx
        0x48, 0x83, 0xc4, 0x10, // add rsp, 16
        0x5b, // pop rbx
        0xc3, // ret
    ]);
    c.resize(G, 0xcc);
    c.extend([
        0x48, 0x8b, 0x44, 0x24, 0x08, // mov rax, [rsp + 8]
        0x48, 0x8d, 0x44, 0x78, 0x01, // lea rax, [rax + rdi*2 + 1]
        0xc3, // ret
    ]);
    c.resize(H, 0xcc);
    c.extend([0x48, 0x8d, 0x47, 0x05, 0xc3]); // lea rax, [rdi + 5]; ret
    c
}

struct Guest {
    page: ExecMemory,
}

impl Guest {
    fn new() -> Self {
        let code = guest();
        let mut page = ExecMemory::new(GUEST_LEN).expect("guest memory");
        page.as_mut()[..code.len()].copy_from_slice(&code);
        Guest { page }
    }

    fn at(&self, off: usize) -> u64 {
        self.page.base() + off as u64
    }

    /// The guest instruction at `pc`.
    fn insn(&self, pc: u64) -> Instruction {
        let off = (pc - self.page.base()) as usize;
        Decoder::with_ip(64, &self.page.as_ref()[off..], pc, DecoderOptions::NONE).decode()
    }
}

fn runtime(policy: CallRetPolicy, placement: Placement, red_zone: u32) -> Runtime {
    let mut opts = Options::new(policy);
    opts.placement = placement;
    opts.red_zone = red_zone;
    Runtime::new(opts).expect("runtime")
}

/// Every combination of `policies`, placement (Near: the three-register lookup; Low: the
/// two-register one, the kernel's; Far: RIP-relative operands rewritten through a scratch
/// register) and red zone (128, 0), with its name.
fn configs(g: &Guest, policies: &[CallRetPolicy]) -> Vec<(CallRetPolicy, Placement, u32, String)> {
    let placements = [
        Placement::Near(g.at(0)),
        Placement::Low,
        Placement::Far(g.at(0)),
    ];
    let mut out = Vec::new();
    for &policy in policies {
        for placement in placements {
            for red_zone in [128, 0] {
                let what = format!("{policy:?} {placement:?} red zone {red_zone}");
                out.push((policy, placement, red_zone, what));
            }
        }
    }
    out
}

const BOTH: [CallRetPolicy; 2] = [CallRetPolicy::Transparent, CallRetPolicy::Fast];

/// A Fast runtime per placement and red zone, each having run `main` once.
fn fast_runs(g: &Guest) -> Vec<(Runtime, Placement, u32, String)> {
    let fast = configs(g, &[CallRetPolicy::Fast]).into_iter();
    fast.map(|(policy, placement, red_zone, what)| {
        let mut rt = runtime(policy, placement, red_zone);
        assert_eq!(rt.run(g.at(0), &[A, B]).expect("run"), expected(), "{what}");
        (rt, placement, red_zone, what)
    })
    .collect()
}

const A: u64 = 1000;
const B: u64 = 7;

fn expected() -> u64 {
    15 * A + 12 + B
}

#[test]
fn fast_indirect_calls_give_native_results_with_rsp_relative_operands() {
    let g = Guest::new();
    for (policy, placement, red_zone, what) in configs(&g, &BOTH) {
        let mut rt = runtime(policy, placement, red_zone);
        let native = rt.run_native(g.at(0), &[A, B]).expect("native");
        assert_eq!(native, expected());
        assert_eq!(rt.run(g.at(0), &[A, B]).expect("run"), native, "{what}");
        // Linked, and g and h found by inline lookups.
        assert_eq!(rt.run(g.at(0), &[A, B]).expect("rerun"), native, "{what}");
    }
}

#[test]
fn fast_indirect_call_is_a_real_call_whose_return_address_is_its_return_site() {
    let g = Guest::new();
    for (rt, _, _, what) in fast_runs(&g) {
        let cache = rt.cache();
        let mut calls = Vec::new();
        let mut pc = g.at(0);
        // main's blocks: each ends at one of its four indirect calls, then the last.
        for _ in 0..5 {
            let id = cache.lookup(pc).expect("block translated");
            let code = common::fragment_code(cache, id);
            let mut next_block = None;
            for insn in &code {
                let guest_pc = cache.pc_map(insn.ip()).expect("mapped").insn_pc;
                let guest_insn = g.insn(guest_pc);
                if guest_insn.flow_control() == FlowControl::IndirectCall {
                    // No `ret` anywhere in an indirect call's translation.
                    assert_ne!(insn.flow_control(), FlowControl::Return, "{what}");
                }
                if insn.code() != Code::Call_rel32_64 {
                    continue;
                }
                assert_eq!(guest_insn.flow_control(), FlowControl::IndirectCall);
                // The pushed return address is the registered return site of the guest
                // return address; the call goes to the lookup in the same translation,
                // whose state is before the guest call with the pushed 8 bytes popped.
                assert_eq!(
                    cache.return_site(insn.next_ip()),
                    Some(guest_insn.next_ip()),
                    "{what} {guest_pc:#x}"
                );
                let target = insn.near_branch_target();
                let m = cache.pc_map(target).expect("lookup mapped");
                assert_eq!(m.insn_pc, guest_pc);
                assert_eq!(m.rollback.rip, RipSource::Guest(guest_pc));
                assert_eq!(m.rollback.rsp_adjust, 8, "{what} {guest_pc:#x}");
                assert!(m.rollback.restore.iter().all(Option::is_none));
                // Its hits jump on: two `jmp rcx`, one per table slot probed.
                let jumps = code
                    .iter()
                    .filter(|i| i.ip() > target && i.code() == Code::Jmp_rm64)
                    .filter(|i| i.op0_register() == Register::RCX)
                    .count();
                assert_eq!(jumps, 2, "{what} {guest_pc:#x}");
                calls.push(guest_insn.code());
                next_block = Some(guest_insn.next_ip());
            }
            match next_block {
                Some(next) => pc = next,
                None => break,
            }
        }
        assert_eq!(
            calls,
            [Code::Call_rm64; 4],
            "{what}: call [rsp + 8], call rax, call [rsp + rcx*8 + 8], call rsp"
        );
    }
}

#[test]
fn fast_lookup_hits_enter_through_an_endbr64_entry_that_restores_the_spill() {
    let g = Guest::new();
    for (rt, placement, red_zone, what) in fast_runs(&g) {
        let cache = rt.cache();
        let arena = cache.arena().as_ref();
        let word = |off: usize| u64::from_le_bytes(arena[off..off + 8].try_into().unwrap());
        let slots = kdbt_engine::IblSize::Large.slots() as usize;
        for target in [g.at(G), g.at(H)] {
            let id = cache.lookup(target).expect("target translated");
            let entry = cache.lookup_entry(id).expect("lookup entry");
            // The table holds the lookup entry.
            let slot = (0..2)
                .map(|i| (target as usize & 0xffff) + i)
                .find(|&s| word(TABLE_OFFSET + 8 * s) == target.wrapping_neg())
                .expect("target in the lookup table");
            assert_eq!(word(TABLE_OFFSET + 8 * (slots + slot)), entry, "{what}");
            let code = common::fragment_code(cache, id);
            let (first, rest) = code.split_first().expect("code");
            assert_eq!(first.code(), Code::Endbr64, "{what}");
            let pops: Vec<Register> = rest
                .iter()
                .take_while(|i| i.mnemonic() == Mnemonic::Pop)
                .map(|i| i.op0_register())
                .collect();
            let expected_pops: &[Register] = match placement {
                Placement::Low => &[Register::RCX, Register::RAX],
                _ => &[Register::RDX, Register::RCX, Register::RAX],
            };
            assert_eq!(pops, expected_pops, "{what}");
            let lea = &rest[pops.len()];
            assert_eq!(lea.code(), Code::Lea_r64_m, "{what}");
            assert_eq!(lea.op0_register(), Register::RSP);
            assert_eq!(lea.memory_base(), Register::RSP);
            assert_eq!(lea.memory_displacement64(), u64::from(red_zone) + 8);
            assert_eq!(lea.next_ip(), cache.fragment_entry(id).expect("entry"));
            // Throughout: before the target, each spilled register still on the
            // stack reloaded, rsp back to the guest's.
            let spilled = 8 * pops.len() as u32;
            for (i, insn) in code[..pops.len() + 2].iter().enumerate() {
                let m = cache.pc_map(insn.ip()).expect("mapped");
                assert_eq!(m.insn_pc, target, "{what}");
                assert_eq!(m.rollback.rip, RipSource::Guest(target), "{what}");
                let popped = i.saturating_sub(1) as u32;
                let left = spilled - 8 * popped.min(pops.len() as u32);
                assert_eq!(m.rollback.rsp_adjust, left + red_zone + 8, "{what} {i}");
                let restores = m.rollback.restore.iter().flatten().count() as u32;
                assert_eq!(restores * 8, left, "{what} {i}");
            }
        }
    }
}

#[test]
fn single_stepping_fast_indirect_calls_only_shows_native_states() {
    let g = Guest::new();
    for (policy, placement, red_zone, what) in configs(&g, &BOTH) {
        let mut rt = runtime(policy, placement, red_zone);
        let (result, seen) =
            common::assert_stepped_states_are_native(&mut rt, g.at(0), &[A, B], || {}, &what);
        assert_eq!(result, expected(), "{what}");
        // Through lookup spills (hits and the prologue) and miss paths.
        assert!(seen.spills > 0 && seen.from_stack > 0, "{what}: {seen:?}");
    }
}
