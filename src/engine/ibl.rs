//! Indirect branch lookup (IBL): the inline, flag-free guest-PC → cache-PC lookup that
//! translates `jmp r/m64`, `call r/m64` and (Transparent policy) `ret`, with its exit to the
//! dispatcher on a miss and the rollback recorded at every instruction of it.

use iced_x86::{Code, Instruction, MemoryOperand, OpKind, Register};

use crate::config::IblSize;
use crate::error::{Error, Unsupported};
use crate::exit::{ExitKind, IndirectKind};
use crate::pcmap::{Gpr, Restore, RipSource, Rollback};
use crate::translate::{gpr_of, rb, to_i32, Builder, SPILL};

impl Builder<'_> {
    pub(crate) fn ibl(
        &mut self,
        insn: &Instruction,
        kind: IndirectKind,
        pop: u32,
    ) -> Result<(), Error> {
        self.ibl_with(insn, kind, pop, None)
    }

    /// The inline indirect-branch lookup. `pop` is what `ret` pops (8 + imm16); `ret_lit`
    /// the literal holding the return address a `call` pushes.
    ///
    /// With `L` the spill distance, the spill area `S = old_rsp - L - 24` holds rdx, rcx, rax;
    /// `post` is the guest rsp after the branch; `k = post - red_zone - 16 - S`:
    /// ```text
    /// lea  rsp, [rsp - L] ; push rax ; push rcx ; push rdx
    /// mov  rax, <target>                 ; operand, rsp-relative ones adjusted by L + 24
    /// (call) mov rcx, [rip + ret_lit] ; mov [rsp + L + 16], rcx   ; the pushed return address
    /// probe (see Emitter::ibl_probe) ; jrcxz hit
    /// miss: mov [rsp + k + 8], rax ; mov rdx, [rsp] ; mov rcx, [rsp + 8] ; mov rax, [rsp + 16]
    ///       mov qword [rsp + k], exit_id ; lea rsp, [rsp + k] ; jmp dispatcher
    /// hit:  mov rcx, [rdx + 8] ; mov rdx, [rsp] ; mov [rsp], rcx ; mov rcx, [rsp + 8]
    ///       mov rax, [rsp + 16] ; ret k + red_zone + 8
    /// ```
    pub(crate) fn ibl_with(
        &mut self,
        insn: &Instruction,
        kind: IndirectKind,
        pop: u32,
        ret_lit: Option<usize>,
    ) -> Result<(), Error> {
        let pc = insn.ip();
        let rz = self.rz();
        // L: old_rsp - rsp after the first lea; k as documented above.
        let (l, k) = match kind {
            IndirectKind::Jmp => (rz + 8, 16),
            IndirectKind::Call => (rz + 16, 16),
            IndirectKind::Ret => (rz, 8 + pop),
        };
        let hit_ret = u16::try_from(k + rz + 8).map_err(|_| Error::Unsupported {
            pc,
            what: Unsupported::RetImmediate,
        })?;
        let before = l + 24;
        let after = k + rz + 16;
        let i = self.add_exit(ExitKind::Indirect { insn_pc: pc, kind }, pc, None);
        let id = self.exit_id(i)?;
        let full = |adj| rb(SPILL, adj, RipSource::Guest(pc));

        self.e.map(pc, Rollback::at(pc));
        self.e.lea_rsp(-to_i32(l));
        self.e.map(pc, rb([None; 3], l, RipSource::Guest(pc)));
        self.e.push(Gpr::Rax);
        self.e.map(
            pc,
            rb(
                [Some(Restore::new(Gpr::Rax, 0)), None, None],
                l + 8,
                RipSource::Guest(pc),
            ),
        );
        self.e.push(Gpr::Rcx);
        let two = [
            Some(Restore::new(Gpr::Rax, 8)),
            Some(Restore::new(Gpr::Rcx, 0)),
            None,
        ];
        self.e.map(pc, rb(two, l + 16, RipSource::Guest(pc)));
        self.e.push(Gpr::Rdx);
        self.e.map(pc, full(before));
        match kind {
            IndirectKind::Ret => self.e.load_rsp(Gpr::Rax, to_i32(before)),
            IndirectKind::Jmp | IndirectKind::Call => self.load_target(insn, to_i32(before))?,
        }
        if let Some(lit) = ret_lit {
            self.e.load_rcx_literal(lit);
            self.e.store_rsp(to_i32(l + 16), Gpr::Rcx);
        }
        let jrcxz = self
            .e
            .ibl_probe(self.layout.table, self.cfg.ibl == IblSize::Large);

        // Miss: leave with the frame contract, state after the branch.
        let k32 = to_i32(k);
        self.e.store_rsp(k32 + 8, Gpr::Rax);
        let target_slot = RipSource::Stack(k + 8);
        self.e.map(pc, rb(SPILL, after, target_slot));
        self.e.load_rsp(Gpr::Rdx, 0);
        let rax_rcx = [
            Some(Restore::new(Gpr::Rax, 16)),
            Some(Restore::new(Gpr::Rcx, 8)),
            None,
        ];
        self.e.map(pc, rb(rax_rcx, after, target_slot));
        self.e.load_rsp(Gpr::Rcx, 8);
        let rax_only = [Some(Restore::new(Gpr::Rax, 16)), None, None];
        self.e.map(pc, rb(rax_only, after, target_slot));
        self.e.load_rsp(Gpr::Rax, 16);
        self.e.map(pc, rb([None; 3], after, target_slot));
        self.e.store_rsp_imm(k32, id);
        self.e.lea_rsp(k32);
        self.e.map(pc, rb([None; 3], rz + 16, RipSource::Stack(8)));
        self.e
            .jmp_abs(self.cfg.dispatcher, self.layout.dispatcher_slot);

        // Hit: restore and `ret imm16` into the fragment, state before the branch.
        self.e.patch_rel8(jrcxz).ok_or(Error::Encode { pc })?;
        self.e.map(pc, full(before));
        self.e.load_entry_target();
        self.e.load_rsp(Gpr::Rdx, 0);
        self.e.map(pc, rb(rax_rcx, before, RipSource::Guest(pc)));
        self.e.store_rsp(0, Gpr::Rcx);
        self.e.load_rsp(Gpr::Rcx, 8);
        self.e.map(pc, rb(rax_only, before, RipSource::Guest(pc)));
        self.e.load_rsp(Gpr::Rax, 16);
        self.e.map(pc, rb([None; 3], before, RipSource::Guest(pc)));
        self.e.ret_imm(hit_ret);
        Ok(())
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
