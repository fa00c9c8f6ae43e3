//! The user-check harness: each applet runs natively (`/bin/busybox` as a normal process)
//! and as a guest in a forked child, and the outputs are compared byte for byte.

use super::child::{reap, run_in_child, ChildRun, Ended, Reaped};
use super::guest::Guest;
use super::translated::{self, Report, Transitions};
use super::workload::{self, Applet};
use kdbt_engine::CallRetPolicy;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// How the guest side of a comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our loader, then a plain jump to the entry point: validates the loader alone.
    Loader,
    /// Under translation with this call/ret policy and kind of block transitions.
    Translated(CallRetPolicy, Transitions),
}

impl Mode {
    /// Short name for reports and output files.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Loader => "loader",
            Mode::Translated(CallRetPolicy::Transparent, Transitions::Linked) => "transparent",
            Mode::Translated(CallRetPolicy::Fast, Transitions::Linked) => "fast",
            Mode::Translated(CallRetPolicy::Transparent, Transitions::Counted) => "counted",
            Mode::Translated(CallRetPolicy::Fast, Transitions::Counted) => "fast-counted",
        }
    }
}

/// One guest run of an applet, judged against the native run.
#[derive(Debug)]
pub struct GuestResult {
    pub mode: Mode,
    pub run: Reaped,
    /// Same stdout bytes and same exit status as the native run.
    pub identical: bool,
    /// What a translated run reported (`None` for [`Mode::Loader`] or a crashed child).
    pub report: Option<Report>,
}

/// One applet: the native run and every guest run of it.
#[derive(Debug)]
pub struct Comparison {
    pub label: &'static str,
    pub native_bytes: usize,
    pub native: Reaped,
    pub guests: Vec<GuestResult>,
}

impl Comparison {
    /// The native run succeeded and every guest run matched it byte for byte.
    pub fn identical(&self) -> bool {
        self.native.ended == Ended::Exited(0) && self.guests.iter().all(|g| g.identical)
    }
}

/// Runs `argv` with busybox natively as a normal process, stdin from `input`, stdout
/// into `out`.
pub fn run_native(argv: &[Vec<u8>], input: &Path, out: &Path) -> io::Result<Reaped> {
    use std::os::unix::ffi::OsStrExt;
    let args = argv[1..].iter().map(|a| std::ffi::OsStr::from_bytes(a));
    let started = Instant::now();
    let child = Command::new(std::ffi::OsStr::from_bytes(&argv[0]))
        .args(args)
        .env_clear()
        .envs(workload::env().iter().map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=').expect("KEY=VALUE");
            (
                std::ffi::OsStr::from_bytes(&kv[..eq]),
                std::ffi::OsStr::from_bytes(&kv[eq + 1..]),
            )
        }))
        .stdin(File::open(input)?)
        .stdout(File::create(out)?)
        .spawn()?;
    // std's Child does not reap on drop, so waiting here with wait4 is the only wait.
    reap(child.id() as libc::pid_t, started)
}

/// Loads `argv[0]` with `argv` and `env` into this process and runs it in `mode` until
/// it exits; returns its exit status and, under translation, the run's report. The
/// process is the guest's from then on: call only in a process the guest may end.
pub fn run_here(
    mode: Mode,
    argv: &[Vec<u8>],
    env: &[Vec<u8>],
) -> io::Result<(i32, Option<Report>)> {
    let guest = Guest::load(&String::from_utf8_lossy(&argv[0]), argv, env)?;
    match mode {
        // SAFETY: callers run this in a process the guest may end (see above).
        Mode::Loader => unsafe { guest.enter_natively() },
        Mode::Translated(policy, transitions) => translated::run(&guest, policy, transitions)
            .map(|(status, report)| (status, Some(report)))
            .map_err(|e| io::Error::other(e.to_string())),
    }
}

/// Seconds a guest run may take before SIGALRM ends it: ten times the slowest counted run
/// seen (sort -k3,3n, about a minute), so a translation bug that loops cannot hang
/// `make test`. The guest cannot catch the signal: its sigaction calls change nothing.
const GUEST_TIMEOUT_SECS: u32 = 600;

/// Runs `argv` as a guest in a forked child in `mode`, stdin from `input`, stdout into
/// `out`; the child's report comes back in [`ChildRun::report`].
pub fn run_guest(mode: Mode, argv: &[Vec<u8>], input: &Path, out: &Path) -> io::Result<ChildRun> {
    run_in_child(&File::open(input)?, &File::create(out)?, |report_pipe| {
        // SAFETY: alarm only arms this child's timer.
        unsafe { libc::alarm(GUEST_TIMEOUT_SECS) };
        guest_body(mode, argv, report_pipe)
    })
}

/// The child's side of [`run_guest`]: runs the guest, sends the report, returns the status.
fn guest_body(mode: Mode, argv: &[Vec<u8>], report_pipe: &mut File) -> i32 {
    match run_here(mode, argv, &workload::env()) {
        Ok((status, report)) => {
            if let Some(r) = report {
                // A lost report shows as a missing count in the parent; the status stands.
                let _ = report_pipe.write_all(&r.to_bytes());
            }
            status
        }
        Err(e) => {
            eprintln!("kdbt-user: {}: {e}", String::from_utf8_lossy(&argv[0]));
            120
        }
    }
}

/// Runs `applet` over `input` (as its file argument or, for filters, its stdin) natively
/// and then in each of `modes`, leaving the outputs in `outdir` as `APPLET.native` and
/// `APPLET.MODE`.
pub fn compare(
    modes: &[Mode],
    applet: &Applet,
    input: &Path,
    outdir: &Path,
) -> io::Result<Comparison> {
    let argv = applet.argv(input);
    let stem = applet.label.replace(' ', "_");
    let native_out = outdir.join(format!("{stem}.native"));
    let native_run = run_native(&argv, input, &native_out)?;
    let native = std::fs::read(&native_out)?;
    let mut guests = Vec::new();
    for &mode in modes {
        let out = outdir.join(format!("{stem}.{}", mode.label()));
        let run = run_guest(mode, &argv, input, &out)?;
        guests.push(GuestResult {
            mode,
            run: run.reaped,
            identical: run.reaped.ended == native_run.ended && std::fs::read(&out)? == native,
            report: Report::from_bytes(&run.report),
        });
    }
    Ok(Comparison {
        label: applet.label,
        native_bytes: native.len(),
        native: native_run,
        guests,
    })
}

/// Compares every applet of the workload (see [`compare`]) on `jobs` threads and hands
/// each result to `report` in workload order, as soon as it and all before it are done.
/// Children are forked from worker threads: fine for glibc's malloc, which its fork
/// handlers keep usable in the child; the child takes no other lock of the runner except
/// stderr's when it reports a load error.
pub fn compare_all(
    modes: &[Mode],
    input: &Path,
    outdir: &Path,
    jobs: usize,
    mut report: impl FnMut(&Applet, io::Result<Comparison>),
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let (tx, next) = (tx.clone(), &next);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(applet) = workload::APPLETS.get(i) else {
                    break;
                };
                if tx.send((i, compare(modes, applet, input, outdir))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending: Vec<Option<io::Result<Comparison>>> =
            workload::APPLETS.iter().map(|_| None).collect();
        let mut printed = 0;
        for (i, result) in rx {
            pending[i] = Some(result);
            while let Some(result) = pending.get_mut(printed).and_then(Option::take) {
                report(&workload::APPLETS[printed], result);
                printed += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guest(identical: bool) -> GuestResult {
        GuestResult {
            mode: Mode::Loader,
            run: reaped(Ended::Exited(0)),
            identical,
            report: None,
        }
    }

    fn reaped(ended: Ended) -> Reaped {
        Reaped {
            ended,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }

    fn comparison(native_ended: Ended, guests: Vec<GuestResult>) -> Comparison {
        Comparison {
            label: "x",
            native_bytes: 0,
            native: reaped(native_ended),
            guests,
        }
    }

    #[test]
    fn one_differing_guest_run_makes_the_applet_differ() {
        assert!(comparison(Ended::Exited(0), vec![guest(true), guest(true)]).identical());
        assert!(!comparison(Ended::Exited(0), vec![guest(true), guest(false)]).identical());
    }

    #[test]
    fn a_failing_native_run_is_never_identical() {
        assert!(!comparison(Ended::Exited(1), vec![guest(true)]).identical());
        assert!(!comparison(Ended::Signaled(11), vec![guest(true)]).identical());
    }

    #[test]
    fn mode_labels_are_distinct_file_suffixes() {
        let modes = [
            Mode::Loader,
            Mode::Translated(CallRetPolicy::Transparent, Transitions::Linked),
            Mode::Translated(CallRetPolicy::Fast, Transitions::Linked),
            Mode::Translated(CallRetPolicy::Transparent, Transitions::Counted),
            Mode::Translated(CallRetPolicy::Fast, Transitions::Counted),
        ];
        let labels: std::collections::HashSet<_> = modes.iter().map(|m| m.label()).collect();
        assert_eq!(labels.len(), modes.len());
    }
}
