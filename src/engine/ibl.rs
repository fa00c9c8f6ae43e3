//! Indirect branch lookup (IBL): the inline, flag-free guest-PC → cache-PC lookup that
//! translates `jmp r/m64`, `call r/m64` and (Transparent policy) `ret`, with its exit to the
//! dispatcher on a miss and the rollback recorded at every instruction of it.

use iced_x86::{Code, Instruction, MemoryOperand, OpKind, Register};

use crate::config::{CallRetPolicy, Config, IblSize};
use crate::emit::{lea_rsp_len, ENDBR64};
use crate::error::{Error, Unsupported};
use crate::exit::{ExitKind, IndirectKind};
use crate::pcmap::{Gpr, Restore, RipSource};
use crate::translate::{gpr_of, rb, to_i32, Builder};

/// The registers a lookup sequence spills, in push order, and where each one's slot is
/// (from the `rsp` after the last push).
#[derive(Clone, Copy)]
struct Spill {
    /// Two (`rax`, `rcx`) when the table is addressable with an absolute disp32 (the
    /// kernel's code caches, in the top 2 GiB), else three (`rdx` too, to hold the
    /// RIP-relative table address).
    n: u32,
}

impl Spill {
    const REGS: [Gpr; 3] = [Gpr::Rax, Gpr::Rcx, Gpr::Rdx];

    fn bytes(self) -> u32 {
        8 * self.n
    }

    /// Every spilled register still to restore; `restored` of them (the lowest slots
    /// first) are live again.
    fn slots(self, restored: u32) -> [Option<Restore>; 3] {
        let mut out = [None; 3];
        for (i, reg) in Self::REGS.iter().enumerate().take(self.n as usize) {
            let off = 8 * (self.n - 1 - i as u32);
            if off >= 8 * restored {
                if let Some(o) = out.get_mut(i) {
                    *o = Some(Restore::new(*reg, off));
                }
            }
        }
        out
    }

    /// The same after `popped` pops (the lowest slots), offsets from the `rsp` then.
    fn popped(self, popped: u32) -> [Option<Restore>; 3] {
        let mut out = self.slots(popped);
        for r in out.iter_mut().flatten() {
            r.offset -= 8 * popped;
        }
        out
    }

    /// The spill of a lookup whose table is at runtime address `table`.
    fn of(table: u64, ibl: IblSize) -> Self {
        Spill {
            n: if table_absolute(table, ibl) { 2 } else { 3 },
        }
    }
}

/// Whether the whole lookup table at `table` is addressable as `[index*8 + disp32]`.
fn table_absolute(table: u64, ibl: IblSize) -> bool {
    let end = table.wrapping_add(ibl.table_bytes() as u64);
    let fits = |a: u64| i32::try_from(a as i64).is_ok();
    fits(table) && fits(end) && end > table
}

/// Bytes of the lookup entry that starts every fragment (see [`Builder::ibl_entry`]) in a
/// cache whose table is at `table`: none under the Transparent policy.
pub(crate) fn ibl_entry_len(cfg: &Config, table: u64) -> u32 {
    match cfg.policy {
        CallRetPolicy::Transparent => 0,
        CallRetPolicy::Fast => {
            let pops = Spill::of(table, cfg.ibl).n;
            ENDBR64.len() as u32 + pops + lea_rsp_len(to_i32(cfg.red_zone + 8))
        }
    }
}

/// `[rcx*8 + array]`, `array` at an absolute address in disp32 reach.
fn by_index(array: u64) -> MemoryOperand {
    MemoryOperand::new(
        Register::None,
        Register::RCX,
        8,
        array as i64,
        4,
        false,
        Register::None,
    )
}

impl Builder<'_> {
    pub(crate) fn ibl(
        &mut self,
        insn: &Instruction,
        kind: IndirectKind,
        pop: u32,
    ) -> Result<(), Error> {
        self.ibl_with(insn, kind, pop, None, 0)
    }

    /// Fast policy: the lookup entry at the start of every fragment, where a lookup that
    /// hit jumps (`jmp rcx`, so the branch predictor's return stack is left alone) with
    /// its spill area still on the stack, `red_zone + 8` bytes below the guest `rsp`
    /// after the branch; the lookup table holds this address. State throughout: before
    /// the fragment's first instruction.
    /// ```text
    /// endbr64
    /// pop rcx ; pop rax                  ; three registers: pop rdx ; pop rcx ; pop rax
    /// lea rsp, [rsp + red_zone + 8]      ; the fragment's entry (dispatcher, links)
    /// ```
    pub(crate) fn ibl_entry(&mut self, pc: u64) -> Result<(), Error> {
        let sp = Spill::of(self.layout.table, self.cfg.ibl);
        let gap = self.rz() + 8;
        let guest = RipSource::Guest(pc);
        self.e.map(pc, rb(sp.popped(0), sp.bytes() + gap, guest));
        self.e.endbr64();
        for popped in 0..sp.n {
            let left = sp.bytes() - 8 * popped;
            self.e.map(pc, rb(sp.popped(popped), left + gap, guest));
            if let Some(&reg) = Spill::REGS.get((sp.n - 1 - popped) as usize) {
                self.e.pop(reg);
            }
        }
        self.e.map(pc, rb([None; 3], gap, guest));
        self.e.lea_rsp(to_i32(gap));
        if self.e.off() != ibl_entry_len(self.cfg, self.layout.table) as usize {
            return Err(Error::Encode { pc });
        }
        Ok(())
    }

    /// The inline indirect-branch lookup. `pop` is what `ret` pops (8 + imm16); `ret_lit`
    /// the literal holding the return address a (Transparent) `call` stores in its slot;
    /// `pushed` what the translation already pushed below the guest `rsp` (a Fast `call`'s
    /// real `call` into this sequence: 8), which every rollback to the state before the
    /// branch also pops.
    ///
    /// The table holds `slots` negated guest PCs, then `slots` cache PCs, so that
    /// `key + target` is zero on a match; a lookup probes the slot of the target's low bits,
    /// then the next one. With `L` the spill distance, `n` spilled registers, the spill
    /// area `S = old_rsp - L - 8n`; `post` is the guest rsp after the branch;
    /// `k = post - red_zone - 16 - S`. With the table in disp32 reach (`n = 2`):
    /// ```text
    /// lea  rsp, [rsp - L] ; push rax ; push rcx
    /// mov  rax, <target>                 ; operand, rsp-relative ones adjusted by L + 16
    /// (call) mov rcx, [rip + ret_lit] ; mov [rsp + L + 8], rcx    ; the pushed return address
    /// movzx ecx, ax|al ; mov rcx, [rcx*8 + keys] ; lea rcx, [rcx + rax] ; jrcxz hit1
    /// movzx ecx, ax|al ; mov rcx, [rcx*8 + keys + 8] ; lea rcx, [rcx + rax] ; jrcxz hit2
    /// miss: mov [rsp + k + 8], rax ; mov rcx, [rsp] ; mov rax, [rsp + 8]
    ///       mov qword [rsp + k], exit_id ; lea rsp, [rsp + k] ; jmp dispatcher
    /// hit2: movzx ecx, ax|al ; mov rcx, [rcx*8 + values + 8] ; jmp tail
    /// hit1: movzx ecx, ax|al ; mov rcx, [rcx*8 + values]
    /// tail: mov rax, [rsp + 8] ; mov [rsp + 8], rcx ; pop rcx ; ret k + red_zone
    /// ```
    /// Under the Fast policy each hit ends with `jmp rcx` instead (no `tail`): the table
    /// holds the targets' lookup entries ([`Builder::ibl_entry`]), which restore the
    /// spilled registers and `rsp` from a spill area `red_zone + 8` below `post`. A `ret`
    /// is a lookup there only at the embedder's Transparent sites; a plain one's spill
    /// area (`L = red_zone`) is where an entry expects it, a `ret imm16`'s is not, so its
    /// hits take the `tail` into the target's fragment entry: `lea rcx, [rcx + E]` (`E`
    /// the lookup entry's length) first.
    /// Otherwise (`n = 3`, rdx pushed after rcx) rdx holds the first key's address:
    /// `movzx ecx, ax|al ; lea rdx, [rip + keys] ; lea rdx, [rdx + rcx*8] ; mov rcx, [rdx]`,
    /// the second probe reads `[rdx + 8]`, the hits `[rdx + 8*slots (+ 8)]`, and the tail is
    /// `mov rdx, [rsp] ; mov [rsp], rcx ; mov rcx, [rsp + 8] ; mov rax, [rsp + 16] ;
    /// ret k + red_zone + 8`.
    pub(crate) fn ibl_with(
        &mut self,
        insn: &Instruction,
        kind: IndirectKind,
        pop: u32,
        ret_lit: Option<usize>,
        pushed: u32,
    ) -> Result<(), Error> {
        let pc = insn.ip();
        let rz = self.rz();
        let sp = Spill::of(self.layout.table, self.cfg.ibl);
        let abs = sp.n == 2;
        let fast = self.cfg.policy == CallRetPolicy::Fast;
        // Fast hits jump to a lookup entry, which finds the spill area `rz + 8` below
        // `post`: every lookup's but a `ret imm16`'s (a Transparent site's).
        let jump = fast && (kind != IndirectKind::Ret || pop == 8);
        let s = sp.bytes();
        // L: rsp on entry - rsp after the first lea; k as documented above. The target
        // slot (k + 8) lies above the spill area, so the miss path can store it first.
        let (l, k) = match kind {
            IndirectKind::Ret => (rz, pop + s - 16),
            // A call storing its return address itself skips that slot too.
            IndirectKind::Call if ret_lit.is_some() => (rz + 16, s - 8),
            IndirectKind::Jmp | IndirectKind::Call => (rz + 8, s - 8),
        };
        let hit_ret = u16::try_from(k + rz + s - 16).map_err(|_| Error::Unsupported {
            pc,
            what: Unsupported::RetImmediate,
        })?;
        let before = pushed + l + s;
        let after = k + rz + 16;
        let i = self.add_exit(ExitKind::Indirect { insn_pc: pc, kind }, pc, None);
        let id = self.exit_id(i)?;
        let guest = RipSource::Guest(pc);

        self.e.map(pc, rb([None; 3], pushed, guest));
        self.e.lea_rsp(-to_i32(l));
        for n in 0..sp.n {
            let spilled = Spill { n }.slots(0);
            self.e.map(pc, rb(spilled, pushed + l + 8 * n, guest));
            if let Some(&reg) = Spill::REGS.get(n as usize) {
                self.e.push(reg);
            }
        }
        self.e.map(pc, rb(sp.slots(0), before, guest));
        match kind {
            IndirectKind::Ret => self.e.load_rsp(Gpr::Rax, to_i32(before)),
            IndirectKind::Jmp | IndirectKind::Call => self.load_target(insn, to_i32(before))?,
        }
        if let Some(lit) = ret_lit {
            self.e.load_rcx_literal(lit);
            self.e.store_rsp(to_i32(l + s - 8), Gpr::Rcx);
        }
        let large = self.cfg.ibl == IblSize::Large;
        let table = self.layout.table;
        let slots8 = i64::from(self.cfg.ibl.slots()) * 8;
        let values = table.wrapping_add(slots8 as u64);
        // First probe: the slot of the target's low bits.
        self.index_to_rcx(large, pc)?;
        if abs {
            self.mov_rcx(by_index(table), pc)?;
        } else {
            // rdx = the key's address, kept for the second probe and the hit paths.
            let rip_table = MemoryOperand::new(
                Register::RIP,
                Register::None,
                1,
                table as i64,
                8,
                false,
                Register::None,
            );
            let lea = Instruction::with2(Code::Lea_r64_m, Register::RDX, rip_table);
            self.asm(lea, pc)?;
            let key = MemoryOperand::with_base_index(Register::RDX, Register::RCX);
            let key = MemoryOperand { scale: 8, ..key };
            self.asm(Instruction::with2(Code::Lea_r64_m, Register::RDX, key), pc)?;
            self.mov_rcx(MemoryOperand::with_base(Register::RDX), pc)?;
        }
        self.compare_rcx_rax(pc)?;
        let hit1 = self.e.jrcxz_forward();
        // Second probe: the next slot.
        if abs {
            self.index_to_rcx(large, pc)?;
            self.mov_rcx(by_index(table.wrapping_add(8)), pc)?;
        } else {
            self.mov_rcx(MemoryOperand::with_base_displ(Register::RDX, 8), pc)?;
        }
        self.compare_rcx_rax(pc)?;
        let hit2 = self.e.jrcxz_forward();

        // Miss: leave with the frame contract, state after the branch.
        let k32 = to_i32(k);
        self.e.store_rsp(k32 + 8, Gpr::Rax);
        let target_slot = RipSource::Stack(k + 8);
        for restored in 0..sp.n {
            self.e.map(pc, rb(sp.slots(restored), after, target_slot));
            let reg = Spill::REGS.get((sp.n - 1 - restored) as usize);
            if let Some(&reg) = reg {
                self.e.load_rsp(reg, to_i32(8 * restored));
            }
        }
        self.e.map(pc, rb([None; 3], after, target_slot));
        self.e.store_rsp_imm(k32, id);
        self.e.lea_rsp(k32);
        self.e.map(pc, rb([None; 3], rz + 16, RipSource::Stack(8)));
        self.e
            .jmp_abs(self.cfg.dispatcher, self.layout.dispatcher_slot);

        // Hits: rcx = the slot's cache PC, then restore and `ret imm16` into the fragment,
        // state before the branch. The second slot's hit (rarer) jumps to the common tail.
        // Fast: `jmp rcx` to the target's lookup entry, which restores.
        let mut join = None;
        for (hit, next) in [(hit2, 8), (hit1, 0)] {
            self.e.patch_rel8(hit).ok_or(Error::Encode { pc })?;
            self.e.map(pc, rb(sp.slots(0), before, guest));
            if abs {
                self.index_to_rcx(large, pc)?;
                self.mov_rcx(by_index(values.wrapping_add(next)), pc)?;
            } else {
                let at = MemoryOperand::with_base_displ(Register::RDX, slots8 + next as i64);
                self.mov_rcx(at, pc)?;
            }
            if jump {
                self.e.jmp_reg(Gpr::Rcx);
            } else if join.is_none() {
                join = Some(self.e.jmp_forward());
            }
        }
        if jump {
            return Ok(());
        }
        if let Some(join) = join {
            self.e.patch_rel8(join).ok_or(Error::Encode { pc })?;
        }
        if fast {
            // The table holds lookup entries: return past it, into the fragment entry.
            let skip = ibl_entry_len(self.cfg, self.layout.table);
            let entry = MemoryOperand::with_base_displ(Register::RCX, i64::from(skip));
            self.asm(
                Instruction::with2(Code::Lea_r64_m, Register::RCX, entry),
                pc,
            )?;
        }
        if abs {
            self.e.load_rsp(Gpr::Rax, 8);
            let rcx_only = [Some(Restore::new(Gpr::Rcx, 0)), None, None];
            self.e.map(pc, rb(rcx_only, before, guest));
            self.e.store_rsp(8, Gpr::Rcx);
            self.e.pop(Gpr::Rcx);
            self.e.map(pc, rb([None; 3], before - 8, guest));
        } else {
            self.e.load_rsp(Gpr::Rdx, 0);
            self.e.map(pc, rb(sp.slots(1), before, guest));
            self.e.store_rsp(0, Gpr::Rcx);
            self.e.load_rsp(Gpr::Rcx, 8);
            self.e.map(pc, rb(sp.slots(2), before, guest));
            self.e.load_rsp(Gpr::Rax, 16);
            self.e.map(pc, rb([None; 3], before, guest));
        }
        self.e.ret_imm(hit_ret);
        Ok(())
    }

    /// Encodes `insn` here and appends it.
    fn asm(
        &mut self,
        insn: Result<Instruction, iced_x86::IcedError>,
        pc: u64,
    ) -> Result<(), Error> {
        let insn = insn.map_err(|_| Error::Encode { pc })?;
        self.encode(&insn, pc)?;
        self.e.bytes(&self.enc);
        Ok(())
    }

    /// `movzx ecx, ax|al`: the table index of the target in rax.
    fn index_to_rcx(&mut self, large: bool, pc: u64) -> Result<(), Error> {
        let (code, src) = if large {
            (Code::Movzx_r32_rm16, Register::AX)
        } else {
            (Code::Movzx_r32_rm8, Register::AL)
        };
        self.asm(Instruction::with2(code, Register::ECX, src), pc)
    }

    /// `lea rcx, [rcx + rax]`: zero when the key in rcx is the target's.
    fn compare_rcx_rax(&mut self, pc: u64) -> Result<(), Error> {
        let sum = MemoryOperand::with_base_index(Register::RCX, Register::RAX);
        self.asm(Instruction::with2(Code::Lea_r64_m, Register::RCX, sum), pc)
    }

    /// `mov rcx, <mem>`.
    fn mov_rcx(&mut self, mem: MemoryOperand, pc: u64) -> Result<(), Error> {
        self.asm(
            Instruction::with2(Code::Mov_r64_rm64, Register::RCX, mem),
            pc,
        )
    }

    /// `rax = ` the target operand of `jmp`/`call r/m64`; `adj` = bytes pushed since the
    /// guest instruction started.
    fn load_target(&mut self, insn: &Instruction, adj: i32) -> Result<(), Error> {
        let pc = insn.ip();
        let size_err = Error::Unsupported {
            pc,
            what: Unsupported::OperandSize,
        };
        match insn.op0_kind() {
            OpKind::Register => {
                let reg = gpr_of(insn.op0_register()).ok_or(size_err)?;
                if reg == Gpr::Rsp {
                    self.e.lea_reg_rsp(Gpr::Rax, adj);
                } else {
                    self.e.mov_reg(Gpr::Rax, reg);
                }
                Ok(())
            }
            OpKind::Memory if matches!(insn.code(), Code::Jmp_rm64 | Code::Call_rm64) => {
                let seg = insn.segment_prefix();
                let base = insn.memory_base();
                if insn.is_ip_rel_memory_operand() {
                    if base == Register::EIP {
                        return Err(Error::Unsupported {
                            pc,
                            what: Unsupported::EipRelative,
                        });
                    }
                    let abs = insn.ip_rel_memory_address();
                    let near = MemoryOperand::new(
                        Register::RIP,
                        Register::None,
                        1,
                        abs as i64,
                        8,
                        false,
                        seg,
                    );
                    let load = Instruction::with2(Code::Mov_r64_rm64, Register::RAX, near)
                        .map_err(|_| size_err)?;
                    if self.reaches(abs) && self.encode(&load, pc).is_ok() {
                        self.e.bytes(&self.enc);
                        return Ok(());
                    }
                    self.e.mov_imm64(Gpr::Rax, abs);
                    let far =
                        MemoryOperand::new(Register::RAX, Register::None, 1, 0, 0, false, seg);
                    let load = Instruction::with2(Code::Mov_r64_rm64, Register::RAX, far)
                        .map_err(|_| size_err)?;
                    self.encode(&load, pc)?;
                    self.e.bytes(&self.enc);
                    return Ok(());
                }
                let index = insn.memory_index();
                let ok64 = |r: Register| r == Register::None || r.is_gpr64();
                if !ok64(base) || !ok64(index) {
                    return Err(size_err);
                }
                let mut disp = insn.memory_displacement64() as i64;
                if base == Register::RSP {
                    disp = disp.wrapping_add(i64::from(adj));
                }
                let mem =
                    MemoryOperand::new(base, index, insn.memory_index_scale(), disp, 1, false, seg);
                let load = Instruction::with2(Code::Mov_r64_rm64, Register::RAX, mem)
                    .map_err(|_| size_err)?;
                self.encode(&load, pc)?;
                self.e.bytes(&self.enc);
                Ok(())
            }
            _ => Err(size_err),
        }
    }
}
