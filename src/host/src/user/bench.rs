//! The busybox part of `make bench-engine`: translated / native wall time of the whole
//! workload under each call/ret policy, measured side by side in one run.

use super::check::{self, Mode};
use super::child::Reaped;
use super::translated::Transitions;
use super::workload;
use kdbt_engine::CallRetPolicy;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const POLICIES: [CallRetPolicy; 2] = [CallRetPolicy::Transparent, CallRetPolicy::Fast];

/// Best wall and best CPU time over the rounds of one applet in one mode.
#[derive(Clone, Copy)]
struct Best {
    wall: Duration,
    cpu: Duration,
}

impl Best {
    const NONE: Best = Best {
        wall: Duration::MAX,
        cpu: Duration::MAX,
    };
    const ZERO: Best = Best {
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
    };

    fn keep(&mut self, r: &Reaped) {
        self.wall = self.wall.min(r.wall);
        self.cpu = self.cpu.min(r.cpu);
    }

    fn add(&mut self, other: Best) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// For each applet, `repeat` rounds of native, Transparent and Fast runs, interleaved so
/// that machine load hits all three alike; each keeps its best wall and CPU time. Prints
/// per-applet times and the workload ratios; fails if any translated output differs.
pub fn run(repeat: u32, input: &Path, dir: &Path) -> ExitCode {
    let modes: Vec<Mode> = POLICIES
        .iter()
        .map(|&p| Mode::Translated(p, Transitions::Linked))
        .collect();
    let mut native_total = Best::ZERO;
    let mut totals = [Best::ZERO; 2];
    let (mut guest_bytes, mut cache_bytes) = (0u64, 0u64);
    let mut all_identical = true;
    println!("busybox workload, best of {repeat}: native = /bin/busybox as a process; translated = fork + load + translate + run");
    for applet in workload::APPLETS {
        let mut native = Best::NONE;
        let mut guests = [Best::NONE; 2];
        let mut report = None;
        for _ in 0..repeat {
            let c = match check::compare(&modes, applet, input, dir) {
                Ok(c) => c,
                Err(e) => {
                    println!("{:<12} ERROR {e}", applet.label);
                    return ExitCode::FAILURE;
                }
            };
            all_identical &= c.identical();
            native.keep(&c.native);
            for (b, g) in guests.iter_mut().zip(&c.guests) {
                b.keep(&g.run);
            }
            report = c.guests[0].report;
        }
        if let Some(r) = report {
            guest_bytes += r.engine.guest_bytes;
            cache_bytes += r.engine.cache_bytes;
        }
        native_total.add(native);
        for (t, b) in totals.iter_mut().zip(guests) {
            t.add(b);
        }
        println!(
            "{:<12} native {:>7.3}s  transparent {:>7.3}s ({:>5.2}x)  fast {:>7.3}s ({:>5.2}x)",
            applet.label,
            native.wall.as_secs_f64(),
            guests[0].wall.as_secs_f64(),
            ratio(guests[0].wall, native.wall),
            guests[1].wall.as_secs_f64(),
            ratio(guests[1].wall, native.wall)
        );
    }
    for (p, t) in POLICIES.iter().zip(totals) {
        println!(
            "busybox translated/native wall-time ratio, {p:?}: {:.2} ({:.3}s / {:.3}s); CPU-time ratio {:.2} ({:.3}s / {:.3}s)",
            ratio(t.wall, native_total.wall),
            t.wall.as_secs_f64(),
            native_total.wall.as_secs_f64(),
            ratio(t.cpu, native_total.cpu),
            t.cpu.as_secs_f64(),
            native_total.cpu.as_secs_f64()
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
