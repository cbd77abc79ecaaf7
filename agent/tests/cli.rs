//! The command line as users type it: both flag spellings, config checking, clear refusals.

use std::process::Command;

fn raft3d(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raft3d"))
        .args(args)
        .output()
        .expect("run raft3d")
}

#[test]
fn missing_settings_are_all_reported_before_anything_starts() {
    let out = raft3d(&["-http", "nonsense", "-raft", "0.0.0.0:7000"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["id:", "http:", "raft:"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "id = \"node 1\"\nraft = \"0.0.0.0:7000\"\n[raft_tuning]\nheartbeat_ms = 400\nelection_timeout_min_ms = 500\n",
    )
    .unwrap();
    let out = raft3d(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["id:", "raft:", "raft_tuning.election_timeout_min_ms"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "id = \"node1\"\nraft = \"127.0.0.1:7000\"\nhttp = \":8080\"\n",
    )
    .unwrap();
    let out = raft3d(&["check-config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
