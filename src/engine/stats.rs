//! Engine statistics: plain counters, so the kernel can keep one copy per CPU and sum them.

/// Counters of one code cache.
///
/// # Invariants
/// Every field only grows; a flush increments `flushes` and keeps the other counters;
/// `hits + misses == lookups`; `blocks <= misses` (a miss whose translation fails adds no
/// block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Fragments (translated basic blocks) built.
    pub blocks: u64,
    /// Guest instructions translated.
    pub guest_insns: u64,
    /// Guest code bytes translated.
    pub guest_bytes: u64,
    /// Code-cache bytes emitted for those fragments (bodies, exit stubs, literals).
    pub cache_bytes: u64,
    /// Exits patched to jump straight to their target fragment.
    pub links: u64,
    /// Exits restored to their exit stub.
    pub unlinks: u64,
    /// Guest-PC → fragment lookups made by the dispatcher (direct and indirect misses).
    pub lookups: u64,
    /// Dispatcher lookups that found an existing fragment.
    pub hits: u64,
    /// Dispatcher lookups that had to translate a new fragment.
    pub misses: u64,
    /// Flushes of the whole cache.
    pub flushes: u64,
    /// Dispatcher steps ([`crate::CodeCache::dispatch`]) that left a guest PC to run
    /// natively because it could not be translated.
    pub native_fallbacks: u64,
    /// Range invalidations ([`crate::CodeCache::invalidate_range`]): guest code changed.
    pub invalidations: u64,
    /// Fragments invalidated (by a range or one at a time).
    pub blocks_invalidated: u64,
    /// Ranges a client could not record: its block table had no room.
    pub client_dropped: u64,
    /// Dispatcher steps whose target was a code-cache return site (Fast policy: a
    /// Transparent site's `ret`, or an indirect branch, that popped or loaded a Fast
    /// caller's return address), resumed at its guest return address.
    pub site_resumes: u64,
    /// Lookup-table inserts not made in a shared cache: both of the target's slots had
    /// held another guest PC since the flush ([`crate::CodeCache::set_shared`]).
    pub table_refusals: u64,
}

impl Stats {
    /// Adds `other` into `self` (e.g. summing per-CPU copies).
    pub fn accumulate(&mut self, other: &Stats) {
        self.blocks = self.blocks.wrapping_add(other.blocks);
        self.guest_insns = self.guest_insns.wrapping_add(other.guest_insns);
        self.guest_bytes = self.guest_bytes.wrapping_add(other.guest_bytes);
        self.cache_bytes = self.cache_bytes.wrapping_add(other.cache_bytes);
        self.links = self.links.wrapping_add(other.links);
        self.unlinks = self.unlinks.wrapping_add(other.unlinks);
        self.lookups = self.lookups.wrapping_add(other.lookups);
        self.hits = self.hits.wrapping_add(other.hits);
        self.misses = self.misses.wrapping_add(other.misses);
        self.flushes = self.flushes.wrapping_add(other.flushes);
        self.native_fallbacks = self.native_fallbacks.wrapping_add(other.native_fallbacks);
        self.invalidations = self.invalidations.wrapping_add(other.invalidations);
        self.blocks_invalidated = self
            .blocks_invalidated
            .wrapping_add(other.blocks_invalidated);
        self.client_dropped = self.client_dropped.wrapping_add(other.client_dropped);
        self.site_resumes = self.site_resumes.wrapping_add(other.site_resumes);
        self.table_refusals = self.table_refusals.wrapping_add(other.table_refusals);
    }
}
