//! `kdbt-user`: runs Debian's static busybox under kdbt's translation in user space and
//! compares every output with a native run (`make user-check`, `make bench-engine`).

#[path = "../user/mod.rs"]
mod user;

use std::path::PathBuf;
use std::process::ExitCode;
use kdbt_engine::CallRetPolicy;
use user::check::{compare, Mode};
use user::translated::Transitions;
use user::workload;

const DEFAULT_MODE: Mode = Mode::Translated(CallRetPolicy::Transparent, Transitions::Linked);

fn usage() -> ExitCode {
    eprintln!("usage: kdbt-user check [--loader|--fast|--counted] [--dir DIR]\n       kdbt-user run [--loader|--fast|--counted] -- PROGRAM [ARGS...]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { return usage() };
    let mut dir = PathBuf::from("build/user-check");
    let mut mode = None;
    let mut program = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--loader" => mode = Some(Mode::Loader),
            "--fast" => mode = Some(Mode::Translated(CallRetPolicy::Fast, Transitions::Linked)),
            "--counted" => mode = Some(Mode::Translated(CallRetPolicy::Transparent, Transitions::Counted)),
            "--" => program = it.by_ref().map(|a| a.as_bytes().to_vec()).collect(),
            "--dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    match cmd.as_str() {
        "check" => check(mode.unwrap_or(DEFAULT_MODE), &dir),
        "run" if !program.is_empty() => run(mode.unwrap_or(DEFAULT_MODE), &program),
        _ => usage(),
    }
}

fn check(mode: Mode, dir: &std::path::Path) -> ExitCode {
    if !std::path::Path::new(workload::BUSYBOX).exists() {
        eprintln!("kdbt-user: {} is missing: install the Debian package busybox-static", workload::BUSYBOX);
        return ExitCode::from(2);
    }
    let input = match workload::prepare_input(dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kdbt-user: writing inputs under {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let mut same = 0;
    for applet in workload::APPLETS {
        match compare(mode, applet, &input, dir) {
            Ok(c) => {
                if c.identical {
                    same += 1;
                }
                println!(
                    "{:<12} {:<9} out {:>8} B native / {:>8} B guest  native {:>7.3}s  guest {:>7.3}s{}",
                    c.label,
                    if c.identical { "identical" } else { "DIFFERENT" },
                    c.native_bytes,
                    c.guest_bytes,
                    c.native_wall.as_secs_f64(),
                    c.guest_wall.as_secs_f64(),
                    if c.identical { String::new() } else { format!("  ({:?} vs {:?})", c.native_ended, c.guest_ended) }
                );
            }
            Err(e) => println!("{:<12} ERROR {e}", applet.label),
        }
    }
    println!("identical: {same}/{}", workload::APPLETS.len());
    if same == workload::APPLETS.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs one program as a guest in this very process and exits with its status.
fn run(mode: Mode, argv: &[Vec<u8>]) -> ExitCode {
    let env: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| [k.as_encoded_bytes(), b"=", v.as_encoded_bytes()].concat())
        .collect();
    match user::check::run_here(mode, argv, &env) {
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
