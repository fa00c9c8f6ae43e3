//! Debian's static busybox runs under translation in user space (kdbt-user) with the same
//! results as natively, under both call/ret policies.

use std::process::{Command, Output};

const KDBT_USER: &str = env!("CARGO_BIN_EXE_kdbt-user");

fn translated(mode: &[&str], argv: &[&str]) -> Output {
    Command::new(KDBT_USER)
        .arg("run")
        .args(mode)
        .arg("--")
        .args(argv)
        .output()
        .expect("running kdbt-user")
}

fn native(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("running busybox")
}

/// Both policies print exactly what native busybox prints (stdout, and stderr before the
/// runner's own report) and exit the same way.
fn assert_same_as_native(argv: &[&str]) {
    let want = native(argv);
    for mode in [&[][..], &["--fast"][..]] {
        let got = translated(mode, argv);
        assert_eq!(
            got.stdout,
            want.stdout,
            "{mode:?} {argv:?}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert!(
            got.stderr.starts_with(&want.stderr),
            "{mode:?} {argv:?}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(got.status.code(), want.status.code(), "{mode:?} {argv:?}");
    }
}

#[test]
fn translated_echo_prints_its_arguments() {
    let out = translated(&[], &["/bin/busybox", "echo", "hello", "cache"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello cache\n");
    assert!(out.status.success());
}

#[test]
fn the_arch_prctl_fs_switch_runs_guests_too() {
    // The fallback for CPUs without FSGSBASE, forced on this one.
    let argv = ["/bin/busybox", "cat", "/nonexistent/kdbt"];
    let got = Command::new(KDBT_USER)
        .args(["run", "--"])
        .args(argv)
        .env("KDBT_USER_FS_SWITCH", "arch_prctl")
        .output()
        .unwrap();
    let want = native(&argv);
    assert!(
        got.stderr.starts_with(&want.stderr),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.status.code(), want.status.code());
}

#[test]
fn errno_in_guest_tls_reaches_the_error_message() {
    // strerror(errno) reads the guest's TLS through its own FS base; the failure also sets
    // the exit status. (No pipelines here: guests cannot fork, clone is refused.)
    assert_same_as_native(&["/bin/busybox", "cat", "/nonexistent/kdbt"]);
}

#[test]
fn malloc_heavy_applets_match_native() {
    // sort keeps every line on the heap, which grows through the emulated brk.
    let path = std::env::temp_dir().join(format!("kdbt-user-numbers-{}", std::process::id()));
    let numbers: String = (0..50_000u64)
        .map(|i| format!("{}\n", i.wrapping_mul(2_654_435_761) % 1_000_003))
        .collect();
    std::fs::write(&path, numbers).unwrap();
    let file = path.to_str().unwrap();
    assert_same_as_native(&["/bin/busybox", "sort", "-rn", file]);
    assert_same_as_native(&[
        "/bin/busybox",
        "awk",
        "{ s += $1 } END { print s, NR }",
        file,
    ]);
    std::fs::remove_file(&path).ok();
}

/// The value of counter `name` in the report kdbt-user run prints on stderr.
fn report_field(out: &Output, name: &str) -> u64 {
    let report = String::from_utf8_lossy(&out.stderr);
    let at = report
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("{name} in {report}"))
        + name.len()
        + 2;
    report[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_linked_run_claims_no_instruction_count() {
    let out = translated(&[], &["/bin/busybox", "true"]);
    assert_eq!(report_field(&out, "from_cache"), 0);
    assert!(report_field(&out, "links") > 0);
}

#[test]
fn the_counted_run_reports_cache_and_dispatcher_instructions() {
    let out = translated(&["--counted"], &["/bin/busybox", "echo", "counted"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "counted\n");
    let report = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| report_field(&out, name);
    assert!(field("from_cache") > 1000, "{report}");
    let emulated = field("emulated");
    assert!(
        (1..100).contains(&emulated),
        "echo makes a handful of syscalls: {report}"
    );
    assert_eq!(field("links"), 0, "the counted run links nothing: {report}");
}

#[test]
fn quick_check_finds_every_applet_identical() {
    let dir = std::env::temp_dir().join(format!("kdbt-user-quick-{}", std::process::id()));
    let out = Command::new(KDBT_USER)
        .args(["check", "--quick", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().all(|l| !l.contains("DIFFERENT")), "{stdout}");
    let tally = stdout
        .lines()
        .find_map(|l| l.strip_prefix("identical: "))
        .expect("a tally line");
    let (same, all) = tally.split_once('/').unwrap();
    assert_eq!(same, all, "{stdout}");
}

/// The instruction count `kdbt-user stepped` prints on stderr.
fn stepped_count(argv: &[&str]) -> u64 {
    let out = Command::new(KDBT_USER)
        .arg("stepped")
        .arg("--")
        .args(argv)
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "instructions")
        .unwrap_or_else(|| panic!("{text}"));
    words[at - 1].parse().unwrap()
}

#[test]
fn the_counted_run_matches_native_single_stepping_exactly() {
    // Single-stepping is independent of the translator; `rep` iterations count once in
    // both. Small programs only: stepping costs two context switches per instruction.
    let path = std::env::temp_dir().join(format!("kdbt-user-lines-{}", std::process::id()));
    let lines: String = (0..40u64)
        .map(|i| format!("line {} {}\n", (i * 7919) % 101, i))
        .collect();
    std::fs::write(&path, lines).unwrap();
    for argv in [
        &["/bin/busybox", "true"][..],
        &["/bin/busybox", "sort", path.to_str().unwrap()][..],
    ] {
        let counted = Command::new(KDBT_USER)
            .args(["run", "--counted", "--"])
            .args(argv)
            .env_clear()
            .output()
            .unwrap();
        let total = report_field(&counted, "from_cache") + report_field(&counted, "emulated");
        assert_eq!(total, stepped_count(argv), "{argv:?}");
    }
    std::fs::remove_file(&path).ok();
}
