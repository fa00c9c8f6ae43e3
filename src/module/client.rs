// SPDX-License-Identifier: GPL-2.0

//! The instrumentation client every CPU's cache runs (`/sys/kernel/kdbt/client`)
//! and the block table the caches share, which lives from load to unload so
//! that its data outlasts flushes and enable/disable cycles.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use kdbt_engine::{BlockSlot, BlockTable, Client, ClientKind};
use kernel::prelude::*;

/// Slots of the block table: 4 MiB, some ten times the blocks a workload's
/// kernel paths make.
pub(crate) const SLOTS: usize = 1 << 18;
static SLOTS_MEM: [BlockSlot; SLOTS] = [BlockSlot::EMPTY; SLOTS];

const NONE: u8 = 0;
const COVERAGE: u8 = 1;
const COUNT: u8 = 2;

/// The client new translations get.
static SELECTED: AtomicU8 = AtomicU8::new(NONE);
/// The client whose data the table holds.
static RECORDED: AtomicU8 = AtomicU8::new(NONE);

fn encode(kind: Option<ClientKind>) -> u8 {
    match kind {
        None => NONE,
        Some(ClientKind::Coverage) => COVERAGE,
        Some(ClientKind::Count) => COUNT,
    }
}

fn decode(v: u8) -> Option<ClientKind> {
    match v {
        COVERAGE => Some(ClientKind::Coverage),
        COUNT => Some(ClientKind::Count),
        _ => None,
    }
}

/// The shared block table.
pub(crate) fn table() -> BlockTable<'static> {
    BlockTable::new(&SLOTS_MEM)
}

pub(crate) fn selected() -> Option<ClientKind> {
    decode(SELECTED.load(Relaxed))
}

pub(crate) fn recorded() -> Option<ClientKind> {
    decode(RECORDED.load(Relaxed))
}

/// Chooses the client of translations made from now on (the caller flushes
/// the caches), and the data the table holds from now on when it records.
pub(crate) fn select(kind: Option<ClientKind>) {
    SELECTED.store(encode(kind), Relaxed);
    if kind.is_some() {
        RECORDED.store(encode(kind), Relaxed);
    }
}

/// Empties the table. Only while no cache has a client.
pub(crate) fn clear() {
    table().clear();
    RECORDED.store(NONE, Relaxed);
}

/// The client for a cache with these counters.
pub(crate) fn for_cache(counters: &'static [AtomicU64]) -> Option<Client> {
    selected().map(|kind| Client { kind, table: table(), counters })
}

pub(crate) fn name(kind: Option<ClientKind>) -> &'static str {
    match kind {
        None => "none",
        Some(ClientKind::Coverage) => "coverage",
        Some(ClientKind::Count) => "count",
    }
}

/// A client name as written to sysfs (a trailing newline allowed).
pub(crate) fn parse(s: &str) -> Result<Option<ClientKind>> {
    match s.strip_suffix('\n').unwrap_or(s) {
        "none" => Ok(None),
        "coverage" => Ok(Some(ClientKind::Coverage)),
        "count" => Ok(Some(ClientKind::Count)),
        _ => Err(EINVAL),
    }
}
