//! The `skygit` binary as a user runs it: real processes, real RocksDB
//! directories, real signals.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn skygit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skygit"));
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn version_and_help() {
    let out = skygit().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("skygit "));
    let out = skygit().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["node", "send", "tail", "sim"] {
        assert!(help.contains(cmd), "--help does not mention {cmd}: {help}");
    }
}

#[test]
fn init_writes_the_room_config_and_refuses_to_overwrite_a_different_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("room.git");
    let init = |extra: &[&str]| {
        skygit()
            .arg("init")
            .arg("--repo")
            .arg(&repo)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = Command::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["show", "main:.messages/config.json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&config.stdout);
    assert!(text.contains("\"commit_interval_secs\": 600"), "{text}");
    assert!(text.contains("\"voters\": 3"), "{text}");
    // The same settings again: nothing to do.
    let out = init(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already"));
    // Different settings: refused without --force, written with it.
    let out = init(&["--commit-interval", "60"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = init(&["--commit-interval", "60", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = Command::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["log", "--format=%s", "main"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout).lines().count(), 2);
    // Bad settings never reach the repository.
    let out = init(&["--voters", "4", "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("voters"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "repo = \"r\"\ncolour = \"blue\"\n").unwrap();
    let out = skygit()
        .args(["node", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("colour"),
        "{err}"
    );

    let out = skygit()
        .args(["node", "--repo", "r", "--user", "no spaces"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid user name"));
}

/// Reads a child's lines on a thread so the test can wait with a deadline.
fn lines(child: &mut Child) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let spawn = |r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let out = spawn(Box::new(child.stdout.take().unwrap()));
    let err = spawn(Box::new(child.stderr.take().unwrap()));
    (out, err)
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line containing {needle:?} within {within:?}; saw: {seen:#?}");
}

fn start_node(data: &std::path::Path) -> Child {
    skygit()
        .arg("node")
        .arg("--repo")
        .arg(data.join("team.git"))
        .args(["--user", "ana", "--local-nodes", "3", "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_posts_from_stdin_stops_on_sigterm_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_node(dir.path());
    let (out, err) = lines(&mut node);
    wait_for(&err, "type a line to post", Duration::from_secs(30));
    let mut stdin = node.stdin.take().unwrap();
    writeln!(stdin, "hello from the terminal").unwrap();
    stdin.flush().unwrap();
    let line = wait_for(&out, "hello from the terminal", Duration::from_secs(30));
    assert!(line.contains("#general ana:"), "{line}");
    let status = terminate(&mut node);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    wait_for(&err, "SIGTERM: shutting down", Duration::from_secs(5));

    // Restarted from the same directory, the node still has the message.
    let mut node = start_node(dir.path());
    let (out, _err) = lines(&mut node);
    let line = wait_for(&out, "hello from the terminal", Duration::from_secs(30));
    assert!(line.contains("ana"), "{line}");
    terminate(&mut node);

    // The leader committed the log when it stopped: the repository alone
    // gives the message back, with its git hash.
    let out = skygit()
        .arg("history")
        .arg("--repo")
        .arg(dir.path().join("team.git"))
        .arg("--data-dir")
        .arg(dir.path().join("reader"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("hello from the terminal"))
        .unwrap_or_else(|| panic!("not in the repository: {stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["sender"], "ana");
    assert_eq!(v["git_hash"].as_str().map(str::len), Some(40));
}

/// Runs `skygit <args>` against the node in `data`; answers (success,
/// stdout, stderr).
fn client(data: &std::path::Path, args: &[&str], secret: Option<&str>) -> (bool, String, String) {
    let mut c = skygit();
    c.args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SKYGIT_SECRET");
    if let Some(s) = secret {
        c.env("SKYGIT_SECRET", s);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn send_tail_status_and_push_talk_to_the_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ana");
    let repo = dir.path().join("team.git");
    let mut node = skygit()
        .arg("node")
        .arg("--repo")
        .arg(&repo)
        .args(["--user", "ana", "--fast-poll-ms", "300", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, _err) = lines(&mut node);
    wait_for(&out, "secret: ", Duration::from_secs(30));

    // The node founds its room alone after a short settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, stdout, stderr) = client(&data, &["status"], None);
        if ok && stdout.contains("(this node)") {
            assert!(stdout.contains("node "), "{stdout}");
            break;
        }
        assert!(Instant::now() < deadline, "no leader: {stdout} {stderr}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, stdout, stderr) = client(&data, &["status", "--json"], None);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["user"], "ana");

    let (ok, stdout, stderr) = client(&data, &["send", "hello", "from", "the", "cli"], None);
    assert!(ok && stdout.starts_with("sent "), "{stdout} {stderr}");

    // A follower of the stream sees the next message as it commits.
    let mut follow = skygit()
        .args(["tail", "--follow", "-n", "5", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (fout, _ferr) = lines(&mut follow);
    let line = wait_for(&fout, "hello from the cli", Duration::from_secs(10));
    assert!(line.contains("#general ana:"), "{line}");
    let (ok, _, stderr) = client(&data, &["send", "second", "line"], None);
    assert!(ok, "{stderr}");
    wait_for(&fout, "ana: second line", Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();

    let (ok, stdout, stderr) = client(&data, &["tail", "-n", "2"], None);
    assert!(ok, "{stderr}");
    let shown: Vec<&str> = stdout.lines().collect();
    assert_eq!(shown.len(), 2, "{stdout}");
    assert!(
        shown[0].contains("hello from the cli") && shown[1].contains("second line"),
        "{stdout}"
    );
    assert!(shown[1].contains("[not in the repository yet]"), "{stdout}");

    // Push commits now; the repository's head is the one reported.
    let (ok, stdout, stderr) = client(&data, &["push"], None);
    assert!(ok && stdout.starts_with("pushed "), "{stdout} {stderr}");
    let head = Command::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["rev-parse", "main"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert!(
        stdout.contains(&head),
        "push said {stdout}, the branch is at {head}"
    );
    let (_, stdout, _) = client(&data, &["tail", "-n", "1"], None);
    assert!(!stdout.contains("not in the repository"), "{stdout}");

    // Bad input: a wrong secret, an oversized message, no node recorded.
    let (ok, _, stderr) = client(&data, &["status"], Some("0000"));
    assert!(!ok && stderr.contains("refused the secret"), "{stderr}");
    let long = "x".repeat(17 * 1024);
    let (ok, _, stderr) = client(&data, &["send", &long], None);
    assert!(!ok && stderr.contains("413"), "{stderr}");
    let empty = dir.path().join("nobody");
    let (ok, _, stderr) = client(&empty, &["status"], None);
    assert!(
        !ok && stderr.contains("no running node recorded"),
        "{stderr}"
    );

    // A stopped node takes its endpoint file with it.
    let status = terminate(&mut node);
    assert!(status.success(), "{status}");
    let (ok, _, stderr) = client(&data, &["send", "too late"], None);
    assert!(
        !ok && stderr.contains("no running node recorded"),
        "{stderr}"
    );
}
