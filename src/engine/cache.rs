//! The code cache: a caller-provided arena holding the dispatcher slot, the inline lookup
//! table and the fragments, plus the fragments' metadata.
//!
//! Arena layout (offsets from the arena start, runtime address `exec_base`):
//! ```text
//! 0                 8-byte dispatcher slot (absolute address, for `jmp [rip + slot]`)
//! 64                lookup table keys: `slots` negated guest PCs (u64)
//! 64 + 8*slots      lookup table values: `slots` cache PCs (u64)
//! 64 + 16*slots     fragments, each 8-byte aligned: (Fast: lookup entry), body, exit
//!                   stubs, literals
//! ```

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use crate::client::{Client, ClientKind};
use crate::config::Config;
use crate::emit::Scratch;
use crate::error::Error;
use crate::exit::{ExitId, ExitKind, ExitReason};
use crate::memory::GuestMemory;
use crate::meta::{self, Exit, Header, Prev, Shape, Stream};
use crate::pcmap::{EntryKind, PcMapping, RipSource, Rollback};
use crate::stats::Stats;
use crate::translate::{self, Built, Layout, Sites};

/// Offset of the dispatcher slot in the arena.
pub const DISPATCHER_SLOT_OFFSET: usize = 0;
/// Offset of the lookup table in the arena.
pub const TABLE_OFFSET: usize = 64;
/// Largest arena: every fragment must reach the table and slot RIP-relative.
pub const MAX_ARENA: usize = 1 << 30;
/// Fragment alignment: keeps literals 8-byte aligned without wasting more.
const FRAGMENT_ALIGN: u32 = 8;
/// What released code-cache memory is filled with: `int3`.
pub(crate) const INT3: u8 = 0xcc;

/// Identifies a fragment until the next flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentId(pub u32);

/// No fragment / no exit (end of an incoming list).
pub(crate) const NONE: u32 = u32::MAX;
/// Bit of `Fragment::first_exit` set once the fragment is invalidated (exit ids are 31-bit).
const DEAD: u32 = 1 << 31;

/// Heap record of one fragment; the rest of its metadata (PC map, exits, return sites) is
/// the stream at arena offset `meta` (see `meta.rs`).
///
/// # Invariants
/// `start` is within the arena's code area; `meta` follows the fragment's literals; exits
/// `first_exit .. first_exit + n_exits` (stream header) belong to this fragment; `incoming`
/// heads the list, threaded through `CodeCache::next_incoming`, of exits linked to it.
pub(crate) struct Fragment {
    pub guest_pc: u64,
    /// Arena offset of the first byte.
    pub start: u32,
    /// Arena offset of the metadata stream.
    pub meta: u32,
    /// Id of the first exit; [`DEAD`] set once invalidated (no longer found by guest PC,
    /// its code still maps back).
    pub first_exit: u32,
    /// First exit linked to this fragment, or [`NONE`].
    pub incoming: u32,
    /// The client's block-table slot of this fragment's range, or [`NONE`].
    pub slot: u32,
    /// Count client: index of the execution counter, or [`NONE`].
    pub counter: u32,
    /// Count client: fragment-relative code offset from which an execution is counted.
    pub commit: u32,
}

impl Fragment {
    pub fn live(&self) -> bool {
        self.first_exit & DEAD == 0
    }

    pub fn first_exit(&self) -> u32 {
        self.first_exit & !DEAD
    }

    pub fn kill(&mut self) {
        self.first_exit |= DEAD;
    }
}

/// An address inside a cache's arena, classified by [`CodeCache::classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheWord {
    /// A code-cache return address a translated `call` pushed (Fast policy): the guest
    /// return address it stands for.
    ReturnSite(u64),
    /// Inside a fragment's code (e.g. the `ip` of an interrupted frame): the guest
    /// instruction and the rollback to its precise state.
    Code(PcMapping),
    /// The dispatcher slot, the lookup table, literals, metadata or unused space: not a
    /// code address.
    Data,
}

/// A code cache over arena `A` (the writable view of memory that executes at `exec_base`).
///
/// # Invariants
/// The arena's dispatcher slot and lookup table are initialised; every lookup-table entry
/// either is empty (its guest PC's low bits differ from its index) or maps a live fragment's
/// guest PC to its lookup entry (its first byte); in a shared cache each slot's value has
/// been, since the last flush, 0 or lookup entries of fragments of one guest PC;
/// `fragments` are sorted by `start` and by first exit; every linked body branch jumps to
/// the entry of a live fragment whose incoming list holds it, every other direct branch
/// jumps to its own exit stub (so the code itself records the links); the stale bitmap,
/// when kept, has exactly the bits of the chunks overlapping invalidated fragments' code.
pub struct CodeCache<A> {
    arena: A,
    arena_len: usize,
    exec_base: u64,
    cfg: Config,
    /// Bytes of the lookup entry before each fragment's entry (Fast policy, else 0).
    entry_skip: u32,
    code_start: u32,
    cursor: u32,
    generation: u32,
    pub(crate) fragments: Vec<Fragment>,
    /// Live fragments' ids sorted by guest PC (one per guest PC): exact lookups and the
    /// predecessor query of `cache_pc_for` by binary search.
    pub(crate) by_guest: Vec<u32>,
    /// Per exit: the next exit on the incoming list it is on ([`NONE`] ends it).
    pub(crate) next_incoming: Vec<u32>,
    /// Distinct rollback shapes of the PC maps.
    shapes: Vec<Shape>,
    pub(crate) stats: Stats,
    scratch: Scratch,
    client: Option<Client>,
    /// Count client: counters handed out since the last flush.
    counters_used: u32,
    /// Executed by several CPUs while it changes ([`Self::set_shared`]).
    shared: bool,
    /// The stale bitmap's words, empty when not kept (`stale.rs`).
    pub(crate) stale: Vec<u64>,
}

impl<A: AsRef<[u8]> + AsMut<[u8]>> CodeCache<A> {
    /// A cache over `arena`, whose first byte executes at `exec_base`. Initialises the
    /// dispatcher slot and the lookup table.
    pub fn new(arena: A, exec_base: u64, cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        let arena_len = arena.as_ref().len();
        let code_start = TABLE_OFFSET + cfg.ibl.table_bytes();
        if arena_len > MAX_ARENA || arena_len < code_start + 64 {
            return Err(Error::ArenaSize { len: arena_len });
        }
        let code_start =
            u32::try_from(code_start).map_err(|_| Error::ArenaSize { len: arena_len })?;
        let table = exec_base.wrapping_add(TABLE_OFFSET as u64);
        let mut cache = CodeCache {
            arena,
            arena_len,
            exec_base,
            cfg,
            entry_skip: crate::ibl::ibl_entry_len(&cfg, table),
            code_start,
            cursor: code_start,
            generation: 0,
            fragments: Vec::new(),
            by_guest: Vec::new(),
            next_incoming: Vec::new(),
            shapes: Vec::new(),
            stats: Stats::default(),
            scratch: Scratch::new(),
            client: None,
            counters_used: 0,
            shared: false,
            stale: Vec::new(),
        };
        cache.scratch.reserve()?;
        crate::decode::warm_up(&mut cache.scratch.encoded);
        cache.write_u64(DISPATCHER_SLOT_OFFSET, cfg.dispatcher);
        cache.clear_table();
        Ok(cache)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The arena (to inspect emitted code; writes go through the cache's methods only).
    pub fn arena(&self) -> &A {
        &self.arena
    }

    /// Runtime address of the arena's first byte.
    pub fn exec_base(&self) -> u64 {
        self.exec_base
    }

    /// Statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes of the arena.
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }

    /// Bytes of the code area in use.
    pub fn used(&self) -> u32 {
        self.cursor - self.code_start
    }

    /// Heap bytes the cache holds: every structure's capacity times its element size
    /// (fragment records, exits' incoming links, the guest-PC index, rollback shapes,
    /// translation buffers, the stale bitmap). Not counted: iced's one-time tables (see
    /// `docs/engine.md`).
    pub fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        self.fragments.capacity() * size_of::<Fragment>()
            + self.by_guest.capacity() * 4
            + self.next_incoming.capacity() * 4
            + self.shapes.capacity() * size_of::<Shape>()
            + self.scratch.heap_bytes()
            + self.stale.capacity() * 8
    }

    /// Bytes of the code area.
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.arena_len)
            .unwrap_or(u32::MAX)
            .saturating_sub(self.code_start)
    }

    /// Whether `cache_pc` is inside the code area (where fragments live).
    pub fn contains(&self, cache_pc: u64) -> bool {
        cache_pc
            .checked_sub(self.exec_base)
            .is_some_and(|off| off >= u64::from(self.code_start) && off < u64::from(self.cursor))
    }

    pub(crate) fn write_u64(&mut self, off: usize, value: u64) {
        self.store(off, value.to_le_bytes());
    }

    pub(crate) fn write_u32(&mut self, off: usize, value: u32) {
        self.store(off, value.to_le_bytes());
    }

    /// Writes `bytes` at arena offset `off` as one fixed-size copy, which compiles to one
    /// `mov` (a `memcpy` of the slice's length need not): CPUs running a shared cache read
    /// table words and branch fields while they are written (`docs/engine.md`, "Sharing a
    /// cache between CPUs"). Outside the arena: nothing.
    fn store<const N: usize>(&mut self, off: usize, bytes: [u8; N]) {
        let field = off
            .checked_add(N)
            .and_then(|end| self.arena.as_mut().get_mut(off..end));
        if let Some(dst) = field.and_then(|f| <&mut [u8; N]>::try_from(f).ok()) {
            *dst = bytes;
        }
    }

    fn read_u64(&self, off: usize) -> Option<u64> {
        let bytes = self.arena.as_ref().get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Arena offsets of the key and the value of table slot `slot`.
    fn table_offsets(&self, slot: u64) -> (usize, usize) {
        let key = TABLE_OFFSET + slot as usize * 8;
        (key, key + self.cfg.ibl.slots() as usize * 8)
    }

    /// The first slot a lookup of `guest_pc` probes; the second is the next one.
    fn table_index(&self, guest_pc: u64) -> u64 {
        guest_pc & u64::from(self.cfg.ibl.entries() - 1)
    }

    /// The key of empty slot `slot`, which no lookup probing it can match: lookups probe
    /// `slot` for targets whose low bits are `slot` or `slot - 1`, and this is the negation
    /// of `slot + 2` (keys are negated so that the probe's `key + target` is zero on a
    /// match).
    fn empty_key(&self, slot: u64) -> u64 {
        (slot.wrapping_add(2) & u64::from(self.cfg.ibl.entries() - 1)).wrapping_neg()
    }

    fn clear_table(&mut self) {
        for slot in 0..u64::from(self.cfg.ibl.slots()) {
            let (key, value) = self.table_offsets(slot);
            self.write_u64(key, self.empty_key(slot));
            self.write_u64(value, 0);
        }
    }

    fn key_is(&self, slot: u64, key: u64) -> bool {
        self.read_u64(self.table_offsets(slot).0) == Some(key)
    }

    /// Points a table slot for `guest_pc` at `cache_pc`: its first slot when that is free
    /// or already its own, else the second (evicting what was there), so two hot targets
    /// with the same low bits both hit. The key is invalidated first and written last, so
    /// a lookup that reads the key after these stores sees either a miss or the new pair
    /// (x86 keeps stores in order, and loads). In a shared cache a lookup on another CPU
    /// may have read the old key just before and read the value just after: a slot is
    /// then only ever given to one guest PC until the next flush ([`Self::set_shared`]).
    fn table_insert(&mut self, guest_pc: u64, cache_pc: u64) {
        let first = self.table_index(guest_pc);
        let mine = guest_pc.wrapping_neg();
        let slot = if self.shared {
            let Some(slot) = [first, first + 1]
                .into_iter()
                .find(|&slot| self.slot_holds_only(slot, guest_pc))
            else {
                self.stats.table_refusals += 1;
                return;
            };
            slot
        } else if self.key_is(first, mine) || self.key_is(first, self.empty_key(first)) {
            first
        } else {
            first + 1
        };
        let (key, value) = self.table_offsets(slot);
        if self.key_is(slot, mine) && self.read_u64(value) == Some(cache_pc) {
            // Already there: rewriting it would make concurrent lookups miss for nothing.
            return;
        }
        self.write_u64(key, self.empty_key(slot));
        self.write_u64(value, cache_pc);
        self.write_u64(key, mine);
    }

    /// Whether table slot `slot` has held nothing but translations of `guest_pc` since the
    /// last flush: its value is unused (0) or the lookup entry of a fragment translated at
    /// `guest_pc` (invalidated ones included: their records stay until the flush).
    fn slot_holds_only(&self, slot: u64, guest_pc: u64) -> bool {
        let (_, value) = self.table_offsets(slot);
        match self.read_u64(value) {
            Some(0) => true,
            Some(entry) => entry
                .checked_sub(self.exec_base)
                .and_then(|off| u32::try_from(off).ok())
                .and_then(|start| self.fragment_starting_at(start))
                .and_then(|id| self.fragments.get(id as usize))
                .is_some_and(|f| f.guest_pc == guest_pc),
            None => false,
        }
    }

    /// Declares whether CPUs (threads) execute this cache's code while it is changed: one
    /// cache shared by several CPUs, every change made under the embedder's lock
    /// (`docs/engine.md`, "Sharing a cache between CPUs"). Shared, a lookup-table slot is
    /// only ever pointed at translations of the first guest PC it was given after a flush:
    /// an inline lookup reads a slot's key, then its value, and another CPU may change the
    /// slot in between; had the value become another target's, that lookup would jump to
    /// the wrong code. A target whose two slots belong to others goes through the
    /// dispatcher (counted in [`Stats::table_refusals`]) until the next flush. Not shared
    /// (the default), slots are reused: a CPU interrupted inside a lookup of its own cache
    /// is rolled back before the interrupt handler's dispatcher can change the table.
    pub fn set_shared(&mut self, shared: bool) {
        self.shared = shared;
    }

    /// Whether the cache is shared ([`Self::set_shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether no inline lookup can hit: every table slot holds its empty key.
    pub fn lookup_table_is_empty(&self) -> bool {
        (0..u64::from(self.cfg.ibl.slots())).all(|slot| self.key_is(slot, self.empty_key(slot)))
    }

    /// Drops `guest_pc` from the inline lookup table (both its slots), so that indirect
    /// branches to it go through the dispatcher.
    pub fn table_remove(&mut self, guest_pc: u64) {
        let first = self.table_index(guest_pc);
        for slot in [first, first + 1] {
            if self.key_is(slot, guest_pc.wrapping_neg()) {
                let (key, _) = self.table_offsets(slot);
                self.write_u64(key, self.empty_key(slot));
            }
        }
    }

    /// Number of flushes so far (the generation of current exit ids).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn guest_pc_of(&self, id: u32) -> u64 {
        self.fragments
            .get(id as usize)
            .map_or(u64::MAX, |f| f.guest_pc)
    }

    /// Position of guest `pc` in `by_guest`: `Ok` if present, `Err` where to insert it.
    fn guest_index(&self, pc: u64) -> Result<usize, usize> {
        self.by_guest
            .binary_search_by(|&id| self.guest_pc_of(id).cmp(&pc))
    }

    pub(crate) fn remove_guest(&mut self, pc: u64, id: FragmentId) {
        if let Ok(i) = self.guest_index(pc) {
            if self.by_guest.get(i) == Some(&id.0) {
                self.by_guest.remove(i);
            }
        }
    }

    /// Runtime address of a fragment's entry: where the dispatcher and linked branches
    /// enter it.
    pub fn fragment_entry(&self, id: FragmentId) -> Result<u64, Error> {
        self.lookup_entry(id)
            .map(|start| start.wrapping_add(u64::from(self.entry_skip)))
    }

    /// Runtime address the inline lookup table holds for a fragment, its first byte: under
    /// the Fast policy its lookup entry (which a hit jumps to with the lookup's spilled
    /// registers still on the stack, and which falls through to
    /// [`Self::fragment_entry`]), under the Transparent policy its entry.
    pub fn lookup_entry(&self, id: FragmentId) -> Result<u64, Error> {
        let f = self
            .fragments
            .get(id.0 as usize)
            .ok_or(Error::UnknownFragment)?;
        Ok(self.exec_base.wrapping_add(u64::from(f.start)))
    }

    /// Arena offset of the entry of a fragment starting at arena offset `start`.
    pub(crate) fn entry_off(&self, start: u32) -> u32 {
        start.saturating_add(self.entry_skip)
    }

    /// Arena offset of the start of a fragment whose entry is at arena offset `entry`.
    pub(crate) fn start_off(&self, entry: u32) -> Option<u32> {
        entry.checked_sub(self.entry_skip)
    }

    /// Position in the guest-PC index of the first fragment at or after guest `pc`.
    pub(crate) fn guest_position(&self, pc: u64) -> usize {
        self.guest_index(pc).unwrap_or_else(|i| i)
    }

    /// The live fragment starting at guest `pc`, if translated.
    pub fn lookup(&self, pc: u64) -> Option<FragmentId> {
        let i = self.guest_index(pc).ok()?;
        self.by_guest.get(i).map(|&id| FragmentId(id))
    }

    /// The fragment for guest `pc`, translating the block if needed (a dispatcher lookup,
    /// counted in [`Stats`]). On `CacheFull` or `OutOfMemory` nothing changed: flush and
    /// retry. A new block gets no Transparent sites: in a Fast cache whose embedder names
    /// some, translate through [`Self::dispatch`].
    pub fn translate(&mut self, pc: u64, mem: &dyn GuestMemory) -> Result<FragmentId, Error> {
        self.translate_with(pc, mem, Sites::NONE)
    }

    /// [`Self::translate`], a new block with the Transparent sites `sites`.
    pub(crate) fn translate_with(
        &mut self,
        pc: u64,
        mem: &dyn GuestMemory,
        sites: Sites<'_>,
    ) -> Result<FragmentId, Error> {
        self.stats.lookups += 1;
        if let Some(id) = self.lookup(pc) {
            self.stats.hits += 1;
            // The lookup table is direct-mapped: a colliding PC may have evicted this one.
            // Putting it back keeps a hot indirect target out of the dispatcher next time.
            let entry = self.lookup_entry(id)?;
            self.table_insert(pc, entry);
            return Ok(id);
        }
        self.stats.misses += 1;
        let start = self
            .cursor
            .checked_add(FRAGMENT_ALIGN - 1)
            .map(|c| c & !(FRAGMENT_ALIGN - 1))
            .unwrap_or(u32::MAX);
        let first_exit = u32::try_from(self.next_incoming.len()).map_err(|_| Error::CacheFull {
            needed: 0,
            available: 0,
        })?;
        let counter = self.next_counter()?;
        let layout = Layout {
            base: self.exec_base.wrapping_add(u64::from(start)),
            table: self.exec_base.wrapping_add(TABLE_OFFSET as u64),
            dispatcher_slot: self.exec_base.wrapping_add(DISPATCHER_SLOT_OFFSET as u64),
            first_exit,
            counter: counter.map(|(_, addr)| addr),
            through_jcc: self.cfg.through_jcc && self.client.is_none(),
        };
        self.scratch.reserve()?;
        let built = translate::build(mem, pc, &self.cfg, layout, sites, &mut self.scratch)?;
        let mut stream = core::mem::take(&mut self.scratch.meta);
        let result = meta::encode(pc, &built, &mut self.shapes, &mut stream).and_then(|()| {
            let counter = counter.map_or(NONE, |(i, _)| i);
            self.place(pc, start, first_exit, counter, &built, &stream)
        });
        self.scratch.meta = stream;
        self.scratch.code = built.bytes;
        self.scratch.entries = built.entries;
        self.scratch.exits = built.exits;
        self.scratch.return_sites = built.return_sites;
        result
    }

    /// Copies a built fragment and its metadata stream to arena offset `start` and
    /// records it.
    fn place(
        &mut self,
        pc: u64,
        start: u32,
        first_exit: u32,
        counter: u32,
        built: &Built,
        stream: &[u8],
    ) -> Result<FragmentId, Error> {
        let code = u32::try_from(built.bytes.len()).unwrap_or(u32::MAX);
        let size = code.saturating_add(u32::try_from(stream.len()).unwrap_or(u32::MAX));
        let arena_len = u32::try_from(self.arena_len).unwrap_or(u32::MAX);
        if size > self.capacity() {
            return Err(Error::FragmentTooLarge {
                needed: size,
                capacity: self.capacity(),
            });
        }
        let full = Error::CacheFull {
            needed: size,
            available: arena_len.saturating_sub(self.cursor),
        };
        let end = match start.checked_add(size) {
            Some(end) if end <= arena_len => end,
            _ => return Err(full),
        };
        let id = u32::try_from(self.fragments.len()).map_err(|_| full)?;
        let at = match self.guest_index(pc) {
            Ok(_) => return Err(Error::UnknownFragment),
            Err(at) => at,
        };
        // Every allocation first: on failure nothing has changed. Pools grow by a quarter
        // (not doubling), so their spare capacity stays small next to the cache.
        grow(&mut self.next_incoming, built.exits.len())?;
        grow(&mut self.fragments, 1)?;
        grow(&mut self.by_guest, 1)?;

        let dst = self
            .arena
            .as_mut()
            .get_mut(start as usize..end as usize)
            .ok_or(full)?;
        let (code_dst, meta_dst) = dst.split_at_mut(code as usize);
        code_dst.copy_from_slice(&built.bytes);
        meta_dst.copy_from_slice(stream);
        for _ in &built.exits {
            self.next_incoming.push(NONE);
        }
        let slot = self.record(pc, built.guest_len);
        let commit = built.commit.unwrap_or(0);
        if counter != NONE {
            self.counters_used += 1;
        }
        self.fragments.push(Fragment {
            guest_pc: pc,
            start,
            meta: start.saturating_add(code),
            first_exit,
            incoming: NONE,
            slot,
            counter,
            commit,
        });
        self.by_guest.insert(at, id);
        self.cursor = end;
        self.table_insert(pc, self.exec_base.wrapping_add(u64::from(start)));
        self.stats.blocks += 1;
        self.stats.guest_insns += u64::from(built.guest_insns);
        self.stats.guest_bytes += built.guest_len;
        self.stats.cache_bytes += u64::from(size);
        Ok(FragmentId(id))
    }

    /// Runtime address of the translation of guest `pc`, translating it if needed.
    pub fn entry(&mut self, pc: u64, mem: &dyn GuestMemory) -> Result<u64, Error> {
        let id = self.translate(pc, mem)?;
        self.fragment_entry(id)
    }

    /// The metadata stream of fragment `f` (bytes from its start to the arena's end).
    pub(crate) fn stream(&self, f: &Fragment) -> Stream<'_> {
        let bytes = self.arena.as_ref().get(f.meta as usize..).unwrap_or(&[]);
        Stream::new(f.guest_pc, bytes)
    }

    pub(crate) fn header(&self, f: &Fragment) -> Option<Header> {
        self.stream(f).header()
    }

    /// The fragment owning exit `index`, and the exit (offsets made arena offsets).
    pub(crate) fn exit(&self, index: u32) -> Option<(u32, Exit)> {
        let i = self
            .fragments
            .partition_point(|f| f.first_exit() <= index)
            .checked_sub(1)?;
        let f = self.fragments.get(i)?;
        let mut s = self.stream(f);
        let h = s.header()?;
        let local = index - f.first_exit();
        if local >= h.n_exits {
            return None;
        }
        for _ in 0..local {
            s.exit()?;
        }
        let mut x = s.exit()?;
        x.patch = x.patch.and_then(|p| f.start.checked_add(p));
        x.stub = x.stub.and_then(|p| f.start.checked_add(p));
        Some((u32::try_from(i).ok()?, x))
    }

    /// Decodes the dispatcher frame's exit id and aux value.
    pub fn exit_reason(&self, exit_id: u64, aux: u64) -> Result<ExitReason, Error> {
        let unknown = Error::UnknownExit { id: exit_id };
        let index = u32::try_from(exit_id).map_err(|_| unknown)?;
        let (_, x) = self.exit(index).ok_or(unknown)?;
        Ok(match x.kind {
            ExitKind::Direct { target } => ExitReason::DirectMiss {
                exit: ExitId {
                    index,
                    generation: self.generation,
                },
                target,
            },
            ExitKind::Indirect { insn_pc, kind } => ExitReason::IndirectMiss {
                target: aux,
                insn_pc,
                kind,
            },
            ExitKind::Hook(site) => ExitReason::Hook(site),
        })
    }

    /// Resolves a miss: translates the target, links a direct exit (when it is still of the
    /// current generation, i.e. no flush happened since [`Self::exit_reason`]) and returns
    /// the runtime address to resume at. `Ok(None)` for a hook, which the caller emulates
    /// before resuming with [`Self::entry`].
    pub fn resolve(
        &mut self,
        reason: &ExitReason,
        mem: &dyn GuestMemory,
    ) -> Result<Option<u64>, Error> {
        match *reason {
            ExitReason::DirectMiss { exit, target } => {
                let id = self.translate(target, mem)?;
                if exit.generation == self.generation {
                    self.link(exit, id)?;
                }
                self.fragment_entry(id).map(Some)
            }
            ExitReason::IndirectMiss { target, .. } => self.entry(target, mem).map(Some),
            ExitReason::Hook(_) => Ok(None),
        }
    }

    /// Drops every fragment, exit and table entry, and clears the stale bitmap. Exit and
    /// fragment ids of before are no longer valid; under the Fast policy, code-cache return
    /// addresses on live stacks become dangling (the caller must rewrite or discard those
    /// stacks). The records' memory goes back to the heap, so the heap the cache holds
    /// follows the code it describes rather than its peak.
    pub fn flush(&mut self) {
        self.harvest();
        // A stale code-cache address still in use (a return address under Fast that the
        // caller failed to rewrite) then traps at once instead of running whatever is
        // translated there next.
        let released = self.code_start as usize..self.cursor as usize;
        if let Some(code) = self.arena.as_mut().get_mut(released) {
            code.fill(INT3);
        }
        self.fragments = Vec::new();
        self.by_guest = Vec::new();
        self.next_incoming = Vec::new();
        self.shapes = Vec::new();
        self.cursor = self.code_start;
        self.counters_used = 0;
        self.generation = self.generation.wrapping_add(1);
        self.clear_table();
        // Kept in place (its address may be in generated code), and no allocation.
        self.stale.fill(0);
        self.stats.flushes += 1;
    }

    /// The client, if any.
    pub fn client(&self) -> Option<Client> {
        self.client
    }

    /// Changes the client: the counts so far go to the old client's table, then the cache
    /// is flushed (translations carry the client's code and table slots).
    pub fn set_client(&mut self, client: Option<Client>) {
        self.flush();
        self.client = client;
    }

    /// Count client: the next counter (index, runtime address) for a new fragment;
    /// `CacheFull` when every counter is in use (flush and retry).
    fn next_counter(&self) -> Result<Option<(u32, u64)>, Error> {
        let Some(client) = self.client.filter(|c| c.kind == ClientKind::Count) else {
            return Ok(None);
        };
        let i = self.counters_used;
        match client.counters.get(i as usize) {
            Some(c) => Ok(Some((i, c.as_ptr() as u64))),
            None => Err(Error::CacheFull {
                needed: 8,
                available: 0,
            }),
        }
    }

    /// The client's table slot for a new block's range; counted when there is no room.
    fn record(&mut self, pc: u64, guest_len: u64) -> u32 {
        let Some(client) = self.client else {
            return NONE;
        };
        let slot = u32::try_from(guest_len)
            .ok()
            .and_then(|len| client.table.insert(pc, len));
        slot.unwrap_or_else(|| {
            self.stats.client_dropped += 1;
            NONE
        })
    }

    /// Count client: adds every fragment's counter to its range's count in the table and
    /// zeroes it. On the CPU that runs this cache's code, with that code not running.
    pub fn harvest(&mut self) {
        let Some(client) = self.client else {
            return;
        };
        for i in 0..self.fragments.len() {
            let Some(f) = self.fragments.get(i) else {
                break;
            };
            if f.slot == NONE {
                continue;
            }
            if let Some(c) = client.counters.get(f.counter as usize) {
                let n = c.swap(0, Relaxed);
                if n != 0 {
                    client.table.add(f.slot, n);
                }
            }
        }
    }

    /// Count client: code interrupted at `cache_pc` was rolled back to guest state
    /// (the PC map's), and will go on from a fragment entry. If the block's execution was
    /// already counted, only the instructions before the rollback point ran: the count
    /// moves from the block to that prefix's range. `true` if a count moved.
    pub fn interrupted(&mut self, cache_pc: u64) -> bool {
        let Some(client) = self.client else {
            return false;
        };
        let Some((idx, rel)) = self.fragment_index(cache_pc) else {
            return false;
        };
        let Some(f) = self.fragments.get(idx) else {
            return false;
        };
        let (start, counter, commit) = (f.guest_pc, f.counter as usize, f.commit);
        let Some(c) = client.counters.get(counter) else {
            return false;
        };
        if rel < commit {
            return false;
        }
        let (Some(m), Some(h)) = (self.pc_map(cache_pc), self.header(f)) else {
            return false;
        };
        let end = start.wrapping_add(h.guest_len);
        // Guest state before `done`: the instructions from `start` up to it ran. Found
        // from the translation, not the guest text, which may be changing (a jump label
        // being patched shows a one-byte int3).
        let done = match m.rollback.rip {
            RipSource::Guest(pc) if pc == m.insn_pc => pc,
            // After the block's last instruction (an exit, a lookup's miss): all of it ran.
            _ if Some(m.insn_pc) == self.last_insn_pc(f) => end,
            // After a rewritten instruction, before the next one.
            RipSource::Guest(next) => next,
            RipSource::Stack(_) => return false,
        };
        if done < start || done >= end {
            return false;
        }
        c.fetch_sub(1, Relaxed);
        if done > start {
            match client.table.insert(start, (done - start) as u32) {
                Some(slot) => client.table.add(slot, 1),
                None => self.stats.client_dropped += 1,
            }
        }
        true
    }

    /// The guest PC of the last instruction fragment `f` translated: the largest its PC
    /// map names (a block's control transfer comes last, its exits after the body).
    fn last_insn_pc(&self, f: &Fragment) -> Option<u64> {
        let mut s = self.stream(f);
        let (_, n) = s.skip_to_entries()?;
        let mut prev = Prev::new(s.pc);
        let mut last = None;
        for _ in 0..n {
            let e = s.entry(&mut prev, &self.shapes)?;
            last = last.max(Some(e.guest_pc));
        }
        last
    }

    /// The index of the fragment whose code contains `cache_pc`, and the offset in it.
    fn fragment_index(&self, cache_pc: u64) -> Option<(usize, u32)> {
        let off = u32::try_from(cache_pc.checked_sub(self.exec_base)?).ok()?;
        let idx = self
            .fragments
            .partition_point(|f| f.start <= off)
            .checked_sub(1)?;
        let f = self.fragments.get(idx)?;
        Some((idx, off.saturating_sub(f.start)))
    }

    /// The fragment whose code contains `cache_pc`, its stream positioned after the header,
    /// the header, and the fragment-relative offset.
    fn fragment_at(&self, cache_pc: u64) -> Option<(Stream<'_>, Header, u32)> {
        let (idx, rel) = self.fragment_index(cache_pc)?;
        let f = self.fragments.get(idx)?;
        let mut s = self.stream(f);
        let h = s.header()?;
        (rel < h.code_end).then_some((s, h, rel))
    }

    /// The PC map: for an address inside translated code (an interrupted `rip`), the guest
    /// instruction it belongs to and the rollback giving the precise guest state. `None`
    /// outside fragment code (table, literals, metadata, padding, unused space).
    pub fn pc_map(&self, cache_pc: u64) -> Option<PcMapping> {
        let (mut s, _, rel) = self.fragment_at(cache_pc)?;
        s.r.pos = 0;
        let (_, n) = s.skip_to_entries()?;
        let mut prev = Prev::new(s.pc);
        let mut found = None;
        for _ in 0..n {
            let e = s.entry(&mut prev, &self.shapes)?;
            if e.off > rel {
                break;
            }
            found = Some(e);
        }
        let e = found?;
        Some(match e.kind {
            EntryKind::Copy => {
                let pc = e.guest_pc.wrapping_add(u64::from(rel - e.off));
                PcMapping {
                    insn_pc: pc,
                    rollback: Rollback::at(pc),
                }
            }
            EntryKind::Fixed(rollback) => PcMapping {
                insn_pc: e.guest_pc,
                rollback,
            },
        })
    }

    /// Fast policy: the guest return address for a code-cache return address pushed by a
    /// translated `call`.
    pub fn return_site(&self, cache_pc: u64) -> Option<u64> {
        let (mut s, _, rel) = self.fragment_at(cache_pc)?;
        s.r.pos = 0;
        s.skip_to_sites()?;
        for _ in 0..s.r.u()? {
            let off = s.r.u32()?;
            let guest = s.pc.wrapping_add(s.r.s()?);
            if off == rel {
                return Some(guest);
            }
        }
        None
    }

    /// What an 8-byte word found in memory (a stack slot, a saved register) means if it
    /// holds an address in this cache's arena: `None` outside the arena. Answers for
    /// invalidated fragments too, until the flush. The rewrite of a stack that leaves
    /// the cache (Fast policy) replaces each such word by its native value.
    pub fn classify(&self, word: u64) -> Option<CacheWord> {
        let off = word.checked_sub(self.exec_base)?;
        if off >= self.arena_len as u64 {
            return None;
        }
        if let Some(guest) = self.return_site(word) {
            return Some(CacheWord::ReturnSite(guest));
        }
        Some(match self.pc_map(word) {
            Some(m) => CacheWord::Code(m),
            None => CacheWord::Data,
        })
    }

    /// Reverse map: a runtime address at which execution can resume for guest instruction
    /// `pc` (a fragment start, or an instruction boundary inside a live fragment where no
    /// rollback is needed). `pc` must be a guest instruction boundary. `None`: translate a
    /// new fragment at `pc` with [`Self::translate`].
    pub fn cache_pc_for(&self, pc: u64) -> Option<u64> {
        let before = match self.guest_index(pc) {
            Ok(i) => {
                let f = self.fragments.get(*self.by_guest.get(i)? as usize)?;
                return Some(
                    self.exec_base
                        .wrapping_add(u64::from(self.entry_off(f.start))),
                );
            }
            Err(i) => i.checked_sub(1)?,
        };
        let f = self.fragments.get(*self.by_guest.get(before)? as usize)?;
        let mut s = self.stream(f);
        let (h, n) = s.skip_to_entries()?;
        if pc >= f.guest_pc.wrapping_add(h.guest_len) {
            return None;
        }
        let mut prev = Prev::new(f.guest_pc);
        let mut cur = if n > 0 {
            Some(s.entry(&mut prev, &self.shapes)?)
        } else {
            None
        };
        for i in 0..n {
            let e = cur?;
            let next = if i + 1 < n {
                Some(s.entry(&mut prev, &self.shapes)?)
            } else {
                None
            };
            let next_off = next.map_or(h.code_end, |x| x.off);
            let rel = match e.kind {
                EntryKind::Copy => {
                    let len = u64::from(next_off.saturating_sub(e.off));
                    pc.checked_sub(e.guest_pc)
                        .filter(|&d| d < len)
                        .map(|d| u64::from(e.off) + d)
                }
                EntryKind::Fixed(rb) => (rb.restore == [None; 3]
                    && rb.rsp_adjust == 0
                    && rb.rip == RipSource::Guest(pc)
                    && e.guest_pc == pc)
                    .then_some(u64::from(e.off)),
            };
            if let Some(rel) = rel {
                return Some(
                    self.exec_base
                        .wrapping_add(u64::from(f.start))
                        .wrapping_add(rel),
                );
            }
            cur = next;
        }
        None
    }
}

/// Reserves room for `n` more elements, growing by at least a quarter of the length.
fn grow<T>(v: &mut Vec<T>, n: usize) -> Result<(), Error> {
    if v.capacity() - v.len() >= n {
        return Ok(());
    }
    let more = n.max(v.len() / 4).max(64);
    v.try_reserve_exact(more).map_err(|_| Error::OutOfMemory)
}
