// SPDX-License-Identifier: GPL-2.0

//! Per-CPU statistics, readable from sysfs on any CPU while the owning CPU
//! updates them in its dispatcher. They live from module load to unload and
//! accumulate across enable/disable cycles.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::idt::VECTORS;

/// One CPU's counters.
pub(crate) struct CpuStats {
    pub(crate) blocks_translated: AtomicU64,
    pub(crate) cache_bytes_used: AtomicU64,
    pub(crate) dispatcher_entries: AtomicU64,
    pub(crate) lookup_hits: AtomicU64,
    pub(crate) lookup_misses: AtomicU64,
    pub(crate) pc_rewrites: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) native_fallbacks: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) blocks_invalidated: AtomicU64,
    pub(crate) client_dropped: AtomicU64,
    pub(crate) stack_scans: AtomicU64,
    pub(crate) stack_words_rewritten: AtomicU64,
    pub(crate) native_switches: AtomicU64,
    pub(crate) entries_by_vector: [AtomicU64; VECTORS],
}

impl CpuStats {
    pub(crate) const fn new() -> Self {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        CpuStats {
            blocks_translated: ZERO,
            cache_bytes_used: ZERO,
            dispatcher_entries: ZERO,
            lookup_hits: ZERO,
            lookup_misses: ZERO,
            pc_rewrites: ZERO,
            rollbacks: ZERO,
            flushes: ZERO,
            native_fallbacks: ZERO,
            invalidations: ZERO,
            blocks_invalidated: ZERO,
            client_dropped: ZERO,
            stack_scans: ZERO,
            stack_words_rewritten: ZERO,
            native_switches: ZERO,
            entries_by_vector: [ZERO; VECTORS],
        }
    }
}

/// Every CPU id's counters (empty before load and after unload).
pub(crate) fn all() -> &'static [CpuStats] {
    crate::cpu::table().map_or(&[], |t| t.stats.as_slice())
}

/// The scalar statistics, by sysfs file name.
pub(crate) const SCALARS: [(&str, fn(&CpuStats) -> &AtomicU64); 15] = [
    ("blocks_translated", |s| &s.blocks_translated),
    ("cache_bytes_used", |s| &s.cache_bytes_used),
    ("dispatcher_entries", |s| &s.dispatcher_entries),
    ("lookup_hits", |s| &s.lookup_hits),
    ("lookup_misses", |s| &s.lookup_misses),
    ("pc_rewrites", |s| &s.pc_rewrites),
    ("rollbacks", |s| &s.rollbacks),
    ("flushes", |s| &s.flushes),
    ("native_fallbacks", |s| &s.native_fallbacks),
    ("invalidations", |s| &s.invalidations),
    ("blocks_invalidated", |s| &s.blocks_invalidated),
    ("client_dropped", |s| &s.client_dropped),
    ("stack_scans", |s| &s.stack_scans),
    ("stack_words_rewritten", |s| &s.stack_words_rewritten),
    ("native_switches", |s| &s.native_switches),
];

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Sum of one counter over all CPUs.
pub(crate) fn total(f: impl Fn(&CpuStats) -> &AtomicU64) -> u64 {
    all().iter().map(|s| f(s).load(Relaxed)).sum()
}
