//! The stale bitmap (`CodeCache::track_stale`, docs/fast-mode.md 2.4): after real guest
//! code ran translated, invalidating fragments sets the bit of exactly the 64-byte chunks
//! their code (as the PC map reports it) overlaps, live code in other chunks stays
//! resumable, a flush clears the bits in place, and tracking is off by default. Also the
//! property the fast `iretq` relies on for return sites: a return site of an invalidated
//! fragment still classifies as one, with its guest return address, until the flush.

mod guests;

use std::collections::BTreeSet;
use std::ops::Range;

use kdbt_engine::{
    CacheWord, CallRetPolicy, CodeCache, FragmentId, STALE_CHUNK, STALE_CHUNK_SHIFT,
};
use kdbt_host::{ExecMemory, Options, Runtime};

type Cache = CodeCache<ExecMemory>;

/// A fragment as the cache reports it.
struct Frag {
    id: FragmentId,
    /// Runtime addresses of its code: from its first byte for as long as the PC map covers.
    code: Range<u64>,
    live: bool,
}

/// Every fragment since the last flush, in arena order.
fn fragments(cache: &Cache) -> Vec<Frag> {
    (0..)
        .map(FragmentId)
        .map_while(|id| cache.lookup_entry(id).ok().map(|start| (id, start)))
        .map(|(id, start)| {
            let mut end = start;
            while cache.pc_map(end).is_some() {
                end += 1;
            }
            assert!(end > start, "{id:?} has code");
            let guest = cache.pc_map(start).expect("maps").insn_pc;
            Frag {
                id,
                code: start..end,
                live: cache.lookup(guest) == Some(id),
            }
        })
        .collect()
}

fn chunk(cache: &Cache, addr: u64) -> u64 {
    (addr - cache.exec_base()) >> STALE_CHUNK_SHIFT
}

fn chunks(cache: &Cache, code: &Range<u64>) -> impl Iterator<Item = u64> {
    chunk(cache, code.start)..=chunk(cache, code.end - 1)
}

/// The chunks whose bit is set, read from the words as a bit string (bit `n` is bit
/// `n % 64` of word `n / 64`).
fn stale_chunks(cache: &Cache) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for (w, word) in cache.stale_words().iter().enumerate() {
        for bit in 0..64 {
            if word >> bit & 1 != 0 {
                set.insert(w as u64 * 64 + bit);
            }
        }
    }
    set
}

/// What the check saw.
#[derive(Debug, Default)]
struct Seen {
    dead: usize,
    /// Bytes of live code in chunks without dead code: not stale.
    live_clean: usize,
    /// Bytes of live code in a chunk shared with dead code: stale.
    live_shared: usize,
}

/// The bitmap holds exactly the chunks overlapping dead fragments' code, and `stale`
/// answers accordingly for every byte of every fragment's code.
fn assert_exact(cache: &Cache, what: &str) -> Seen {
    let frags = fragments(cache);
    let expected: BTreeSet<u64> = frags
        .iter()
        .filter(|f| !f.live)
        .flat_map(|f| chunks(cache, &f.code))
        .collect();
    assert_eq!(stale_chunks(cache), expected, "{what}: the stale chunks");
    let mut seen = Seen::default();
    for f in &frags {
        seen.dead += usize::from(!f.live);
        for a in f.code.clone() {
            let shared = expected.contains(&chunk(cache, a));
            assert_eq!(cache.stale(a), shared, "{what}: {:?} at {a:#x}", f.id);
            if f.live {
                seen.live_clean += usize::from(!shared);
                seen.live_shared += usize::from(shared);
            }
        }
    }
    seen
}

fn tracked(policy: CallRetPolicy) -> Runtime {
    let mut rt = Runtime::new(Options::new(policy)).expect("runtime");
    rt.cache_mut().track_stale(true).expect("bitmap");
    rt
}

/// Runs a few corpus guests translated (many blocks, libc's included), each checked
/// against its native result.
fn run_guests(rt: &mut Runtime) {
    for (name, f, a, b) in guests::cases() {
        if ![
            "fib",
            "deep_chain",
            "function_pointers",
            "jump_table",
            "libc_calls",
        ]
        .contains(&name)
        {
            continue;
        }
        let entry = f as *const () as u64;
        let native = rt.run_native(entry, &[a, b]).expect("native");
        assert_eq!(rt.run(entry, &[a, b]).expect(name), native, "{name}");
    }
}

fn addr(f: guests::Guest) -> u64 {
    f as *const () as u64
}

/// Invalidates the guest range of `len` bytes at `f`'s entry: how many fragments (some).
fn invalidate(rt: &mut Runtime, f: guests::Guest, len: u64) -> u32 {
    let n = rt
        .cache_mut()
        .invalidate_range(addr(f), addr(f) + len)
        .expect("invalidate_range");
    assert!(n > 0, "{:#x} was translated", addr(f));
    n
}

#[test]
fn invalidating_a_guest_range_marks_exactly_the_chunks_of_its_fragments_code() {
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut rt = tracked(policy);
        run_guests(&mut rt);
        let before = assert_exact(rt.cache(), "all live");
        assert_eq!(before.dead, 0);
        assert!(stale_chunks(rt.cache()).is_empty(), "{policy:?}");

        let n = invalidate(&mut rt, guests::fib, 0x40) + invalidate(&mut rt, guests::jump_table, 1);
        let seen = assert_exact(rt.cache(), "after invalidate_range");
        assert_eq!(
            seen.dead, n as usize,
            "{policy:?}: every invalidated one is dead"
        );
        assert!(seen.dead >= 2, "{policy:?}: {seen:?}");
        assert!(seen.live_clean > 1000, "{policy:?}: {seen:?}");
        // Outside the arena nothing is stale; the dispatcher slot and the table are no code.
        let arena = rt.arena_range();
        for probe in [
            arena.start - 1,
            arena.end,
            0,
            u64::MAX,
            arena.start,
            arena.start + 64,
        ] {
            assert!(!rt.cache().stale(probe), "{policy:?}: {probe:#x}");
        }

        // Re-translated after the invalidation: the new fragments are live, and not stale
        // unless they share a chunk with dead code.
        let blocks = rt.cache().stats().blocks;
        run_guests(&mut rt);
        assert!(
            rt.cache().stats().blocks > blocks,
            "{policy:?}: fib translated again"
        );
        let again = assert_exact(rt.cache(), "after re-translation");
        assert_eq!(again.dead, seen.dead);
        assert!(again.live_clean > seen.live_clean, "{policy:?}");
    }
}

#[test]
fn a_chunk_shared_with_dead_code_is_stale_but_a_dead_fragments_literals_and_metadata_are_not_code()
{
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut rt = tracked(policy);
        run_guests(&mut rt);
        let frags = fragments(rt.cache());
        let cache = rt.cache();
        // Neighbours in the arena: `d`'s code ends in the chunk where `l` starts.
        let shared = frags
            .windows(2)
            .find(|p| chunk(cache, p[0].code.end - 1) == chunk(cache, p[1].code.start))
            .map(|p| (p[0].id, p[1].code.start))
            .expect("neighbours sharing a chunk");
        // `l` starts mid-chunk in a chunk after the one where `d`'s code ends: the bytes
        // before it in its chunk are `d`'s padding, literals and metadata. Away from the
        // first pair.
        let tail = frags
            .windows(2)
            .find(|p| {
                let (d, l) = (&p[0], &p[1]);
                chunk(cache, d.code.end - 1) < chunk(cache, l.code.start)
                    && (l.code.start - cache.exec_base()) & (STALE_CHUNK - 1) != 0
                    && d.code.start > shared.1 + 2 * STALE_CHUNK
            })
            .map(|p| (p[0].id, p[0].code.clone(), p[1].id, p[1].code.start))
            .expect("a fragment starting mid-chunk after its neighbour's literals");

        let cache = rt.cache_mut();
        cache.invalidate(shared.0).expect("invalidate");
        cache.invalidate(tail.0).expect("invalidate");
        let cache = rt.cache();
        assert!(
            cache.stale(shared.1),
            "{policy:?}: the live neighbour's first chunk"
        );
        assert!(
            cache.stale(tail.1.end - 1),
            "{policy:?}: the dead code's last byte"
        );
        assert!(
            !cache.stale(tail.3),
            "{policy:?}: only literals and metadata of the dead fragment share this chunk"
        );
        let live = cache.pc_map(tail.3).expect("maps").insn_pc;
        assert_eq!(cache.lookup(live), Some(tail.2), "{policy:?}: still live");
        let seen = assert_exact(cache, "two invalidated");
        assert_eq!(seen.dead, 2);
        assert!(seen.live_shared > 0 && seen.live_clean > 1000, "{seen:?}");
    }
}

#[test]
fn flush_clears_every_bit_and_keeps_the_words_in_place() {
    let mut rt = tracked(CallRetPolicy::Fast);
    run_guests(&mut rt);
    let frags = fragments(rt.cache());
    let arena = rt.arena_range();
    rt.cache_mut()
        .invalidate_range(0, u64::MAX)
        .expect("everything");
    assert_exact(rt.cache(), "all dead");
    let was_stale: Vec<u64> = frags.iter().map(|f| f.code.start).collect();
    assert!(was_stale.iter().all(|&a| rt.cache().stale(a)));
    let (ptr, len) = {
        let words = rt.cache().stale_words();
        (words.as_ptr(), words.len())
    };
    assert_eq!(
        len,
        (arena.end - arena.start).div_ceil(64 * STALE_CHUNK) as usize,
        "one bit per chunk of the whole arena"
    );

    rt.cache_mut().flush();
    let words = rt.cache().stale_words();
    assert_eq!((words.as_ptr(), words.len()), (ptr, len), "same words");
    assert!(words.iter().all(|&w| w == 0), "all clear");
    assert!(was_stale.iter().all(|&a| !rt.cache().stale(a)));
    assert!(rt.cache().tracks_stale(), "still tracking");

    // The next generation is tracked the same way.
    run_guests(&mut rt);
    let n = invalidate(&mut rt, guests::fib, 1);
    let seen = assert_exact(rt.cache(), "after the flush");
    assert_eq!(seen.dead, n as usize);
}

#[test]
fn tracking_is_off_by_default_and_turned_on_late_marks_what_was_already_invalidated() {
    let mut rt = Runtime::new(Options::new(CallRetPolicy::Fast)).expect("runtime");
    assert!(!rt.cache().tracks_stale(), "off by default");
    assert!(rt.cache().stale_words().is_empty(), "no words");
    run_guests(&mut rt);
    let n = invalidate(&mut rt, guests::fib, 0x40);
    let dead: Vec<Range<u64>> = fragments(rt.cache())
        .into_iter()
        .filter(|f| !f.live)
        .map(|f| f.code)
        .collect();
    assert_eq!(dead.len(), n as usize);
    let heap = rt.cache().metadata_bytes();
    assert!(
        dead.iter()
            .flat_map(|r| r.clone())
            .all(|a| !rt.cache().stale(a)),
        "off: nothing is stale"
    );
    assert!(rt.cache().stale_words().is_empty());

    rt.cache_mut().track_stale(true).expect("on");
    let words = rt.cache().stale_words().len();
    assert_eq!(
        rt.cache().metadata_bytes(),
        heap + 8 * words,
        "the words' heap counted"
    );
    let seen = assert_exact(rt.cache(), "turned on after the invalidation");
    assert_eq!(seen.dead, n as usize);
    assert!(dead.iter().all(|r| rt.cache().stale(r.start)));
    let ptr = rt.cache().stale_words().as_ptr();
    rt.cache_mut().track_stale(true).expect("on again");
    assert_eq!(
        rt.cache().stale_words().as_ptr(),
        ptr,
        "already on: unchanged"
    );

    rt.cache_mut().track_stale(false).expect("off");
    assert!(!rt.cache().tracks_stale());
    assert!(rt.cache().stale_words().is_empty());
    assert_eq!(rt.cache().metadata_bytes(), heap, "freed");
    assert!(dead.iter().all(|r| !rt.cache().stale(r.start)));
    // Invalidations while off are not lost for a later `on`.
    let more = invalidate(&mut rt, guests::jump_table, 1);
    rt.cache_mut().track_stale(true).expect("on");
    let seen = assert_exact(rt.cache(), "on again");
    assert_eq!(seen.dead, (n + more) as usize);
}

#[test]
fn return_sites_of_invalidated_fragments_classify_as_return_sites_until_the_flush() {
    let mut rt = tracked(CallRetPolicy::Fast);
    run_guests(&mut rt);
    let cache = rt.cache();
    let sites: Vec<(u64, u64)> = fragments(cache)
        .iter()
        .flat_map(|f| f.code.clone())
        .filter_map(|a| cache.return_site(a).map(|guest| (a, guest)))
        .collect();
    assert!(sites.len() > 20, "{} return sites", sites.len());
    for &(site, guest) in &sites {
        assert_eq!(cache.classify(site), Some(CacheWord::ReturnSite(guest)));
    }

    let n = rt
        .cache_mut()
        .invalidate_range(0, u64::MAX)
        .expect("everything");
    let cache = rt.cache();
    assert_eq!(fragments(cache).iter().filter(|f| f.live).count(), 0);
    assert!(n > 0);
    for &(site, guest) in &sites {
        assert_eq!(
            cache.return_site(site),
            Some(guest),
            "{site:#x} until the flush"
        );
        assert_eq!(
            cache.classify(site),
            Some(CacheWord::ReturnSite(guest)),
            "{site:#x}"
        );
        assert!(cache.stale(site), "{site:#x}: in dead code");
    }

    rt.cache_mut().flush();
    let cache = rt.cache();
    for &(site, _) in &sites {
        assert_eq!(cache.return_site(site), None, "{site:#x} after the flush");
        assert_eq!(cache.classify(site), Some(CacheWord::Data), "{site:#x}");
        assert!(!cache.stale(site));
    }
}
