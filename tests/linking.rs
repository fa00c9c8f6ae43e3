//! Linking at the engine level: a direct exit is patched to jump straight to its target
//! fragment, recorded on the target's incoming list, and unlinking restores the jump to the
//! exit stub; stale exit ids (from before a flush) are never linked.

use iced_x86::{Code, Decoder, DecoderOptions};
use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, ExitReason, HookClass, IblSize, RipSource, SliceMemory,
    Thunks,
};

/// Arena offset of the first fragment with the Small lookup table.
const SMALL_TABLE_END: usize = kdbt_engine::TABLE_OFFSET + IblSize::Small.table_bytes();

const BASE: u64 = 0x40_0000;
const EXEC: u64 = 0x1_0000_0000;

fn cache() -> CodeCache<Vec<u8>> {
    let cfg = Config {
        policy: CallRetPolicy::Transparent,
        red_zone: 128,
        dispatcher: EXEC - 0x1000,
        hooks: HookClass::empty(),
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    };
    CodeCache::new(vec![0u8; SMALL_TABLE_END + 4096], EXEC, cfg).expect("cache")
}

/// Where the `jmp rel32` (after any alignment prefixes) at runtime address `at` goes.
fn jmp_target(cache: &CodeCache<Vec<u8>>, at: u64) -> u64 {
    let off = (at - EXEC) as usize;
    let insn =
        Decoder::with_ip(64, &cache.arena()[off..off + 15], at, DecoderOptions::NONE).decode();
    assert_eq!(insn.code(), Code::Jmp_rel32_64, "a jmp rel32");
    insn.near_branch_target()
}

#[test]
fn link_patches_the_branch_to_the_target_and_unlink_restores_the_stub() {
    // A: jmp B (2 bytes later)   B: nop; ret
    let code = [0xeb, 0x00, 0x90, 0xc3];
    let mem = SliceMemory::new(BASE, &code);
    let mut cache = cache();
    let a = cache.translate(BASE, &mem).expect("A");
    let a_entry = cache.fragment_entry(a).expect("entry");
    let stub = jmp_target(&cache, a_entry);
    let at_stub = cache.pc_map(stub).expect("the stub maps back");
    assert_eq!(at_stub.insn_pc, BASE);
    assert_eq!(
        at_stub.rollback.rip,
        RipSource::Guest(BASE + 2),
        "at the stub the jmp is complete"
    );

    // A's only exit has id 0: what the stub would put in the dispatcher frame.
    let reason = cache.exit_reason(0, 0).expect("exit 0");
    let ExitReason::DirectMiss { exit, target } = reason else {
        panic!("{reason:?}")
    };
    assert_eq!(target, BASE + 2);
    let resume = cache
        .resolve(&reason, &mem)
        .expect("resolve")
        .expect("an address");
    let b = cache.lookup(BASE + 2).expect("B translated");
    assert_eq!(resume, cache.fragment_entry(b).expect("entry"));
    assert_eq!(jmp_target(&cache, a_entry), resume, "linked straight to B");
    assert_eq!(cache.linked_to(exit), Some(b));
    assert_eq!(cache.incoming(b).collect::<Vec<_>>(), vec![exit]);
    assert_eq!(cache.stats().links, 1);

    cache.unlink(exit).expect("unlink");
    assert_eq!(jmp_target(&cache, a_entry), stub, "back to the stub");
    assert_eq!(cache.linked_to(exit), None);
    assert_eq!(cache.incoming(b).count(), 0);
    assert_eq!(cache.stats().unlinks, 1);

    // A decoded exit from before a flush is not linked into the new generation.
    let stale = cache.exit_reason(0, 0).expect("exit 0");
    cache.flush();
    assert!(cache.exit_reason(0, 0).is_err(), "no exits after a flush");
    let pc = cache
        .resolve(&stale, &mem)
        .expect("resolve")
        .expect("an address");
    let b2 = cache.lookup(BASE + 2).expect("B again");
    assert_eq!(pc, cache.fragment_entry(b2).expect("entry"));
    assert_eq!(cache.stats().links, 1, "stale exit not linked");
}

#[test]
fn indirect_exit_reports_the_aux_target_and_hooks_report_their_site() {
    // jmp rax ; int3
    let code = [0xff, 0xe0, 0xcc];
    let mem = SliceMemory::new(BASE, &code);
    let mut cache = cache();
    cache.translate(BASE, &mem).expect("jmp rax");
    match cache.exit_reason(0, 0x1234).expect("exit 0") {
        ExitReason::IndirectMiss {
            target, insn_pc, ..
        } => assert_eq!((target, insn_pc), (0x1234, BASE)),
        other => panic!("{other:?}"),
    }
    let cfg = Config {
        hooks: HookClass::INT3,
        ..*cache.config()
    };
    let mut hooked = CodeCache::new(vec![0u8; SMALL_TABLE_END + 4096], EXEC, cfg).expect("cache");
    hooked.translate(BASE + 2, &mem).expect("int3");
    match hooked.exit_reason(0, 0).expect("exit 0") {
        ExitReason::Hook(site) => {
            assert_eq!(
                (site.class, site.pc, site.next_pc),
                (HookClass::INT3, BASE + 2, BASE + 3)
            );
            assert_eq!(hooked.resolve(&ExitReason::Hook(site), &mem), Ok(None));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stats_accumulate_sums_every_counter() {
    let mut cache = cache();
    let code = [0x90, 0xc3];
    cache
        .translate(BASE, &SliceMemory::new(BASE, &code))
        .expect("translate");
    let one = *cache.stats();
    let mut sum = one;
    sum.accumulate(&one);
    assert_eq!(sum.blocks, 2 * one.blocks);
    assert_eq!(sum.guest_insns, 2 * one.guest_insns);
    assert_eq!(sum.guest_bytes, 2 * one.guest_bytes);
    assert_eq!(sum.cache_bytes, 2 * one.cache_bytes);
    assert_eq!(sum.lookups, 2 * one.lookups);
    assert_eq!(sum.misses, 2 * one.misses);
    assert!(one.blocks == 1 && one.guest_insns == 2 && one.cache_bytes > 0);
}

#[test]
fn lookups_are_hits_plus_misses_and_failed_translations_add_no_block() {
    let mut cache = cache();
    let code = [0x90, 0xc3, 0x06];
    let mem = SliceMemory::new(BASE, &code);
    cache.translate(BASE, &mem).expect("nop; ret");
    cache.translate(BASE, &mem).expect("again: a hit");
    assert!(cache.translate(BASE + 2, &mem).is_err(), "invalid opcode");
    let s = cache.stats();
    assert_eq!((s.lookups, s.hits, s.misses, s.blocks), (3, 1, 2, 1));
}

/// The guest PC and cache PC in lookup-table slot `slot` (Small table: 257 negated guest
/// PCs, then 257 cache PCs).
fn table_slot(cache: &CodeCache<Vec<u8>>, slot: usize) -> (u64, u64) {
    let off = kdbt_engine::TABLE_OFFSET + slot * 8;
    let word = |o: usize| u64::from_le_bytes(cache.arena()[o..o + 8].try_into().expect("8 bytes"));
    (word(off).wrapping_neg(), word(off + 257 * 8))
}

#[test]
fn two_targets_with_the_same_low_bits_both_stay_in_the_lookup_table() {
    // Three `ret` blocks 256 bytes apart: one index of the 256-entry table, whose lookups
    // probe slots 0 and 1.
    let mut code = vec![0x90u8; 513];
    for at in [0, 256, 512] {
        code[at] = 0xc3;
    }
    let mem = SliceMemory::new(BASE, &code);
    let mut cache = cache();
    let entry = |c: &mut CodeCache<Vec<u8>>, pc: u64| {
        let id = c.translate(pc, &mem).expect("translates");
        (id, c.fragment_entry(id).expect("entry"))
    };
    let (_, a) = entry(&mut cache, BASE);
    let (b_id, b) = entry(&mut cache, BASE + 256);
    assert_eq!(table_slot(&cache, 0), (BASE, a), "A in the first slot");
    assert_eq!(table_slot(&cache, 1), (BASE + 256, b), "B in the second");
    let (_, c) = entry(&mut cache, BASE + 512);
    assert_eq!(table_slot(&cache, 0), (BASE, a), "A stays");
    assert_eq!(table_slot(&cache, 1), (BASE + 512, c), "C evicted B");
    let blocks = cache.stats().blocks;
    assert_eq!(entry(&mut cache, BASE + 256), (b_id, b));
    assert_eq!(cache.stats().blocks, blocks, "a hit, not a new block");
    assert_eq!(
        table_slot(&cache, 1),
        (BASE + 256, b),
        "the hit re-inserted B"
    );
    assert_eq!(table_slot(&cache, 0), (BASE, a));
}

#[test]
fn invalidating_a_large_range_keeps_every_fragment_outside_it_and_its_links() {
    // 64 blocks of `nop; jmp next` (4 bytes each), then `ret`.
    let mut code = Vec::new();
    for _ in 0..64 {
        code.extend_from_slice(&[0x90, 0x90, 0xeb, 0x00]);
    }
    code.push(0xc3);
    let mem = SliceMemory::new(BASE, &code);
    let cfg = *cache().config();
    let mut cache =
        CodeCache::new(vec![0u8; SMALL_TABLE_END + (64 << 10)], EXEC, cfg).expect("cache");
    let pcs: Vec<u64> = (0..=64).map(|i| BASE + 4 * i).collect();
    let ids: Vec<_> = pcs
        .iter()
        .map(|&pc| cache.translate(pc, &mem).expect("translate"))
        .collect();
    // Link each block's exit to the next block.
    for exit_id in 0..256u64 {
        if let Ok(ExitReason::DirectMiss { exit, target }) = cache.exit_reason(exit_id, 0) {
            if let Some(to) = cache.lookup(target) {
                cache.link(exit, to).expect("link");
            }
        }
    }
    // Blocks 10..=40 overlap [BASE+41, BASE+161): 10 by its tail, 40 by its head.
    assert_eq!(cache.invalidate_range(BASE + 41, BASE + 161), Ok(31));
    for (i, &pc) in pcs.iter().enumerate() {
        let gone = (10..=40).contains(&i);
        assert_eq!(cache.lookup(pc).is_none(), gone, "block {i}");
    }
    // The link into block 10 came undone; those between live blocks stay.
    assert_eq!(cache.incoming(ids[10]).count(), 0);
    assert_eq!(cache.incoming(ids[50]).count(), 1);
}

#[test]
fn debug_register_writes_are_a_hook_class_of_their_own() {
    // mov dr7, rax ; ret
    let code = [0x0f, 0x23, 0xf8, 0xc3];
    let mem = SliceMemory::new(BASE, &code);
    let cfg = Config {
        hooks: HookClass::MOV_DR,
        ..*cache().config()
    };
    let mut hooked = CodeCache::new(vec![0u8; SMALL_TABLE_END + 4096], EXEC, cfg).expect("cache");
    hooked.translate(BASE, &mem).expect("mov dr7");
    match hooked.exit_reason(0, 0).expect("exit 0") {
        ExitReason::Hook(site) => assert_eq!(
            (site.class, site.pc, site.next_pc),
            (HookClass::MOV_DR, BASE, BASE + 3)
        ),
        other => panic!("{other:?}"),
    }
}

/// Guest code whose branches sit at every offset modulo 4: for each `k`, `k` nops, then
/// `jz +0`, `call +0` and `jmp +0`, each ending a block; then `ret`.
fn branches_at_every_alignment() -> Vec<u8> {
    let mut code = Vec::new();
    for k in 0..8 {
        code.extend(std::iter::repeat_n(0x90, k));
        code.extend_from_slice(&[0x74, 0x00, 0xe8, 0, 0, 0, 0, 0xeb, 0x00]);
    }
    code.push(0xc3);
    code
}

/// The arena bytes that differ between `before` and `after`.
fn changed(before: &[u8], after: &[u8]) -> Vec<usize> {
    (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect()
}

#[test]
fn every_link_and_unlink_is_one_aligned_four_byte_store() {
    let code = branches_at_every_alignment();
    let mem = SliceMemory::new(BASE, &code);
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let cfg = Config {
            policy,
            through_jcc: false,
            ..*cache().config()
        };
        let mut cache =
            CodeCache::new(vec![0u8; SMALL_TABLE_END + (64 << 10)], EXEC, cfg).expect("cache");
        // Translate every block reachable by direct exits.
        let mut todo = vec![BASE];
        while let Some(pc) = todo.pop() {
            if cache.lookup(pc).is_some() {
                continue;
            }
            cache.translate(pc, &mem).expect("translate");
            for id in 0u64.. {
                match cache.exit_reason(id, 0) {
                    Ok(ExitReason::DirectMiss { target, .. }) => todo.push(target),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        let mut fields = std::collections::BTreeSet::new();
        for id in 0u64.. {
            let Ok(reason) = cache.exit_reason(id, 0) else {
                break;
            };
            let ExitReason::DirectMiss { exit, target } = reason else {
                continue;
            };
            let to = cache.lookup(target).expect("target translated");
            let before = cache.arena().clone();
            cache.link(exit, to).expect("link");
            let entry = cache.fragment_entry(to).expect("entry");
            let store = changed(&before, cache.arena());
            let first = *store.first().expect("the link wrote something");
            // The rel32 field holding the store: the one that now jumps to `to`.
            let rel_target = |f: usize| {
                let rel = i32::from_le_bytes(cache.arena()[f..f + 4].try_into().expect("4"));
                (EXEC + f as u64 + 4).wrapping_add(rel as i64 as u64)
            };
            let field = (first.saturating_sub(3)..=first)
                .find(|&f| rel_target(f) == entry)
                .expect("a rel32 field to the target");
            assert_eq!((EXEC + field as u64) % 4, 0, "{policy:?}: field {field:#x}");
            assert!(store.iter().all(|&i| i < field + 4), "one 4-byte store");
            let linked = cache.arena().clone();
            cache.unlink(exit).expect("unlink");
            assert_eq!(cache.arena(), &before, "unlink restores the stub branch");
            let undo = changed(&linked, cache.arena());
            assert!(undo.iter().all(|&i| (field..field + 4).contains(&i)));
            fields.insert(field);
        }
        // 8 jz (two exits each), 8 calls, 8 jmps.
        assert!(fields.len() >= 32, "{policy:?}: {} exits", fields.len());
    }
}
