//! One code cache shared by several threads, as fast mode's kernel will share one cache
//! between every CPU (`docs/fast-mode.md` 2.2, option A; `docs/engine.md`, "Sharing a cache
//! between CPUs"). Four threads run corpus programs from one [`SharedCache`] (two cores:
//! they interleave for real) and compare every result with the native one, while a
//! mutator thread, under the cache's lock, unlinks and relinks exits, removes and re-inserts
//! lookup-table entries, inserts colliding targets, translates, invalidates fragments the
//! threads are running, and changes guest code the threads call.
//!
//! The invalidation guarantee tested: once `invalidate_range` has returned (under the lock)
//! and every CPU has serialized (`membarrier`, as `text_poke_sync` does in the kernel), a
//! guest call that *begins* afterwards runs the new translation. A call that began before
//! may still finish in the old one: its thread was inside it, past an inline lookup's key
//! check for it, or had been handed its address by a dispatcher step; the old translation
//! then leaves through its unlinked exits to the dispatcher. `stale_calls` reads the
//! published version before each call and counts the calls that returned an older one.

use std::mem::transmute;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind, Register};
use kdbt_engine::{
    CacheWord, CallRetPolicy, CodeCache, Config, ExitId, ExitReason, HookClass, IblSize,
    SliceMemory, Thunks, DISPATCHER_SLOT_OFFSET, TABLE_OFFSET,
};
use kdbt_host::{
    ExecMemory, Options, Placement, ProcessMemory, SharedCache, SharedRuntime, TransparentSites,
};

mod common;
mod guests;

use common::Rng;
use guests::{cases, chain_b, op_add, op_mul, op_rot, op_xor, Guest};

/// The stress tests use process-wide statics (the published version): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const RUNNERS: usize = 4;

/// The version `g` returns, published by the mutator once the change is applied.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// Addresses of [`Patchable`]'s `g` and `h`.
static PATCH_G: AtomicU64 = AtomicU64::new(0);
static PATCH_H: AtomicU64 = AtomicU64::new(0);

/// Calls `h` (which calls `g` directly: a linked exit) and `g` (through a pointer: an
/// inline lookup) `n` times; counts the calls that returned a version older than the one
/// published before they began. Natively 0.
#[inline(never)]
extern "C" fn stale_calls(n: u64, _: u64) -> u64 {
    type Version = extern "C" fn() -> u64;
    // SAFETY: both hold the address of a `Patchable` function with this signature, set
    // before any run; the page outlives every run.
    let (g, h) = unsafe {
        (
            transmute::<u64, Version>(PATCH_G.load(Ordering::Relaxed)),
            transmute::<u64, Version>(PATCH_H.load(Ordering::Relaxed)),
        )
    };
    let mut stale = 0;
    for i in 0..n {
        let published = PUBLISHED.load(Ordering::Acquire);
        let f = std::hint::black_box(if i & 1 == 0 { h } else { g });
        if f() < published {
            stale += 1;
        }
    }
    stale
}

/// Guest code the mutator changes: `g: mov eax, version; ret`, `h: call g; ret`.
struct Patchable {
    page: ExecMemory,
}

/// `g`'s offset: its immediate starts 4-byte aligned, so a change is one aligned store.
const G: usize = 3;
const H: usize = 16;

impl Patchable {
    fn new() -> Self {
        let mut page = ExecMemory::new(4096).expect("page");
        let b = page.as_mut();
        b.fill(0xcc);
        b[G] = 0xb8;
        b[G + 1..G + 5].copy_from_slice(&0u32.to_le_bytes());
        b[G + 5] = 0xc3;
        b[H] = 0xe8;
        let rel = G as i32 - (H as i32 + 5);
        b[H + 1..H + 5].copy_from_slice(&rel.to_le_bytes());
        b[H + 5] = 0xc3;
        let p = Patchable { page };
        PATCH_G.store(p.g(), Ordering::Relaxed);
        PATCH_H.store(p.page.base() + H as u64, Ordering::Relaxed);
        PUBLISHED.store(0, Ordering::Relaxed);
        p
    }

    fn g(&self) -> u64 {
        self.page.base() + G as u64
    }

    fn set_version(&mut self, v: u32) {
        self.page.as_mut()[G + 1..G + 5].copy_from_slice(&v.to_le_bytes());
    }
}

/// A program the runners run: name, function, arguments.
type Program = (&'static str, Guest, u64, u64);

fn programs() -> Vec<Program> {
    let mut p: Vec<Program> = cases()
        .into_iter()
        // It writes a static array: threads running it at once race natively too.
        .filter(|(name, ..)| *name != "rip_relative_data")
        .collect();
    p.push(("stale_calls", stale_calls, 200, 0));
    p
}

/// Address ranges that belong to one thread: a constant among them in translated code
/// would make that code thread-specific.
struct Identity {
    guest_stack: Range<u64>,
    host_stack: Range<u64>,
    tls: Range<u64>,
}

impl Identity {
    /// The calling thread's, running `rt`.
    fn of(rt: &SharedRuntime) -> Self {
        // SAFETY: pthread_getattr_np initialises `attr` for the calling thread, which is
        // destroyed after its stack is read; pthread_self has no preconditions (on glibc
        // x86-64 it is the thread pointer, the fs base, just above the static TLS block).
        let (host_stack, tp) = unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
            let (mut addr, mut size) = (std::ptr::null_mut(), 0);
            assert_eq!(libc::pthread_attr_getstack(&attr, &mut addr, &mut size), 0);
            libc::pthread_attr_destroy(&mut attr);
            (
                addr as u64..addr as u64 + size as u64,
                libc::pthread_self() as u64,
            )
        };
        Identity {
            guest_stack: rt.stack_range(),
            host_stack,
            tls: tp - (32 << 10)..tp + 8,
        }
    }

    fn contains(&self, a: u64) -> bool {
        [&self.guest_stack, &self.host_stack, &self.tls]
            .iter()
            .any(|r| r.contains(&a))
    }
}

struct Runner {
    runs: u64,
    dispatches: u64,
    identity: Identity,
}

fn runner(
    shared: &Arc<SharedCache>,
    start: &Barrier,
    stop: &AtomicBool,
    in_run: &AtomicUsize,
    seed: u64,
) -> Runner {
    let mut rt = shared.runtime().expect("runtime");
    let programs = programs();
    let native: Vec<u64> = programs
        .iter()
        .map(|&(name, f, a, b)| {
            let n = rt.run_native(f as usize as u64, &[a, b]).expect("native");
            assert_eq!(n, f(a, b), "{name}: run_native differs from a direct call");
            n
        })
        .collect();
    start.wait();
    let mut rng = Rng(seed);
    let mut runs = 0;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(programs.len() as u64) as usize;
        let (name, f, a, b) = programs[i];
        in_run.fetch_add(1, Ordering::SeqCst);
        let got = rt.run(f as usize as u64, &[a, b]);
        in_run.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(got, Ok(native[i]), "{name} on runner {seed}, run {runs}");
        runs += 1;
    }
    Runner {
        runs,
        dispatches: rt.dispatches(),
        identity: Identity::of(&rt),
    }
}

/// What the mutator did.
#[derive(Debug, Default)]
struct Mutations {
    rounds: u64,
    /// Rounds during which some runner was inside a run (executing translated code or
    /// waiting for the lock).
    concurrent: u64,
    unlinks: u64,
    relinks: u64,
    removals: u64,
    reinserts: u64,
    collisions: u64,
    translations: u64,
    invalidations: u64,
    blocks_invalidated: u64,
    patches: u64,
}

/// `membarrier` commands (`include/uapi/linux/membarrier.h`).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: i64 = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: i64 = 1 << 6;

/// Registers the process for [`serialize_cores`]; false (said once) where the kernel
/// cannot.
fn register_serialize_cores() -> bool {
    let cmd = MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE;
    // SAFETY: membarrier takes no pointers; registering only enables the command below.
    let ok = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } == 0;
    if !ok {
        eprintln!("membarrier SYNC_CORE unavailable: code changes are not serialized");
    }
    ok
}

/// Makes every thread of the process execute a serializing instruction before it runs
/// user code again: x86's rule for code another CPU may be running when it is changed
/// (here the branches an invalidation unlinked), which the kernel keeps with
/// `text_poke_sync`'s IPIs after patching.
fn serialize_cores() {
    let cmd = MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE;
    // SAFETY: as in `register_serialize_cores`.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    assert_eq!(r, 0, "membarrier");
}

/// Number of exits (ids are dense from 0 and, without flushes, only grow).
fn exit_count(cache: &CodeCache<ExecMemory>) -> u64 {
    let ok = |id: u64| cache.exit_reason(id, 0).is_ok();
    let mut hi = 1;
    while ok(hi - 1) {
        hi *= 2;
    }
    let mut lo = hi / 2;
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ok(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Two addresses in `region` (filled with `ret`) with the same table index as each target:
/// with the target, three for two slots.
fn colliders(region: &ExecMemory, targets: &[u64], ibl: IblSize) -> Vec<u64> {
    let mask = u64::from(ibl.entries()) - 1;
    targets
        .iter()
        .map(|t| region.base() + (t.wrapping_sub(region.base()) & mask))
        .flat_map(|c| [c, c + mask + 1])
        .collect()
}

struct Mutator<'a> {
    shared: &'a SharedCache,
    /// Lent: the runners may still call it after the mutator stops.
    patch: &'a mut Patchable,
    /// Indirect-call targets and run entries.
    targets: Vec<u64>,
    colliders: Vec<u64>,
    /// Guest ranges the runners execute.
    ranges: Vec<Range<u64>>,
}

impl Mutator<'_> {
    fn run(self, start: &Barrier, stop: &AtomicBool, in_run: &AtomicUsize) -> Mutations {
        let mem = ProcessMemory;
        let mut m = Mutations::default();
        let mut rng = Rng(0x5eed);
        let mut unlinked: Vec<(ExitId, u64)> = Vec::new();
        let mut removed: Vec<u64> = Vec::new();
        let mut version = 0u32;
        let serialize = register_serialize_cores();
        start.wait();
        while !stop.load(Ordering::Relaxed) {
            {
                let mut cache = self.shared.lock();
                m.rounds += 1;
                if in_run.load(Ordering::SeqCst) > 0 {
                    m.concurrent += 1;
                }
                let blocks = cache.stats().blocks;
                // Exits unlinked last round (those the runners did not relink through the
                // dispatcher meanwhile), then new ones.
                for (exit, target) in unlinked.drain(..) {
                    if cache.linked_to(exit).is_none() {
                        if let Some(to) = cache.lookup(target) {
                            m.relinks += u64::from(cache.link(exit, to).is_ok());
                        }
                    }
                }
                let n = exit_count(&cache);
                for _ in 0..4 {
                    if let Ok(ExitReason::DirectMiss { exit, target }) =
                        cache.exit_reason(rng.below(n), 0)
                    {
                        if cache.linked_to(exit).is_some() && cache.unlink(exit).is_ok() {
                            m.unlinks += 1;
                            unlinked.push((exit, target));
                        }
                    }
                }
                // The table: entries removed last round go back in (a dispatcher hit
                // re-inserts; a target invalidated meanwhile is translated afresh), one
                // more is removed, and a target colliding with a hot one is inserted.
                for pc in removed.drain(..) {
                    m.reinserts += u64::from(cache.translate(pc, &mem).is_ok());
                }
                let pc = self.targets[rng.below(self.targets.len() as u64) as usize];
                cache.table_remove(pc);
                removed.push(pc);
                m.removals += 1;
                let c = self.colliders[rng.below(self.colliders.len() as u64) as usize];
                m.collisions += u64::from(cache.translate(c, &mem).is_ok());
                // Invalidate code the runners execute, while the cache has room for the
                // re-translations (it is never flushed).
                if cache.used() < cache.capacity() / 2 {
                    let r = &self.ranges[rng.below(self.ranges.len() as u64) as usize];
                    let n = cache.invalidate_range(r.start, r.end).expect("invalidate");
                    m.invalidations += 1;
                    m.blocks_invalidated += u64::from(n);
                }
                // Change `g`, invalidate its translation, then publish the version.
                version += 1;
                self.patch.set_version(version);
                let g = self.patch.g();
                let n = cache.invalidate_range(g, g + 6).expect("invalidate g");
                m.blocks_invalidated += u64::from(n);
                if serialize {
                    serialize_cores();
                }
                PUBLISHED.store(u64::from(version), Ordering::Release);
                m.patches += 1;
                m.translations += cache.stats().blocks - blocks;
            }
            thread::sleep(Duration::from_micros(100));
        }
        m
    }
}

/// Runs the stress for `duration`; the cache, the mutations and the runners' reports.
fn stress(
    policy: CallRetPolicy,
    placement: Placement,
    ibl: IblSize,
    duration: Duration,
) -> (Arc<SharedCache>, Mutations, Vec<Runner>) {
    let mut opts = Options::new(policy);
    opts.placement = placement;
    opts.ibl = ibl;
    opts.arena_len = 64 << 20;
    let shared = SharedCache::new(opts, TransparentSites::default()).expect("shared cache");
    let mut patch = Patchable::new();
    let mut region = ExecMemory::new(2 << 16).expect("collider region");
    region.as_mut().fill(0xc3);
    let ops = [op_add, op_mul, op_xor, op_rot].map(|f| f as usize as u64);
    let mut targets: Vec<u64> = ops.to_vec();
    let g = patch.g();
    targets.push(g);
    targets.push(PATCH_H.load(Ordering::Relaxed));
    targets.extend(programs().iter().map(|p| p.1 as usize as u64));
    let colliders = colliders(&region, &targets, ibl);
    let mut ranges: Vec<Range<u64>> = targets
        .iter()
        .filter(|&&t| t != g)
        .map(|&t| t..t + 64)
        .collect();
    ranges.push(chain_b as *const () as u64..chain_b as *const () as u64 + 64);
    let mutator = Mutator {
        shared: &shared,
        patch: &mut patch,
        targets,
        colliders,
        ranges,
    };
    let start = Barrier::new(RUNNERS + 1);
    let stop = AtomicBool::new(false);
    let in_run = AtomicUsize::new(0);
    let (m, runners) = thread::scope(|s| {
        let runners: Vec<_> = (0..RUNNERS as u64)
            .map(|i| {
                let (shared, start, stop, in_run) = (&shared, &start, &stop, &in_run);
                s.spawn(move || runner(shared, start, stop, in_run, 0x1234 + i))
            })
            .collect();
        let mutator = s.spawn(|| mutator.run(&start, &stop, &in_run));
        // Until the time is up, or a thread ended early (a failed assertion).
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline
            && !runners.iter().any(|r| r.is_finished())
            && !mutator.is_finished()
        {
            thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        // A thread sent to the wrong code may never come back to check `stop`.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !runners.iter().all(|r| r.is_finished()) {
            if Instant::now() > deadline {
                eprintln!("shared cache: a runner is stuck in guest code");
                std::process::exit(101);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let runners: Vec<Runner> = runners
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        let m = mutator
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (m, runners)
    });
    drop(region);
    (shared, m, runners)
}

/// Every run gave the native result (asserted in `runner`); every thread ran, through its
/// own dispatcher context; the mutator applied each kind of change while runs were under
/// way; the cache was never flushed and nothing fell back to native code.
fn assert_shared_run(what: &str, shared: &SharedCache, m: &Mutations, runners: &[Runner]) {
    let s = *shared.lock().stats();
    let runs: Vec<u64> = runners.iter().map(|r| r.runs).collect();
    let dispatches: Vec<u64> = runners.iter().map(|r| r.dispatches).collect();
    eprintln!("{what}: runs per thread {runs:?}, dispatcher entries {dispatches:?}");
    eprintln!("{what}: {m:?}");
    eprintln!("{what}: {s:?}");
    for r in runners {
        assert!(r.runs > 0, "{what}: a thread completed no run");
        assert!(
            r.dispatches > 0,
            "{what}: a thread never entered its dispatcher"
        );
    }
    assert!(
        m.concurrent > 0,
        "{what}: no change while a run was under way: {m:?}"
    );
    for (kind, n) in [
        ("unlinks", m.unlinks),
        ("relinks", m.relinks),
        ("removals", m.removals),
        ("reinserts", m.reinserts),
        ("collisions", m.collisions),
        ("translations", m.translations),
        ("invalidations", m.invalidations),
        ("blocks invalidated", m.blocks_invalidated),
        ("patches", m.patches),
    ] {
        assert!(n > 0, "{what}: the mutator made no {kind}: {m:?}");
    }
    assert!(
        s.links > m.relinks,
        "{what}: the runners linked nothing: {s:?}"
    );
    assert!(s.unlinks >= m.unlinks, "{s:?}");
    assert_eq!(s.invalidations, m.invalidations + m.patches, "{s:?}");
    assert_eq!(s.blocks_invalidated, m.blocks_invalidated, "{s:?}");
    assert!(
        s.table_refusals > 0,
        "{what}: no colliding insert refused: {s:?}"
    );
    assert_eq!(s.flushes, 0, "{what}: a shared cache is never flushed");
    assert_eq!(s.native_fallbacks, 0, "{what}: {s:?}");
}

/// No translated code names a thread: every direct branch leaving the arena goes to the one
/// dispatcher entry, every indirect one through the dispatcher slot (or is a Fast lookup
/// hit, `jmp rcx`), and no instruction operand, immediate or arena word is an address of a
/// runner's guest stack, host stack or thread-local storage.
fn assert_code_names_no_thread(what: &str, shared: &SharedCache, runners: &[Runner]) {
    let cache = shared.lock();
    let arena = shared.arena_range();
    let bytes = cache.arena().as_ref();
    let dispatcher = cache.config().dispatcher;
    let slot = arena.start + DISPATCHER_SLOT_OFFSET as u64;
    assert_eq!(
        bytes[DISPATCHER_SLOT_OFFSET..DISPATCHER_SLOT_OFFSET + 8],
        dispatcher.to_le_bytes()
    );
    let named = |a: u64| runners.iter().position(|r| r.identity.contains(a));
    let code_start = TABLE_OFFSET + cache.config().ibl.table_bytes();
    let end = code_start + cache.used() as usize;
    for off in 0..end - 8 {
        let word = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
        assert_eq!(
            named(word),
            None,
            "{what}: arena word at {off:#x}: {word:#x}"
        );
    }
    let (mut at, mut insns, mut exits) = (arena.start + code_start as u64, 0, 0);
    while at < arena.start + end as u64 {
        if cache.pc_map(at).is_none() {
            at += 1;
            continue;
        }
        let off = (at - arena.start) as usize;
        let insn = Decoder::with_ip(64, &bytes[off..end], at, DecoderOptions::NONE).decode();
        insns += 1;
        match insn.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call => {
                let to = insn.near_branch_target();
                if !arena.contains(&to) {
                    assert_eq!(to, dispatcher, "{what}: {:?} at {at:#x}", insn.code());
                    exits += 1;
                }
            }
            FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                let hit =
                    insn.op0_kind() == OpKind::Register && insn.op0_register() == Register::RCX;
                let exit = insn.is_ip_rel_memory_operand() && insn.ip_rel_memory_address() == slot;
                assert!(hit || exit, "{what}: {:?} at {at:#x}", insn.code());
                exits += u32::from(exit);
            }
            _ => {}
        }
        if insn.is_ip_rel_memory_operand() {
            let a = insn.ip_rel_memory_address();
            assert_eq!(named(a), None, "{what}: {:?} at {at:#x}", insn.code());
        }
        for i in 0..insn.op_count() {
            let imm = match insn.op_kind(i) {
                OpKind::Immediate64 => insn.immediate64(),
                OpKind::Immediate32to64 => insn.immediate32to64() as u64,
                OpKind::Memory => insn.memory_displacement64(),
                _ => continue,
            };
            assert_eq!(named(imm), None, "{what}: {:?} at {at:#x}", insn.code());
        }
        at = insn.next_ip();
    }
    eprintln!("{what}: {insns} translated instructions checked, {exits} exits to the dispatcher");
    assert!(
        insns > 1000 && exits > 100,
        "{what}: {insns} instructions, {exits} exits"
    );
}

fn stress_test(what: &str, policy: CallRetPolicy, placement: Placement, ibl: IblSize, secs: f64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let (shared, m, runners) = stress(policy, placement, ibl, Duration::from_secs_f64(secs));
    assert_shared_run(what, &shared, &m, &runners);
    assert_code_names_no_thread(what, &shared, &runners);
    eprintln!("{what}: {:.2} s", t.elapsed().as_secs_f64());
}

#[test]
fn fast_threads_share_one_cache_while_it_changes() {
    // The kernel's lookup form (table in disp32 reach, two registers).
    stress_test(
        "fast, low",
        CallRetPolicy::Fast,
        Placement::Low,
        IblSize::Large,
        2.5,
    );
}

#[test]
fn transparent_threads_share_one_cache_while_it_changes() {
    stress_test(
        "transparent, anywhere",
        CallRetPolicy::Transparent,
        Placement::Anywhere,
        IblSize::Large,
        2.0,
    );
}

#[test]
fn fast_threads_share_a_small_table_while_it_changes() {
    // RIP-relative lookups (three registers); with 256 entries most targets collide.
    stress_test(
        "fast, small table",
        CallRetPolicy::Fast,
        Placement::Anywhere,
        IblSize::Small,
        1.5,
    );
}

/// A lookup reads a slot's key, then its value: another CPU changing the slot between the
/// two must never leave it with the key it had before and a value for another target.
/// Mutations of a cache whose slots collide (a table of 256 entries, blocks 256 bytes
/// apart), checked after each for every slot: the key before and the value after must
/// belong to the same guest PC. A cache that is not shared reuses slots (and fails the
/// check: the race the shared one avoids); a shared one never does, and a target whose
/// slots are taken is still found by the dispatcher.
#[test]
fn a_shared_cache_never_gives_a_table_slot_to_another_target() {
    const BASE: u64 = 0x40_0000;
    const EXEC: u64 = 0x1_0000_0000;
    let code = vec![0xc3u8; 8 * 256];
    let mem = SliceMemory::new(BASE, &code);
    let pcs: Vec<u64> = (0..8).map(|k| BASE + 256 * k).chain([BASE + 1]).collect();
    let ibl = IblSize::Small;
    let slots = ibl.slots() as usize;
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        for shared in [false, true] {
            let cfg = Config {
                policy,
                red_zone: 128,
                dispatcher: EXEC - 0x1000,
                hooks: HookClass::empty(),
                ibl,
                thunks: Thunks::NONE,
                through_jcc: true,
            };
            let arena = vec![0u8; TABLE_OFFSET + ibl.table_bytes() + (1 << 20)];
            let mut cache = CodeCache::new(arena, EXEC, cfg).expect("cache");
            cache.set_shared(shared);
            let table = |c: &CodeCache<Vec<u8>>| -> Vec<(u64, u64)> {
                let b = c.arena();
                let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
                (0..slots)
                    .map(|i| {
                        let key = TABLE_OFFSET + 8 * i;
                        (word(key), word(key + 8 * slots))
                    })
                    .collect()
            };
            let mut rng = Rng(7);
            let mut mismatches = 0;
            for _ in 0..400 {
                let before = table(&cache);
                let pc = pcs[rng.below(pcs.len() as u64) as usize];
                match rng.below(4) {
                    0 | 1 => {
                        cache.translate(pc, &mem).expect("translate");
                    }
                    2 => {
                        if let Some(id) = cache.lookup(pc) {
                            cache.invalidate(id).expect("invalidate");
                        }
                    }
                    _ => cache.table_remove(pc),
                }
                for (slot, (&(key, _), &(_, value))) in
                    before.iter().zip(&table(&cache)).enumerate()
                {
                    let Some(&old) = pcs.iter().find(|&&pc| pc.wrapping_neg() == key) else {
                        continue; // an empty key: no lookup matches it
                    };
                    let owner = match cache.classify(value) {
                        Some(CacheWord::Code(m)) => m.insn_pc,
                        other => panic!("slot {slot}: value {value:#x} is {other:?}"),
                    };
                    if owner != old {
                        mismatches += 1;
                    }
                }
            }
            let s = cache.stats();
            if shared {
                assert_eq!(mismatches, 0, "{policy:?} shared");
                assert!(s.table_refusals > 0, "{policy:?}: {s:?}");
                // Every target is still found, by the dispatcher if not inline.
                for &pc in &pcs {
                    let id = cache.translate(pc, &mem).expect("translate");
                    assert_eq!(cache.lookup(pc), Some(id));
                }
            } else {
                assert!(mismatches > 0, "{policy:?}: the check saw no slot reuse");
                assert_eq!(s.table_refusals, 0);
            }
        }
    }
}
