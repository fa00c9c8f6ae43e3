//! Instrumentation clients: what a cache records about the guest blocks it translates and
//! runs, kept in a [`BlockTable`] that outlives flushes and may be shared by every CPU's
//! cache.
//!
//! - [`ClientKind::Coverage`] records each block when it is translated (a block is
//!   translated only when execution reaches it); translated code is unchanged.
//! - [`ClientKind::Count`] starts each block's translation with a flag-free increment of
//!   the fragment's counter ([`Client::counters`]); [`crate::CodeCache::harvest`] folds the
//!   counters into the table. See `docs/clients.md` for what the recorded ranges mean.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Which client a cache runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Blocks executed.
    Coverage,
    /// Blocks executed and how many times.
    Count,
}

/// A client and where it keeps its data.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub kind: ClientKind,
    /// The table the ranges go to.
    pub table: BlockTable<'static>,
    /// Count client: one execution counter per fragment, which translated code increments
    /// at its runtime address. Outside the code cache, and writable where translated code
    /// runs. A cache with more fragments than counters is full.
    pub counters: &'static [AtomicU64],
}

/// One entry of a [`BlockTable`]: a packed (start, length) key, 0 while free, and a count.
#[derive(Debug)]
pub struct BlockSlot {
    key: AtomicU64,
    count: AtomicU64,
}

impl BlockSlot {
    /// A free slot.
    pub const EMPTY: BlockSlot = BlockSlot::new();

    /// A free slot.
    pub const fn new() -> Self {
        BlockSlot {
            key: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Default for BlockSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// A range of guest code recorded by a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockRange {
    /// Guest address of the first instruction.
    pub start: u64,
    /// Length in bytes.
    pub len: u32,
    /// Executions (count client; 0 under coverage).
    pub count: u64,
}

/// Probes before an insertion gives up: keeps a nearly full table's inserts short.
const MAX_PROBES: usize = 128;

/// A fixed-capacity, lock-free set of guest ranges with a count each, over memory the
/// embedder provides: any number of caches (one per CPU) insert and add concurrently.
///
/// # Invariants
/// A slot's key, once set, changes only through [`BlockTable::clear`]; keys are unique.
#[derive(Clone, Copy, Debug)]
pub struct BlockTable<'a> {
    slots: &'a [BlockSlot],
}

/// The key of (`start`, `len`): the low 48 bits of a canonical address and a 16-bit length
/// (a block is at most 64 instructions, under 1 KiB). `None` when it cannot be packed.
fn pack(start: u64, len: u32) -> Option<u64> {
    let top = (start as i64) >> 47;
    if len == 0 || len > 0xffff || (top != 0 && top != -1) {
        return None;
    }
    Some((start & 0xffff_ffff_ffff) | u64::from(len) << 48)
}

fn unpack(key: u64) -> (u64, u32) {
    let start = (((key << 16) as i64) >> 16) as u64;
    (start, (key >> 48) as u32)
}

impl<'a> BlockTable<'a> {
    /// A table over `slots` (all free, or as a previous table left them).
    pub fn new(slots: &'a [BlockSlot]) -> Self {
        BlockTable { slots }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The slot of (`start`, `len`), inserted if new; `None` when the table has no room
    /// for it (or the range cannot be recorded).
    pub fn insert(&self, start: u64, len: u32) -> Option<u32> {
        let key = pack(start, len)?;
        let n = self.slots.len() as u64;
        if n == 0 {
            return None;
        }
        let home = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17;
        for probe in 0..MAX_PROBES.min(self.slots.len()) {
            let i = (home.wrapping_add(probe as u64) % n) as usize;
            let slot = self.slots.get(i)?;
            let found = match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                Ok(_) => true,
                Err(k) => k == key,
            };
            if found {
                return u32::try_from(i).ok();
            }
        }
        None
    }

    /// Adds `n` (wrapping) to slot `slot`'s count.
    pub fn add(&self, slot: u32, n: u64) {
        if let Some(s) = self.slots.get(slot as usize) {
            s.count.fetch_add(n, Relaxed);
        }
    }

    /// Frees every slot. Only while no cache refers to the table.
    pub fn clear(&self) {
        for s in self.slots {
            s.key.store(0, Relaxed);
            s.count.store(0, Relaxed);
        }
    }

    /// The recorded ranges, in slot order.
    pub fn ranges(&self) -> impl Iterator<Item = BlockRange> + 'a {
        self.slots.iter().filter_map(|s| {
            let key = s.key.load(Relaxed);
            (key != 0).then(|| {
                let (start, len) = unpack(key);
                BlockRange {
                    start,
                    len,
                    count: s.count.load(Relaxed),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn slots(n: usize) -> Vec<BlockSlot> {
        (0..n).map(|_| BlockSlot::new()).collect()
    }

    #[test]
    fn keys_round_trip_kernel_and_user_addresses() {
        for (start, len) in [
            (0xffff_ffff_8100_0000u64, 17u32),
            (0x40_1000, 1),
            (1, 0xffff),
        ] {
            let key = pack(start, len).expect("packable");
            assert_eq!(unpack(key), (start, len));
        }
        assert_eq!(pack(0x8000_0000_0000, 4), None, "non-canonical");
        assert_eq!(pack(0x1000, 0), None);
        assert_eq!(pack(0x1000, 0x1_0000), None);
    }

    #[test]
    fn insert_finds_the_same_slot_and_counts_add_up() {
        let s = slots(64);
        let t = BlockTable::new(&s);
        let a = t.insert(0xffff_ffff_8100_0010, 12).expect("room");
        let b = t.insert(0xffff_ffff_8100_0010, 7).expect("room");
        assert_ne!(a, b, "same start, other length: another range");
        assert_eq!(t.insert(0xffff_ffff_8100_0010, 12), Some(a));
        t.add(a, 5);
        t.add(a, 3);
        let mut r: Vec<_> = t.ranges().collect();
        r.sort();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].count, 8);
        assert_eq!(r[0].count, 0);
        t.clear();
        assert_eq!(t.ranges().count(), 0);
    }

    #[test]
    fn a_full_table_refuses_new_ranges_and_keeps_old_ones() {
        let s = slots(8);
        let t = BlockTable::new(&s);
        for i in 0..8 {
            assert!(t.insert(0x1000 + i * 16, 4).is_some());
        }
        assert_eq!(t.insert(0x9000, 4), None);
        assert!(t.insert(0x1000, 4).is_some());
        assert_eq!(t.ranges().count(), 8);
    }
}
