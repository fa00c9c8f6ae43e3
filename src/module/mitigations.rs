// SPDX-License-Identifier: GPL-2.0

//! The kernel's mitigation thunks, found by name when translation is enabled,
//! for the translator to treat as the branches they stand for (the engine's
//! `thunks`). A name the kernel lacks (a configuration without that
//! mitigation) leaves its slot empty.

use core::ffi::CStr;
use kdbt_engine::{ThunkArray, Thunks};
use kernel::prelude::*;

use crate::ffi;

/// Return thunks, each a `ret` in effect.
const RETURNS: [&CStr; 6] = [
    c"__x86_return_thunk",
    c"retbleed_return_thunk",
    c"srso_return_thunk",
    c"srso_alias_return_thunk",
    c"call_depth_return_thunk",
    c"its_return_thunk",
];

/// Indirect-branch thunk arrays and their strides (`arch/x86/lib/retpoline.S`).
const ARRAYS: [(&CStr, u64); 4] = [
    (c"__x86_indirect_thunk_array", 32),
    (c"__x86_indirect_call_thunk_array", 32),
    (c"__x86_indirect_jump_thunk_array", 32),
    (c"__x86_indirect_its_thunk_array", 64),
];

/// The thunks of the running kernel.
pub(crate) fn thunks() -> Thunks {
    let mut t = Thunks::NONE;
    for (slot, name) in t.returns.iter_mut().zip(RETURNS) {
        *slot = ffi::symbol(name);
    }
    // The thunk the kernel patched its returns to, should it be none of the
    // named ones (a mitigation newer than this list).
    let var = ffi::symbol(c"x86_return_thunk");
    if var != 0 {
        if let (Some(slot), Some(v)) = (t.returns.get_mut(RETURNS.len()), crate::dispatch::read_u64(var)) {
            *slot = v;
        }
    }
    for (slot, (name, stride)) in t.indirect.iter_mut().zip(ARRAYS) {
        *slot = ThunkArray { base: ffi::symbol(name), stride };
    }
    let returns = t.returns.iter().filter(|&&a| a != 0).count();
    let arrays = t.indirect.iter().filter(|a| a.base != 0).count();
    pr_info!("mitigation thunks: {} return thunks, {} indirect-thunk arrays\n", returns, arrays);
    t
}
