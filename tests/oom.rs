//! Out of memory: in the kernel the engine's heap is a fixed-size private one, and an
//! allocation failure inside `alloc`'s infallible paths panics the kernel. Under a global
//! allocator that fails on demand, translating and flushing return `Err(OutOfMemory)`
//! (never abort), leave the cache usable, and after a flush translation works again; in
//! steady state a translation allocates nothing it does not keep.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Error, HookClass, IblSize, SliceMemory, Thunks,
};

/// Fails this thread's allocations once `BUDGET` bytes have been handed out (when set), and
/// counts this thread's allocations and tracks its bytes in use and their peak.
struct Limited;

thread_local! {
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged, or fails with null.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if let Some(left) = BUDGET.with(|b| b.get()) {
            if size > left {
                return std::ptr::null_mut();
            }
            BUDGET.with(|b| b.set(Some(left - size)));
        }
        CALLS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.with(|u| u.get()) + size;
            IN_USE.with(|u| u.set(now));
            PEAK.with(|m| m.set(m.get().max(now)));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.with(|u| u.set(u.get().saturating_sub(layout.size())));
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;

fn with_budget<T>(budget: Option<usize>, f: impl FnOnce() -> T) -> T {
    BUDGET.with(|b| b.set(budget));
    let r = f();
    BUDGET.with(|b| b.set(None));
    r
}

fn busybox() -> Option<(u64, Vec<u8>)> {
    let elf = std::fs::read("/bin/busybox").ok()?;
    let (addr, text) = kdbt_host::text_section(&elf)?;
    // A slice of it: enough blocks to fill the metadata's vectors several times.
    Some((addr, text[..text.len().min(64 << 10)].to_vec()))
}

fn kernel_config() -> Config {
    Config {
        policy: CallRetPolicy::Transparent,
        red_zone: 0,
        dispatcher: 0x7fff_0000_0000,
        hooks: HookClass::IRETQ_TO_KERNEL,
        ibl: IblSize::Small,
        thunks: Thunks::NONE,
        through_jcc: true,
    }
}

/// Translates block after block from `addr`; returns the first error that is not a guest
/// code problem, and how many blocks were translated.
fn sweep(cache: &mut CodeCache<Vec<u8>>, addr: u64, text: &[u8]) -> (usize, Option<Error>) {
    let mem = SliceMemory::new(addr, text);
    let (mut pc, mut blocks) = (addr, 0);
    while pc < addr + text.len() as u64 {
        let before = cache.stats().guest_bytes;
        match cache.translate(pc, &mem) {
            Ok(_) => {
                blocks += 1;
                pc += (cache.stats().guest_bytes - before).max(1);
            }
            Err(e @ (Error::OutOfMemory | Error::CacheFull { .. })) => return (blocks, Some(e)),
            Err(_) => pc += 1,
        }
    }
    (blocks, None)
}

#[test]
fn translation_under_allocation_failure_reports_out_of_memory_and_recovers_after_flush() {
    let Some((addr, text)) = busybox() else {
        eprintln!("no /bin/busybox: skipped");
        return;
    };
    let mut full = CodeCache::new(vec![0u8; 8 << 20], 0x1_0000_0000, kernel_config()).unwrap();
    let (all, err) = sweep(&mut full, addr, &text);
    assert_eq!(err, None);
    assert!(all > 1000, "{all} blocks");
    let mut failures = 0;
    for budget in [0, 1, 100, 4 << 10, 64 << 10, 256 << 10] {
        let mut cache = CodeCache::new(vec![0u8; 8 << 20], 0x1_0000_0000, kernel_config()).unwrap();
        let (blocks, err) = with_budget(Some(budget), || sweep(&mut cache, addr, &text));
        if err.is_some() {
            assert_eq!(err, Some(Error::OutOfMemory), "budget {budget}");
            assert!(blocks < all);
            failures += 1;
            // Still consistent: what was translated maps back.
            assert_eq!(cache.stats().blocks, blocks as u64);
        }
        // Flushing under the same failing allocator must not allocate either.
        with_budget(Some(0), || cache.flush());
        let (again, err) = sweep(&mut cache, addr, &text);
        assert_eq!(
            (again, err),
            (all, None),
            "budget {budget}: works after a flush"
        );
    }
    assert!(failures >= 4, "small budgets must fail ({failures})");
}

#[test]
fn the_stale_bitmap_is_allocated_only_when_turned_on_and_failing_leaves_it_off() {
    let mut cache = CodeCache::new(vec![0u8; 8 << 20], 0x1_0000_0000, kernel_config()).unwrap();
    let words = (8 << 20) / 4096;
    let r = with_budget(Some(words * 8 - 1), || cache.track_stale(true));
    assert_eq!(r, Err(Error::OutOfMemory));
    assert!(!cache.tracks_stale() && cache.stale_words().is_empty());
    let Some((addr, text)) = busybox() else {
        eprintln!("no /bin/busybox: skipped");
        return;
    };
    let (blocks, err) = sweep(&mut cache, addr, &text);
    assert!(blocks > 1000 && err.is_none(), "{blocks} {err:?}");
    // Off: invalidating allocates nothing and marks nothing.
    let n = with_budget(Some(0), || cache.invalidate_range(addr, addr + 4096)).unwrap();
    assert!(n > 0);
    let r = with_budget(Some(words * 8), || cache.track_stale(true));
    assert_eq!(r, Ok(()), "exactly the words");
    assert_eq!(cache.stale_words().len(), words);
    let stale = |c: &CodeCache<Vec<u8>>| c.stale_words().iter().filter(|&&w| w != 0).count();
    let marked = stale(&cache);
    assert!(marked > 0, "the fragments invalidated before");
    // On: neither invalidation nor the flush allocates.
    let end = addr + text.len() as u64;
    let more = with_budget(Some(0), || cache.invalidate_range(addr + 4096, end)).unwrap();
    assert!(more > 0);
    assert!(stale(&cache) > marked);
    with_budget(Some(0), || cache.flush());
    assert_eq!(stale(&cache), 0);
    assert!(cache.tracks_stale());
}

#[test]
fn a_cache_whose_buffers_cannot_be_reserved_is_not_created() {
    let arena = vec![0u8; 1 << 20];
    let r = with_budget(Some(0), || {
        CodeCache::new(arena, 0x1_0000_0000, kernel_config())
    });
    assert!(matches!(r, Err(Error::OutOfMemory)));
}

#[test]
fn a_translation_that_grows_no_metadata_vector_allocates_nothing() {
    let Some((addr, text)) = busybox() else {
        eprintln!("no /bin/busybox: skipped");
        return;
    };
    let mut cache = CodeCache::new(vec![0u8; 8 << 20], 0x1_0000_0000, kernel_config()).unwrap();
    let mem = SliceMemory::new(addr, &text);
    let (mut pc, mut quiet) = (addr, 0);
    while pc < addr + text.len() as u64 {
        let (bytes, guest) = (cache.metadata_bytes(), cache.stats().guest_bytes);
        let calls = CALLS.with(|c| c.get());
        PEAK.with(|p| p.set(IN_USE.with(|u| u.get())));
        let r = cache.translate(pc, &mem);
        let allocs = CALLS.with(|c| c.get()) - calls;
        let transient = PEAK.with(|p| p.get()) - IN_USE.with(|u| u.get());
        if cache.metadata_bytes() == bytes {
            assert_eq!((allocs, transient), (0, 0), "at {pc:#x}: {r:?}");
            quiet += 1;
        }
        pc += match r {
            Ok(_) => (cache.stats().guest_bytes - guest).max(1),
            Err(_) => 1,
        };
    }
    assert!(quiet > 1000, "{quiet} translations without growth");
}
