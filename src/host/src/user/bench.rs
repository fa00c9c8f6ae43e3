//! The busybox part of `make bench-engine`: translated / native wall time of the whole
//! workload under each call/ret policy, measured side by side in one run.

use super::check::{self, Mode};
use super::translated::Transitions;
use super::workload;
use kdbt_engine::CallRetPolicy;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const POLICIES: [CallRetPolicy; 2] = [CallRetPolicy::Transparent, CallRetPolicy::Fast];

/// For each applet, `repeat` rounds of native, Transparent and Fast runs, interleaved so
/// that machine load hits all three alike; each keeps its best time. Prints per-applet
/// times and the workload ratios; fails if any translated output differs.
pub fn run(repeat: u32, input: &Path, dir: &Path) -> ExitCode {
    let modes: Vec<Mode> = POLICIES.iter().map(|&p| Mode::Translated(p, Transitions::Linked)).collect();
    let mut native_total = Duration::ZERO;
    let mut totals = [Duration::ZERO; 2];
    let (mut guest_bytes, mut cache_bytes) = (0u64, 0u64);
    let mut all_identical = true;
    println!("busybox workload, best of {repeat}: native = /bin/busybox as a process; translated = fork + load + translate + run");
    for applet in workload::APPLETS {
        let mut best: Option<check::Comparison> = None;
        let mut best_native = Duration::MAX;
        let mut best_guest = [Duration::MAX; 2];
        for _ in 0..repeat {
            let c = match check::compare(&modes, applet, input, dir) {
                Ok(c) => c,
                Err(e) => {
                    println!("{:<12} ERROR {e}", applet.label);
                    return ExitCode::FAILURE;
                }
            };
            all_identical &= c.identical();
            best_native = best_native.min(c.native_wall);
            for (b, g) in best_guest.iter_mut().zip(&c.guests) {
                *b = (*b).min(g.wall);
            }
            best = Some(c);
        }
        let c = best.expect("repeat > 0");
        if let Some(r) = c.guests[0].report {
            guest_bytes += r.engine.guest_bytes;
            cache_bytes += r.engine.cache_bytes;
        }
        native_total += best_native;
        for (t, b) in totals.iter_mut().zip(best_guest) {
            *t += b;
        }
        println!(
            "{:<12} native {:>7.3}s  transparent {:>7.3}s ({:>5.2}x)  fast {:>7.3}s ({:>5.2}x)",
            applet.label,
            best_native.as_secs_f64(),
            best_guest[0].as_secs_f64(),
            best_guest[0].as_secs_f64() / best_native.as_secs_f64(),
            best_guest[1].as_secs_f64(),
            best_guest[1].as_secs_f64() / best_native.as_secs_f64()
        );
    }
    for (p, t) in POLICIES.iter().zip(totals) {
        println!(
            "busybox translated/native wall-time ratio, {p:?}: {:.2} ({:.3}s / {:.3}s)",
            t.as_secs_f64() / native_total.as_secs_f64(),
            t.as_secs_f64(),
            native_total.as_secs_f64()
        );
    }
    println!(
        "busybox code-cache expansion (Transparent): {:.2} ({cache_bytes} cache bytes / {guest_bytes} guest bytes)",
        cache_bytes as f64 / guest_bytes.max(1) as f64
    );
    if all_identical {
        ExitCode::SUCCESS
    } else {
        println!("bench: a translated output differed from native (run make user-check)");
        ExitCode::FAILURE
    }
}
