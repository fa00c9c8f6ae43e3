//! Per-fragment metadata (PC map, exits, return sites) as a compact byte stream stored in
//! the arena right after the fragment's literals, as QEMU stores its TB search data: the
//! heap then holds only a fixed record per fragment and per exit, so heap use stays below
//! code-cache use and a full cache (not a full heap) bounds it.
//!
//! ```text
//! code_end guest_len n_exits
//! exit*:   tag(0 direct | 1 jmp | 2 call | 3 ret | 4 hook)
//!          direct: target-pc(s) patch stub     indirect: insn-pc     hook: class insn-pc len
//! n_sites site*: off guest-pc(s)
//! n_entries entry*: off-prev_off insn-prev_insn(s) shape [rip-prev_rip(s) if the shape's rip is a guest pc]
//! ```
//! Numbers are LEB128, `(s)` signed (wrapping differences); `pc` is the fragment's guest PC,
//! `prev_*` the previous entry's (offset 0 and `pc` for the first);
//! `shape` is 0 for a copy range, else 1 + an index into the cache's table of distinct
//! rollback shapes (a rollback with its guest rip made relative to the instruction).

use alloc::vec::Vec;

use crate::emit::extend_within;
use crate::error::Error;
use crate::exit::{ExitKind, HookSite, IndirectKind};
use crate::hooks::HookClass;
use crate::pcmap::{EntryKind, PcEntry, Restore, RipSource, Rollback};
use crate::translate::Built;

/// A rollback without its guest PC: what the table of distinct shapes holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub restore: [Option<Restore>; 3],
    pub rsp_adjust: u32,
    /// `Some(off)`: rip from the stack slot at `off`; `None`: a guest PC given per entry.
    pub stack_rip: Option<u32>,
}

/// Appends LEB128 numbers within a reserved buffer; `full` once something did not fit.
pub(crate) struct Writer<'b> {
    pub buf: &'b mut Vec<u8>,
    pub full: bool,
}

impl Writer<'_> {
    pub fn u(&mut self, mut v: u64) {
        let mut bytes = [0u8; 10];
        let mut n = 0;
        while let Some(b) = bytes.get_mut(n) {
            n += 1;
            if v < 0x80 {
                *b = v as u8;
                break;
            }
            *b = (v as u8) | 0x80;
            v >>= 7;
        }
        self.full |= !extend_within(self.buf, bytes.get(..n).unwrap_or(&[]));
    }

    /// A wrapping difference, zigzag-encoded so that small negative ones stay short.
    pub fn s(&mut self, v: u64) {
        let v = v as i64;
        self.u(((v << 1) ^ (v >> 63)) as u64);
    }
}

/// Reads what [`Writer`] wrote; `None` past the end or on a malformed number.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl Reader<'_> {
    pub fn u(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.bytes.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u()?).ok()
    }

    pub fn s(&mut self) -> Option<u64> {
        let z = self.u()?;
        Some((z >> 1) ^ (z & 1).wrapping_neg())
    }
}

/// The fixed start of a fragment's stream.
pub(crate) struct Header {
    pub code_end: u32,
    pub guest_len: u64,
    pub n_exits: u32,
}

/// One exit as decoded from a stream (offsets fragment-relative).
pub(crate) struct Exit {
    pub kind: ExitKind,
    pub patch: Option<u32>,
    pub stub: Option<u32>,
}

const DIRECT: u64 = 0;
const HOOK: u64 = 4;

fn indirect_tag(kind: IndirectKind) -> u64 {
    match kind {
        IndirectKind::Jmp => 1,
        IndirectKind::Call => 2,
        IndirectKind::Ret => 3,
    }
}

/// Index of `shape` in `shapes`, adding it if new.
fn intern(shapes: &mut Vec<Shape>, shape: Shape) -> Result<usize, Error> {
    if let Some(i) = shapes.iter().position(|s| *s == shape) {
        return Ok(i);
    }
    shapes.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
    shapes.push(shape);
    Ok(shapes.len() - 1)
}

/// Encodes `built` (a fragment at guest `pc`) into `out`, interning its rollback shapes.
/// `FragmentTooLarge` if `out`'s reserved capacity does not suffice.
pub(crate) fn encode(
    pc: u64,
    built: &Built,
    shapes: &mut Vec<Shape>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    out.clear();
    let capacity = u32::try_from(out.capacity()).unwrap_or(u32::MAX);
    let mut w = Writer {
        buf: out,
        full: false,
    };
    w.u(u64::from(built.code_end));
    w.u(built.guest_len);
    w.u(built.exits.len() as u64);
    for x in &built.exits {
        match x.kind {
            ExitKind::Direct { target } => {
                w.u(DIRECT);
                w.s(target.wrapping_sub(pc));
                w.u(x.patch.map_or(0, u64::from));
                w.u(x.stub.map_or(0, u64::from));
            }
            ExitKind::Indirect { insn_pc, kind } => {
                w.u(indirect_tag(kind));
                w.s(insn_pc.wrapping_sub(pc));
            }
            ExitKind::Hook(site) => {
                w.u(HOOK);
                w.u(u64::from(site.class.bits()));
                w.s(site.pc.wrapping_sub(pc));
                w.s(site.next_pc.wrapping_sub(site.pc));
            }
        }
    }
    w.u(built.return_sites.len() as u64);
    for &(off, guest) in &built.return_sites {
        w.u(u64::from(off));
        w.s(guest.wrapping_sub(pc));
    }
    w.u(built.entries.len() as u64);
    let mut prev = Prev::new(pc);
    for e in &built.entries {
        w.u(u64::from(e.off.wrapping_sub(prev.off)));
        prev.off = e.off;
        w.s(e.guest_pc.wrapping_sub(prev.insn));
        prev.insn = e.guest_pc;
        match e.kind {
            EntryKind::Copy => w.u(0),
            EntryKind::Fixed(rb) => {
                let (stack_rip, guest_rip) = match rb.rip {
                    RipSource::Stack(off) => (Some(off), None),
                    RipSource::Guest(g) => (None, Some(g)),
                };
                let shape = Shape {
                    restore: rb.restore,
                    rsp_adjust: rb.rsp_adjust,
                    stack_rip,
                };
                w.u(intern(shapes, shape)? as u64 + 1);
                if let Some(g) = guest_rip {
                    w.s(g.wrapping_sub(prev.rip));
                    prev.rip = g;
                }
            }
        }
    }
    if w.full {
        return Err(Error::FragmentTooLarge {
            needed: capacity.saturating_add(1),
            capacity,
        });
    }
    Ok(())
}

/// What an entry is encoded relative to: the previous entry's offset, guest instruction
/// and guest rip (consecutive entries mostly share the last two, e.g. an exit stub's).
#[derive(Clone, Copy)]
pub(crate) struct Prev {
    pub off: u32,
    pub insn: u64,
    pub rip: u64,
}

impl Prev {
    /// Before the first entry of the fragment at guest `pc`.
    pub fn new(pc: u64) -> Self {
        Prev {
            off: 0,
            insn: pc,
            rip: pc,
        }
    }
}

/// Decoding of one fragment's stream (at `bytes`, for the fragment at guest `pc`).
pub(crate) struct Stream<'a> {
    pub pc: u64,
    pub r: Reader<'a>,
}

impl<'a> Stream<'a> {
    pub fn new(pc: u64, bytes: &'a [u8]) -> Self {
        Stream {
            pc,
            r: Reader { bytes, pos: 0 },
        }
    }

    pub fn header(&mut self) -> Option<Header> {
        Some(Header {
            code_end: self.r.u32()?,
            guest_len: self.r.u()?,
            n_exits: self.r.u32()?,
        })
    }

    pub fn exit(&mut self) -> Option<Exit> {
        let pc = self.pc;
        let tag = self.r.u()?;
        Some(match tag {
            DIRECT => {
                let target = pc.wrapping_add(self.r.s()?);
                let patch = self.r.u32()?;
                let stub = self.r.u32()?;
                Exit {
                    kind: ExitKind::Direct { target },
                    patch: (patch != 0).then_some(patch),
                    stub: (stub != 0).then_some(stub),
                }
            }
            HOOK => {
                let class = HookClass::from_bits_retain(self.r.u32()?);
                let at = pc.wrapping_add(self.r.s()?);
                let next_pc = at.wrapping_add(self.r.s()?);
                Exit {
                    kind: ExitKind::Hook(HookSite {
                        class,
                        pc: at,
                        next_pc,
                    }),
                    patch: None,
                    stub: None,
                }
            }
            _ => {
                let kind = match tag {
                    1 => IndirectKind::Jmp,
                    2 => IndirectKind::Call,
                    3 => IndirectKind::Ret,
                    _ => return None,
                };
                let insn_pc = pc.wrapping_add(self.r.s()?);
                Exit {
                    kind: ExitKind::Indirect { insn_pc, kind },
                    patch: None,
                    stub: None,
                }
            }
        })
    }

    /// Skips the header and exits; positions at the return sites.
    pub fn skip_to_sites(&mut self) -> Option<Header> {
        let h = self.header()?;
        for _ in 0..h.n_exits {
            self.exit()?;
        }
        Some(h)
    }

    /// Positions at the entries (after the return sites); returns the header and count.
    pub fn skip_to_entries(&mut self) -> Option<(Header, u32)> {
        let h = self.skip_to_sites()?;
        for _ in 0..self.r.u()? {
            self.r.u()?;
            self.r.s()?;
        }
        Some((h, self.r.u32()?))
    }

    /// The next entry; `prev` is updated to it.
    pub fn entry(&mut self, prev: &mut Prev, shapes: &[Shape]) -> Option<PcEntry> {
        let off = prev.off.checked_add(self.r.u32()?)?;
        let guest_pc = prev.insn.wrapping_add(self.r.s()?);
        let shape = self.r.u()?;
        let kind = match shape.checked_sub(1) {
            None => EntryKind::Copy,
            Some(i) => {
                let s = shapes.get(usize::try_from(i).ok()?)?;
                let rip = match s.stack_rip {
                    Some(off) => RipSource::Stack(off),
                    None => {
                        prev.rip = prev.rip.wrapping_add(self.r.s()?);
                        RipSource::Guest(prev.rip)
                    }
                };
                EntryKind::Fixed(Rollback {
                    restore: s.restore,
                    rsp_adjust: s.rsp_adjust,
                    rip,
                })
            }
        };
        prev.off = off;
        prev.insn = guest_pc;
        Some(PcEntry {
            off,
            guest_pc,
            kind,
        })
    }
}
