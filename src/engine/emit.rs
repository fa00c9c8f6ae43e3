//! Machine-code emission for one fragment: hand-assembled fixed sequences, PC-map entries,
//! and fixups of rel32 fields that point at exit stubs and literals.
//!
//! Every sequence emitted here is flag-free (`lea`, `mov`, `movzx`, `not`, `push`, `pop`,
//! `jrcxz`, `jmp`, `ret`), so guest flags survive translated code untouched.

use alloc::vec::Vec;

use crate::pcmap::{EntryKind, Gpr, PcEntry, Rollback};
use crate::translate::ExitSpec;

/// Buffers reused from one translation to the next, so that translating allocates only
/// what a fragment keeps (its PC map).
#[derive(Default)]
pub(crate) struct Scratch {
    pub window: Vec<u8>,
    pub code: Vec<u8>,
    pub entries: Vec<PcEntry>,
    pub literals: Vec<u64>,
    pub fixups: Vec<Fixup>,
    pub exits: Vec<ExitSpec>,
    pub return_sites: Vec<(u32, u64)>,
}

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
}

/// `rsp`-relative memory operand (ModRM with SIB 0x24), disp8 when it fits.
fn modrm_rsp(reg: u8, disp: i32, out: &mut Vec<u8>) {
    let r = (reg & 7) << 3;
    if disp == 0 {
        out.extend_from_slice(&[r | 0x04, 0x24]);
    } else if let Ok(d8) = i8::try_from(disp) {
        out.extend_from_slice(&[0x44 | r, 0x24, d8 as u8]);
    } else {
        out.extend_from_slice(&[0x84 | r, 0x24]);
        out.extend_from_slice(&disp.to_le_bytes());
    }
}

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
        self.entries.push(entry);
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
        self.code.extend_from_slice(bytes);
    }

    /// Appends raw encoded bytes (mapping set by the caller).
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }

    fn rel32_to(&mut self, label: Label) {
        self.fixups.push(Fixup {
            field: self.code.len(),
            label,
        });
        self.code.extend_from_slice(&[0; 4]);
    }

    /// `lea rsp, [rsp + disp]` (nothing when `disp == 0`).
    pub fn lea_rsp(&mut self, disp: i32) {
        if disp != 0 {
            self.code.push(0x48);
            self.code.push(0x8d);
            modrm_rsp(4, disp, &mut self.code);
        }
    }

    /// `lea reg, [rsp + disp]`.
    pub fn lea_reg_rsp(&mut self, reg: Gpr, disp: i32) {
        let r = reg.num();
        self.code.push(rex_w(r, 4));
        self.code.push(0x8d);
        modrm_rsp(r, disp, &mut self.code);
    }

    /// `push reg`.
    pub fn push(&mut self, reg: Gpr) {
        let r = reg.num();
        if r >= 8 {
            self.code.push(0x41);
        }
        self.code.push(0x50 | (r & 7));
    }

    /// `pop reg`.
    pub fn pop(&mut self, reg: Gpr) {
        let r = reg.num();
        if r >= 8 {
            self.code.push(0x41);
        }
        self.code.push(0x58 | (r & 7));
    }

    /// `push imm32` (sign-extended to 64 bits).
    pub fn push_imm(&mut self, imm: i32) {
        self.code.push(0x68);
        self.code.extend_from_slice(&imm.to_le_bytes());
    }

    /// `mov reg, imm64`.
    pub fn mov_imm64(&mut self, reg: Gpr, imm: u64) {
        let r = reg.num();
        self.code.push(0x48 | ((r >> 3) & 1));
        self.code.push(0xb8 | (r & 7));
        self.code.extend_from_slice(&imm.to_le_bytes());
    }

    /// `mov dst, src` (64-bit registers).
    pub fn mov_reg(&mut self, dst: Gpr, src: Gpr) {
        let (d, s) = (dst.num(), src.num());
        self.code
            .extend_from_slice(&[rex_w(s, d), 0x89, 0xc0 | (s & 7) << 3 | (d & 7)]);
    }

    /// `mov reg, [rsp + disp]`.
    pub fn load_rsp(&mut self, reg: Gpr, disp: i32) {
        let r = reg.num();
        self.code.push(rex_w(r, 4));
        self.code.push(0x8b);
        modrm_rsp(r, disp, &mut self.code);
    }

    /// `mov [rsp + disp], reg`.
    pub fn store_rsp(&mut self, disp: i32, reg: Gpr) {
        let r = reg.num();
        self.code.push(rex_w(r, 4));
        self.code.push(0x89);
        modrm_rsp(r, disp, &mut self.code);
    }

    /// `mov qword [rsp + disp], imm32` (sign-extended).
    pub fn store_rsp_imm(&mut self, disp: i32, imm: i32) {
        self.code.extend_from_slice(&[0x48, 0xc7]);
        modrm_rsp(0, disp, &mut self.code);
        self.code.extend_from_slice(&imm.to_le_bytes());
    }

    /// The flag-free indirect-branch lookup core. On entry `rax` = guest target; `rcx`, `rdx`
    /// are free. Leaves `rdx` = table entry address; jumps (`jrcxz rel8`) to the hit path
    /// when the entry's guest PC equals `rax`, else falls through. Returns the offset of the
    /// `jrcxz` displacement byte, to be set with [`Emitter::patch_rel8`].
    ///
    /// ```text
    /// movzx ecx, ax | al          ; slot index = low bits of the target
    /// lea   rcx, [rcx + rcx]      ; index * 2
    /// lea   rdx, [rip + table]
    /// lea   rdx, [rdx + rcx*8]    ; entry = table + index * 16
    /// mov   rcx, [rdx]            ; entry guest PC
    /// not   rcx
    /// lea   rcx, [rcx + rax + 1]  ; rcx = target - entry guest PC
    /// jrcxz hit
    /// ```
    pub fn ibl_probe(&mut self, table: u64, bits16: bool) -> usize {
        if bits16 {
            self.code.extend_from_slice(&[0x0f, 0xb7, 0xc8]);
        } else {
            self.code.extend_from_slice(&[0x0f, 0xb6, 0xc8]);
        }
        self.code.extend_from_slice(&[0x48, 0x8d, 0x0c, 0x09]);
        self.code.extend_from_slice(&[0x48, 0x8d, 0x15]);
        let rel = table.wrapping_sub(self.here().wrapping_add(4)) as u32;
        self.code.extend_from_slice(&rel.to_le_bytes());
        self.code.extend_from_slice(&[0x48, 0x8d, 0x14, 0xca]);
        self.code.extend_from_slice(&[0x48, 0x8b, 0x0a]);
        self.code.extend_from_slice(&[0x48, 0xf7, 0xd1]);
        self.code.extend_from_slice(&[0x48, 0x8d, 0x4c, 0x01, 0x01]);
        self.code.extend_from_slice(&[0xe3, 0]);
        self.code.len() - 1
    }

    /// Points the rel8 displacement byte at `at` to the current offset; `None` if out of
    /// reach.
    pub fn patch_rel8(&mut self, at: usize) -> Option<()> {
        let rel = i8::try_from(self.code.len().checked_sub(at.checked_add(1)?)?).ok()?;
        *self.code.get_mut(at)? = rel as u8;
        Some(())
    }

    /// `mov rcx, [rdx + 8]` (the table entry's cache PC).
    pub fn load_entry_target(&mut self) {
        self.code.extend_from_slice(&[0x48, 0x8b, 0x4a, 0x08]);
    }

    /// `ret imm16`.
    pub fn ret_imm(&mut self, imm: u16) {
        self.code.push(0xc2);
        self.code.extend_from_slice(&imm.to_le_bytes());
    }

    /// `jmp rel32` to a label.
    pub fn jmp_label(&mut self, label: Label) {
        self.code.push(0xe9);
        self.rel32_to(label);
    }

    /// `jcc rel32` (condition nibble `cc`) to a label.
    pub fn jcc_label(&mut self, cc: u8, label: Label) {
        self.code.extend_from_slice(&[0x0f, 0x80 | (cc & 0xf)]);
        self.rel32_to(label);
    }

    /// `call rel32` to a label.
    pub fn call_label(&mut self, label: Label) {
        self.code.push(0xe8);
        self.rel32_to(label);
    }

    /// `push qword [rip + literal]`.
    pub fn push_literal(&mut self, literal: usize) {
        self.code.extend_from_slice(&[0xff, 0x35]);
        self.rel32_to(Label::Literal(literal));
    }

    /// `mov rcx, [rip + literal]`.
    pub fn load_rcx_literal(&mut self, literal: usize) {
        self.code.extend_from_slice(&[0x48, 0x8b, 0x0d]);
        self.rel32_to(Label::Literal(literal));
    }

    /// Adds an 8-byte literal and returns its index.
    pub fn literal(&mut self, value: u64) -> usize {
        self.literals.push(value);
        self.literals.len() - 1
    }

    /// `jmp dispatcher`: rel32 when in reach, else `jmp [rip + slot]` through the arena's
    /// dispatcher slot.
    pub fn jmp_abs(&mut self, target: u64, slot: u64) {
        let rel = target.wrapping_sub(self.here().wrapping_add(5)) as i64;
        if let Ok(rel) = i32::try_from(rel) {
            self.code.push(0xe9);
            self.code.extend_from_slice(&rel.to_le_bytes());
        } else {
            let rel = slot.wrapping_sub(self.here().wrapping_add(6)) as u32;
            self.code.extend_from_slice(&[0xff, 0x25]);
            self.code.extend_from_slice(&rel.to_le_bytes());
        }
    }

    /// Resolves every fixup: `stub_offsets[i]` is the offset of exit `i`'s stub,
    /// `literal_base` the offset of literal 0. Returns `None` if a label is unknown.
    pub fn resolve(&mut self, stub_offsets: &[usize], literal_base: usize) -> Option<()> {
        for f in &self.fixups {
            let target = match f.label {
                Label::Stub(i) => *stub_offsets.get(i)?,
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
