//! The user-check harness: each applet runs natively (`/bin/busybox` as a normal process)
//! and as a guest in a forked child, and the outputs are compared byte for byte.

use super::child::{run_in_child, ChildRun, Ended};
use super::guest::Guest;
use super::translated::{self, Report, Transitions};
use super::workload::{self, Applet};
use std::fs::File;
use kdbt_engine::CallRetPolicy;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How the guest side of a comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our loader, then a plain jump to the entry point: validates the loader alone.
    Loader,
    /// Under translation with this call/ret policy and kind of block transitions.
    Translated(CallRetPolicy, Transitions),
}

/// The result of one applet: both outputs' fate and timings.
#[derive(Debug)]
pub struct Comparison {
    pub label: &'static str,
    pub native_bytes: usize,
    pub guest_bytes: usize,
    pub native_ended: Ended,
    pub guest_ended: Ended,
    pub identical: bool,
    pub native_wall: Duration,
    pub guest_wall: Duration,
    /// What the translated run reported (`None` for [`Mode::Loader`]).
    pub report: Option<Report>,
}

fn stdin_null() -> io::Result<File> {
    File::open("/dev/null")
}

/// Runs `argv` with busybox natively as a normal process, stdout into `out`.
pub fn run_native(argv: &[Vec<u8>], out: &Path) -> io::Result<(Ended, Duration)> {
    use std::os::unix::ffi::OsStrExt;
    let args = argv[1..].iter().map(|a| std::ffi::OsStr::from_bytes(a));
    let started = Instant::now();
    let status = Command::new(std::ffi::OsStr::from_bytes(&argv[0]))
        .args(args)
        .env_clear()
        .envs(workload::env().iter().map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=').expect("KEY=VALUE");
            (std::ffi::OsStr::from_bytes(&kv[..eq]), std::ffi::OsStr::from_bytes(&kv[eq + 1..]))
        }))
        .stdin(stdin_null()?)
        .stdout(File::create(out)?)
        .status()?;
    let wall = started.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let ended = match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, s) => Ended::Signaled(s.unwrap_or(0)),
    };
    Ok((ended, wall))
}

/// Loads `argv[0]` with `argv` and `env` into this process and runs it in `mode` until
/// it exits; returns its exit status and, under translation, the run's report. The
/// process is the guest's from then on: call only in a process the guest may end.
pub fn run_here(mode: Mode, argv: &[Vec<u8>], env: &[Vec<u8>]) -> io::Result<(i32, Option<Report>)> {
    let guest = Guest::load(&String::from_utf8_lossy(&argv[0]), argv, env)?;
    match mode {
        // SAFETY: callers run this in a process the guest may end (see above).
        Mode::Loader => unsafe { guest.enter_natively() },
        Mode::Translated(policy, transitions) => translated::run(&guest, policy, transitions)
            .map(|(status, report)| (status, Some(report)))
            .map_err(|e| io::Error::other(e.to_string())),
    }
}

/// Runs `argv` as a guest in a forked child in `mode`, stdout into `out`; the child's
/// report comes back in [`ChildRun::report`].
pub fn run_guest(mode: Mode, argv: &[Vec<u8>], out: &Path) -> io::Result<ChildRun> {
    run_in_child(&stdin_null()?, &File::create(out)?, |report_pipe| match run_here(mode, argv, &workload::env()) {
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
    })
}

/// Runs `applet` both ways over `input`, leaving the outputs in `outdir`.
pub fn compare(mode: Mode, applet: &Applet, input: &Path, outdir: &Path) -> io::Result<Comparison> {
    let argv = applet.argv(input);
    let stem = applet.label.replace(' ', "_");
    let (native_out, guest_out): (PathBuf, PathBuf) =
        (outdir.join(format!("{stem}.native")), outdir.join(format!("{stem}.guest")));
    let (native_ended, native_wall) = run_native(&argv, &native_out)?;
    let guest = run_guest(mode, &argv, &guest_out)?;
    let (a, b) = (std::fs::read(&native_out)?, std::fs::read(&guest_out)?);
    Ok(Comparison {
        label: applet.label,
        native_bytes: a.len(),
        guest_bytes: b.len(),
        identical: a == b && native_ended == guest.ended && native_ended == Ended::Exited(0),
        native_ended,
        guest_ended: guest.ended,
        native_wall,
        guest_wall: guest.wall,
        report: Report::from_bytes(&guest.report),
    })
}
