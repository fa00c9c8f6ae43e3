//! Compact metadata: translating every reachable block of a large real body of code
//! (busybox's `.text`) with the kernel's configuration, the heap the cache holds stays
//! within the code-cache bytes in use, and the PC map, rollback, reverse map, links and
//! invalidation still answer for every fragment; a flush gives that heap back.

use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Error, ExitReason, FragmentId, HookClass, IblSize, RipSource,
    SliceMemory, Thunks,
};

fn kernel_config() -> Config {
    Config {
        policy: CallRetPolicy::Transparent,
        red_zone: 0,
        dispatcher: 0x7fff_0000_0000,
        hooks: HookClass::IRETQ_TO_KERNEL,
        ibl: IblSize::Large,
        thunks: Thunks::NONE,
        through_jcc: true,
    }
}

#[test]
fn metadata_of_every_busybox_block_fits_in_the_code_cache_bytes_it_describes() {
    let Ok(elf) = std::fs::read("/bin/busybox") else {
        eprintln!("no /bin/busybox: skipped");
        return;
    };
    let (addr, text) = kdbt_host::text_section(&elf).expect(".text");
    let mem = SliceMemory::new(addr, text);
    // Near the text, as the kernel's module area is near kernel text.
    let exec_base = (addr & !0xfff_ffff) + 0x4000_0000;
    let mut cache = CodeCache::new(vec![0u8; 96 << 20], exec_base, kernel_config()).unwrap();
    let fresh = cache.metadata_bytes();
    let end = addr + text.len() as u64;
    let mut pc = addr;
    let mut ids = Vec::new();
    while pc < end {
        let before = cache.stats().guest_bytes;
        match cache.translate(pc, &mem) {
            Ok(id) => {
                ids.push((pc, id));
                pc += (cache.stats().guest_bytes - before).max(1);
            }
            Err(e @ (Error::CacheFull { .. } | Error::OutOfMemory)) => panic!("{e}"),
            Err(_) => pc += 1,
        }
    }
    let blocks = cache.stats().blocks;
    let (meta, used) = (cache.metadata_bytes(), cache.used() as usize);
    eprintln!(
        "{blocks} blocks, {used} cache bytes, {meta} metadata bytes: {:.1} bytes/block, {:.3} per cache byte",
        meta as f64 / blocks as f64,
        meta as f64 / used as f64
    );
    assert!(blocks > 40_000, "{blocks} blocks");
    assert!(meta <= used, "metadata {meta} > cache bytes {used}");

    // Every fragment still maps back, exactly at its start and through its code.
    for &(pc, id) in ids.iter().step_by(7) {
        let entry = cache.fragment_entry(id).unwrap();
        assert_eq!(cache.lookup(pc), Some(id));
        assert_eq!(cache.cache_pc_for(pc), Some(entry));
        let m = cache.pc_map(entry).expect("entry maps");
        assert_eq!(m.insn_pc, pc);
        assert_eq!(m.rollback.rip, RipSource::Guest(pc));
    }
    // Link every direct exit of the first fragments to its target, then invalidate the
    // targets: the links come undone.
    let mut linked = Vec::new();
    for exit_id in 0..2000u64 {
        if let Ok(ExitReason::DirectMiss { exit, target }) = cache.exit_reason(exit_id, 0) {
            if let Some(to) = cache.lookup(target) {
                cache.link(exit, to).unwrap();
                assert_eq!(cache.linked_to(exit), Some(to));
                linked.push((exit, to));
            }
        }
    }
    assert!(linked.len() > 100, "{} links", linked.len());
    assert!(cache.metadata_bytes() <= cache.used() as usize);
    let mut targets: Vec<FragmentId> = linked.iter().map(|&(_, to)| to).collect();
    targets.sort();
    targets.dedup();
    let on_lists: usize = targets.iter().map(|&to| cache.incoming(to).count()).sum();
    assert_eq!(on_lists, linked.len(), "every link is on its target's list");
    for &to in &targets {
        let pc = cache
            .pc_map(cache.fragment_entry(to).unwrap())
            .unwrap()
            .insn_pc;
        cache.invalidate(to).unwrap();
        assert_eq!(cache.incoming(to).count(), 0);
        assert_eq!(cache.lookup(pc), None);
    }
    for &(exit, _) in &linked {
        assert_eq!(cache.linked_to(exit), None);
    }
    assert_eq!(cache.stats().links, cache.stats().unlinks);

    // A flush gives the records' memory back: the heap follows the cache in use, not
    // its peak.
    cache.flush();
    assert_eq!(cache.metadata_bytes(), fresh);
}
