//! Two `skygit node` processes on a GitHub room, served by the stateful
//! GitHub-compatible test server (a real bare repository behind the REST
//! API): they meet through presence refs written with the Git Data API,
//! connect over WebRTC, and the leader commits through the same API. The
//! results are checked with the real git in the server's repository.
//! Each node's user is its token's GitHub login; a node that names another
//! user is refused before it starts. Each node signs its presence with an
//! SSH key its GitHub account lists (`/users/{user}/keys`), and a node
//! whose key is not on its user's account, or whose user may only read the
//! repository, is refused by the others.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use skygit_github_server::GithubServer;
use skygit_harness::{converged, post_round, wait_for, wait_members, NodeProc, NodeSpec};
use skygit_tests::git_server::{clone_and_read, git};

const TOKEN: &str = "test-token-1234";
/// Each teammate's own token.
const USERS: [(&str, &str); 2] = [("ana", "token-of-ana-5678"), ("bo", "token-of-bo-9012")];
const SETTLE: Duration = Duration::from_secs(90);

/// A new ed25519 key made with the real `ssh-keygen`: (private key file,
/// public key line).
fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(path.with_extension("key.pub")).expect("public key");
    (path, public)
}

fn node_spec(
    bin: &Path,
    dir: &Path,
    server: &GithubServer,
    user: &str,
    token: &str,
    key: &Path,
) -> NodeSpec {
    let mut spec = NodeSpec::new(bin, Path::new("github:acme/room"), user, &dir.join(user));
    spec.args = [
        "--github-api",
        &server.url(),
        "--fast-poll-ms",
        "300",
        "--slow-poll-secs",
        "2",
        "--heartbeat-secs",
        "5",
        "--commit-interval",
        "1",
        "--ssh-key",
        &key.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec();
    spec.env = vec![("GITHUB_TOKEN".into(), token.into())];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_meet_and_commit_through_the_github_api() {
    if std::process::Command::new("ssh-keygen")
        .arg("-?")
        .output()
        .is_err()
    {
        skygit_harness::skip_unless_required("ssh-keygen is not installed (openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("srv").join("room.git");
    let server = GithubServer::start(&bare, "acme", "room", TOKEN).expect("server starts");
    let mut keys = Vec::new();
    for (user, token) in USERS {
        server.add_user(user, token);
        let (key, public) = keygen(dir.path(), user);
        server.add_ssh_key(user, &public);
        keys.push(key);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_skygit"));
    let init = std::process::Command::new(bin)
        .args([
            "init",
            "--repo",
            "github:acme/room",
            "--github-api",
            &server.url(),
        ])
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .expect("init runs");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let mut nodes = Vec::new();
    for ((user, token), key) in USERS.into_iter().zip(&keys) {
        let spec = node_spec(bin, dir.path(), &server, user, token, key);
        nodes.push(NodeProc::start(spec).await.expect("node starts"));
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 2, SETTLE).await.expect("two voters");
    // Eve has a token for the room, but signs with a key her GitHub
    // account does not list; ivy's key is on her account, but she may
    // only read the repository (her token still works: the test server
    // does not enforce permissions on writes). Both nodes refuse both.
    server.add_user("eve", "token-of-eve-3456");
    let (eve_key, _) = keygen(dir.path(), "eve");
    server.add_user("ivy", "token-of-ivy-7890");
    let (ivy_key, ivy_public) = keygen(dir.path(), "ivy");
    server.add_ssh_key("ivy", &ivy_public);
    server.set_permission("ivy", "read");
    let mut impostor_ids = Vec::new();
    for (user, token, key, why) in [
        (
            "eve",
            "token-of-eve-3456",
            &eve_key,
            "not one of eve's keys",
        ),
        ("ivy", "token-of-ivy-7890", &ivy_key, "ivy is not a member"),
    ] {
        let mut imp = NodeProc::start(node_spec(bin, dir.path(), &server, user, token, key))
            .await
            .expect("impostor starts");
        for n in &refs {
            let reason = wait_for(SETTLE, &format!("{user} to be refused"), || async {
                let s = n.status().await.ok()?;
                let identity = s.identity?;
                assert_eq!(identity.verified_by, "github");
                identity
                    .refused
                    .into_iter()
                    .find(|r| r.node_id == imp.node_id)
                    .map(|r| r.reason)
            })
            .await
            .expect("refused");
            assert!(reason.contains(why), "{reason}");
        }
        impostor_ids.push(imp.node_id);
        imp.kill().await.expect("killed");
    }
    let asked: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/users/") || r.path.contains("/collaborators/"))
        .map(|r| format!("{} {}", r.status, r.path))
        .collect();
    for user in ["ana", "bo", "eve"] {
        assert!(
            asked.contains(&format!("200 /users/{user}/keys?per_page=100")),
            "nobody read {user}'s keys: {asked:?}"
        );
    }
    for user in ["ana", "bo", "eve", "ivy"] {
        assert!(
            asked.contains(&format!(
                "200 /repos/acme/room/collaborators/{user}/permission"
            )),
            "nobody read {user}'s permission: {asked:?}"
        );
    }
    // Ivy cannot write the repository: her keys are never asked for.
    assert!(
        !asked.iter().any(|a| a.contains("/users/ivy/keys")),
        "{asked:?}"
    );
    let mut sent = BTreeSet::new();
    post_round(&refs, "via github", 3, &mut sent)
        .await
        .expect("posted");
    converged(&refs, &sent, SETTLE).await.expect("converged");

    // A file goes to the repository's Git LFS (the test server's, as
    // GitHub's: Basic with the node's token on the batch call only).
    let bytes = skygit_tests::noise(200_000, 31);
    let a = nodes[0]
        .upload(bytes.clone(), "design.png", "image/png")
        .await
        .expect("uploaded");
    let posted = nodes[0]
        .post_files("the design", vec![a.clone()])
        .await
        .expect("posted");
    let id = posted.message_id.clone();
    let node = &nodes[0];
    wait_for(SETTLE, "the file in GitHub's LFS", || async {
        let m: skygit_api::Message = node.get(&format!("/messages/{id}")).await.ok()?;
        m.attachments.iter().all(|f| f.stored).then_some(())
    })
    .await
    .expect("stored");
    assert_eq!(server.lfs_object(&a.sha256), Some(bytes));
    sent.insert("the design".to_owned());

    let url = format!("file://{}", bare.display());
    let scratch = dir.path().join("clone");
    wait_for(SETTLE, "the leader to commit through the API", || async {
        let cloned = clone_and_read(&url, &scratch);
        let got: BTreeSet<String> = cloned
            .changes
            .iter()
            .filter_map(|c| match &c.kind {
                skygit_consensus::model::ChangeKind::Post { content, .. } => Some(content.clone()),
                _ => None,
            })
            .collect();
        (got == sent).then_some(())
    })
    .await
    .expect("the repository holds every message");
    let presence = git(&[
        "--git-dir",
        &bare.to_string_lossy(),
        "for-each-ref",
        "--format=%(refname)",
        "refs/skygit/presence",
    ]);
    let listed: BTreeSet<String> = presence.lines().map(str::to_owned).collect();
    let want: BTreeSet<String> = nodes
        .iter()
        .map(|n| n.node_id)
        .chain(impostor_ids)
        .map(|id| format!("refs/skygit/presence/{id}"))
        .collect();
    assert_eq!(listed, want, "one presence ref per node");
    for mut n in nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

/// A node that names a user its token does not belong to never starts.
#[test]
fn a_node_claiming_another_users_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("srv").join("room.git");
    let server = GithubServer::start(&bare, "acme", "room", TOKEN).expect("server starts");
    let (ana, ana_token) = USERS[0];
    server.add_user(ana, ana_token);
    let node = |user: &str, token: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skygit"));
        cmd.args(["node", "--repo", "github:acme/room", "--github-api"])
            .arg(server.url())
            .args(["--user", user, "--data-dir"])
            .arg(dir.path().join(user))
            .env("GITHUB_TOKEN", token)
            .stdin(std::process::Stdio::null());
        cmd.output().expect("node runs")
    };
    let out = node("bo", ana_token);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a node claiming bo with ana's token ran"
    );
    assert!(
        said.contains("belongs to GitHub user ana") && said.contains("--user bo is refused"),
        "{said}"
    );
    assert!(!said.contains(ana_token), "the token was printed: {said}");
    let out = node("ana", "a-token-github-does-not-know");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node with an unknown token ran");
    assert!(said.contains("401"), "{said}");
}
