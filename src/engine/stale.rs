//! The stale bitmap (opt-in): one bit per [`STALE_CHUNK`] bytes of the arena, set for
//! every chunk that holds code of an invalidated fragment, cleared by a flush.
//!
//! Fast mode's `iretq` to kernel mode (docs/fast-mode.md 2.4) resumes an interrupted
//! context at its code-cache `rip` only if that address is inside the cache and its chunk
//! is not stale, testing one bit; otherwise it takes the dispatcher's slow path, which maps
//! the address back and re-resolves it. A chunk shared by a dead fragment and a live one
//! is stale: resuming the live one then costs a dispatcher entry, nothing more.
//!
//! What counts as a fragment's code: the bytes its PC map covers, from its first byte
//! (the Fast policy's lookup entry) to the end of its exit stubs, inline lookups
//! included. The alignment padding, literals and metadata stream after them are not code:
//! no `rip` is ever there, so they do not make a live neighbour's chunk stale.

use alloc::vec::Vec;

use crate::cache::{CodeCache, Fragment};
use crate::error::Error;

/// Granularity of the stale bitmap: one bit per `1 << STALE_CHUNK_SHIFT` bytes of the
/// arena, counted from its first byte (`exec_base`).
pub const STALE_CHUNK_SHIFT: u32 = 6;
/// Bytes of the arena per bit of the stale bitmap (64).
pub const STALE_CHUNK: u64 = 1 << STALE_CHUNK_SHIFT;
/// Arena bytes one word of the bitmap covers.
const WORD_BYTES: u64 = STALE_CHUNK * 64;

impl<A: AsRef<[u8]> + AsMut<[u8]>> CodeCache<A> {
    /// Turns the stale bitmap on or off (off by default: precise mode needs none, and it
    /// then costs neither memory nor work). On, it is allocated for the whole arena
    /// (`arena_len / 4096` words rounded up: 16 KiB for 8 MiB) and filled from the
    /// fragments already invalidated, so it is exact whenever it is turned on; already on,
    /// nothing changes. Off frees it. `Err(OutOfMemory)` leaves tracking off.
    ///
    /// A knob of its own rather than part of [`Self::set_shared`]: sharing is about the
    /// lookup table's slots, the bitmap about resuming interrupted contexts in the cache,
    /// and either is wanted without the other (a shared cache whose `iretq`s all go
    /// through the dispatcher; the bitmap of a per-CPU cache); and this one allocates,
    /// so it can fail.
    pub fn track_stale(&mut self, on: bool) -> Result<(), Error> {
        if !on {
            self.stale = Vec::new();
            return Ok(());
        }
        if !self.stale.is_empty() {
            return Ok(());
        }
        let words = (self.arena_len() as u64).div_ceil(WORD_BYTES) as usize;
        let mut stale = Vec::new();
        stale
            .try_reserve_exact(words)
            .map_err(|_| Error::OutOfMemory)?;
        stale.resize(words, 0);
        self.stale = stale;
        for i in 0..self.fragments.len() {
            if self.fragments.get(i).is_some_and(|f| !f.live()) {
                self.mark_stale(i);
            }
        }
        Ok(())
    }

    /// Whether the stale bitmap is kept ([`Self::track_stale`]).
    pub fn tracks_stale(&self) -> bool {
        !self.stale.is_empty()
    }

    /// Whether `cache_pc` lies in a stale chunk: one holding code of a fragment invalidated
    /// since the last flush. `false` outside the arena and when the bitmap is not kept, so
    /// a fast `iretq` asks "inside the cache and not stale" (two tests) and anything else
    /// goes to the dispatcher.
    pub fn stale(&self, cache_pc: u64) -> bool {
        let Some(off) = cache_pc
            .checked_sub(self.exec_base())
            .filter(|&off| off < self.arena_len() as u64)
        else {
            return false;
        };
        let chunk = off >> STALE_CHUNK_SHIFT;
        self.stale
            .get((chunk / 64) as usize)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// The stale bitmap's words (empty when not kept), for code that tests a bit itself:
    /// the chunk of `cache_pc` is `n = (cache_pc - exec_base()) >> STALE_CHUNK_SHIFT`, its
    /// bit is bit `n % 64` of word `n / 64`, i.e. bit `n` of the little-endian bit string
    /// x86's `bt [words], n` reads. The words do not move from [`Self::track_stale`]`(true)`
    /// until it is turned off or the cache dropped (a flush clears them in place), so an
    /// embedder may point generated code at them.
    ///
    /// Concurrent readers (other CPUs running a shared cache): the cache's writer, under
    /// the embedder's lock, only ever sets bits between flushes, with one store per word
    /// (an `or` of the word in the release build; even a store split in bytes would show a
    /// reader old or new bits, never a cleared one), so a reader needs no lock and no
    /// fence: a context interrupted before [`Self::invalidate_range`] returned may still
    /// read a chunk as live (it is inside that transfer, "the invalidation guarantee" of
    /// docs/engine.md), one that reads it after every CPU serialized sees the bit. The
    /// flush clears the words while no CPU runs the cache (the flush's own rule).
    pub fn stale_words(&self) -> &[u64] {
        &self.stale
    }

    /// Sets the bits of every chunk overlapping fragment `index`'s code (see the module
    /// comment). Nothing when the bitmap is not kept.
    pub(crate) fn mark_stale(&mut self, index: usize) {
        if self.stale.is_empty() {
            return;
        }
        let Some(code) = self.fragments.get(index).and_then(|f| self.code_range(f)) else {
            return;
        };
        let first = code.start >> STALE_CHUNK_SHIFT;
        let last = (code.end - 1) >> STALE_CHUNK_SHIFT;
        for word in first / 64..=last / 64 {
            let lo = first.max(word * 64) - word * 64;
            let hi = last.min(word * 64 + 63) - word * 64;
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if let Some(w) = self.stale.get_mut(word as usize) {
                *w |= mask;
            }
        }
    }

    /// Arena offsets of fragment `f`'s code (what its PC map covers); `None` if empty.
    fn code_range(&self, f: &Fragment) -> Option<core::ops::Range<u64>> {
        let start = u64::from(f.start);
        let end = start + u64::from(self.header(f)?.code_end);
        (end > start).then_some(start..end)
    }
}
