//! Guest code compiled by rustc runs translated under both call/ret policies, with the
//! code cache near the guest (RIP-relative operands re-encoded) and far from it (operands
//! rewritten through a scratch register), and must give exactly the native results.

use kdbt_engine::{CallRetPolicy, IblSize, Stats};
use kdbt_host::{Options, Placement, Runtime, TransparentSites};

mod guests;

use guests::{cases, sum_loop, LOCK};

fn run_corpus(policy: CallRetPolicy, placement: Placement) -> Stats {
    run_corpus_with(policy, placement, TransparentSites::default())
}

fn run_corpus_with(policy: CallRetPolicy, placement: Placement, sites: TransparentSites) -> Stats {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = Options::new(policy);
    opts.placement = placement;
    let mut rt = Runtime::new(opts).expect("runtime");
    rt.set_transparent_sites(sites);
    for (name, f, a, b) in cases() {
        let entry = f as *const () as u64;
        let native = rt.run_native(entry, &[a, b]).expect("native run");
        assert_eq!(
            native,
            f(a, b),
            "{name}: run_native differs from a direct call"
        );
        let translated = rt
            .run(entry, &[a, b])
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(translated, native, "{name} under {policy:?} {placement:?}");
        // Second run: everything translated and linked already.
        assert_eq!(
            rt.run(entry, &[a, b]).expect("rerun"),
            native,
            "{name} rerun"
        );
    }
    *rt.cache().stats()
}

fn guest_addr() -> u64 {
    sum_loop as *const () as u64
}

fn assert_busy(s: &Stats) {
    assert!(s.blocks > 50, "{s:?}");
    assert!(s.links > 50, "{s:?}");
    assert!(s.hits > 0, "{s:?}");
    assert!(s.misses == s.blocks, "{s:?}");
    assert!(s.cache_bytes > s.guest_bytes, "{s:?}");
    assert_eq!(s.flushes, 0, "{s:?}");
}

#[test]
fn corpus_matches_native_transparent_cache_near_guest() {
    assert_busy(&run_corpus(
        CallRetPolicy::Transparent,
        Placement::Near(guest_addr()),
    ));
}

#[test]
fn corpus_matches_native_fast_cache_near_guest() {
    assert_busy(&run_corpus(
        CallRetPolicy::Fast,
        Placement::Near(guest_addr()),
    ));
}

#[test]
fn corpus_matches_native_transparent_cache_far_from_guest() {
    assert_busy(&run_corpus(
        CallRetPolicy::Transparent,
        Placement::Far(guest_addr()),
    ));
}

#[test]
fn corpus_matches_native_fast_cache_far_from_guest() {
    assert_busy(&run_corpus(
        CallRetPolicy::Fast,
        Placement::Far(guest_addr()),
    ));
}

#[test]
fn corpus_matches_native_transparent_cache_in_low_2gib() {
    assert_busy(&run_corpus(CallRetPolicy::Transparent, Placement::Low));
}

#[test]
fn corpus_matches_native_fast_cache_in_low_2gib() {
    assert_busy(&run_corpus(CallRetPolicy::Fast, Placement::Low));
}

/// Every address of the process.
const EVERYWHERE: std::ops::Range<u64> = 0..u64::MAX;

#[test]
fn corpus_matches_native_fast_with_every_ret_transparent() {
    // Every `ret` (rustc's, libc's) pops a Fast caller's return site, misses its inline
    // lookup and is resumed by the dispatcher at the site's guest return address.
    let sites = TransparentSites {
        calls: vec![],
        rets: vec![EVERYWHERE],
    };
    let s = run_corpus_with(CallRetPolicy::Fast, Placement::Low, sites);
    // At least deep_chain's 3000 returns, twice.
    assert!(s.site_resumes > 6000, "{s:?}");
    assert_eq!(s.native_fallbacks, 0, "{s:?}");
}

#[test]
fn corpus_matches_native_fast_with_every_call_and_ret_transparent() {
    // Direct calls push guest return addresses, whose `ret`s hit inline and jump to the
    // Fast lookup entries; indirect calls stay Fast, so their callees' `ret`s resume at
    // return sites.
    let sites = TransparentSites {
        calls: vec![EVERYWHERE],
        rets: vec![EVERYWHERE],
    };
    let s = run_corpus_with(CallRetPolicy::Fast, Placement::Near(guest_addr()), sites);
    assert_busy(&s);
    assert!(s.site_resumes > 0, "{s:?}");
}

#[test]
fn small_lookup_table_still_matches_native() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for policy in [CallRetPolicy::Transparent, CallRetPolicy::Fast] {
        let mut opts = Options::new(policy);
        opts.ibl = IblSize::Small;
        let mut rt = Runtime::new(opts).expect("runtime");
        for (name, f, a, b) in cases() {
            let entry = f as *const () as u64;
            let native = rt.run_native(entry, &[a, b]).expect("native");
            assert_eq!(
                rt.run(entry, &[a, b]).expect("translated"),
                native,
                "{name} {policy:?}"
            );
        }
    }
}
