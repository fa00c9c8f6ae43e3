//! Block builder: translates one guest basic block into one fragment's code.
//!
//! Guest registers stay in the real registers. Ordinary instructions are copied; those
//! with RIP-relative operands are re-encoded for their new address, or rewritten through a
//! scratch register spilled on the stack when the target is out of ±2 GB reach. Control
//! transfers end the fragment; see `docs/engine.md` for every emitted sequence.

use alloc::vec::Vec;
use iced_x86::{
    Code, ConditionCode, Encoder, FlowControl, IcedError, Instruction, InstructionInfoFactory,
    MemoryOperand, OpKind, Register,
};

use crate::config::{CallRetPolicy, Config};
use crate::decode::{Window, MAX_BLOCK_INSNS};
use crate::emit::{push_within, Emitter, Label, Scratch, MAX_FRAGMENT};
use crate::error::{Error, Unsupported};
use crate::exit::{ExitKind, HookSite, IndirectKind};
use crate::hooks::{self, After, HookClass};
use crate::memory::GuestMemory;
use crate::pcmap::{Gpr, PcEntry, Restore, RipSource, Rollback};

/// Runtime addresses a fragment's code depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Runtime address of the fragment's first byte.
    pub base: u64,
    /// Runtime address of the lookup table.
    pub table: u64,
    /// Runtime address of the arena's 8-byte dispatcher slot.
    pub dispatcher_slot: u64,
    /// Id of the fragment's first exit.
    pub first_exit: u32,
    /// Count client: the runtime address of the fragment's execution counter, whose
    /// increment then starts the fragment.
    pub counter: Option<u64>,
    /// Whether the block goes on past a conditional branch into its fall-through (no
    /// client: a client's block is a range that runs whole or not at all).
    pub through_jcc: bool,
}

/// The embedder's Transparent sites in a Fast cache ([`crate::Embedder::transparent_call`],
/// [`crate::Embedder::transparent_ret`]): which direct calls push their guest return
/// address and which `ret`s look up the address they pop; and its elided callees
/// ([`crate::Embedder::elided_call`]), whose direct calls and jumps are dropped.
#[derive(Clone, Copy)]
pub(crate) struct Sites<'a> {
    /// Whether a direct `call` to this target is translated Transparent.
    pub call: &'a dyn Fn(u64) -> bool,
    /// Whether the `ret` at this guest PC is translated Transparent.
    pub ret: &'a dyn Fn(u64) -> bool,
    /// Whether a direct `call` to this target is dropped and a direct `jmp` to it is a
    /// `ret`.
    pub elide: &'a dyn Fn(u64) -> bool,
}

fn never(_: u64) -> bool {
    false
}

impl Sites<'static> {
    /// None: every call and `ret` follows the cache's policy, nothing is elided.
    pub const NONE: Self = Sites {
        call: &never,
        ret: &never,
        elide: &never,
    };
}

/// Most conditional branches a block goes on past; keeps every fragment within the
/// exit, fixup and literal buffers (`MAX_SMALL`) with room for its last transfer.
const MAX_THROUGH_JCC: usize = 8;

/// One exit of a fragment under construction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExitSpec {
    pub kind: ExitKind,
    /// Guest instruction the exit belongs to.
    pub insn_pc: u64,
    /// Fragment offset of the body branch's rel32 field (direct exits).
    pub patch: Option<u32>,
    /// Fragment offset of the exit stub (direct exits).
    pub stub: Option<u32>,
}

/// A translated fragment, ready to be copied to its layout base.
pub(crate) struct Built {
    /// Code, padding and literals.
    pub bytes: Vec<u8>,
    /// End of executable code (literals follow).
    pub code_end: u32,
    pub entries: Vec<PcEntry>,
    pub exits: Vec<ExitSpec>,
    /// Fast-policy return sites: (fragment offset, guest return address).
    pub return_sites: Vec<(u32, u64)>,
    pub guest_len: u64,
    pub guest_insns: u32,
    /// Count client: the code offset from which an execution is counted.
    pub commit: Option<u32>,
}

pub(crate) fn rb(restore: [Option<Restore>; 3], rsp_adjust: u32, rip: RipSource) -> Rollback {
    Rollback {
        restore,
        rsp_adjust,
        rip,
    }
}

pub(crate) fn gpr_of(reg: Register) -> Option<Gpr> {
    if reg.is_gpr64() {
        Gpr::ALL.get(reg.number()).copied()
    } else {
        None
    }
}

/// The 64-bit registers in encoding order.
pub(crate) const REGISTERS: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

fn reg_of(gpr: Gpr) -> Register {
    REGISTERS
        .get(usize::from(gpr.num()))
        .copied()
        .unwrap_or(Register::RAX)
}

pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// State of one fragment under construction.
pub(crate) struct Builder<'c> {
    pub cfg: &'c Config,
    pub layout: Layout,
    sites: Sites<'c>,
    pub e: Emitter,
    pub exits: Vec<ExitSpec>,
    pub return_sites: Vec<(u32, u64)>,
    /// iced's encoder output (reserved room for one instruction).
    pub enc: Vec<u8>,
    pub info: Option<InstructionInfoFactory>,
    /// Count client: the code offset just after the counter's store.
    pub commit: Option<u32>,
}

/// Translates the guest block at `pc`.
pub(crate) fn build(
    mem: &dyn GuestMemory,
    pc: u64,
    cfg: &Config,
    layout: Layout,
    sites: Sites<'_>,
    scratch: &mut Scratch,
) -> Result<Built, Error> {
    let window = Window::fetch(mem, pc, core::mem::take(&mut scratch.window))?;
    let result = build_from(&window, pc, cfg, layout, sites, scratch);
    scratch.window = window.bytes;
    result
}

fn build_from(
    window: &Window,
    pc: u64,
    cfg: &Config,
    layout: Layout,
    sites: Sites<'_>,
    scratch: &mut Scratch,
) -> Result<Built, Error> {
    let mut decoder = window.decoder();
    scratch.exits.clear();
    scratch.return_sites.clear();
    let mut b = Builder {
        cfg,
        layout,
        sites,
        e: Emitter::new(layout.base, scratch),
        exits: core::mem::take(&mut scratch.exits),
        return_sites: core::mem::take(&mut scratch.return_sites),
        enc: core::mem::take(&mut scratch.encoded),
        info: scratch.info.take(),
        commit: None,
    };
    if cfg.policy == CallRetPolicy::Fast {
        if let Err(e) = b.ibl_entry(pc) {
            b.recycle(scratch);
            return Err(e);
        }
    }
    if let Some(counter) = layout.counter {
        if let Err(e) = b.count_prefix(pc, counter) {
            b.recycle(scratch);
            return Err(e);
        }
    }
    let mut ip = pc;
    let mut count = 0u32;
    loop {
        if count as usize == MAX_BLOCK_INSNS {
            b.e.map(ip, Rollback::at(ip));
            b.exit_jmp(ip, ip);
            break;
        }
        let insn = match decoder.next(ip) {
            Ok(insn) => insn,
            // The first instruction's error is the fragment's; a later one ends the block
            // so the error is reported when (and if) execution gets there.
            Err(e) if count == 0 => {
                b.recycle(scratch);
                return Err(e);
            }
            Err(_) => {
                b.e.map(ip, Rollback::at(ip));
                b.exit_jmp(ip, ip);
                break;
            }
        };
        count += 1;
        let ended = match b.insn(window, &insn) {
            Ok(ended) => ended,
            Err(e) => {
                b.recycle(scratch);
                return Err(e);
            }
        };
        ip = insn.next_ip();
        if ended {
            break;
        }
    }
    b.finish(ip.wrapping_sub(pc), count, scratch)
}

impl Builder<'_> {
    pub(crate) fn rz(&self) -> u32 {
        self.cfg.red_zone
    }

    /// How a direct `call` to `target` is translated: by the cache's policy, except that a
    /// Fast cache gives the embedder's Transparent call targets a Transparent call.
    fn call_policy(&self, target: u64) -> CallRetPolicy {
        match self.cfg.policy {
            CallRetPolicy::Fast if (self.sites.call)(target) => CallRetPolicy::Transparent,
            policy => policy,
        }
    }

    /// How the `ret` at guest `pc` (or a `jmp` to a return thunk there) is translated: by
    /// the cache's policy, except that a Fast cache gives the `ret`s the embedder names
    /// (those of its Transparent call targets) a Transparent `ret`.
    fn ret_policy(&self, pc: u64) -> CallRetPolicy {
        match self.cfg.policy {
            CallRetPolicy::Fast if (self.sites.ret)(pc) => CallRetPolicy::Transparent,
            policy => policy,
        }
    }

    pub(crate) fn exit_id(&self, local: usize) -> Result<i32, Error> {
        u32::try_from(local)
            .ok()
            .and_then(|l| self.layout.first_exit.checked_add(l))
            .and_then(|id| i32::try_from(id).ok())
            .ok_or(Error::CacheFull {
                needed: 0,
                available: 0,
            })
    }

    fn off32(&self) -> u32 {
        u32::try_from(self.e.off()).unwrap_or(u32::MAX)
    }

    pub(crate) fn add_exit(&mut self, kind: ExitKind, insn_pc: u64, patch: Option<u32>) -> usize {
        let exit = ExitSpec {
            kind,
            insn_pc,
            patch,
            stub: None,
        };
        self.e.overflow |= !push_within(&mut self.exits, exit);
        self.exits.len().saturating_sub(1)
    }

    /// Adds a direct exit towards `target` whose branch, emitted next by the caller, has an
    /// opcode of `opcode_len` bytes before its rel32 field: pads so the field is aligned
    /// and records it as the exit's patch. Returns the exit's index.
    fn patchable_exit(&mut self, insn_pc: u64, target: u64, opcode_len: u8) -> usize {
        self.e.align_rel32(u64::from(opcode_len));
        let patch = self.off32().wrapping_add(u32::from(opcode_len));
        self.add_exit(ExitKind::Direct { target }, insn_pc, Some(patch))
    }

    /// `jmp rel32` to a direct exit towards `target`.
    fn exit_jmp(&mut self, insn_pc: u64, target: u64) {
        let i = self.patchable_exit(insn_pc, target, 1);
        self.e.jmp_label(Label::Stub(i));
    }

    /// Encodes `insn` at the current address into `self.enc`. iced's output goes to the
    /// reserved buffer (an instruction never outgrows it); only a failure allocates (iced
    /// formats an error message, freed at once), so callers check reach beforehand.
    pub(crate) fn encode(&mut self, insn: &Instruction, pc: u64) -> Result<(), Error> {
        let mut enc = Encoder::new(64);
        let mut buf = core::mem::take(&mut self.enc);
        buf.clear();
        enc.set_buffer(buf);
        let r = enc.encode(insn, self.e.here());
        self.enc = enc.take_buffer();
        r.map(|_| ()).map_err(|_| Error::Encode { pc })
    }

    /// Whether a RIP-relative reference to `target` from an instruction starting here
    /// reaches with a rel32, whatever the instruction's length (1 to 15 bytes).
    pub(crate) fn reaches(&self, target: u64) -> bool {
        let here = self.e.here();
        let fits = |next: u64| i32::try_from(target.wrapping_sub(next) as i64).is_ok();
        fits(here.wrapping_add(1)) && fits(here.wrapping_add(15))
    }

    /// Translates one instruction; `Ok(true)` when it ended the fragment.
    fn insn(&mut self, w: &Window, insn: &Instruction) -> Result<bool, Error> {
        // Elided callees come before the thunks' stand-ins: the embedder names the target
        // as written, and a stand-in would hide it (a `call`/`jmp` to a register's thunk
        // becomes one through the register, whose target only the run knows). An elided
        // target must not run from translated code, whatever the branch to it would
        // otherwise become.
        if let Some(ended) = self.elided(insn)? {
            return Ok(ended);
        }
        // Only a `jmp` (to a return thunk) depends on how a `ret` here is translated.
        let ret_policy = if insn.is_jmp_short_or_near() {
            self.ret_policy(insn.ip())
        } else {
            self.cfg.policy
        };
        let alias = self.cfg.thunks.stand_in(insn, ret_policy);
        let insn = alias.as_ref().unwrap_or(insn);
        let pc = insn.ip();
        let next = insn.next_ip();
        if let Some(special) = hooks::special(insn) {
            if special.class == HookClass::IRETQ
                && !self.cfg.hooks.contains(HookClass::IRETQ)
                && self.cfg.hooks.contains(HookClass::IRETQ_TO_KERNEL)
            {
                self.iretq_to_kernel_hook(w, insn)?;
                return Ok(true);
            }
            if self.cfg.hooks.contains(special.class) {
                self.hook(special.class, pc, next)?;
                return Ok(true);
            }
            self.plain(w, insn)?;
            return Ok(self.after_copy(insn, special.after));
        }
        let near64 = insn.op0_kind() == OpKind::NearBranch64;
        match insn.flow_control() {
            FlowControl::Next => {
                self.plain(w, insn)?;
                Ok(false)
            }
            FlowControl::UnconditionalBranch if insn.is_jmp_short_or_near() => {
                self.require(near64, pc)?;
                self.e.map(pc, Rollback::at(pc));
                self.exit_jmp(pc, insn.near_branch_target());
                Ok(true)
            }
            FlowControl::ConditionalBranch => {
                self.require(near64, pc)?;
                self.conditional(w, insn)
            }
            FlowControl::Call if insn.is_call_near() => {
                self.require(near64, pc)?;
                self.call_direct(insn);
                Ok(true)
            }
            FlowControl::IndirectBranch if insn.is_jmp_near_indirect() => {
                self.ibl(insn, IndirectKind::Jmp, 0)?;
                Ok(true)
            }
            FlowControl::IndirectCall if insn.is_call_near_indirect() => {
                self.call_indirect(insn)?;
                Ok(true)
            }
            FlowControl::Return
                if matches!(insn.code(), Code::Retnq | Code::Retnq_imm16)
                    && self.ret_policy(pc) == CallRetPolicy::Transparent =>
            {
                let pop = if insn.code() == Code::Retnq_imm16 {
                    8 + u32::from(insn.immediate16())
                } else {
                    8
                };
                self.ibl(insn, IndirectKind::Ret, pop)?;
                Ok(true)
            }
            FlowControl::XbeginXabortXend
                if matches!(insn.code(), Code::Xbegin_rel16 | Code::Xbegin_rel32) =>
            {
                Err(Error::Unsupported {
                    pc,
                    what: Unsupported::Xbegin,
                })
            }
            _ => {
                // Copied as is: Fast-policy `ret`, far transfers, other traps.
                self.plain(w, insn)?;
                Ok(self.after_copy(insn, hooks::copied_flow(insn)))
            }
        }
    }

    /// A direct `call` or `jmp` to a target the embedder elides
    /// ([`crate::Embedder::elided_call`]); `Ok(None)` for any other instruction, `Ok(Some(
    /// ended))` when elided. The `call` emits nothing and maps nothing: the next
    /// instruction's translation follows at once, and an interruption there is before that
    /// instruction, the state a native run reaches once an empty callee has returned. The
    /// `jmp` (a tail call) is the `ret` the callee would end with, with the `jmp`'s
    /// address and length: by the `jmp`'s `ret` policy a Transparent `ret` (the inline
    /// lookup, which maps itself) or a real `ret`, encoded here (copying would copy the
    /// `jmp`'s bytes) and mapped to the state before the `jmp`.
    fn elided(&mut self, insn: &Instruction) -> Result<Option<bool>, Error> {
        let call = insn.is_call_near();
        if insn.op0_kind() != OpKind::NearBranch64
            || !(call || insn.is_jmp_short_or_near())
            || !(self.sites.elide)(insn.near_branch_target())
        {
            return Ok(None);
        }
        if call {
            return Ok(Some(false));
        }
        let pc = insn.ip();
        let mut ret = Instruction::with(Code::Retnq);
        ret.set_len(insn.len());
        ret.set_ip(pc);
        match self.ret_policy(pc) {
            CallRetPolicy::Transparent => self.ibl(&ret, IndirectKind::Ret, 8)?,
            CallRetPolicy::Fast => {
                self.encode(&ret, pc)?;
                self.e.map(pc, Rollback::at(pc));
                self.e.bytes(&self.enc);
            }
        }
        Ok(Some(true))
    }

    /// The count client's increment of this fragment's counter, before the guest code:
    ///
    /// ```text
    /// lea  rsp, [rsp - red_zone]
    /// push rax
    /// mov  rax, [counter]        ; RIP-relative, or moffs64 out of reach
    /// lea  rax, [rax + 1]
    /// mov  [counter], rax        ; counted from here
    /// pop  rax
    /// lea  rsp, [rsp + red_zone]
    /// ```
    ///
    /// No flag changes. The counter lives outside the cache (a write near translated code
    /// would be self-modifying code to the CPU). Interrupted before the store, the
    /// rollback restores `rax` and `rsp` and the block runs again from its start, increment
    /// included; after it, [`crate::CodeCache::interrupted`] takes the execution back.
    fn count_prefix(&mut self, pc: u64, counter: u64) -> Result<(), Error> {
        let rz = self.rz();
        let rax = [Some(Restore::new(Gpr::Rax, 0)), None, None];
        self.e.map(pc, Rollback::at(pc));
        self.e.lea_rsp(-to_i32(rz));
        self.e.map(pc, rb([None; 3], rz, RipSource::Guest(pc)));
        self.e.push(Gpr::Rax);
        self.e.map(pc, rb(rax, rz + 8, RipSource::Guest(pc)));
        let plus_one = MemoryOperand::with_base_displ(Register::RAX, 1);
        let steps = [
            self.counter_access(counter, true),
            Instruction::with2(Code::Lea_r64_m, Register::RAX, plus_one),
            self.counter_access(counter, false),
        ];
        for step in steps {
            let insn = step.map_err(|_| Error::Encode { pc })?;
            self.encode(&insn, pc)?;
            self.e.bytes(&self.enc);
        }
        self.commit = Some(self.off32());
        self.e.pop(Gpr::Rax);
        self.e.map(pc, rb([None; 3], rz, RipSource::Guest(pc)));
        self.e.lea_rsp(to_i32(rz));
        Ok(())
    }

    /// `mov rax, [counter]` (`load`) or `mov [counter], rax`, RIP-relative when in reach.
    fn counter_access(&self, counter: u64, load: bool) -> Result<Instruction, IcedError> {
        let near = self.reaches(counter);
        let code = match (near, load) {
            (true, true) => Code::Mov_r64_rm64,
            (true, false) => Code::Mov_rm64_r64,
            (false, true) => Code::Mov_RAX_moffs64,
            (false, false) => Code::Mov_moffs64_RAX,
        };
        let base = if near { Register::RIP } else { Register::None };
        let mem = MemoryOperand::new(
            base,
            Register::None,
            1,
            counter as i64,
            8,
            false,
            Register::None,
        );
        if load {
            Instruction::with2(code, Register::RAX, mem)
        } else {
            Instruction::with2(code, mem, Register::RAX)
        }
    }

    /// Ends the fragment as needed after an instruction copied as is; `true` if it ended.
    fn after_copy(&mut self, insn: &Instruction, after: After) -> bool {
        match after {
            After::Next => false,
            After::MaybeNext => {
                self.e.map(insn.ip(), Rollback::at(insn.next_ip()));
                self.exit_jmp(insn.ip(), insn.next_ip());
                true
            }
            After::Elsewhere => true,
        }
    }

    fn require(&self, ok: bool, pc: u64) -> Result<(), Error> {
        if ok {
            Ok(())
        } else {
            Err(Error::Unsupported {
                pc,
                what: Unsupported::OperandSize,
            })
        }
    }

    /// `test byte [rsp + 8], 3; jnz user; <IRETQ hook exit>; user: iretq`. The `test`
    /// clobbers flags, which `iretq` (native or emulated) reloads from its frame anyway.
    fn iretq_to_kernel_hook(&mut self, w: &Window, insn: &Instruction) -> Result<(), Error> {
        let (pc, next) = (insn.ip(), insn.next_ip());
        self.e.map(pc, Rollback::at(pc));
        self.e.bytes(&[0xf6, 0x44, 0x24, 0x08, 0x03, 0x75, 0x00]);
        let jnz = self.e.off() - 1;
        self.hook(HookClass::IRETQ, pc, next)?;
        self.e.patch_rel8(jnz).ok_or(Error::Encode { pc })?;
        self.plain(w, insn)
    }

    /// A hooked instruction: an inline exit reporting the hook, guest state before it.
    fn hook(&mut self, class: HookClass, pc: u64, next_pc: u64) -> Result<(), Error> {
        let i = self.add_exit(ExitKind::Hook(HookSite { class, pc, next_pc }), pc, None);
        let id = self.exit_id(i)?;
        self.exit_frame(pc, RipSource::Guest(pc), id);
        Ok(())
    }

    /// `lea rsp, [rsp - red_zone - 8]; push id; jmp dispatcher` with the guest state `rip`
    /// throughout (the aux slot is left as it was: only indirect exits define it).
    fn exit_frame(&mut self, insn_pc: u64, rip: RipSource, id: i32) {
        let skip = self.rz() + 8;
        self.e.map(insn_pc, rb([None; 3], 0, rip));
        self.e.lea_rsp(-to_i32(skip));
        self.e.map(insn_pc, rb([None; 3], skip, rip));
        self.e.push_imm(id);
        self.e.map(insn_pc, rb([None; 3], skip + 8, rip));
        self.e
            .jmp_abs(self.cfg.dispatcher, self.layout.dispatcher_slot);
    }

    /// Copies an instruction, fixing up a RIP-relative operand.
    fn plain(&mut self, w: &Window, insn: &Instruction) -> Result<(), Error> {
        let pc = insn.ip();
        if !insn.is_ip_rel_memory_operand() {
            let bytes = w.insn_bytes(insn);
            if bytes.is_empty() {
                return Err(Error::Encode { pc });
            }
            self.e.copy_insn(pc, bytes);
            return Ok(());
        }
        if insn.memory_base() == Register::EIP {
            return Err(Error::Unsupported {
                pc,
                what: Unsupported::EipRelative,
            });
        }
        if !self.reaches(insn.ip_rel_memory_address()) {
            return self.far_rip(insn);
        }
        match self.encode(insn, pc) {
            Ok(()) if self.enc.len() == insn.len() => self.e.copy_insn(pc, &self.enc),
            Ok(()) => {
                self.e.map(pc, Rollback::at(pc));
                self.e.bytes(&self.enc);
            }
            Err(_) => self.far_rip(insn)?,
        }
        Ok(())
    }

    /// A RIP-relative operand out of reach: address it through a scratch register.
    ///
    /// ```text
    /// lea  rsp, [rsp - red_zone]
    /// push S
    /// mov  S, imm64            ; the operand's absolute address
    /// insn with [S]
    /// pop  S                   ; guest instruction complete from here
    /// lea  rsp, [rsp + red_zone]
    /// ```
    fn far_rip(&mut self, insn: &Instruction) -> Result<(), Error> {
        let pc = insn.ip();
        let next = insn.next_ip();
        let mut used = [false; 16];
        let factory = self.info.as_mut().ok_or(Error::Encode { pc })?;
        for r in factory.info(insn).used_registers() {
            if let Some(g) = gpr_of(r.register().full_register()) {
                if let Some(u) = used.get_mut(usize::from(g.num())) {
                    *u = true;
                }
            }
        }
        if used
            .get(usize::from(Gpr::Rsp.num()))
            .copied()
            .unwrap_or(true)
            || insn.is_stack_instruction()
        {
            return Err(Error::Unsupported {
                pc,
                what: Unsupported::FarRipRelativeWithRsp,
            });
        }
        let scratch = Gpr::ALL
            .iter()
            .copied()
            .find(|g| *g != Gpr::Rsp && !used.get(usize::from(g.num())).copied().unwrap_or(true))
            .ok_or(Error::Encode { pc })?;
        let mut rewritten = *insn;
        rewritten.set_memory_base(reg_of(scratch));
        rewritten.set_memory_index(Register::None);
        rewritten.set_memory_displacement64(0);
        rewritten.set_memory_displ_size(0);
        let rz = self.rz();
        let slot = [Some(Restore::new(scratch, 0)), None, None];
        self.e.map(pc, Rollback::at(pc));
        self.e.lea_rsp(-to_i32(rz));
        self.e.map(pc, rb([None; 3], rz, RipSource::Guest(pc)));
        self.e.push(scratch);
        self.e.map(pc, rb(slot, rz + 8, RipSource::Guest(pc)));
        self.e.mov_imm64(scratch, insn.ip_rel_memory_address());
        self.encode(&rewritten, pc)?;
        self.e.bytes(&self.enc);
        self.e.map(pc, rb(slot, rz + 8, RipSource::Guest(next)));
        self.e.pop(scratch);
        self.e.map(pc, rb([None; 3], rz, RipSource::Guest(next)));
        self.e.lea_rsp(to_i32(rz));
        Ok(())
    }

    /// A conditional branch; `Ok(true)` when it ended the fragment. A `jcc` taken leaves
    /// through its exit; not taken, it falls through into the next instruction's
    /// translation while [`Layout::through_jcc`] allows, else through a second exit.
    fn conditional(&mut self, w: &Window, insn: &Instruction) -> Result<bool, Error> {
        let pc = insn.ip();
        let next = insn.next_ip();
        let target = insn.near_branch_target();
        if insn.is_jcc_short_or_near() {
            let cc = (insn.condition_code() as u8).wrapping_sub(ConditionCode::o as u8);
            if insn.condition_code() == ConditionCode::None {
                return Err(Error::Encode { pc });
            }
            self.e.map(pc, Rollback::at(pc));
            let i = self.patchable_exit(pc, target, 2);
            self.e.jcc_label(cc, Label::Stub(i));
        } else if insn.is_jcx_short() || insn.is_loop() || insn.is_loopcc() {
            // rel8-only branches: `jrcxz T; jmp fall; T: jmp taken`.
            let src = w.insn_bytes(insn);
            let (_, head) = src.split_last().ok_or(Error::Encode { pc })?;
            self.e.map(pc, Rollback::at(pc));
            self.e.bytes(head);
            let rel8 = self.e.off();
            self.e.bytes(&[0]);
            self.e.map(pc, Rollback::at(next));
            self.exit_jmp(pc, next);
            self.e.patch_rel8(rel8).ok_or(Error::Encode { pc })?;
            self.e.map(pc, Rollback::at(target));
            self.exit_jmp(pc, target);
            return Ok(true);
        } else {
            return Err(Error::Encode { pc });
        }
        if self.layout.through_jcc && self.exits.len() < MAX_THROUGH_JCC {
            return Ok(false);
        }
        self.e.map(pc, Rollback::at(next));
        self.exit_jmp(pc, next);
        Ok(true)
    }

    fn call_direct(&mut self, insn: &Instruction) {
        let pc = insn.ip();
        let next = insn.next_ip();
        let target = insn.near_branch_target();
        self.e.map(pc, Rollback::at(pc));
        match self.call_policy(target) {
            CallRetPolicy::Transparent => {
                // `push qword [rip + literal(next)]` then continue at the target.
                let lit = self.e.literal(next);
                self.e.push_literal(lit);
                self.e.map(pc, Rollback::at(target));
                self.exit_jmp(pc, target);
            }
            CallRetPolicy::Fast => {
                let i = self.patchable_exit(pc, target, 1);
                self.e.call_label(Label::Stub(i));
                self.return_site(pc, next);
            }
        }
    }

    /// Fast policy: the code after a call into the cache continues at the guest return
    /// address; this is the code-cache return address.
    fn return_site(&mut self, pc: u64, next: u64) {
        let site = (self.off32(), next);
        self.e.overflow |= !push_within(&mut self.return_sites, site);
        self.e.map(pc, Rollback::at(next));
        self.exit_jmp(pc, next);
    }

    /// An indirect call. Transparent: the lookup stores the guest return address in its
    /// slot. Fast: a real `call` (so the return stack predicts the callee's copied `ret`)
    /// to the lookup, placed after the return site:
    ///
    /// ```text
    /// call lookup              ; pushes the return site; state before the call up to here
    /// site: jmp -> stub(next)  ; the return site
    /// lookup: <inline lookup>  ; as an indirect jmp from rsp - 8, rolling back with that
    ///                          ; 8 popped; hits end in `jmp rcx`
    /// ```
    fn call_indirect(&mut self, insn: &Instruction) -> Result<(), Error> {
        let pc = insn.ip();
        let next = insn.next_ip();
        match self.cfg.policy {
            CallRetPolicy::Transparent => {
                let lit = self.e.literal(next);
                self.ibl_with(insn, IndirectKind::Call, 0, Some(lit), 0)
            }
            CallRetPolicy::Fast => {
                self.e.map(pc, Rollback::at(pc));
                let call = self.e.call_forward();
                self.return_site(pc, next);
                self.e.patch_rel32(call).ok_or(Error::Encode { pc })?;
                self.ibl_with(insn, IndirectKind::Call, 0, None, 8)
            }
        }
    }

    /// Emits the exit stubs and literals and resolves every label.
    /// Gives every buffer back to `scratch` (after an error).
    fn recycle(mut self, scratch: &mut Scratch) {
        scratch.code = core::mem::take(&mut self.e.code);
        scratch.entries = core::mem::take(&mut self.e.entries);
        self.e.recycle(scratch);
        scratch.exits = self.exits;
        scratch.return_sites = self.return_sites;
        scratch.encoded = self.enc;
        scratch.info = self.info;
    }

    fn finish(
        mut self,
        guest_len: u64,
        guest_insns: u32,
        scratch: &mut Scratch,
    ) -> Result<Built, Error> {
        for i in 0..self.exits.len() {
            let Some(exit) = self.exits.get(i).copied() else {
                break;
            };
            match exit.kind {
                ExitKind::Direct { target } => {
                    let off = self.e.off();
                    let id = self.exit_id(i)?;
                    self.exit_frame(exit.insn_pc, RipSource::Guest(target), id);
                    if let Some(x) = self.exits.get_mut(i) {
                        x.stub = u32::try_from(off).ok();
                    }
                }
                ExitKind::Indirect { .. } | ExitKind::Hook(_) => {}
            }
        }
        let code_end = self.off32();
        while self.e.off() & 7 != 0 {
            self.e.bytes(&[crate::cache::INT3]);
        }
        let literal_base = self.e.off();
        for i in 0..self.e.literals.len() {
            let lit = self.e.literals.get(i).copied().unwrap_or(0);
            self.e.bytes(&lit.to_le_bytes());
        }
        if self.e.overflow {
            let needed = u32::try_from(self.e.off()).unwrap_or(u32::MAX);
            self.recycle(scratch);
            return Err(Error::FragmentTooLarge {
                needed: needed.max(MAX_FRAGMENT as u32 + 1),
                capacity: MAX_FRAGMENT as u32,
            });
        }
        if self.e.resolve(&self.exits, literal_base).is_none() {
            let pc = self.layout.base;
            self.recycle(scratch);
            return Err(Error::Encode { pc });
        }
        let bytes = core::mem::take(&mut self.e.code);
        let entries = core::mem::take(&mut self.e.entries);
        self.e.recycle(scratch);
        scratch.encoded = self.enc;
        scratch.info = self.info;
        Ok(Built {
            bytes,
            code_end,
            entries,
            exits: self.exits,
            return_sites: self.return_sites,
            guest_len,
            guest_insns,
            commit: self.commit,
        })
    }
}
