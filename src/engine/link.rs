//! Linking: patching a direct exit's body branch to jump straight to its target fragment,
//! and undoing it.
//!
//! A link rewrites one rel32 field: 4 bytes at a 4-byte-aligned address (the emitter pads
//! patchable branches so), written as one fixed-size copy that compiles to one `mov`, which
//! a CPU running the branch sees whole (the language does not promise the single store;
//! `docs/engine.md`, "Sharing a cache between CPUs"). Serialising the writers is the
//! caller's concern. The code records where an exit is linked (its rel32 points at its stub
//! or at a fragment entry); each fragment heads a singly-linked list, through
//! `next_incoming`, of the exits linked to it. Nothing here allocates.

use crate::cache::{CodeCache, Fragment, FragmentId, NONE};
use crate::error::Error;
use crate::exit::{ExitId, ExitKind};

/// A direct exit's patchable branch: arena offsets of its rel32 field and its stub.
struct Branch {
    target: u64,
    field: u32,
    stub: u32,
}

impl<A: AsRef<[u8]> + AsMut<[u8]>> CodeCache<A> {
    fn patch_branch(&mut self, field: u32, target_off: u32) {
        let rel = i64::from(target_off).wrapping_sub(i64::from(field) + 4) as i32;
        self.write_u32(field as usize, rel as u32);
    }

    fn branch(&self, exit: ExitId) -> Result<Branch, Error> {
        let (_, x) = self.exit(exit.index).ok_or(Error::UnknownExit {
            id: u64::from(exit.index),
        })?;
        match (x.kind, x.patch, x.stub) {
            (ExitKind::Direct { target }, Some(field), Some(stub)) => Ok(Branch {
                target,
                field,
                stub,
            }),
            _ => Err(Error::NotLinkable),
        }
    }

    /// Arena offset the rel32 field at `field` jumps to.
    fn branch_target(&self, field: u32) -> Option<u32> {
        let bytes = self
            .arena()
            .as_ref()
            .get(field as usize..field as usize + 4)?;
        let rel = i32::from_le_bytes(bytes.try_into().ok()?);
        u32::try_from(i64::from(field) + 4 + i64::from(rel)).ok()
    }

    /// The fragment starting at arena offset `start`.
    pub(crate) fn fragment_starting_at(&self, start: u32) -> Option<u32> {
        let i = self.fragments.partition_point(|f| f.start < start);
        let f = self.fragments.get(i)?;
        (f.start == start).then_some(u32::try_from(i).ok()?)
    }

    fn linked(&self, b: &Branch) -> Option<u32> {
        let to = self.branch_target(b.field)?;
        if to == b.stub {
            return None;
        }
        self.fragment_starting_at(self.start_off(to)?)
    }

    /// Links direct exit `exit` to fragment `to`, which must start at the exit's target.
    pub fn link(&mut self, exit: ExitId, to: FragmentId) -> Result<(), Error> {
        let b = self.branch(exit)?;
        let f = self
            .fragments
            .get(to.0 as usize)
            .ok_or(Error::UnknownFragment)?;
        if !f.live() || f.guest_pc != b.target {
            return Err(Error::UnknownFragment);
        }
        if self.linked(&b) == Some(to.0) {
            return Ok(());
        }
        let entry = self.entry_off(f.start);
        self.unlink(exit)?;
        self.patch_branch(b.field, entry);
        let head = self
            .fragments
            .get(to.0 as usize)
            .map_or(NONE, |f| f.incoming);
        if let Some(next) = self.next_incoming.get_mut(exit.index as usize) {
            *next = head;
        }
        if let Some(f) = self.fragments.get_mut(to.0 as usize) {
            f.incoming = exit.index;
        }
        self.stats.links += 1;
        Ok(())
    }

    /// Takes exit `index` off fragment `to`'s incoming list (if it is on it).
    fn remove_incoming(&mut self, to: u32, index: u32) {
        let after = self
            .next_incoming
            .get(index as usize)
            .copied()
            .unwrap_or(NONE);
        let Some(head) = self.fragments.get(to as usize).map(|f| f.incoming) else {
            return;
        };
        if head == index {
            if let Some(f) = self.fragments.get_mut(to as usize) {
                f.incoming = after;
            }
            return;
        }
        // Bounded by the number of exits, so a corrupt list cannot loop forever.
        let mut at = head;
        for _ in 0..self.next_incoming.len() {
            let Some(&next) = self.next_incoming.get(at as usize) else {
                return;
            };
            if next == index {
                if let Some(n) = self.next_incoming.get_mut(at as usize) {
                    *n = after;
                }
                return;
            }
            at = next;
        }
    }

    /// Restores exit `exit`'s branch to its exit stub (no-op when not linked).
    pub fn unlink(&mut self, exit: ExitId) -> Result<(), Error> {
        let b = match self.branch(exit) {
            Err(Error::NotLinkable) => return Ok(()),
            r => r?,
        };
        let Some(to) = self.linked(&b) else {
            return Ok(());
        };
        self.patch_branch(b.field, b.stub);
        self.remove_incoming(to, exit.index);
        if let Some(next) = self.next_incoming.get_mut(exit.index as usize) {
            *next = NONE;
        }
        self.stats.unlinks += 1;
        Ok(())
    }

    /// Whether direct exit `exit` is currently linked, and to which fragment.
    pub fn linked_to(&self, exit: ExitId) -> Option<FragmentId> {
        let b = self.branch(exit).ok()?;
        self.linked(&b).map(FragmentId)
    }

    /// Exits currently linked to fragment `id` (none for an unknown id).
    pub fn incoming(&self, id: FragmentId) -> impl Iterator<Item = ExitId> + '_ {
        let generation = self.generation();
        let mut at = self
            .fragments
            .get(id.0 as usize)
            .map_or(NONE, |f| f.incoming);
        let mut left = self.next_incoming.len();
        core::iter::from_fn(move || {
            if at == NONE || left == 0 {
                return None;
            }
            left -= 1;
            let index = at;
            at = self.next_incoming.get(at as usize).copied().unwrap_or(NONE);
            Some(ExitId { index, generation })
        })
    }

    /// Removes fragment `id` from use: unlinks every exit into it and out of it, and drops
    /// it from the lookup table and the guest-PC index. Its code stays in the arena (and
    /// keeps mapping back through the PC map) until the next flush, so threads still
    /// inside it finish safely; its chunks become stale ([`Self::track_stale`]).
    pub fn invalidate(&mut self, id: FragmentId) -> Result<(), Error> {
        let pc = self.retire(id)?;
        self.remove_guest(pc, id);
        self.stats.blocks_invalidated += 1;
        Ok(())
    }

    /// [`Self::invalidate`] but for the guest-PC index, which the caller updates; returns
    /// the fragment's guest PC.
    fn retire(&mut self, id: FragmentId) -> Result<u64, Error> {
        let f = self
            .fragments
            .get(id.0 as usize)
            .ok_or(Error::UnknownFragment)?;
        let generation = self.generation();
        let (first, pc) = (f.first_exit(), f.guest_pc);
        let n = self.header(f).map_or(0, |h| h.n_exits);
        // Each unlink takes the head off the list; bounded in case of a corrupt list.
        for _ in 0..self.next_incoming.len() {
            let head = self
                .fragments
                .get(id.0 as usize)
                .map_or(NONE, |f| f.incoming);
            if head == NONE {
                break;
            }
            self.unlink(ExitId {
                index: head,
                generation,
            })?;
            if self.fragments.get(id.0 as usize).map(|f| f.incoming) == Some(head) {
                self.remove_incoming(id.0, head);
            }
        }
        for index in first..first.saturating_add(n) {
            self.unlink(ExitId { index, generation })?;
        }
        self.table_remove(pc);
        if let Some(f) = self.fragments.get_mut(id.0 as usize) {
            f.kill();
        }
        self.mark_stale(id.0 as usize);
        Ok(pc)
    }

    /// Invalidates (see [`Self::invalidate`]) every live fragment whose guest code
    /// overlaps `start..end`: guest code there changed, or must not run from the cache.
    /// Returns how many were invalidated. One pass over the fragments near the range and
    /// one compaction of the guest-PC index, whatever the range's size.
    pub fn invalidate_range(&mut self, start: u64, end: u64) -> Result<u32, Error> {
        self.stats.invalidations += 1;
        // A block holds at most MAX_BLOCK_INSNS instructions of at most 15 bytes.
        let reach = (crate::decode::MAX_BLOCK_INSNS * 15) as u64;
        let from = self.guest_position(start.saturating_sub(reach));
        let mut at = from;
        let mut n = 0u32;
        let mut result = Ok(());
        while let Some(&id) = self.by_guest.get(at) {
            let Some(f) = self.fragments.get(id as usize) else {
                break;
            };
            if f.guest_pc >= end {
                break;
            }
            let len = self.header(f).map_or(0, |h| h.guest_len);
            if f.guest_pc.wrapping_add(len) > start {
                if let Err(e) = self.retire(FragmentId(id)) {
                    result = Err(e);
                    break;
                }
                n += 1;
            }
            at += 1;
        }
        // Drop the retired ones from the index in one move of its tail.
        let CodeCache {
            by_guest,
            fragments,
            ..
        } = self;
        let mut kept = from;
        for read in from..at {
            let Some(&id) = by_guest.get(read) else { break };
            if fragments.get(id as usize).is_some_and(Fragment::live) {
                if let Some(slot) = by_guest.get_mut(kept) {
                    *slot = id;
                }
                kept += 1;
            }
        }
        by_guest.drain(kept..at);
        self.stats.blocks_invalidated += u64::from(n);
        result.map(|()| n)
    }
}
