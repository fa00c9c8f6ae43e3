//! Helpers shared by the integration tests.

/// xorshift64*: a small deterministic PRNG, so every failure reproduces.
#[allow(dead_code)] // each test crate uses a subset of this module
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

use std::collections::HashSet;
use std::ops::Range;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use kdbt_engine::{CodeCache, FragmentId, Frame, RipSource};
use kdbt_host::{kdbt_host_trampolines_end, kdbt_host_trampolines_start, Runtime, Trace};

/// CF PF AF ZF SF OF DF: the flags guest code can observe.
#[allow(dead_code)]
pub const FLAGS: u64 = 0xcd5;

/// What single-stepping saw, summed over runs.
#[derive(Default, Debug)]
pub struct Stepped {
    /// Traps inside translated code.
    pub steps: usize,
    /// Of those, traps whose rollback reloaded spilled registers.
    pub spills: usize,
    /// Of those, traps whose guest rip came from the stack (lookup miss paths).
    pub from_stack: usize,
}

fn trampolines() -> Range<u64> {
    kdbt_host_trampolines_start as *const () as u64..kdbt_host_trampolines_end as *const () as u64
}

type Key = (u64, [u64; 16], u64);

fn key(f: &Frame) -> Key {
    (f.rip, f.gpr, f.rflags & FLAGS)
}

/// Single-steps `entry(args)` natively, then translated twice (cold cache, then linked),
/// calling `reset` before each run. Every trap inside translated code must map back
/// through the PC map, and its rolled-back state (all GPRs, rip, flags) must be one the
/// native run passed through. Returns the result of the function and what was seen.
#[allow(dead_code)] // each test crate uses a subset of this module
pub fn assert_stepped_states_are_native(
    rt: &mut Runtime,
    entry: u64,
    args: &[u64],
    mut reset: impl FnMut(),
    what: &str,
) -> (u64, Stepped) {
    reset();
    rt.set_trace(Some(Trace::new(0..u64::MAX, trampolines(), 1 << 18)));
    let native = rt.run_native(entry, args).expect("native");
    let trace = rt.take_trace().expect("trace");
    assert!(!trace.overflow, "{what}: native trace overflow");
    let states: HashSet<Key> = trace.frames.iter().map(|s| key(&s.frame)).collect();
    let mut seen = Stepped::default();
    let arena = rt.arena_range();
    for run in 0..2 {
        reset();
        rt.set_trace(Some(Trace::new(arena.clone(), 0..0, 1 << 18)));
        assert_eq!(
            rt.run(entry, args).expect("translated"),
            native,
            "{what} run {run}"
        );
        let trace = rt.take_trace().expect("trace");
        assert!(!trace.overflow, "{what}: translated trace overflow");
        for step in &trace.frames {
            let frame = &step.frame;
            let (mapping, state) = rt
                .guest_state_with(frame, |a| step.read_stack(a))
                .expect("every stepped address maps back");
            // The final return into the host trampoline is not traced natively.
            let into_host = trampolines().contains(&state.rip);
            assert!(
                into_host || states.contains(&key(&state)),
                "{what} run {run}: cache {:#x} -> {mapping:x?} gives {state:x?}, never seen natively",
                frame.rip
            );
            seen.steps += 1;
            seen.spills += usize::from(mapping.rollback.restore.iter().any(Option::is_some));
            seen.from_stack += usize::from(matches!(mapping.rollback.rip, RipSource::Stack(_)));
        }
    }
    (native, seen)
}

/// The host instructions of fragment `id`, from its first byte for as long as the PC map
/// covers its code.
#[allow(dead_code)] // each test crate uses a subset of this module
pub fn fragment_code<M: AsRef<[u8]> + AsMut<[u8]>>(
    cache: &CodeCache<M>,
    id: FragmentId,
) -> Vec<Instruction> {
    let bytes = cache.arena().as_ref();
    let mut at = cache.lookup_entry(id).expect("fragment");
    let mut out = Vec::new();
    while cache.pc_map(at).is_some() {
        let i = (at - cache.exec_base()) as usize;
        let insn = Decoder::with_ip(64, &bytes[i..], at, DecoderOptions::NONE).decode();
        assert_ne!(insn.code(), Code::INVALID, "undecodable at {at:#x}");
        at = insn.next_ip();
        out.push(insn);
    }
    out
}
