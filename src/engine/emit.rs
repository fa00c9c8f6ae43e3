//! Machine-code emission for one fragment: hand-assembled fixed sequences, PC-map entries,
//! and fixups of rel32 fields that point at exit stubs and literals.
//!
//! Every sequence emitted here is flag-free (`lea`, `mov`, `push`, `pop`, `jrcxz`, `jmp`,
//! `call`, `ret`, `endbr64`), so guest flags survive translated code untouched.

use alloc::vec::Vec;
use iced_x86::InstructionInfoFactory;

use crate::decode::WINDOW;
use crate::error::Error;
use crate::pcmap::{EntryKind, Gpr, PcEntry, Rollback};
use crate::translate::ExitSpec;

/// Most bytes of one fragment (code, padding, literals). A block is at most 64 guest
/// instructions; the longest per-instruction sequence (a far RIP-relative rewrite with a
/// 4096-byte red zone) is under 64 bytes, a lookup sequence under 160, an exit stub 24.
pub(crate) const MAX_FRAGMENT: usize = 16 << 10;
/// Most PC-map entries of one fragment (at most 5 per guest instruction, plus the exits').
pub(crate) const MAX_ENTRIES: usize = 512;
/// Most exits, literals, fixups and return sites of one fragment: a block ends at its
/// first control transfer, which has at most three exits and two literals.
pub(crate) const MAX_SMALL: usize = 16;
/// Longest x86 instruction iced encodes.
const MAX_INSN: usize = 15;

/// Buffers reused from one translation to the next, reserved once (fallibly) by
/// [`Scratch::reserve`]. Building a fragment never grows them: in the kernel the heap is a
/// fixed-size private one, and an infallible reallocation that fails panics.
pub(crate) struct Scratch {
    pub window: Vec<u8>,
    pub code: Vec<u8>,
    pub entries: Vec<PcEntry>,
    pub literals: Vec<u64>,
    pub fixups: Vec<Fixup>,
    pub exits: Vec<ExitSpec>,
    pub return_sites: Vec<(u32, u64)>,
    /// The fragment's metadata stream (`meta.rs`).
    pub meta: Vec<u8>,
    /// iced's encoder output, handed to it with room for one instruction.
    pub encoded: Vec<u8>,
    /// iced's instruction info (used registers), created once by [`Scratch::reserve`]
    /// (`new` allocates two small vectors, infallibly).
    pub info: Option<InstructionInfoFactory>,
}

/// Reserves room for `n` elements in `v` (which is empty or already that large).
fn reserve<T>(v: &mut Vec<T>, n: usize) -> Result<(), Error> {
    v.clear();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory)
}

/// Appends `x` within `v`'s capacity; `false` (and nothing appended) when full.
pub(crate) fn push_within<T>(v: &mut Vec<T>, x: T) -> bool {
    if v.len() < v.capacity() {
        v.push(x);
        true
    } else {
        false
    }
}

/// Appends `bytes` within `v`'s capacity; `false` (and nothing appended) when they do not
/// fit.
pub(crate) fn extend_within(v: &mut Vec<u8>, bytes: &[u8]) -> bool {
    if v.capacity() - v.len() >= bytes.len() {
        v.extend_from_slice(bytes);
        true
    } else {
        false
    }
}

impl Scratch {
    /// Empty buffers.
    pub fn new() -> Self {
        Scratch {
            window: Vec::new(),
            code: Vec::new(),
            entries: Vec::new(),
            literals: Vec::new(),
            fixups: Vec::new(),
            exits: Vec::new(),
            return_sites: Vec::new(),
            meta: Vec::new(),
            encoded: Vec::new(),
            info: None,
        }
    }

    /// Reserves every buffer at its maximum size; also called before each translation, as
    /// a buffer lost on an error path comes back empty.
    pub fn reserve(&mut self) -> Result<(), Error> {
        reserve(&mut self.window, WINDOW)?;
        reserve(&mut self.code, MAX_FRAGMENT)?;
        reserve(&mut self.entries, MAX_ENTRIES)?;
        reserve(&mut self.literals, MAX_SMALL)?;
        reserve(&mut self.fixups, MAX_SMALL)?;
        reserve(&mut self.exits, MAX_SMALL)?;
        reserve(&mut self.return_sites, MAX_SMALL)?;
        reserve(&mut self.meta, MAX_FRAGMENT)?;
        reserve(&mut self.encoded, MAX_INSN + 1)?;
        if self.info.is_none() {
            self.info = Some(InstructionInfoFactory::new());
        }
        Ok(())
    }

    /// Heap bytes the buffers hold.
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        self.window.capacity()
            + self.code.capacity()
            + self.entries.capacity() * size_of::<PcEntry>()
            + self.literals.capacity() * 8
            + self.fixups.capacity() * size_of::<Fixup>()
            + self.exits.capacity() * size_of::<ExitSpec>()
            + self.return_sites.capacity() * size_of::<(u32, u64)>()
            + self.meta.capacity()
            + self.encoded.capacity()
    }
}

/// The `ds` segment-override prefix: no effect on a near branch.
const DS_PREFIX: u8 = 0x3e;

/// A position resolved once the fragment layout is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    /// The exit stub of the fragment's exit with this local index.
    Stub(usize),
    /// The 8-byte literal with this index.
    Literal(usize),
}

/// A rel32 field (always the last 4 bytes of its instruction) to resolve against a label.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fixup {
    field: usize,
    label: Label,
}

/// Code of one fragment under construction.
///
/// # Invariants
/// `code[0]` will live at runtime address `base`; `entries` are sorted by `off` and every
/// emitted host instruction is covered by the entry in force when it was emitted.
pub(crate) struct Emitter {
    pub code: Vec<u8>,
    pub base: u64,
    pub entries: Vec<PcEntry>,
    pub literals: Vec<u64>,
    fixups: Vec<Fixup>,
    /// A buffer was full: something was not emitted, the fragment is unusable.
    pub overflow: bool,
}

/// `rsp`-relative memory operand (ModRM with SIB 0x24), disp8 when it fits.
fn modrm_rsp(reg: u8, disp: i32, out: &mut Emitter) {
    let r = (reg & 7) << 3;
    if disp == 0 {
        out.bytes(&[r | 0x04, 0x24]);
    } else if let Ok(d8) = i8::try_from(disp) {
        out.bytes(&[0x44 | r, 0x24, d8 as u8]);
    } else {
        out.bytes(&[0x84 | r, 0x24]);
        out.bytes(&disp.to_le_bytes());
    }
}

/// Bytes of `lea rsp, [rsp + disp]` (`disp != 0`), as [`Emitter::lea_rsp`] encodes it.
pub(crate) fn lea_rsp_len(disp: i32) -> u32 {
    if i8::try_from(disp).is_ok() {
        5
    } else {
        8
    }
}

/// `endbr64`.
pub(crate) const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

fn rex_w(reg: u8, rm: u8) -> u8 {
    0x48 | ((reg >> 3) & 1) << 2 | ((rm >> 3) & 1)
}

impl Emitter {
    /// An empty emitter reusing `scratch`'s buffers.
    pub fn new(base: u64, scratch: &mut Scratch) -> Self {
        let mut e = Emitter {
            code: core::mem::take(&mut scratch.code),
            base,
            entries: core::mem::take(&mut scratch.entries),
            literals: core::mem::take(&mut scratch.literals),
            fixups: core::mem::take(&mut scratch.fixups),
            overflow: false,
        };
        e.code.clear();
        e.entries.clear();
        e.literals.clear();
        e.fixups.clear();
        e
    }

    /// Gives the buffers not handed out in a result back to `scratch`.
    pub fn recycle(self, scratch: &mut Scratch) {
        scratch.literals = self.literals;
        scratch.fixups = self.fixups;
    }

    /// Offset of the next byte.
    pub fn off(&self) -> usize {
        self.code.len()
    }

    /// Runtime address of the next byte.
    pub fn here(&self) -> u64 {
        self.base.wrapping_add(self.code.len() as u64)
    }

    fn off32(&self) -> u32 {
        u32::try_from(self.code.len()).unwrap_or(u32::MAX)
    }

    /// Code emitted from now on maps to `rollback`, on behalf of guest instruction `pc`.
    pub fn map(&mut self, pc: u64, rollback: Rollback) {
        let entry = PcEntry {
            off: self.off32(),
            guest_pc: pc,
            kind: EntryKind::Fixed(rollback),
        };
        self.push_entry(entry);
    }

    fn push_entry(&mut self, entry: PcEntry) {
        if let Some(last) = self.entries.last_mut() {
            if last.guest_pc == entry.guest_pc && last.kind == entry.kind {
                return;
            }
            if last.off == entry.off {
                *last = entry;
                return;
            }
        }
        self.overflow |= !push_within(&mut self.entries, entry);
    }

    /// Copies a guest instruction verbatim; consecutive copies share one `Copy` entry.
    pub fn copy_insn(&mut self, pc: u64, bytes: &[u8]) {
        let off = self.off32();
        let continues = self.entries.last().is_some_and(|e| {
            e.kind == EntryKind::Copy
                && e.guest_pc.wrapping_add(u64::from(off.wrapping_sub(e.off))) == pc
        });
        if !continues {
            self.push_entry(PcEntry {
                off,
                guest_pc: pc,
                kind: EntryKind::Copy,
            });
        }
        self.bytes(bytes);
    }

    /// Appends raw encoded bytes (mapping set by the caller).
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.overflow |= !extend_within(&mut self.code, bytes);
    }

    fn byte(&mut self, b: u8) {
        self.bytes(&[b]);
    }

    fn rel32_to(&mut self, label: Label) {
        let fixup = Fixup {
            field: self.code.len(),
            label,
        };
        self.overflow |= !push_within(&mut self.fixups, fixup);
        self.bytes(&[0; 4]);
    }

    /// `lea rsp, [rsp + disp]` (nothing when `disp == 0`).
    pub fn lea_rsp(&mut self, disp: i32) {
        if disp != 0 {
            self.byte(0x48);
            self.byte(0x8d);
            modrm_rsp(4, disp, self);
        }
    }

    /// `lea reg, [rsp + disp]`.
    pub fn lea_reg_rsp(&mut self, reg: Gpr, disp: i32) {
        let r = reg.num();
        self.byte(rex_w(r, 4));
        self.byte(0x8d);
        modrm_rsp(r, disp, self);
    }

    /// `push reg`.
    pub fn push(&mut self, reg: Gpr) {
        let r = reg.num();
        if r >= 8 {
            self.byte(0x41);
        }
        self.byte(0x50 | (r & 7));
    }

    /// `pop reg`.
    pub fn pop(&mut self, reg: Gpr) {
        let r = reg.num();
        if r >= 8 {
            self.byte(0x41);
        }
        self.byte(0x58 | (r & 7));
    }

    /// `push imm32` (sign-extended to 64 bits).
    pub fn push_imm(&mut self, imm: i32) {
        self.byte(0x68);
        self.bytes(&imm.to_le_bytes());
    }

    /// `mov reg, imm64`.
    pub fn mov_imm64(&mut self, reg: Gpr, imm: u64) {
        let r = reg.num();
        self.byte(0x48 | ((r >> 3) & 1));
        self.byte(0xb8 | (r & 7));
        self.bytes(&imm.to_le_bytes());
    }

    /// `mov dst, src` (64-bit registers).
    pub fn mov_reg(&mut self, dst: Gpr, src: Gpr) {
        let (d, s) = (dst.num(), src.num());
        self.bytes(&[rex_w(s, d), 0x89, 0xc0 | (s & 7) << 3 | (d & 7)]);
    }

    /// `mov reg, [rsp + disp]`.
    pub fn load_rsp(&mut self, reg: Gpr, disp: i32) {
        let r = reg.num();
        self.byte(rex_w(r, 4));
        self.byte(0x8b);
        modrm_rsp(r, disp, self);
    }

    /// `mov [rsp + disp], reg`.
    pub fn store_rsp(&mut self, disp: i32, reg: Gpr) {
        let r = reg.num();
        self.byte(rex_w(r, 4));
        self.byte(0x89);
        modrm_rsp(r, disp, self);
    }

    /// `mov qword [rsp + disp], imm32` (sign-extended).
    pub fn store_rsp_imm(&mut self, disp: i32, imm: i32) {
        self.bytes(&[0x48, 0xc7]);
        modrm_rsp(0, disp, self);
        self.bytes(&imm.to_le_bytes());
    }

    /// `jrcxz` forward, its displacement to be set with [`Emitter::patch_rel8`]; returns
    /// the displacement byte's offset.
    pub fn jrcxz_forward(&mut self) -> usize {
        self.bytes(&[0xe3, 0]);
        self.code.len().saturating_sub(1)
    }

    /// `jmp rel8` forward, like [`Emitter::jrcxz_forward`].
    pub fn jmp_forward(&mut self) -> usize {
        self.bytes(&[0xeb, 0]);
        self.code.len().saturating_sub(1)
    }

    /// Points the rel8 displacement byte at `at` to the current offset; `None` if out of
    /// reach.
    pub fn patch_rel8(&mut self, at: usize) -> Option<()> {
        let rel = i8::try_from(self.code.len().checked_sub(at.checked_add(1)?)?).ok()?;
        *self.code.get_mut(at)? = rel as u8;
        Some(())
    }

    /// `call rel32` forward, its displacement to be set with [`Emitter::patch_rel32`];
    /// returns the displacement field's offset.
    pub fn call_forward(&mut self) -> usize {
        self.byte(0xe8);
        self.bytes(&[0; 4]);
        self.code.len().saturating_sub(4)
    }

    /// Points the rel32 field at `at` to the current offset.
    pub fn patch_rel32(&mut self, at: usize) -> Option<()> {
        let rel = i32::try_from(self.code.len().checked_sub(at.checked_add(4)?)?).ok()?;
        self.code
            .get_mut(at..at.checked_add(4)?)?
            .copy_from_slice(&rel.to_le_bytes());
        Some(())
    }

    /// `jmp reg`.
    pub fn jmp_reg(&mut self, reg: Gpr) {
        let r = reg.num();
        if r >= 8 {
            self.byte(0x41);
        }
        self.bytes(&[0xff, 0xe0 | (r & 7)]);
    }

    /// `endbr64`: where an indirect branch may land under IBT (a `nop` without it).
    pub fn endbr64(&mut self) {
        self.bytes(&ENDBR64);
    }

    /// `ret imm16`.
    pub fn ret_imm(&mut self, imm: u16) {
        self.byte(0xc2);
        self.bytes(&imm.to_le_bytes());
    }

    /// Pads with `ds` segment prefixes (ignored on near branches, and no extra
    /// instruction) so that the rel32 field of a branch whose opcode takes `opcode_len`
    /// bytes starts at a 4-byte-aligned runtime address. Linking then rewrites the field
    /// with one aligned 4-byte store, which a CPU running the branch sees whole: the rule
    /// DynamoRIO keeps for exits patched while other threads run them.
    pub fn align_rel32(&mut self, opcode_len: u64) {
        let pad = 3 & 4u64.wrapping_sub(self.here().wrapping_add(opcode_len) & 3);
        for _ in 0..pad {
            self.byte(DS_PREFIX);
        }
    }

    /// `jmp rel32` to a label.
    pub fn jmp_label(&mut self, label: Label) {
        self.byte(0xe9);
        self.rel32_to(label);
    }

    /// `jcc rel32` (condition nibble `cc`) to a label.
    pub fn jcc_label(&mut self, cc: u8, label: Label) {
        self.bytes(&[0x0f, 0x80 | (cc & 0xf)]);
        self.rel32_to(label);
    }

    /// `call rel32` to a label.
    pub fn call_label(&mut self, label: Label) {
        self.byte(0xe8);
        self.rel32_to(label);
    }

    /// `push qword [rip + literal]`.
    pub fn push_literal(&mut self, literal: usize) {
        self.bytes(&[0xff, 0x35]);
        self.rel32_to(Label::Literal(literal));
    }

    /// `mov rcx, [rip + literal]`.
    pub fn load_rcx_literal(&mut self, literal: usize) {
        self.bytes(&[0x48, 0x8b, 0x0d]);
        self.rel32_to(Label::Literal(literal));
    }

    /// Adds an 8-byte literal and returns its index.
    pub fn literal(&mut self, value: u64) -> usize {
        self.overflow |= !push_within(&mut self.literals, value);
        self.literals.len().saturating_sub(1)
    }

    /// `jmp dispatcher`: rel32 when in reach, else `jmp [rip + slot]` through the arena's
    /// dispatcher slot.
    pub fn jmp_abs(&mut self, target: u64, slot: u64) {
        let rel = target.wrapping_sub(self.here().wrapping_add(5)) as i64;
        if let Ok(rel) = i32::try_from(rel) {
            self.byte(0xe9);
            self.bytes(&rel.to_le_bytes());
        } else {
            let rel = slot.wrapping_sub(self.here().wrapping_add(6)) as u32;
            self.bytes(&[0xff, 0x25]);
            self.bytes(&rel.to_le_bytes());
        }
    }

    /// Resolves every fixup: `exits[i].stub` is the offset of exit `i`'s stub,
    /// `literal_base` the offset of literal 0. Returns `None` if a label is unknown.
    pub fn resolve(&mut self, exits: &[ExitSpec], literal_base: usize) -> Option<()> {
        for f in &self.fixups {
            let target = match f.label {
                Label::Stub(i) => exits.get(i)?.stub? as usize,
                Label::Literal(i) => literal_base.checked_add(i.checked_mul(8)?)?,
            };
            let rel = (target as i64).wrapping_sub(f.field as i64 + 4) as i32;
            self.code
                .get_mut(f.field..f.field.checked_add(4)?)?
                .copy_from_slice(&rel.to_le_bytes());
        }
        Some(())
    }
}
