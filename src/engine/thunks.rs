//! The kernel's mitigation thunks. With retpolines and return thunks the compiler emits
//! `call __x86_indirect_thunk_rax` for `call *%rax` and `jmp __x86_return_thunk` for
//! `ret`; the kernel patches them at boot (and in each module at load) to the plain
//! instruction or to the thunk the CPU needs. Followed literally they translate correctly
//! but slowly (a retpoline is three blocks and two lookups); recognised, each is the one
//! branch it stands for. What is lost is the thunk's microarchitectural effect inside the
//! code cache, whose own indirect branches are not retpolined (docs/kernel.md).

use iced_x86::{Code, Instruction, OpKind, Register};

use crate::config::CallRetPolicy;
// In encoding order, the order of the kernel's thunk arrays (`asm/GEN-for-each-reg.h`).
use crate::translate::REGISTERS as GPRS;

/// An array of indirect-branch thunks, one per register in encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThunkArray {
    /// Address of the thunk of `rax`; 0: no array.
    pub base: u64,
    /// Bytes from one register's thunk to the next (32 for retpolines, 64 for the ITS
    /// thunks).
    pub stride: u64,
}

impl ThunkArray {
    /// No array.
    pub const NONE: ThunkArray = ThunkArray { base: 0, stride: 0 };
}

/// The kernel's mitigation thunks (return thunks, retpolines), which the translator treats
/// as the branches they stand for rather than following them: fewer blocks and exits, and
/// the translated branch is the one the compiler meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thunks {
    /// Return thunks (`__x86_return_thunk` and the mitigations' variants, which the kernel
    /// patches its returns to jump to): a `jmp` to one is a `ret`. 0: unused slot.
    pub returns: [u64; 8],
    /// Indirect-branch thunk arrays (`__x86_indirect_thunk_array`, the call-depth and ITS
    /// variants): a `call`/`jmp` to register `r`'s thunk is a `call`/`jmp` through `r`.
    pub indirect: [ThunkArray; 4],
}

impl Thunks {
    /// No thunks (user space, kernels without mitigations).
    pub const NONE: Thunks = Thunks {
        returns: [0; 8],
        indirect: [ThunkArray::NONE; 4],
    };

    /// The register whose indirect thunk is at `target`.
    fn indirect_register(&self, target: u64) -> Option<Register> {
        self.indirect.iter().find_map(|a| {
            let off = target.checked_sub(a.base).filter(|_| a.base != 0)?;
            if a.stride == 0 || off % a.stride != 0 {
                return None;
            }
            GPRS.get(usize::try_from(off / a.stride).ok()?).copied()
        })
    }

    /// The branch `insn` stands for when it is a direct `call`/`jmp` to a thunk: `ret` (a
    /// `jmp` to a return thunk, under the transparent policy, whose `ret` is translated;
    /// the fast one copies `ret` and follows the thunk), or `call`/`jmp` through a register.
    /// It has `insn`'s address and length, so return addresses and rollbacks are the
    /// original's.
    pub(crate) fn stand_in(
        &self,
        insn: &Instruction,
        policy: CallRetPolicy,
    ) -> Option<Instruction> {
        if insn.op0_kind() != OpKind::NearBranch64 {
            return None;
        }
        let target = insn.near_branch_target();
        let jmp = insn.is_jmp_short_or_near();
        let mut alias = if jmp
            && policy == CallRetPolicy::Transparent
            && target != 0
            && self.returns.contains(&target)
        {
            Instruction::with(Code::Retnq)
        } else {
            let reg = self.indirect_register(target)?;
            let code = if jmp {
                Code::Jmp_rm64
            } else if insn.is_call_near() {
                Code::Call_rm64
            } else {
                return None;
            };
            Instruction::with1(code, reg).ok()?
        };
        alias.set_len(insn.len());
        alias.set_ip(insn.ip());
        Some(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    const IP: u64 = 0xffff_ffff_8100_0000;
    const ARRAY: u64 = 0xffff_ffff_8200_0000;
    const RET_THUNK: u64 = 0xffff_ffff_8200_1000;

    fn thunks() -> Thunks {
        let mut t = Thunks::NONE;
        t.returns[0] = RET_THUNK;
        t.indirect[1] = ThunkArray {
            base: ARRAY,
            stride: 32,
        };
        t
    }

    /// A rel32 branch (`op` = e8 call, e9 jmp; 0f 8x jcc) at `IP` to `target`.
    fn branch(op: &[u8], target: u64) -> Instruction {
        let len = op.len() as u64 + 4;
        let rel = target.wrapping_sub(IP + len) as u32;
        let mut bytes = op.to_vec();
        bytes.extend_from_slice(&rel.to_le_bytes());
        Decoder::with_ip(64, &bytes, IP, DecoderOptions::NONE).decode()
    }

    #[test]
    fn a_call_to_a_registers_thunk_is_a_call_through_that_register() {
        let alias = thunks()
            .stand_in(
                &branch(&[0xe8], ARRAY + 11 * 32),
                CallRetPolicy::Transparent,
            )
            .expect("aliased");
        assert_eq!(alias.code(), Code::Call_rm64);
        assert_eq!(alias.op0_register(), Register::R11);
        assert_eq!((alias.ip(), alias.next_ip()), (IP, IP + 5));
    }

    #[test]
    fn a_jmp_to_a_return_thunk_is_a_ret_only_under_the_transparent_policy() {
        let jmp = branch(&[0xe9], RET_THUNK);
        let alias = thunks().stand_in(&jmp, CallRetPolicy::Transparent);
        assert_eq!(
            alias.map(|a| (a.code(), a.next_ip())),
            Some((Code::Retnq, IP + 5))
        );
        assert!(thunks().stand_in(&jmp, CallRetPolicy::Fast).is_none());
    }

    #[test]
    fn other_branches_near_thunks_are_not_aliased() {
        let t = thunks();
        let p = CallRetPolicy::Transparent;
        // Inside a thunk, past the array, a conditional return, a call to a return thunk.
        assert!(t.stand_in(&branch(&[0xe9], ARRAY + 33), p).is_none());
        assert!(t.stand_in(&branch(&[0xe9], ARRAY + 16 * 32), p).is_none());
        assert!(t.stand_in(&branch(&[0x0f, 0x85], RET_THUNK), p).is_none());
        assert!(t.stand_in(&branch(&[0xe8], RET_THUNK), p).is_none());
        assert!(Thunks::NONE.stand_in(&branch(&[0xe8], ARRAY), p).is_none());
    }
}
