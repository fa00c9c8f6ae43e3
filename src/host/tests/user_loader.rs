//! The user-mode ELF loader runs Debian's static busybox natively (no translation) with the
//! same results as the kernel's own loader.

use std::process::Command;

const KDBT_USER: &str = env!("CARGO_BIN_EXE_kdbt-user");

fn kdbt_user(args: &[&str]) -> std::process::Output {
    Command::new(KDBT_USER)
        .args(args)
        .output()
        .expect("running kdbt-user")
}

#[test]
fn loaded_busybox_echo_prints_its_arguments() {
    let out = kdbt_user(&[
        "run",
        "--loader",
        "--",
        "/bin/busybox",
        "echo",
        "hello",
        "loader",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello loader\n");
    assert!(out.status.success());
}

#[test]
fn loaded_busybox_passes_its_exit_status_through() {
    let out = kdbt_user(&[
        "run",
        "--loader",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn loaded_busybox_sees_the_environment() {
    let out = Command::new(KDBT_USER)
        .args([
            "run",
            "--loader",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "echo $KDBT_PROBE",
        ])
        .env("KDBT_PROBE", "seen")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "seen\n");
}

#[test]
fn a_dynamic_executable_is_refused_with_a_reason() {
    let out = kdbt_user(&["run", "--loader", "--", "/bin/ls"]);
    assert_eq!(out.status.code(), Some(120));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only static non-PIE"),
        "{out:?}"
    );
}

#[test]
fn loader_check_finds_every_applet_identical() {
    let dir = std::env::temp_dir().join(format!("kdbt-user-loader-{}", std::process::id()));
    let out = kdbt_user(&["check", "--loader", "--dir", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{stdout}");
    let tally = stdout
        .lines()
        .find_map(|l| l.strip_prefix("identical: "))
        .expect("a tally line");
    let (same, all) = tally.split_once('/').unwrap();
    assert_eq!(same, all, "{stdout}");
    assert!(all.parse::<u32>().unwrap() >= 6);
}
