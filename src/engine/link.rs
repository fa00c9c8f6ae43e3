//! Linking: patching a direct exit's body branch to jump straight to its target fragment,
//! and undoing it.
//!
//! A link rewrites one rel32 field (4 bytes, written at once). Linking while other CPUs
//! run the fragment is the caller's concern (the kernel glue patches with the other CPUs
//! quiesced or relies on the aligned-store atomicity it guarantees).

use crate::cache::{CodeCache, FragmentId, LinkStub};
use crate::error::Error;
use crate::exit::{ExitId, ExitKind};

impl<A: AsRef<[u8]> + AsMut<[u8]>> CodeCache<A> {
    fn patch_branch(&mut self, field: u32, target_off: u32) {
        let rel = i64::from(target_off).wrapping_sub(i64::from(field) + 4) as i32;
        self.write_u32(field as usize, rel as u32);
    }

    fn linkstub(&self, exit: ExitId) -> Result<&LinkStub, Error> {
        let id = u64::from(exit.index);
        self.exits
            .get(exit.index as usize)
            .ok_or(Error::UnknownExit { id })
    }

    /// Links direct exit `exit` to fragment `to`, which must start at the exit's target.
    pub fn link(&mut self, exit: ExitId, to: FragmentId) -> Result<(), Error> {
        let x = self.linkstub(exit)?;
        let (ExitKind::Direct { target }, Some(field)) = (x.kind, x.patch) else {
            return Err(Error::NotLinkable);
        };
        let f = self
            .fragments
            .get(to.0 as usize)
            .ok_or(Error::UnknownFragment)?;
        if !f.live || f.guest_pc != target {
            return Err(Error::UnknownFragment);
        }
        if x.linked == Some(to.0) {
            return Ok(());
        }
        let start = f.start;
        if let Some(f) = self.fragments.get_mut(to.0 as usize) {
            f.incoming.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
        }
        self.unlink(exit)?;
        self.patch_branch(field, start);
        if let Some(x) = self.exits.get_mut(exit.index as usize) {
            x.linked = Some(to.0);
        }
        if let Some(f) = self.fragments.get_mut(to.0 as usize) {
            f.incoming.push(exit.index);
        }
        self.stats.links += 1;
        Ok(())
    }

    /// Restores exit `exit`'s branch to its exit stub (no-op when not linked).
    pub fn unlink(&mut self, exit: ExitId) -> Result<(), Error> {
        let x = self.linkstub(exit)?;
        let (Some(to), Some(field), Some(stub)) = (x.linked, x.patch, x.stub) else {
            return Ok(());
        };
        self.patch_branch(field, stub);
        if let Some(x) = self.exits.get_mut(exit.index as usize) {
            x.linked = None;
        }
        if let Some(f) = self.fragments.get_mut(to as usize) {
            f.incoming.retain(|&i| i != exit.index);
        }
        self.stats.unlinks += 1;
        Ok(())
    }

    /// Whether direct exit `exit` is currently linked, and to which fragment.
    pub fn linked_to(&self, exit: ExitId) -> Option<FragmentId> {
        self.exits.get(exit.index as usize)?.linked.map(FragmentId)
    }

    /// Exits currently linked to fragment `id` (none for an unknown id).
    pub fn incoming(&self, id: FragmentId) -> impl Iterator<Item = ExitId> + '_ {
        let generation = self.generation();
        self.fragments
            .get(id.0 as usize)
            .map_or(&[][..], |f| &f.incoming[..])
            .iter()
            .map(move |&index| ExitId { index, generation })
    }

    /// Removes fragment `id` from use: unlinks every exit into it and out of it, and drops
    /// it from the lookup table and the guest-PC index. Its code stays in the arena (and
    /// keeps mapping back through the PC map) until the next flush, so threads still
    /// inside it finish safely.
    pub fn invalidate(&mut self, id: FragmentId) -> Result<(), Error> {
        let f = self
            .fragments
            .get(id.0 as usize)
            .ok_or(Error::UnknownFragment)?;
        let generation = self.generation();
        let (first, n, pc) = (f.first_exit, f.n_exits, f.guest_pc);
        while let Some(index) = self
            .fragments
            .get_mut(id.0 as usize)
            .and_then(|f| f.incoming.pop())
        {
            self.unlink(ExitId { index, generation })?;
        }
        for index in first..first.saturating_add(n) {
            self.unlink(ExitId { index, generation })?;
        }
        self.table_remove(pc);
        self.remove_guest(pc, id);
        if let Some(f) = self.fragments.get_mut(id.0 as usize) {
            f.live = false;
        }
        Ok(())
    }
}
