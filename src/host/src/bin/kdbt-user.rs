//! `kdbt-user`: runs Debian's static busybox under kdbt's translation in user space and
//! compares every output with a native run (`make user-check`, `make bench-engine`).

#[path = "../user/mod.rs"]
mod user;

use kdbt_engine::CallRetPolicy;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use user::check::Mode;
use user::translated::Transitions;
use user::{bench, check, workload};

const TRANSPARENT: Mode = Mode::Translated(CallRetPolicy::Transparent, Transitions::Linked);
const FAST: Mode = Mode::Translated(CallRetPolicy::Fast, Transitions::Linked);
const COUNTED: Mode = Mode::Translated(CallRetPolicy::Transparent, Transitions::Counted);

fn usage() -> ExitCode {
    eprintln!(
        "usage: kdbt-user check [--loader | --quick] [--jobs N] [--dir DIR]\n\
         \x20      kdbt-user bench [--repeat N] [--dir DIR]\n\
         \x20      kdbt-user run [--loader | --fast | --counted] -- PROGRAM [ARGS...]\n\
         \x20      kdbt-user stepped -- PROGRAM [ARGS...]   (reference instruction count)\n\
         check runs every applet natively and as a guest (default: Transparent, Fast and a\n\
         counted run; --quick skips the counted run, --loader runs the guest untranslated;\n\
         --jobs: applets checked at a time, default: the number of CPUs)."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let mut dir = PathBuf::from("build/user-check");
    let mut modes = vec![TRANSPARENT, FAST, COUNTED];
    let mut repeat = 3;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut program = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--loader" => modes = vec![Mode::Loader],
            "--quick" => modes = vec![TRANSPARENT, FAST],
            "--fast" => modes = vec![FAST],
            "--counted" => modes = vec![COUNTED],
            "--" => program = it.by_ref().map(|a| a.as_bytes().to_vec()).collect(),
            "--dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage(),
            },
            "--repeat" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => repeat = n,
                _ => return usage(),
            },
            "--jobs" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => jobs = n,
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    match cmd.as_str() {
        "check" => with_input(&dir, |input| run_check(&modes, jobs, input, &dir)),
        "bench" => with_input(&dir, |input| bench::run(repeat, input, &dir)),
        "run" if !program.is_empty() && modes.len() == 1 => run(modes[0], &program),
        "run" if !program.is_empty() => run(TRANSPARENT, &program),
        "stepped" if !program.is_empty() => stepped(&program),
        _ => usage(),
    }
}

/// Checks for busybox and writes the input before `body` runs.
fn with_input(dir: &Path, body: impl FnOnce(&Path) -> ExitCode) -> ExitCode {
    if !Path::new(workload::BUSYBOX).exists() {
        eprintln!(
            "kdbt-user: {} is missing: install the Debian package busybox-static",
            workload::BUSYBOX
        );
        return ExitCode::from(2);
    }
    match workload::prepare_input(dir) {
        Ok(input) => body(&input),
        Err(e) => {
            eprintln!("kdbt-user: writing inputs under {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}

fn run_check(modes: &[Mode], jobs: usize, input: &Path, dir: &Path) -> ExitCode {
    let input_len = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    println!(
        "input: {} ({input_len} bytes); guest modes: {}; {jobs} applets at a time",
        input.display(),
        modes
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut same = 0;
    let (mut from_cache, mut emulated, mut counted_runs) = (0u64, 0u64, 0usize);
    check::compare_all(modes, input, dir, jobs, |applet, result| {
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                println!("{:<12} ERROR {e}", applet.label);
                return;
            }
        };
        let mut line = format!(
            "{:<12} {:<9} out {:>8} B  native {:>7.3}s",
            c.label,
            if c.identical() {
                "identical"
            } else {
                "DIFFERENT"
            },
            c.native_bytes,
            c.native.wall.as_secs_f64()
        );
        for g in &c.guests {
            line += &format!("  {} {:.3}s", g.mode.label(), g.run.wall.as_secs_f64());
            if !g.identical {
                line += &format!(" (differs: {:?})", g.run.ended);
            }
            if let (Some(r), Mode::Translated(_, Transitions::Counted)) = (g.report, g.mode) {
                line += &format!("  guest insns {}", r.from_cache + r.emulated);
                from_cache += r.from_cache;
                emulated += r.emulated;
                counted_runs += 1;
            }
        }
        if c.identical() {
            same += 1;
        }
        println!("{line}");
    });
    println!("identical: {same}/{}", workload::APPLETS.len());
    if counted_runs > 0 {
        let total = from_cache + emulated;
        println!(
            "from code cache: {:.5}% of {total} guest instructions ({emulated} run by the dispatcher: \
             the guest's syscall instructions; exact counts from the counted runs of {counted_runs} applets, \
             in which every fragment is entered from the dispatcher)",
            100.0 * from_cache as f64 / total.max(1) as f64
        );
    }
    if same == workload::APPLETS.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Counts a program's instructions by single-stepping it natively; prints the count on
/// stderr and exits with the program's status.
fn stepped(argv: &[Vec<u8>]) -> ExitCode {
    match user::stepped::count_native(argv, &caller_env()) {
        Ok((ended, insns)) => {
            eprintln!(
                "kdbt-user: {insns} instructions from the entry point, single-stepped; {ended:?}"
            );
            match ended {
                user::child::Ended::Exited(s) => ExitCode::from(s as u8),
                user::child::Ended::Signaled(_) => ExitCode::from(121),
            }
        }
        Err(e) => {
            eprintln!("kdbt-user: {}: {e}", String::from_utf8_lossy(&argv[0]));
            ExitCode::from(120)
        }
    }
}

/// This process's environment as `KEY=VALUE` strings, for a guest.
fn caller_env() -> Vec<Vec<u8>> {
    std::env::vars_os()
        .map(|(k, v)| [k.as_encoded_bytes(), b"=", v.as_encoded_bytes()].concat())
        .collect()
}

/// Runs one program as a guest in this very process and exits with its status.
fn run(mode: Mode, argv: &[Vec<u8>]) -> ExitCode {
    match check::run_here(mode, argv, &caller_env()) {
        Ok((status, report)) => {
            if let Some(r) = report {
                eprintln!("kdbt-user: {r:?}");
            }
            ExitCode::from(status as u8)
        }
        Err(e) => {
            eprintln!("kdbt-user: {}: {e}", String::from_utf8_lossy(&argv[0]));
            ExitCode::from(120)
        }
    }
}
