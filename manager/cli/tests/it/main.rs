//! The `atlantis` binary: help, completions and refusal of bad names.

use std::process::Command;

fn atlantis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_atlantis"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_commands() {
    let out = atlantis(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "deploy",
        "rollback",
        "scale",
        "teardown",
        "releases",
        "logs",
        "allow-app",
        "completions",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
}

#[test]
fn completions_are_generated() {
    let out = atlantis(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("_atlantis()"));
}

#[test]
fn bad_names_are_refused_before_anything_is_sent() {
    let out = atlantis(&["deploy", "hello", "ZZZ", "prod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid sha \"ZZZ\""));
}
