//! Differential fuzzing: random programs (ALU and flag-consuming instructions, memory
//! through a pointer and RIP-relative, forward jcc/jmp, `loop`, `jrcxz`, direct calls,
//! indirect calls and jumps through registers and `[rsp]`, `ret imm16`, push/pop) are assembled with iced, run
//! natively and translated under both call/ret policies (and in Fast caches whose `ret`s,
//! or direct calls and `ret`s, are Transparent sites), both red zones and a cache near
//! them, far from them and in the low 2 GiB, and must leave identical registers, flags and
//! memory.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Instruction, InstructionBlock, MemoryOperand, Register,
};
use kdbt_engine::CallRetPolicy;
use kdbt_host::{ExecMemory, Options, Placement, Runtime, TransparentSites};

mod common;

use common::{assert_stepped_states_are_native, Rng};

trait Pick {
    fn upto(&mut self, n: usize) -> usize;
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
}

impl Pick for Rng {
    /// In `0..n` (0 when `n == 0`).
    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.upto(items.len())]
    }
}

/// Registers random code may write: every 64-bit GPR but rsp and rdi (the buffer pointer).
fn regs() -> Vec<Register> {
    Register::values()
        .filter(|r| r.is_gpr64() && !matches!(r, Register::RSP | Register::RDI))
        .collect()
}

const ALU_RR: [Code; 9] = [
    Code::Add_rm64_r64,
    Code::Sub_rm64_r64,
    Code::Xor_rm64_r64,
    Code::And_rm64_r64,
    Code::Or_rm64_r64,
    Code::Adc_rm64_r64,
    Code::Sbb_rm64_r64,
    Code::Cmp_rm64_r64,
    Code::Test_rm64_r64,
];
const SHIFTS: [Code; 5] = [
    Code::Shl_rm64_imm8,
    Code::Shr_rm64_imm8,
    Code::Sar_rm64_imm8,
    Code::Rol_rm64_imm8,
    Code::Ror_rm64_imm8,
];
const JCC: [Code; 16] = [
    Code::Jo_rel32_64,
    Code::Jno_rel32_64,
    Code::Jb_rel32_64,
    Code::Jae_rel32_64,
    Code::Je_rel32_64,
    Code::Jne_rel32_64,
    Code::Jbe_rel32_64,
    Code::Ja_rel32_64,
    Code::Js_rel32_64,
    Code::Jns_rel32_64,
    Code::Jp_rel32_64,
    Code::Jnp_rel32_64,
    Code::Jl_rel32_64,
    Code::Jge_rel32_64,
    Code::Jle_rel32_64,
    Code::Jg_rel32_64,
];
const CMOV: [Code; 6] = [
    Code::Cmove_r64_rm64,
    Code::Cmovne_r64_rm64,
    Code::Cmovb_r64_rm64,
    Code::Cmovl_r64_rm64,
    Code::Cmovs_r64_rm64,
    Code::Cmovp_r64_rm64,
];

/// Qwords of the buffer `rdi` points to; the program's final state is stored at its end.
const BUF: usize = 64;
const DATA: u64 = 0xd000;

struct Program {
    insns: Vec<Instruction>,
    label: u64,
}

impl Program {
    fn push(&mut self, insn: Result<Instruction, iced_x86::IcedError>) {
        self.insns.push(insn.expect("valid instruction"));
    }

    fn labelled(&mut self, label: u64, insn: Result<Instruction, iced_x86::IcedError>) {
        let mut insn = insn.expect("valid instruction");
        insn.set_ip(label);
        self.insns.push(insn);
    }

    fn fresh(&mut self) -> u64 {
        self.label += 1;
        self.label
    }
}

fn block_label(i: usize) -> u64 {
    0x1_0000 + i as u64 * 0x10
}

/// A function that returns with `ret 8`.
const RET_IMM_FUNC: u64 = 0x3_0000;

fn func_label(i: usize) -> u64 {
    0x2_0000 + i as u64 * 0x10
}

fn alu(p: &mut Program, rng: &mut Rng, avoid_rcx: bool) {
    let all = regs();
    let writable: Vec<Register> = all
        .iter()
        .copied()
        .filter(|r| !(avoid_rcx && *r == Register::RCX))
        .collect();
    let dst = rng.pick(&writable);
    let src = rng.pick(&all);
    match rng.upto(9) {
        0..=2 => p.push(Instruction::with2(rng.pick(&ALU_RR), dst, src)),
        3 => p.push(Instruction::with2(
            Code::Add_rm64_imm32,
            dst,
            rng.next() as i32,
        )),
        4 => p.push(Instruction::with2(Code::Imul_r64_rm64, dst, src)),
        5 => p.push(Instruction::with2(
            rng.pick(&SHIFTS),
            dst,
            rng.upto(64) as u32,
        )),
        6 => p.push(Instruction::with2(rng.pick(&CMOV), dst, src)),
        7 => {
            let slot = MemoryOperand::with_base_displ(Register::RDI, 8 * rng.upto(BUF - 20) as i64);
            if rng.upto(2) == 0 {
                p.push(Instruction::with2(Code::Mov_r64_rm64, dst, slot));
            } else {
                p.push(Instruction::with2(Code::Mov_rm64_r64, slot, src));
            }
        }
        _ => {
            // RIP-relative data: a load or a read-modify-write.
            let slot = MemoryOperand::with_base_displ(
                Register::RIP,
                (DATA + 8 * rng.upto(4) as u64) as i64,
            );
            if rng.upto(2) == 0 {
                p.push(Instruction::with2(Code::Mov_r64_rm64, dst, slot));
            } else {
                p.push(Instruction::with2(Code::Add_rm64_r64, slot, src));
            }
        }
    }
}

fn program(rng: &mut Rng) -> Vec<Instruction> {
    let mut p = Program {
        insns: Vec::new(),
        label: 0x9_0000,
    };
    let blocks = 4 + rng.upto(10);
    let funcs = 1 + rng.upto(3);
    for b in 0..blocks {
        p.labelled(block_label(b), Ok(Instruction::with(Code::Nopd)));
        for _ in 0..rng.upto(6) {
            alu(&mut p, rng, false);
        }
        let later = block_label(b + 1 + rng.upto(blocks - b));
        match rng.upto(11) {
            0 | 1 => p.push(Instruction::with_branch(rng.pick(&JCC), later)),
            2 => p.push(Instruction::with_branch(Code::Jmp_rel32_64, later)),
            3 => p.push(Instruction::with_branch(
                Code::Call_rel32_64,
                func_label(rng.upto(funcs)),
            )),
            4 => {
                let r = rng.pick(&regs());
                p.push(Instruction::with2(
                    Code::Lea_r64_m,
                    r,
                    MemoryOperand::with_base_displ(
                        Register::RIP,
                        func_label(rng.upto(funcs)) as i64,
                    ),
                ));
                p.push(Instruction::with1(Code::Call_rm64, r));
            }
            5 => {
                let r = rng.pick(&regs());
                p.push(Instruction::with2(
                    Code::Lea_r64_m,
                    r,
                    MemoryOperand::with_base_displ(Register::RIP, later as i64),
                ));
                p.push(Instruction::with1(Code::Jmp_rm64, r));
            }
            6 => {
                // mov ecx, n; L: alu (not rcx); loop L
                p.push(Instruction::with2(
                    Code::Mov_r32_imm32,
                    Register::ECX,
                    1 + rng.upto(5) as u32,
                ));
                let top = p.fresh();
                p.labelled(top, Ok(Instruction::with(Code::Nopd)));
                for _ in 0..1 + rng.upto(3) {
                    alu(&mut p, rng, true);
                }
                p.push(Instruction::with_branch(Code::Loop_rel8_64_RCX, top));
                p.push(Instruction::with_branch(Code::Jrcxz_rel8_64, later));
            }
            7 => {
                let r = rng.pick(&regs());
                p.push(Instruction::with1(Code::Push_r64, r));
                alu(&mut p, rng, false);
                p.push(Instruction::with1(Code::Pop_r64, rng.pick(&regs())));
            }
            8 => {
                // An rsp-relative indirect call: lea r, [rip + f]; push r; call [rsp]; pop r2
                let r = rng.pick(&regs());
                let f = MemoryOperand::with_base_displ(
                    Register::RIP,
                    func_label(rng.upto(funcs)) as i64,
                );
                p.push(Instruction::with2(Code::Lea_r64_m, r, f));
                p.push(Instruction::with1(Code::Push_r64, r));
                p.push(Instruction::with1(
                    Code::Call_rm64,
                    MemoryOperand::with_base(Register::RSP),
                ));
                p.push(Instruction::with1(Code::Pop_r64, rng.pick(&regs())));
            }
            9 => {
                // push an argument for a callee that pops it with `ret 8`.
                p.push(Instruction::with1(Code::Push_r64, rng.pick(&regs())));
                p.push(Instruction::with_branch(Code::Call_rel32_64, RET_IMM_FUNC));
            }
            _ => {}
        }
    }
    // Final block: store every register and the flags, return rax.
    p.labelled(block_label(blocks), Ok(Instruction::with(Code::Pushfq)));
    p.push(Instruction::with1(Code::Pop_r64, Register::RSI));
    for (i, r) in regs().iter().enumerate() {
        let slot = MemoryOperand::with_base_displ(Register::RDI, 8 * (BUF - 16 + i) as i64);
        p.push(Instruction::with2(Code::Mov_rm64_r64, slot, *r));
    }
    p.push(Ok(Instruction::with(Code::Retnq)));
    for f in 0..funcs {
        p.labelled(func_label(f), Ok(Instruction::with(Code::Nopd)));
        for _ in 0..rng.upto(5) {
            alu(&mut p, rng, false);
        }
        if f + 1 < funcs && rng.upto(2) == 0 {
            p.push(Instruction::with_branch(
                Code::Call_rel32_64,
                func_label(f + 1 + rng.upto(funcs - f - 1)),
            ));
        }
        p.push(Ok(Instruction::with(Code::Retnq)));
    }
    p.labelled(RET_IMM_FUNC, Ok(Instruction::with(Code::Nopd)));
    alu(&mut p, rng, false);
    p.push(Instruction::with1(Code::Retnq_imm16, 8u32));
    for i in 0..4u64 {
        let mut q = Instruction::with_declare_qword_1(i.wrapping_mul(0x0123_4567_89ab_cdef));
        q.set_ip(DATA + 8 * i);
        p.insns.push(q);
    }
    p.insns
}

/// Assembles a program to run at the start of `page`.
fn assemble(insns: &[Instruction], page: &ExecMemory) -> Vec<u8> {
    let block = InstructionBlock::new(insns, page.base());
    let bytes = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
        .expect("assemble")
        .code_buffer;
    assert!(bytes.len() < page.len());
    bytes
}

/// A runtime with its cache placed near `code`, more than 4 GiB from it, or in the low
/// 2 GiB (the kernel's two-register lookups).
fn runtime(policy: CallRetPolicy, red_zone: u32, place: Place, code: u64) -> Runtime {
    let mut opts = Options::new(policy);
    opts.red_zone = red_zone;
    opts.placement = match place {
        Place::Near => Placement::Near(code),
        Place::Far => Placement::Far(code),
        Place::Low => Placement::Low,
    };
    Runtime::new(opts).expect("runtime")
}

#[derive(Clone, Copy, Debug)]
enum Place {
    Near,
    Far,
    Low,
}

/// Runs the program at `code` with a fresh copy of its bytes and buffer; returns the
/// buffer and the program's bytes (its RIP-relative data) afterwards.
fn execute(
    rt: &mut Runtime,
    page: &mut ExecMemory,
    bytes: &[u8],
    translated: bool,
) -> (Vec<u64>, Vec<u8>) {
    page.as_mut()[..bytes.len()].copy_from_slice(bytes);
    let mut buf: Vec<u64> = (0..BUF as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let args = [buf.as_mut_ptr() as u64];
    let entry = page.base();
    let rax = if translated {
        rt.run(entry, &args)
    } else {
        rt.run_native(entry, &args)
    };
    buf.push(rax.unwrap_or_else(|e| panic!("run failed: {e:?}")));
    (buf, page.as_ref()[..bytes.len()].to_vec())
}

/// Runs the program natively, then translated twice (cold, then linked): the same
/// registers, flags and memory each time. Returns the native outcome.
fn assert_native_results(
    rt: &mut Runtime,
    page: &mut ExecMemory,
    bytes: &[u8],
    what: &str,
) -> (Vec<u64>, Vec<u8>) {
    let native = execute(rt, page, bytes, false);
    let translated = execute(rt, page, bytes, true);
    assert_eq!(translated, native, "{what}");
    assert_eq!(
        execute(rt, page, bytes, true),
        native,
        "{what}: rerun, linked"
    );
    assert!(rt.cache().stats().blocks > 0);
    native
}

#[test]
fn random_programs_give_native_results_under_every_configuration() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut page = ExecMemory::new(1 << 16).expect("code page");
    let mut runs = 0;
    let mut outcomes = std::collections::HashSet::new();
    let mut links = 0;
    for n in 0..120 {
        let insns = program(&mut rng);
        let bytes = assemble(&insns, &page);
        for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
            for red_zone in [128, 0] {
                for place in [Place::Near, Place::Far, Place::Low] {
                    let mut rt = runtime(policy, red_zone, place, page.base());
                    let what = format!("program {n} {policy:?} red zone {red_zone} {place:?}");
                    outcomes.insert(assert_native_results(&mut rt, &mut page, &bytes, &what));
                    links += rt.cache().stats().links;
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 120 * 12);
    // The programs are really different, and their translations were linked.
    assert!(outcomes.len() > 100, "{} distinct outcomes", outcomes.len());
    assert!(links > 1000, "{links} links");
}

/// Fast-cache Transparent sites over the whole program: every `ret` (which then pops Fast
/// return sites, through the dispatcher), and every direct call and `ret` (indirect calls
/// stay Fast).
fn transparent_sites(code: &ExecMemory) -> [(&'static str, TransparentSites); 2] {
    let all = code.base()..code.base() + code.len() as u64;
    [
        (
            "every ret",
            TransparentSites {
                calls: vec![],
                rets: vec![all.clone()],
            },
        ),
        (
            "every call and ret",
            TransparentSites {
                calls: vec![all.clone()],
                rets: vec![all],
            },
        ),
    ]
}

#[test]
fn random_programs_give_native_results_in_fast_caches_with_transparent_sites() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut page = ExecMemory::new(1 << 16).expect("code page");
    let mut resumes = 0;
    for n in 0..120 {
        let insns = program(&mut rng);
        let bytes = assemble(&insns, &page);
        for (sites, declared) in transparent_sites(&page) {
            for (red_zone, place) in [(128, Place::Near), (0, Place::Low)] {
                let mut rt = runtime(CallRetPolicy::Fast, red_zone, place, page.base());
                rt.set_transparent_sites(declared.clone());
                let what = format!("program {n} Fast, {sites} Transparent, {place:?}");
                assert_native_results(&mut rt, &mut page, &bytes, &what);
                resumes += rt.cache().stats().site_resumes;
            }
        }
    }
    // Returns into Fast callers went through the dispatcher's return-site resumes.
    assert!(resumes > 1000, "{resumes} resumes");
}

#[test]
fn single_stepping_random_programs_only_shows_native_states_after_rollback() {
    let mut rng = Rng(0x5eed_0000_0000_0077);
    let page = ExecMemory::new(1 << 16).expect("code page");
    let mut total = common::Stepped::default();
    let mut configs = vec![
        (CallRetPolicy::Transparent, "", TransparentSites::default()),
        (CallRetPolicy::Fast, "", TransparentSites::default()),
    ];
    for (sites, declared) in transparent_sites(&page) {
        configs.push((CallRetPolicy::Fast, sites, declared));
    }
    for n in 0..12 {
        let insns = program(&mut rng);
        let bytes = assemble(&insns, &page);
        let base = page.base() as *mut u8;
        for (policy, sites, declared) in &configs {
            for (red_zone, place) in [(128, Place::Near), (0, Place::Far), (0, Place::Low)] {
                let mut rt = runtime(*policy, red_zone, place, page.base());
                rt.set_transparent_sites(declared.clone());
                let mut buf = vec![7u64; BUF];
                let buf_ptr = buf.as_mut_ptr();
                let reset = || {
                    // SAFETY: `base` is the start of the code page (longer than `bytes`),
                    // `buf_ptr` points to BUF qwords; neither is otherwise borrowed while
                    // the closure runs (the runs happen between calls).
                    unsafe {
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, bytes.len());
                        for i in 0..BUF {
                            *buf_ptr.add(i) = i as u64;
                        }
                    }
                };
                let what = format!("program {n} {policy:?} {sites} red zone {red_zone} {place:?}");
                let (_, seen) = assert_stepped_states_are_native(
                    &mut rt,
                    page.base(),
                    &[buf_ptr as u64],
                    reset,
                    &what,
                );
                total.steps += seen.steps;
                total.spills += seen.spills;
                total.from_stack += seen.from_stack;
            }
        }
    }
    assert!(
        total.steps > 1000 && total.spills > 0 && total.from_stack > 0,
        "{total:?}"
    );
}
