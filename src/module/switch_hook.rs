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

use kernel::error::{Error, Result};

use crate::{entry, ffi, stats};

/// The probe's address while registered (or being registered), else 0.
static PROBE: AtomicU64 = AtomicU64::new(0);

/// The probe's address (0 when none is registered): translated calls to it are elided.
pub(crate) fn probe() -> u64 {
    PROBE.load(Ordering::Relaxed)
}

/// The probe on `sched_switch`, registered while translation is on: the
/// registration patches `__schedule` (a jump label and a static call), which
/// every CPU then runs from its code cache; under QEMU's multi-threaded TCG a
/// patch of code other vCPUs run natively can leave them a stale `int3`
/// (docs/testing.md, "Known flake").
///
/// # Invariants
/// While the value lives, `helpers.c`'s probe is registered and [`PROBE`] is its address.
pub(crate) struct SwitchHook(());

impl SwitchHook {
    /// Registers it. Process context, control lock held.
    pub(crate) fn register() -> Result<Self> {
        // Published first: a block translated while the static call changes
        // already elides it.
        // SAFETY: plain call; returns the probe's address.
        PROBE.store(unsafe { ffi::kdbt_switch_probe() }, Ordering::Relaxed);
        // SAFETY: registers `helpers.c`'s probe, which reads the two gate
        // addresses, this CPU's gate word, and calls `kdbt_native_switch`.
        let r = unsafe { ffi::kdbt_switch_hook_register(entry::gate_return(), entry::gate_native()) };
        if r != 0 {
            PROBE.store(0, Ordering::Relaxed);
            kernel::pr_err!("cannot probe sched_switch ({})\n", r);
            return Err(Error::from_errno(r));
        }
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
