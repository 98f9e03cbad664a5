//! `skygit members` on a local bare repository: keys made with the real
//! `ssh-keygen`, the members file committed with a watermark trailer, and a
//! signature made with `ssh-keygen -Y sign` verified by the real
//! `ssh-keygen -Y verify` against the file skygit wrote.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use skygit_actors::members::MemberKey;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Room {
    tmp: tempfile::TempDir,
}

impl Room {
    /// A new room made with `skygit init`; `None` (the test skips) when
    /// ssh-keygen is missing.
    fn initialised() -> Option<Room> {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            skygit_harness::skip_unless_required("ssh-keygen is not installed (openssh-client)");
            return None;
        }
        let room = Room {
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        let out = room.skygit(&["init"]);
        assert!(out.status.success(), "init: {}", said(&out));
        Some(room)
    }

    fn repo(&self) -> std::path::PathBuf {
        self.tmp.path().join("room.git")
    }

    fn skygit(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_skygit"))
            .args(args)
            .arg("--repo")
            .arg(self.repo())
            .arg("--data-dir")
            .arg(self.tmp.path().join("data")))
    }

    fn members(&self, args: &[&str]) -> Output {
        let mut all = vec!["members"];
        all.extend_from_slice(args);
        self.skygit(&all)
    }

    fn keygen(&self, name: &str) -> std::path::PathBuf {
        let path = self.tmp.path().join(name);
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{name}@laptop"))
            .arg("-f")
            .arg(&path));
        assert!(out.status.success(), "ssh-keygen: {}", said(&out));
        path
    }

    fn listed(&self) -> Vec<MemberKey> {
        let out = self.members(&["list", "--json"]);
        assert!(out.status.success(), "{}", said(&out));
        serde_json::from_slice(&out.stdout).expect("list --json decodes")
    }

    fn git_show(&self, what: &str) -> Output {
        run(Command::new("git")
            .arg("--git-dir")
            .arg(self.repo())
            .args(["show", what]))
    }
}

fn verify(signers: &Path, principal: &str, message: &Path, signature: &Path) -> Output {
    run(Command::new("sh").arg("-c").arg(format!(
        "ssh-keygen -Y verify -f '{}' -I '{principal}' -n skygit -s '{}' < '{}'",
        signers.display(),
        signature.display(),
        message.display()
    )))
}

#[test]
fn members_are_listed_in_a_file_ssh_keygen_verifies_with() {
    let Some(room) = Room::initialised() else {
        return;
    };
    let alice = room.keygen("alice");
    let bob = room.keygen("bob");
    let pub_of = |p: &Path| p.with_extension("pub").to_string_lossy().into_owned();

    assert!(room.listed().is_empty());
    for (user, key) in [("alice", &alice), ("bob", &bob)] {
        let out = room.members(&["add", user, &pub_of(key)]);
        assert!(out.status.success(), "add {user}: {}", said(&out));
    }
    // Refused, and nothing committed: a key twice, a private key, no key,
    // a name that is not a user name.
    let before = room.git_show("main").stdout;
    for (args, expect) in [
        (vec!["add", "alice", &pub_of(&alice)], "already has"),
        (
            vec!["add", "carol", alice.to_str().expect("path")],
            "private key",
        ),
        (vec!["add", "carol", "/etc/hostname"], "public key"),
        (vec!["add", "../carol", &pub_of(&bob)], "invalid user name"),
    ] {
        let out = room.members(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(said(&out).contains(expect), "{args:?}: {}", said(&out));
    }
    assert_eq!(
        room.git_show("main").stdout,
        before,
        "a refused change was committed"
    );

    let listed = room.listed();
    let users: Vec<&str> = listed.iter().map(|k| k.user.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    assert!(listed.iter().all(|k| k.fingerprint.starts_with("SHA256:")));

    // The file skygit committed is what ssh-keygen verifies against.
    let file = room.git_show("main:.messages/allowed_signers");
    assert!(file.status.success(), "{}", said(&file));
    let signers = room.tmp.path().join("allowed_signers");
    std::fs::write(&signers, &file.stdout).expect("write");
    let message = room.tmp.path().join("line.json");
    std::fs::write(&message, b"{\"content\":\"hello team\"}\n").expect("write");
    let out = run(Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "skygit", "-f"])
        .arg(&alice)
        .arg(&message));
    assert!(out.status.success(), "sign: {}", said(&out));
    let signature = message.with_extension("json.sig");
    let out = verify(&signers, "alice", &message, &signature);
    assert!(out.status.success(), "alice's signature: {}", said(&out));
    let out = verify(&signers, "bob", &message, &signature);
    assert!(!out.status.success(), "alice's signature passed as bob's");

    // The commit keeps the room readable: history still reads it back.
    let log = run(Command::new("git").arg("--git-dir").arg(room.repo()).args([
        "log",
        "-1",
        "--format=%B",
        "main",
    ]));
    assert!(said(&log).contains("Raft-Last-Index: 0"), "{}", said(&log));
    let out = room.skygit(&["history"]);
    assert!(out.status.success(), "history: {}", said(&out));

    let out = room.members(&["remove", "bob"]);
    assert!(out.status.success(), "{}", said(&out));
    let users: Vec<String> = room.listed().iter().map(|k| k.user.to_string()).collect();
    assert_eq!(users, ["alice"]);
    let out = room.members(&["remove", "bob"]);
    assert!(!out.status.success(), "removing bob twice succeeded");
}

/// A members commit (and a settings commit of `skygit init --force`) on a
/// branch a later group (epoch 1) was founded on carries that epoch, so an
/// older group's committer still sees the newer founding behind it.
#[test]
fn a_members_commit_keeps_the_group_epoch_of_the_head() {
    let Some(room) = Room::initialised() else {
        return;
    };
    let git = |args: &[&str]| -> String {
        let out = run(Command::new("git")
            .arg("--git-dir")
            .arg(room.repo())
            .args(args));
        assert!(out.status.success(), "git {args:?}: {}", said(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let founding = skygit_actors::layout::founding_message(7, 1, 0, 0);
    let sha = git(&["commit-tree", "main^{tree}", "-p", "main", "-m", &founding]);
    git(&["update-ref", "refs/heads/main", &sha]);
    let alice = room.keygen("alice");
    let public = alice.with_extension("pub");
    let out = room.members(&["add", "alice", &public.to_string_lossy()]);
    assert!(out.status.success(), "add: {}", said(&out));
    let message = git(&["log", "-1", "--format=%B", "main"]);
    assert_eq!(skygit_actors::layout::group_epoch(&message), 1, "{message}");
    assert_eq!(
        skygit_actors::layout::watermark(&message),
        Some(0),
        "{message}"
    );
    // So does a settings commit of `skygit init --force`.
    let out = room.skygit(&["init", "--force", "--commit-interval", "60"]);
    assert!(out.status.success(), "init --force: {}", said(&out));
    let message = git(&["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("room settings"), "{message}");
    assert_eq!(skygit_actors::layout::group_epoch(&message), 1, "{message}");
}
