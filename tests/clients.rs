//! Instrumentation clients on real translated code: coverage records exactly the blocks a
//! run reached, count gives exact execution counts (across runs, links and flushes), the
//! count client's inserted code is precise under single-stepping, and an interrupt after
//! the count moves it to the prefix that ran.

mod common;

use std::hint::black_box;

use std::sync::atomic::AtomicU64;

use kdbt_engine::{BlockRange, BlockSlot, BlockTable, CallRetPolicy, Client, ClientKind};
use kdbt_host::{ExecMemory, Options, Placement, Runtime};

fn table(n: usize) -> BlockTable<'static> {
    let slots: Vec<BlockSlot> = (0..n).map(|_| BlockSlot::new()).collect();
    BlockTable::new(Box::leak(slots.into_boxed_slice()))
}

fn counters(n: usize) -> &'static [AtomicU64] {
    let c: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    Box::leak(c.into_boxed_slice())
}

fn runtime(policy: CallRetPolicy, kind: ClientKind, near: u64) -> (Runtime, BlockTable<'static>) {
    let mut opts = Options::new(policy);
    opts.placement = Placement::Near(near);
    let mut rt = Runtime::new(opts).expect("runtime");
    let table = table(1 << 14);
    rt.cache_mut().set_client(Some(Client {
        kind,
        table,
        counters: counters(1 << 12),
    }));
    (rt, table)
}

fn ranges_at(table: &BlockTable<'_>, start: u64) -> Vec<BlockRange> {
    table.ranges().filter(|r| r.start == start).collect()
}

/// Executions entering `start`: the counts of every range starting there.
fn entries_at(table: &BlockTable<'_>, start: u64) -> u64 {
    ranges_at(table, start).iter().map(|r| r.count).sum()
}

#[inline(never)]
extern "C" fn arm0(x: u64) -> u64 {
    black_box(x.wrapping_mul(3) ^ 0x11)
}
#[inline(never)]
extern "C" fn arm1(x: u64) -> u64 {
    black_box(x.rotate_left(5) ^ 0x22)
}
#[inline(never)]
extern "C" fn arm2(x: u64) -> u64 {
    black_box(x.wrapping_add(0x3333))
}
#[inline(never)]
extern "C" fn arm3(x: u64) -> u64 {
    black_box(x.wrapping_sub(0x4444) ^ 7)
}

/// Calls arm `i` for every bit `i` set in `v`.
#[inline(never)]
extern "C" fn branchy(v: u64, x: u64) -> u64 {
    let mut r = x;
    if black_box(v) & 1 != 0 {
        r = arm0(r);
    }
    if black_box(v) & 2 != 0 {
        r = arm1(r);
    }
    if black_box(v) & 4 != 0 {
        r = arm2(r);
    }
    if black_box(v) & 8 != 0 {
        r = arm3(r);
    }
    r
}

#[inline(never)]
extern "C" fn body(x: u64) -> u64 {
    black_box(x.wrapping_mul(0x9e37_79b9).rotate_left(3))
}

/// Runs `body` `n` times.
#[inline(never)]
extern "C" fn looped(n: u64, x: u64) -> u64 {
    let mut v = x;
    for _ in 0..black_box(n) {
        v = body(v);
    }
    v
}

const ARMS: [extern "C" fn(u64) -> u64; 4] = [arm0, arm1, arm2, arm3];

#[test]
fn coverage_records_exactly_the_arms_a_run_reached() {
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let entry = branchy as *const () as u64;
        let (mut rt, table) = runtime(policy, ClientKind::Coverage, entry);
        assert_eq!(
            rt.run(entry, &[0b0101, 9]).expect("run"),
            branchy(0b0101, 9)
        );
        assert_eq!(
            rt.run(entry, &[0b0100, 9]).expect("run"),
            branchy(0b0100, 9)
        );
        for (i, arm) in ARMS.iter().enumerate() {
            let covered = !ranges_at(&table, *arm as *const () as u64).is_empty();
            assert_eq!(covered, i == 0 || i == 2, "{policy:?}: arm {i}");
        }
        assert!(
            !ranges_at(&table, entry).is_empty(),
            "{policy:?}: entry block"
        );
        assert!(
            table.ranges().all(|r| r.count == 0),
            "coverage counts nothing"
        );
        // A flush keeps what was recorded; later runs add to it.
        rt.cache_mut().flush();
        rt.run(entry, &[0b1000, 1]).expect("run");
        let arm3 = arm3 as *const () as u64;
        assert!(!ranges_at(&table, arm3).is_empty());
        assert!(!ranges_at(&table, arm0 as *const () as u64).is_empty());
        assert!(ranges_at(&table, arm1 as *const () as u64).is_empty());
    }
}

#[test]
fn count_gives_exact_executions_across_runs_links_and_flushes() {
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let entry = looped as *const () as u64;
        let body_pc = body as *const () as u64;
        let (mut rt, table) = runtime(policy, ClientKind::Count, entry);
        assert_eq!(rt.run(entry, &[1000, 5]).expect("run"), looped(1000, 5));
        rt.cache_mut().harvest();
        assert_eq!(entries_at(&table, body_pc), 1000, "{policy:?}: first run");
        assert_eq!(entries_at(&table, entry), 1, "{policy:?}: function entry");
        assert!(rt.cache().stats().links > 0, "the loop ran linked");
        rt.run(entry, &[37, 5]).expect("run");
        // The flush harvests what the runs since the last harvest counted.
        rt.cache_mut().flush();
        assert_eq!(
            entries_at(&table, body_pc),
            1037,
            "{policy:?}: after a flush"
        );
        rt.run(entry, &[3, 5]).expect("run");
        rt.cache_mut().harvest();
        rt.cache_mut().harvest();
        assert_eq!(
            entries_at(&table, body_pc),
            1040,
            "{policy:?}: harvest twice"
        );
        assert_eq!(entries_at(&table, entry), 3);
    }
}

#[test]
fn count_prefix_only_shows_native_states_when_single_stepped() {
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let entry = looped as *const () as u64;
        let (mut rt, _) = runtime(policy, ClientKind::Count, entry);
        let what = format!("count client {policy:?}");
        let (result, seen) =
            common::assert_stepped_states_are_native(&mut rt, entry, &[5, 3], || {}, &what);
        assert_eq!(result, looped(5, 3));
        // Each stepped block trapped inside its increment, with rax spilled.
        assert!(seen.spills > 10, "{what}: {seen:?}");
    }
}

#[test]
fn an_interrupt_after_the_count_moves_it_to_the_prefix_that_ran() {
    let entry = looped as *const () as u64;
    let (mut rt, table) = runtime(CallRetPolicy::Transparent, ClientKind::Count, entry);
    rt.run(entry, &[10, 1]).expect("run");
    rt.cache_mut().harvest();
    let full = ranges_at(&table, entry);
    assert_eq!(full.len(), 1);
    let len = u64::from(full[0].len);
    // An instruction boundary inside the entry block, in its copied code.
    let mid = (1..len)
        .map(|d| entry + d)
        .find(|&pc| {
            rt.cache()
                .cache_pc_for(pc)
                .is_some_and(|c| rt.cache().pc_map(c).is_some_and(|m| m.insn_pc == pc))
        })
        .expect("a copied instruction after the first");
    let cache_pc = rt.cache().cache_pc_for(mid).expect("mapped");
    rt.run(entry, &[10, 1]).expect("run");
    assert!(rt.cache_mut().interrupted(cache_pc));
    rt.cache_mut().harvest();
    let mut after = ranges_at(&table, entry);
    after.sort_by_key(|r| r.len);
    assert_eq!(after.len(), 2, "{after:x?}");
    assert_eq!(u64::from(after[0].len), mid - entry, "the prefix");
    assert_eq!(after[0].count, 1);
    assert_eq!(
        after[1].count, 1,
        "the second run's full execution was taken back"
    );
    assert_eq!(
        entries_at(&table, entry),
        2,
        "entries into the block stay exact"
    );
    // Before the increment's store nothing was counted: nothing to move.
    let start = rt.cache().cache_pc_for(entry).expect("entry");
    assert!(!rt.cache_mut().interrupted(start));
}

/// Runs the guest function at `entry` with (`a`, `b`) translated with `client`; (result,
/// blocks, cache bytes).
fn run_with(client: Option<ClientKind>, entry: u64, a: u64, b: u64) -> [u64; 3] {
    let mut opts = Options::new(CallRetPolicy::Transparent);
    opts.placement = Placement::Near(entry);
    let mut rt = Runtime::new(opts).expect("runtime");
    if let Some(kind) = client {
        rt.cache_mut().set_client(Some(Client {
            kind,
            table: table(1 << 10),
            counters: counters(64),
        }));
    }
    let result = rt.run(entry, &[a, b]).expect("run");
    let s = rt.cache().stats();
    [result, s.blocks, s.cache_bytes]
}

#[test]
fn coverage_adds_no_code_and_count_adds_its_increment() {
    // arm0 is one straight-line block, the same block with or without a client.
    let entry = arm0 as *const () as u64;
    let runs = [None, Some(ClientKind::Coverage), Some(ClientKind::Count)]
        .map(|c| run_with(c, entry, 5, 0));
    assert!(
        runs.iter().all(|r| r[0] == arm0(5) && r[1] == 1),
        "{runs:?}"
    );
    assert_eq!(
        runs[0][2], runs[1][2],
        "coverage leaves translations unchanged"
    );
    assert!(
        runs[2][2] > runs[0][2],
        "count adds its increment: {runs:?}"
    );
}

#[test]
fn without_a_client_blocks_go_on_past_conditional_branches() {
    let code = [
        0x48, 0x89, 0xf8, // mov rax, rdi
        0x48, 0x85, 0xff, // test rdi, rdi
        0x74, 0x04, //       jz +4
        0x48, 0x83, 0xc0, 0x01, // add rax, 1
        0x48, 0x85, 0xf6, // test rsi, rsi
        0x74, 0x04, //       jz +4
        0x48, 0x83, 0xc0, 0x02, // add rax, 2
        0xc3, //             ret
    ];
    let mut page = ExecMemory::new(4096).expect("code page");
    page.as_mut()[..code.len()].copy_from_slice(&code);
    let entry = page.base();
    // Neither jz taken: one block without a client; a client's blocks end at each jz.
    let plain = run_with(None, entry, 1, 1);
    let covered = run_with(Some(ClientKind::Coverage), entry, 1, 1);
    assert_eq!((plain[0], plain[1]), (4, 1), "{plain:?}");
    assert_eq!((covered[0], covered[1]), (4, 3), "{covered:?}");
    // Taken, the first jz leaves for a block from the second test to the ret.
    assert_eq!(run_with(None, entry, 0, 1)[..2], [2, 2]);
}

#[test]
fn count_prefix_decodes_to_a_flag_free_increment_of_the_fragments_counter() {
    use iced_x86::{Code, Decoder, DecoderOptions, Register};
    let entry = looped as *const () as u64;
    let table = table(64);
    let counters = counters(64);
    let mut rt = Runtime::new(Options::new(CallRetPolicy::Transparent)).expect("runtime");
    rt.cache_mut().set_client(Some(Client {
        kind: ClientKind::Count,
        table,
        counters,
    }));
    rt.run(entry, &[1, 1]).expect("run");
    let at = rt.cache().cache_pc_for(entry).expect("translated");
    let off = (at - rt.cache().exec_base()) as usize;
    let code = &rt.cache().arena().as_ref()[off..off + 64];
    let all: Vec<_> = Decoder::with_ip(64, code, at, DecoderOptions::NONE)
        .into_iter()
        .take(7)
        .collect();
    // The host's red zone (128 bytes) is skipped first and restored last.
    assert_eq!(all[0].code(), Code::Lea_r64_m);
    assert_eq!(all[0].memory_displacement64() as i64, -128);
    assert_eq!(all[6].code(), Code::Lea_r64_m);
    assert_eq!(all[6].memory_displacement64(), 128);
    let insns = &all[1..6];
    assert_eq!(insns[0].code(), Code::Push_r64);
    assert_eq!(insns[2].code(), Code::Lea_r64_m);
    assert_eq!(insns[4].code(), Code::Pop_r64);
    assert!(insns.iter().all(|i| i.rflags_modified() == 0));
    assert_eq!(insns[2].memory_base(), Register::RAX);
    assert_eq!(insns[2].memory_displacement64(), 1);
    // Load and store name the same counter: the first of the client's counters, outside
    // the cache (a heap allocation here, likely out of RIP-relative reach: moffs64).
    let (load, store) = (&insns[1], &insns[3]);
    assert!(matches!(
        load.code(),
        Code::Mov_r64_rm64 | Code::Mov_RAX_moffs64
    ));
    assert!(matches!(
        store.code(),
        Code::Mov_rm64_r64 | Code::Mov_moffs64_RAX
    ));
    let addr = |i: &iced_x86::Instruction| {
        if i.is_ip_rel_memory_operand() {
            i.ip_rel_memory_address()
        } else {
            i.memory_displacement64()
        }
    };
    assert_eq!(addr(load), counters.as_ptr() as u64);
    assert_eq!(addr(store), counters.as_ptr() as u64);
    assert!(!rt.arena_range().contains(&addr(load)));
}

#[test]
fn running_out_of_counters_flushes_and_goes_on_counting() {
    let entry = looped as *const () as u64;
    let body_pc = body as *const () as u64;
    let table = table(256);
    let mut opts = Options::new(CallRetPolicy::Transparent);
    opts.placement = Placement::Near(entry);
    let mut rt = Runtime::new(opts).expect("runtime");
    // Fewer counters than the loop has blocks: the cache is full before it is.
    rt.cache_mut().set_client(Some(Client {
        kind: ClientKind::Count,
        table,
        counters: counters(3),
    }));
    assert_eq!(rt.run(entry, &[50, 2]).expect("run"), looped(50, 2));
    rt.cache_mut().harvest();
    assert!(rt.cache().stats().flushes > 1, "{:?}", rt.cache().stats());
    assert_eq!(entries_at(&table, body_pc), 50);
}
