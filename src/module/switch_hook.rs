// SPDX-License-Identifier: GPL-2.0

//! Context switches made natively, and the tasks they would leave native.
//!
//! kdbt's own code runs natively, and so do the kernel functions it calls:
//! a knob writer sleeping in `stop_machine` or on the control lock switches
//! to the next task with a native `__schedule`, and that task resumes in its
//! own `__schedule` frame, whose return addresses are native, so it would
//! run natively until this CPU's next interrupt (the return gate,
//! `entry::gate_return`, brings back only kdbt's own callers). A probe on the
//! kernel's `sched_switch` tracepoint (`helpers.c`) sees a switch made
//! natively on a translating CPU and sends this CPU a reschedule IPI, which
//! comes in as soon as the next task enables interrupts and whose return
//! (kdbt's `iretq`) resumes it translated. Translated code never runs the
//! probe: the dispatcher elides direct calls and tail calls to it
//! ([`probe`]), and an indirect call returns through the gate, which the
//! probe recognises.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::error::{code::ENOENT, Result};

use crate::{entry, ffi, stats};

/// The probe's address while registered, else 0.
static PROBE: AtomicU64 = AtomicU64::new(0);

/// The probe's address (0 when none is registered): translated calls to it are elided.
pub(crate) fn probe() -> u64 {
    PROBE.load(Ordering::Relaxed)
}

/// The probe on `sched_switch`.
///
/// # Invariants
/// While the value lives, `helpers.c`'s probe is registered and [`PROBE`] is its address.
pub(crate) struct SwitchHook(());

impl SwitchHook {
    /// Registers it. Process context, at load (before any CPU translates).
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: registers `helpers.c`'s probe, which reads the two gate
        // addresses, this CPU's gate word, and calls `kdbt_native_switch`.
        let probe = unsafe { ffi::kdbt_switch_hook_register(entry::gate_return(), entry::gate_native()) };
        if probe == 0 {
            kernel::pr_err!("cannot probe sched_switch; refusing to load\n");
            return Err(ENOENT);
        }
        PROBE.store(probe, Ordering::Relaxed);
        // INVARIANT: registered, and its address published.
        Ok(SwitchHook(()))
    }
}

impl Drop for SwitchHook {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; unregistration waits until no
        // CPU is inside the probe.
        unsafe { ffi::kdbt_switch_hook_unregister() };
        PROBE.store(0, Ordering::Relaxed);
    }
}

/// Called by the probe on a switch made natively on a translating CPU
/// (interrupts off, in `__schedule`): counts it.
#[no_mangle]
extern "C" fn kdbt_native_switch() {
    // SAFETY: plain call; interrupts are off, so the id stays this CPU's.
    let id = unsafe { ffi::kdbt_this_cpu() } as usize;
    if let Some(s) = stats::all().get(id) {
        stats::bump(&s.native_switches);
    }
}
