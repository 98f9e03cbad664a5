//! Verified identities between real `skygit node` processes over WebRTC,
//! on a plain git room whose members file lists alice's and bob's keys
//! (made with the real `ssh-keygen`): each node signs its presence with
//! its user's key, and every honest node refuses a node claiming another
//! member's name, a node signing with a key its user does not have and a
//! node of a non-member: none of them gets a link or joins the group,
//! while alice and bob form the room. A request forged under the other
//! member's name through a valid link is refused by the leader, and a
//! group founded first by a non-member is passed over. One member keeps
//! a passphrase-protected key in a real `ssh-agent` and names no key file:
//! the agent signs for that node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use skygit_consensus::codec::{self, Envelope, EnvelopeKind};
use skygit_consensus::model::{ChatRequest, Command as ChatCommand, ConversationId, UserId};
use skygit_consensus::replica::ChatRpcRequest;
use skygit_consensus::rpc::RpcFrame;
use skygit_harness::{
    converged, link_phase, post_round, wait_for, wait_leader, wait_members, NodeProc, NodeSpec,
};

const SETTLE: Duration = Duration::from_secs(90);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skygit"))
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    keygen_with(dir, name, "")
}

fn keygen_with(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    path
}

fn skygit(args: &[&str], repo: &Path, data: &Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--repo")
        .arg(repo)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("skygit runs")
}

/// A real `ssh-agent`, stopped when dropped.
struct Agent {
    child: std::process::Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent runs");
        let agent = Agent { child, socket };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "ssh-agent never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// `ssh-add`s a key protected by `passphrase` (given as a user would
    /// at the prompt, through SSH_ASKPASS).
    fn add(&self, dir: &Path, key: &Path, passphrase: &str) {
        let askpass = dir.join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{passphrase}'\n")).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .expect("ssh-add runs");
        assert!(out.status.success(), "ssh-add: {out:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn spec(dir: &Path, repo: &Path, name: &str, user: &str, key: &Path) -> NodeSpec {
    let key = key.to_string_lossy();
    spec_with(dir, repo, name, user, &["--ssh-key", &key])
}

fn spec_with(dir: &Path, repo: &Path, name: &str, user: &str, extra: &[&str]) -> NodeSpec {
    let args: Vec<&str> = ["--commit-interval", "1", "--fault-api"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut s = NodeSpec::for_test(bin(), dir, repo, user, &args);
    // Two nodes may claim one user: each gets its own data directory.
    s.data_dir = dir.join(name);
    s.log = dir.join(format!("{name}.log"));
    s
}

/// The refusal reason `node` shows for `peer`, if any.
async fn refusal(node: &NodeProc, peer: u64) -> Option<String> {
    let s = node.status().await.ok()?;
    s.identity?
        .refused
        .into_iter()
        .find(|r| r.node_id == peer)
        .map(|r| r.reason)
}

fn git_log(repo: &Path) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["log", "--format=%B", "main"])
        .output()
        .expect("git runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn metric(node: &NodeProc, name: &str) -> f64 {
    let text = node
        .http()
        .get(format!("{}/metrics", node.api))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_are_refused_by_every_honest_node_and_members_form_the_room() {
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        skygit_harness::skip_unless_required("ssh-keygen is not installed (openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let repo = d.join("room.git");
    let admin = d.join("admin");
    let out = skygit(&["init"], &repo, &admin);
    assert!(out.status.success(), "init: {out:?}");
    // Bob keeps his key behind a passphrase, in ssh-agent.
    let bob_passphrase = "correct horse";
    let (alice_key, bob_key, mallory_key) = (
        keygen(d, "alice"),
        keygen_with(d, "bob", bob_passphrase),
        keygen(d, "mallory"),
    );
    let agent = Agent::start(d);
    agent.add(d, &bob_key, bob_passphrase);
    for (user, key) in [("alice", &alice_key), ("bob", &bob_key)] {
        let public = key.with_extension("key.pub");
        let out = skygit(
            &["members", "add", user, &public.to_string_lossy()],
            &repo,
            &admin,
        );
        assert!(out.status.success(), "members add {user}: {out:?}");
    }

    // A node of a verifying room needs a key to start at all.
    let keyless = Command::new(bin())
        .args(["node", "--user", "carol", "--repo"])
        .arg(&repo)
        .arg("--data-dir")
        .arg(d.join("keyless"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .expect("skygit runs");
    assert!(!keyless.status.success(), "a keyless node started");
    let said = String::from_utf8_lossy(&keyless.stderr);
    assert!(said.contains("--ssh-key"), "{said}");
    // A passphrase-protected key without an agent is a clear error too.
    let locked = Command::new(bin())
        .args(["node", "--user", "bob", "--ssh-key"])
        .arg(&bob_key)
        .arg("--repo")
        .arg(&repo)
        .arg("--data-dir")
        .arg(d.join("locked"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .expect("skygit runs");
    assert!(!locked.status.success(), "a locked key signed");
    let said = String::from_utf8_lossy(&locked.stderr);
    assert!(
        said.contains("passphrase") && said.contains("ssh-add"),
        "{said}"
    );

    // Mallory, who is not a member but can write to the repository,
    // arrives first and founds a group of her own, signed with her key.
    let mallory = NodeProc::start(spec(d, &repo, "mallory", "mallory", &mallory_key))
        .await
        .expect("mallory starts");
    let founding = format!("Group-Founder: {}", mallory.node_id);
    wait_for(SETTLE, "mallory to claim the founding", || async {
        let log = git_log(&repo);
        log.contains(&founding).then_some(())
    })
    .await
    .expect("mallory claimed the group");
    assert!(git_log(&repo).contains("Group-Founder-Signature: "));

    // The members pass over her founding (its signature is not a
    // member's), found their own and form the room.
    let mut alice = NodeProc::start(spec(d, &repo, "alice", "alice", &alice_key))
        .await
        .expect("alice starts");
    // Bob names no key: his node signs with the agent's key the members
    // file lists for him.
    let mut bob_spec = spec_with(d, &repo, "bob", "bob", &[]);
    bob_spec.env.push((
        "SSH_AUTH_SOCK".into(),
        agent.socket.to_string_lossy().into_owned(),
    ));
    let mut bob = NodeProc::start(bob_spec).await.expect("bob starts");
    let honest = [&alice, &bob];
    wait_members(&honest, 2, SETTLE)
        .await
        .expect("alice and bob form the room");

    // Two more impostors: mallory's key under alice's name, alice's key
    // under bob's name.
    let cases = [
        (
            "mallory",
            "mallory",
            &mallory_key,
            "mallory is not a member",
        ),
        (
            "fake-alice",
            "alice",
            &mallory_key,
            "not one of alice's keys",
        ),
        ("fake-bob", "bob", &alice_key, "not one of bob's keys"),
    ];
    let mut impostors = vec![mallory];
    for (name, user, key, _) in &cases[1..] {
        impostors.push(
            NodeProc::start(spec(d, &repo, name, user, key))
                .await
                .expect("impostor starts"),
        );
    }
    for (imp, (name, _, _, why)) in impostors.iter().zip(&cases) {
        for n in honest {
            let reason = wait_for(SETTLE, &format!("{} to refuse {name}", n.spec.user), || {
                refusal(n, imp.node_id)
            })
            .await
            .expect("refused");
            assert!(reason.contains(why), "{name}: {reason}");
        }
    }
    // The room goes on between alice and bob, and the impostors never got
    // a link or a place in the group.
    let mut sent = std::collections::BTreeSet::new();
    post_round(&honest, "verified", 2, &mut sent)
        .await
        .expect("posts");
    converged(&honest, &sent, SETTLE).await.expect("converged");
    for n in honest {
        let s = n.status().await.expect("status");
        assert_eq!(
            s.identity.as_ref().map(|i| i.verified_by.as_str()),
            Some("allowed_signers")
        );
        let m = s.membership.clone().expect("membership");
        for imp in &impostors {
            assert!(
                !m.voters.contains(&imp.node_id) && !m.learners.contains(&imp.node_id),
                "an impostor joined: {s:?}"
            );
            assert_ne!(link_phase(&s, imp.node_id), "open", "{s:?}");
        }
    }
    assert!(metric(&alice, "skygit_identity_refusals_total").await >= 3.0);

    // Through its valid link, a member proposes a post under the other
    // member's name: the leader refuses it and it never reaches the log.
    let leader = wait_leader(&honest, SETTLE).await.expect("leader");
    let (lead, other) = if alice.node_id == leader {
        (&alice, &bob)
    } else {
        (&bob, &alice)
    };
    let forged_text = "forged through a valid link";
    let request = ChatRequest {
        id: ulid::Ulid::new(),
        sender: UserId::new(&lead.spec.user).expect("user"),
        at: 1,
        command: ChatCommand::Post {
            conversation: ConversationId::new("general").expect("conversation"),
            content: forged_text.into(),
            attachments: Vec::new(),
        },
        signature: None,
    };
    let frame = codec::encode_frame(&Envelope {
        kind: EnvelopeKind::Chat,
        from: other.node_id,
        to: lead.node_id,
        epoch: 0,
        timestamp: 1,
        payload: codec::to_bytes(&RpcFrame {
            id: u64::MAX - 1,
            response: false,
            body: codec::to_bytes(&ChatRpcRequest::Propose(request)).expect("encodes"),
        })
        .expect("encodes"),
    })
    .expect("frame");
    other
        .send_raw(lead.node_id, "frame", frame)
        .await
        .expect("sent");
    wait_for(SETTLE, "the leader to count the forged request", || async {
        (metric(lead, "skygit_forged_requests_total").await >= 1.0).then_some(())
    })
    .await
    .expect("refused");
    // A later honest post commits, and the forged one is nowhere.
    post_round(&honest, "after", 1, &mut sent)
        .await
        .expect("posts");
    let texts = converged(&honest, &sent, SETTLE).await.expect("converged");
    assert!(!texts.iter().any(|t| t == forged_text), "{texts:?}");

    // Every post is signed by its author: the UI's verified mark.
    let page: skygit_api::MessagePage = alice
        .get("/messages?conversation=general")
        .await
        .expect("messages");
    assert!(!page.messages.is_empty());
    assert!(page.messages.iter().all(|m| m.verified), "{page:?}");

    for mut imp in impostors {
        imp.kill().await.expect("killed");
    }

    // Bob is removed from the room while linked: alice's next check of his
    // claim refuses him and his link goes. Added back, he is linked again
    // and the room goes on.
    let out = skygit(&["members", "remove", "bob"], &repo, &admin);
    assert!(out.status.success(), "members remove: {out:?}");
    let reason = wait_for(SETTLE, "alice to refuse bob once he is removed", || {
        refusal(&alice, bob.node_id)
    })
    .await
    .expect("refused after removal");
    assert!(reason.contains("bob is not a member"), "{reason}");
    wait_for(SETTLE, "bob's link to go", || async {
        let s = alice.status().await.ok()?;
        (link_phase(&s, bob.node_id) != "open").then_some(())
    })
    .await
    .expect("the link went");
    // And stays gone: a refused peer is neither offered nor answered, so
    // the removed member gets none of the room's traffic.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = alice.status().await.expect("status");
        assert_ne!(
            link_phase(&s, bob.node_id),
            "open",
            "bob linked again while removed"
        );
    }
    let bob_public = d.join("bob.key.pub");
    let out = skygit(
        &["members", "add", "bob", &bob_public.to_string_lossy()],
        &repo,
        &admin,
    );
    assert!(out.status.success(), "members add: {out:?}");
    wait_for(SETTLE, "bob to be linked again", || async {
        let s = alice.status().await.ok()?;
        (link_phase(&s, bob.node_id) == "open").then_some(())
    })
    .await
    .expect("linked again");
    post_round(&honest, "restored", 1, &mut sent)
        .await
        .expect("posts");
    converged(&honest, &sent, SETTLE).await.expect("converged");
    // A call: alice rings bob, he answers and hangs up. Its lines are
    // signed like every other change (checked by verify below).
    let started: skygit_api::calls::CallView = alice
        .http()
        .post(format!("{}/calls", alice.api))
        .json(&serde_json::json!({"conversation": "general", "peers": [bob.node_id]}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("alice calls bob")
        .json()
        .await
        .expect("a call");
    let id = started.id.clone();
    wait_for(SETTLE, "bob's node to ring", || async {
        let c: skygit_api::calls::Calls = bob.get("/calls").await.ok()?;
        c.calls.iter().any(|c| c.id == id).then_some(())
    })
    .await
    .expect("rings");
    for what in ["accept", "hangup"] {
        bob.http()
            .post(format!("{}/calls/{id}/{what}", bob.api))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("bob's {what}: {e}"));
    }
    wait_for(SETTLE, "the call's end in the log", || async {
        let page: skygit_api::MessagePage = alice.get("/messages?limit=1000").await.ok()?;
        page.messages
            .iter()
            .any(|m| {
                m.call.as_ref().is_some_and(|c| {
                    c.call == id && c.event == skygit_api::calls::CallLineEvent::Ended
                })
            })
            .then_some(())
    })
    .await
    .expect("ended");
    // Stopping flushes: the repository then holds the whole history.
    for n in [&mut alice, &mut bob] {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }

    // `skygit verify` checks every line against the members file.
    let (ok, report) = verify(&repo, &admin);
    assert!(ok, "{report:?}");
    assert_eq!(report.keys_from, "allowed_signers");
    assert!(report.lines >= sent.len() as u64, "{report:?}");
    assert_eq!(report.verified, report.lines, "{report:?}");

    // One line, checked by the real ssh-keygen without skygit.
    // Bob's line was signed by ssh-agent.
    let (path, number, line) = first_post_line(&repo, "bob");
    let signers = d.join("allowed_signers");
    std::fs::write(&signers, git_show(&repo, ".messages/allowed_signers")).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify-line.sh");
    let check = |line: &str| {
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(&signers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("verify-line.sh runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(line.as_bytes())
            .expect("line written");
        child.wait_with_output().expect("finishes")
    };
    let out = check(&line);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Good \"skygit\" signature"),
        "{out:?}"
    );

    // A call line too (bob's join, signed by ssh-agent).
    let (_, _, call_line) = first_line(&repo, "bob", "call");
    let out = check(&call_line);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Good \"skygit\" signature"),
        "{call_line}: {out:?}"
    );

    // A line changed with git: verify names its file and line, and so
    // does ssh-keygen.
    let tampered = line.replacen("from ", "from not ", 1);
    assert_ne!(tampered, line);
    assert!(!check(&tampered).status.success());
    let work = d.join("work");
    git(&[
        "clone",
        "--quiet",
        &repo.to_string_lossy(),
        &work.to_string_lossy(),
    ]);
    let file = work.join(&path);
    let text = std::fs::read_to_string(&file).expect("batch file");
    std::fs::write(&file, text.replacen(&line, &tampered, 1)).expect("write");
    let w = work.to_string_lossy();
    git(&[
        "-C",
        &w,
        "-c",
        "user.name=mallory",
        "-c",
        "user.email=m@example.com",
        "commit",
        "--quiet",
        "-am",
        "fix a typo",
    ]);
    git(&["-C", &w, "push", "--quiet", "origin", "HEAD:main"]);
    let (ok, report) = verify(&repo, &admin);
    assert!(!ok, "a changed line verified: {report:?}");
    assert_eq!(report.failed_total, 1, "{report:?}");
    let failure = &report.failed[0];
    assert_eq!(
        (failure.file.as_str(), failure.line),
        (path.as_str(), number),
        "{report:?}"
    );
    assert!(failure.reason.contains("does not verify"), "{report:?}");
}

/// A passphrase-protected key file, or its public half, signs through a
/// real ssh-agent holding it; a key the agent does not hold is a clear
/// error.
#[test]
fn a_key_in_ssh_agent_signs_when_named_by_its_file_or_public_half() {
    use skygit_actors::ports::identity::{self, KeyError, SigningKey};
    if Command::new("ssh-agent").arg("-?").output().is_err() {
        skygit_harness::skip_unless_required("ssh-agent is not installed (openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let locked = keygen_with(d, "carol", "s3cret");
    let stranger = keygen(d, "dave");
    let agent = Agent::start(d);
    agent.add(d, &locked, "s3cret");
    let public = locked.with_extension("key.pub");
    let listed = ssh_key::PublicKey::read_openssh_file(&public).expect("public key");
    for named in [&locked, &public] {
        let key = SigningKey::from_file(named, Some(&agent.socket)).expect("the agent holds it");
        assert!(key.in_agent());
        assert_eq!(key.public().key_data(), listed.key_data());
        let signature = key.sign(b"hello").expect("the agent signs");
        identity::verify(
            "carol",
            Some(std::slice::from_ref(&listed)),
            b"hello",
            Some(&signature),
        )
        .expect("the agent's signature verifies");
        assert!(identity::verify(
            "carol",
            Some(std::slice::from_ref(&listed)),
            b"hullo",
            Some(&signature)
        )
        .is_err());
    }
    let e = SigningKey::from_file(&stranger.with_extension("key.pub"), Some(&agent.socket))
        .expect_err("not in the agent");
    assert!(matches!(e, KeyError::NotInAgent { .. }), "{e}");
    let e = SigningKey::choose_from_agent(&agent.socket, |_| false).expect_err("none wanted");
    assert!(e.to_string().contains("holds 1 key(s)"), "{e}");
}

/// `skygit verify --json`: whether it passed, and its report.
fn verify(repo: &Path, data: &Path) -> (bool, skygit::verify::Report) {
    let out = skygit(&["verify", "--json"], repo, data);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json: {e}: {out:?}"));
    (out.status.success(), report)
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git").args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_show(repo: &Path, path: &str) -> String {
    git(&[
        "--git-dir",
        &repo.to_string_lossy(),
        "show",
        &format!("main:{path}"),
    ])
}

/// A batch file of the general conversation and its first line (a post).
/// The first post line by `sender` in the history.
fn first_post_line(repo: &Path, sender: &str) -> (String, usize, String) {
    first_line(repo, sender, "post")
}

/// The first line of `kind` by `sender` in `general`.
fn first_line(repo: &Path, sender: &str, kind: &str) -> (String, usize, String) {
    let files = git(&[
        "--git-dir",
        &repo.to_string_lossy(),
        "ls-tree",
        "-r",
        "--name-only",
        "main",
        ".messages/general",
    ]);
    let by = format!("\"sender\":\"{sender}\"");
    let of = format!("\"kind\":\"{kind}\"");
    files
        .lines()
        .filter(|p| p.ends_with(".jsonl"))
        .find_map(|path| {
            let text = git_show(repo, path);
            let (n, line) = text
                .lines()
                .enumerate()
                .find(|(_, l)| l.contains(&by) && l.contains(&of))?;
            Some((path.to_owned(), n + 1, line.to_owned()))
        })
        .unwrap_or_else(|| panic!("no {kind} by {sender} in {files}"))
}
