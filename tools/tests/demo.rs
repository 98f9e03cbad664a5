//! `skygit-tools` as a developer runs it: the demo over real node
//! processes (the `skygit` binary built beside it), its repository kept
//! and cloned with plain git, and clear errors for bad arguments.

use std::process::Command;

fn tools() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skygit-tools"));
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn help_names_the_demo_and_the_benchmarks() {
    let out = tools().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["demo", "bench"] {
        assert!(help.contains(cmd), "--help does not mention {cmd}: {help}");
    }
    let out = tools().args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["raft", "commit", "mesh", "api"] {
        assert!(
            help.contains(cmd),
            "bench --help does not mention {cmd}: {help}"
        );
    }
}

#[test]
fn bad_arguments_are_a_clear_error() {
    let out = tools()
        .args(["bench", "raft", "--nodes", "9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
    // A skygit binary that is not there is named, not a panic.
    let out = tools()
        .args(["demo", "--nodes", "1"])
        .env("SKYGIT_BIN", "/nonexistent/skygit")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/skygit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_room_agrees() {
    let out = tools()
        .args(["demo", "--nodes", "3", "--messages", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every node holds the same 10 messages in the same order"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the repository's history matches the room's log"),
        "{stdout}"
    );
    // The repository the demo points the user at still exists, and a
    // plain `git clone` of it checks the room's log out.
    let kept = stdout
        .split("the room's repository stays at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("the demo names no repository: {stdout}"));
    let clone_dir = tempfile::tempdir().unwrap();
    let clone = Command::new("git")
        .arg("clone")
        .arg(&kept)
        .arg(clone_dir.path().join("room"))
        .output()
        .unwrap();
    let clone_err = String::from_utf8_lossy(&clone.stderr);
    // The demo's temporary directory holds only the repository now.
    let parent = kept.parent().unwrap().to_path_buf();
    let left: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(clone.status.success(), "{clone_err}");
    assert!(!clone_err.contains("nonexistent ref"), "{clone_err}");
    assert!(
        clone_dir
            .path()
            .join("room/.messages/config.json")
            .is_file(),
        "the clone checked out no config.json: {clone_err}"
    );
    assert_eq!(left, vec![std::ffi::OsString::from("room.git")]);
}
