//! The committer against the GitHub-compatible test server (REST API over
//! loopback, backed by a bare repository): what a `git clone` of that
//! repository shows after flushes, how many calls a flush costs, that the
//! GitHub and plain-git backends make the very same commits, rate limits,
//! refused tokens and two committers racing on one branch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skygit_actors::committer::{CommitterError, FlushReport, Flusher};
use skygit_actors::layout::{self, RoomConfig};
use skygit_actors::local::RepoFactory;
use skygit_actors::ports::{CommitRequest, RepoError, RepoRemote};
use skygit_consensus::model::{Change, ChangeKind, ConversationId, UserId};
use skygit_consensus::NodeId;
use skygit_github_server::{Fault, GithubServer, Recorded};
use skygit_remotes::git::GitRemote;
use skygit_remotes::github::{GithubConfig, GithubRemote};
use skygit_tests::committing::*;
use skygit_tests::git_server::{clone_and_read, git};
use skygit_tests::*;
use ulid::Ulid;

const WAIT: Duration = Duration::from_secs(60);
const OWNER: &str = "acme";
const NAME: &str = "room";
const TOKEN: &str = "t0ken";
/// Where the server serves the repository (every path below starts so).
const REPO: &str = "/repos/acme/room";

/// A GitHub test server on an empty bare repository below `dir`.
fn server(dir: &Path) -> GithubServer {
    GithubServer::start(&dir.join("srv").join("room.git"), OWNER, NAME, TOKEN)
        .expect("github test server starts")
}

fn github_remote(api: &str, token: &str) -> GithubRemote {
    GithubRemote::new(GithubConfig {
        api: api.to_owned(),
        owner: OWNER.to_owned(),
        name: NAME.to_owned(),
        branch: "main".to_owned(),
        token: Some(token.to_owned()),
    })
    .expect("github remote")
}

/// Each node gets its own GitHub client (own caches) for the server.
fn github_factory(api: String, token: &str) -> RepoFactory {
    let token = token.to_owned();
    Arc::new(move |_: NodeId| Arc::new(github_remote(&api, &token)) as Arc<dyn RepoRemote>)
}

fn repo_url(server: &GithubServer) -> String {
    server.repo_path().to_string_lossy().into_owned()
}

/// Requests of `method` on exactly `path` (below the repository).
fn count(reqs: &[Recorded], method: &str, path: &str) -> usize {
    let full = format!("{REPO}{path}");
    reqs.iter()
        .filter(|r| r.method == method && r.path == full)
        .count()
}

fn show(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect()
}

/// Whether the server answered the bootstrap commit (a PUT of the room's
/// config through the contents API) successfully.
fn bootstrapped(server: &GithubServer) -> bool {
    server.requests().iter().any(|r| {
        r.method == "PUT"
            && r.path == format!("{REPO}/contents/{}", layout::CONFIG_PATH)
            && matches!(r.status, 200 | 201)
    })
}

/// Waits until the server has had no request for a while (a flush of the
/// new leader that was still under way has finished).
async fn settle(server: &GithubServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = server.calls();
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = server.calls();
        if now == last {
            return;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never went quiet"
        );
    }
}

#[actix_rt::test]
async fn a_room_commits_to_the_github_test_server_and_git_sees_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let url = repo_url(&server);
    let c = cluster(
        dir.path(),
        3,
        Some(committing_options(github_factory(server.url(), TOKEN))),
    )
    .await;
    let leader = c.wait_leader(WAIT).await.unwrap();

    // The new leader's first flush creates the room's config through the
    // contents API (the Git Data API answers 409 on an empty repository).
    let report = flush(&c).await;
    assert!(report.head.is_some(), "{report:?}");
    let reqs = server.requests();
    let puts: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.path == format!("{REPO}/contents/.messages/config.json"))
        .collect();
    assert_eq!(
        puts.iter()
            .filter(|r| matches!(r.status, 200 | 201))
            .count(),
        1,
        "one bootstrap commit: {:#?}",
        show(&reqs)
    );
    let sent = puts[0].body["content"].as_str().unwrap().to_owned();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(sent)
            .unwrap(),
        RoomConfig::default().to_bytes()
    );

    let (_, last) = post_every_kind(&c, leader, "deploy at 5 \"sharp\" — ünïcode").await;

    let report = flush(&c).await;
    assert_eq!(report.up_to_index, last);
    assert_eq!(report.commits, 1);
    assert_eq!(report.changes, 34);
    let one = clone_and_read(&url, &dir.path().join("clone1"));
    assert_repo_matches_room(&one, &c, leader);
    assert_eq!(one.changes.len(), 34);
    assert_eq!(
        one.watermarks,
        vec![0, 0, last],
        "config commit, the founding, then one batch"
    );
    assert_eq!(one.commits.last(), report.head.as_ref());
    let config = std::fs::read(one.dir.join(layout::CONFIG_PATH)).unwrap();
    assert_eq!(config, RoomConfig::default().to_bytes());
    let edits = one
        .changes
        .iter()
        .filter(|ch| matches!(ch.kind, ChangeKind::Edit { .. }))
        .count();
    let deletes = one
        .changes
        .iter()
        .filter(|ch| matches!(ch.kind, ChangeKind::Delete { .. }))
        .count();
    assert_eq!((edits, deletes), (1, 1));
    // Rendering a file's changes again gives its bytes (the text went
    // through JSON and back without a change).
    for (path, bytes) in &one.files {
        let changes = layout::parse_batch(path, bytes).unwrap();
        let again = layout::render(&changes).unwrap();
        assert_eq!(again.files, vec![(path.clone(), bytes.clone())]);
    }
    // The commits are the committer's, at the last change's time.
    let who = git(&[
        "--git-dir",
        &url,
        "log",
        "-1",
        "--format=%an <%ae>|%cn <%ce>",
        "main",
    ]);
    let me = format!("{} <{}>", layout::COMMITTER_NAME, layout::COMMITTER_EMAIL);
    assert_eq!(who.trim(), format!("{me}|{me}"));
    wait_synced(&c, last).await;

    // A second flush: the client knows the head commit it made, so it
    // reads the branch once and writes tree, commit and ref.
    let mut later = 0;
    for i in 0..10 {
        later = post_committed(&c, leader, "cy", format!("later {i}"))
            .await
            .1;
    }
    c.wait_converged(WAIT).await.unwrap();
    server.reset_log();
    let report: FlushReport = flush(&c).await;
    let reqs = server.requests();
    assert_eq!(report.commits, 1);
    assert_eq!(report.changes, 10);
    assert_eq!(report.up_to_index, later);
    assert_eq!(count(&reqs, "POST", "/git/trees"), 1, "{:#?}", show(&reqs));
    assert_eq!(
        count(&reqs, "POST", "/git/commits"),
        1,
        "{:#?}",
        show(&reqs)
    );
    assert_eq!(
        count(&reqs, "PATCH", "/git/refs/heads/main"),
        1,
        "{:#?}",
        show(&reqs)
    );
    assert_eq!(
        report.remote_calls,
        reqs.len() as u64,
        "the client's count and the server's log disagree: {:#?}",
        show(&reqs)
    );
    // The head commit is the one this client made: it is not read again.
    assert_eq!(
        reqs.iter()
            .filter(|r| r.method == "GET" && r.path.contains("/git/commits/"))
            .count(),
        0,
        "{:#?}",
        show(&reqs)
    );
    let writes = reqs.iter().filter(|r| r.method != "GET").count();
    assert_eq!(writes, 3, "{:#?}", show(&reqs));
    // (The exact total, 3, is checked by the test below.)
    let two = clone_and_read(&url, &dir.path().join("clone2"));
    assert_repo_matches_room(&two, &c, leader);
    assert_eq!(two.commits.len(), one.commits.len() + 1);
    for f in &one.files {
        assert!(two.files.contains(f), "{} changed or vanished", f.0);
    }
    wait_synced(&c, later).await;
    c.shutdown().await;
}

/// The cost of a flush of new changes on a head this committer wrote:
/// tree, commit and ref update, whatever the number of messages (the
/// compare-and-swap of the ref update catches a branch that moved).
#[actix_rt::test]
async fn a_flush_on_a_known_head_costs_three_calls() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let c = cluster(
        dir.path(),
        3,
        Some(committing_options(github_factory(server.url(), TOKEN))),
    )
    .await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    for i in 0..5 {
        post_committed(&c, leader, "ana", format!("first {i}")).await;
    }
    flush(&c).await;
    let mut last = 0;
    for i in 0..10 {
        last = post_committed(&c, leader, "cy", format!("later {i}"))
            .await
            .1;
    }
    c.wait_converged(WAIT).await.unwrap();
    server.reset_log();
    let report = flush(&c).await;
    let reqs = server.requests();
    assert_eq!((report.commits, report.changes), (1, 10));
    assert_eq!(report.up_to_index, last);
    assert_eq!(
        report.remote_calls,
        3,
        "tree + commit + ref update; the server saw {:#?}",
        show(&reqs)
    );
    assert_eq!(reqs.len(), 3, "{:#?}", show(&reqs));
    c.shutdown().await;
}

/// A change as the room would journal it.
fn change(index: u64, conv: &str, sender: &str, at: i64, kind: ChangeKind) -> Change {
    Change {
        index,
        term: 2,
        request: Ulid::from_parts(at as u64, index as u128),
        sender: UserId::new(sender).unwrap(),
        at,
        conversation: ConversationId::new(conv).unwrap(),
        kind,
        signature: None,
    }
}

fn post(index: u64, conv: &str, sender: &str, at: i64, text: &str) -> Change {
    let request = Ulid::from_parts(at as u64, index as u128);
    change(
        index,
        conv,
        sender,
        at,
        ChangeKind::Post {
            message: request,
            content: text.into(),
            attachments: Vec::new(),
        },
    )
}

fn batch_request(head: &str, changes: &[Change]) -> CommitRequest {
    let b = layout::render(changes).expect("something to render");
    CommitRequest {
        expected_head: Some(head.to_owned()),
        files: b.files,
        message: b.message,
        time_secs: b.time_secs,
    }
}

#[actix_rt::test]
async fn github_and_git_backends_make_the_same_commit_for_the_same_prefix() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let hub = github_remote(&server.url(), TOKEN);
    let bare = dir.path().join("plain.git");
    git(&[
        "init",
        "--quiet",
        "--bare",
        "--initial-branch=main",
        &bare.to_string_lossy(),
    ]);
    let plain =
        GitRemote::open(&bare.to_string_lossy(), "main", &dir.path().join("cache")).unwrap();
    assert_eq!(hub.head().await.unwrap(), None);
    assert_eq!(plain.head().await.unwrap(), None);

    // The room's config, on an empty branch.
    let init = CommitRequest {
        expected_head: None,
        files: vec![(
            layout::CONFIG_PATH.to_owned(),
            RoomConfig::default().to_bytes(),
        )],
        message: layout::init_message(),
        time_secs: 0,
    };
    let a = hub.commit(init.clone()).await.unwrap();
    let b = plain.commit(init).await.unwrap();
    assert_eq!(a, b, "the config commit differs between GitHub and git");

    // A batch of every kind of change, over two days and conversations.
    const DAY1: i64 = 1_763_800_000_000; // 2025-11-22
    const DAY2: i64 = DAY1 + 86_400_000;
    let p = post(3, "general", "ana", DAY1, "hi \"there\"\nüñí — 🎉");
    let m = p.request;
    let first = vec![
        p,
        post(4, "random", "bob", DAY1 + 5, "yo"),
        change(
            6,
            "general",
            "ana",
            DAY2,
            ChangeKind::Edit {
                message: m,
                content: "hello".into(),
            },
        ),
        change(
            7,
            "general",
            "ana",
            DAY2 + 1,
            ChangeKind::Delete { message: m },
        ),
        change(
            9,
            "ops",
            "bob",
            DAY2 + 2,
            ChangeKind::CreateConversation {
                title: "Ops & on-call".into(),
            },
        ),
    ];
    let a = hub.commit(batch_request(&a, &first)).await.unwrap();
    let b = plain.commit(batch_request(&b, &first)).await.unwrap();
    assert_eq!(a, b, "the first batch differs between GitHub and git");

    // A later batch adds files next to the existing ones (the GitHub tree
    // is built on `base_tree`, the git one from the parent's tree).
    let second = vec![
        post(10, "general", "cy", DAY2 + 10, "same day, new file"),
        post(11, "ops", "bob", DAY2 + 3_600_000, "deploy at 5"),
    ];
    let a = hub.commit(batch_request(&a, &second)).await.unwrap();
    let b = plain.commit(batch_request(&b, &second)).await.unwrap();
    assert_eq!(a, b, "the second batch differs between GitHub and git");

    // Both branches point there, and real git agrees on every object.
    assert_eq!(hub.head().await.unwrap().unwrap().commit_sha, a);
    assert_eq!(plain.head().await.unwrap().unwrap().commit_sha, b);
    let hub_dir = server.repo_path().to_string_lossy().into_owned();
    let plain_dir = bare.to_string_lossy().into_owned();
    for d in [&hub_dir, &plain_dir] {
        assert_eq!(git(&["--git-dir", d, "rev-parse", "main"]).trim(), a);
        git(&["--git-dir", d, "fsck", "--strict", "--no-dangling"]);
    }
    assert_eq!(
        git(&["--git-dir", &hub_dir, "ls-tree", "-r", "main"]),
        git(&["--git-dir", &plain_dir, "ls-tree", "-r", "main"])
    );
    let files = git(&[
        "--git-dir",
        &hub_dir,
        "ls-tree",
        "-r",
        "--name-only",
        "main",
    ]);
    assert_eq!(files.lines().count(), 7, "{files}");
    // The same request again on the same parent is the same commit: the
    // branch is already there, so both backends answer it again.
    let parent = first_parent(&hub_dir, &a);
    let again = batch_request(&parent, &second);
    assert_eq!(hub.commit(again.clone()).await, Ok(a.clone()));
    assert_eq!(plain.commit(again).await, Ok(b.clone()));
    // Something else on the old parent is a lost compare-and-swap on both.
    let other = vec![post(10, "general", "dan", DAY2 + 10, "a different tenth")];
    let stale = batch_request(&parent, &other);
    assert_eq!(hub.commit(stale.clone()).await, Err(RepoError::Conflict));
    assert_eq!(plain.commit(stale).await, Err(RepoError::Conflict));
    for d in [&hub_dir, &plain_dir] {
        assert_eq!(git(&["--git-dir", d, "rev-parse", "main"]).trim(), a);
    }
}

fn first_parent(git_dir: &str, sha: &str) -> String {
    git(&["--git-dir", git_dir, "rev-parse", &format!("{sha}^")])
        .trim()
        .to_owned()
}

#[actix_rt::test]
async fn a_rate_limited_flush_is_retried_after_the_wait() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let url = repo_url(&server);
    let c = cluster(
        dir.path(),
        3,
        Some(committing_options(github_factory(server.url(), TOKEN))),
    )
    .await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    // The new leader bootstraps the repository by itself.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bootstrapped(&server) {
        assert!(tokio::time::Instant::now() < deadline, "no bootstrap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flush(&c).await;
    settle(&server).await;

    server.inject(
        Fault::new("git/trees", 429, "API rate limit exceeded")
            .with_method("POST")
            .with_header("retry-after", "1"),
    );
    let mut last = 0;
    for i in 0..5 {
        last = post_committed(&c, leader, "ana", format!("m {i}")).await.1;
    }
    c.wait_converged(WAIT).await.unwrap();
    let refused = flush_once(&c, leader).await;
    let at = tokio::time::Instant::now();
    assert_eq!(
        refused,
        Err(CommitterError::Repo(RepoError::RateLimited {
            retry_after_ms: 1000
        }))
    );
    // No flush from here on: the committer tries again after the wait.
    wait_synced(&c, last).await;
    let waited = at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "flushed again after {waited:?}, before the wait GitHub asked for"
    );
    let reqs = server.requests();
    let limited = reqs.iter().filter(|r| r.status == 429).count();
    assert_eq!(limited, 1, "{:#?}", show(&reqs));
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, leader);
    assert_eq!(cloned.changes.len(), 5);
    assert_eq!(*cloned.watermarks.last().unwrap(), last);
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_token_that_is_refused_stops_the_flush_with_a_clear_error_and_no_token_in_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let wrong = "ghp_wr0ngT0kenSecret42";
    // A node with a refused token cannot even read the repository to
    // start a group, so the room runs without one and the leader's
    // committer flushes through a remote holding the refused token.
    let c = cluster(dir.path(), 1, None).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    post_committed(&c, leader, "ana", "hello".into()).await;
    let h = c.handle(leader).unwrap();
    let flusher = Flusher::new(
        Arc::new(github_remote(&server.url(), wrong)),
        h.storage.reader.clone(),
        h.consensus.clone(),
        UserId::new("ana").unwrap(),
        Duration::from_secs(30),
    );
    let err = flusher
        .flush(&RoomConfig::default())
        .await
        .expect_err("a refused token cannot flush");
    assert!(
        matches!(err, CommitterError::Repo(RepoError::Denied(_))),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains("Bad credentials"), "{shown}");
    for text in [shown, format!("{err:?}")] {
        assert!(!text.contains(wrong), "the token leaks: {text}");
        assert!(!text.contains(TOKEN), "a token leaks: {text}");
    }
    // Nothing was written: every request was refused.
    let reqs = server.requests();
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r.status == 401), "{:#?}", show(&reqs));
    let refs = git(&[
        "--git-dir",
        &server.repo_path().to_string_lossy(),
        "for-each-ref",
    ]);
    assert!(refs.trim().is_empty(), "the repository changed: {refs}");
    c.shutdown().await;
}

#[actix_rt::test]
async fn racing_committers_on_github_keep_history_linear() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let url = repo_url(&server);
    let c = cluster(
        dir.path(),
        3,
        Some(committing_options(github_factory(server.url(), TOKEN))),
    )
    .await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    // The cluster's own committer creates the repository.
    flush(&c).await;
    let user = UserId::new("committer").unwrap();
    let mk = |node: NodeId| {
        let h = c.handle(node).unwrap();
        Flusher::new(
            Arc::new(github_remote(&server.url(), TOKEN)),
            h.storage.reader.clone(),
            h.consensus.clone(),
            user.clone(),
            Duration::from_secs(30),
        )
    };
    let a = mk(leader);
    let b = mk(follower);
    server.reset_log();
    race_committers(&c, leader, follower, &a, &b).await;
    // The two did race: GitHub refused ref updates that were not fast
    // forwards.
    let reqs = server.requests();
    let refused = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/git/refs/heads/main"))
        .filter(|r| r.status == 422)
        .count();
    assert!(refused >= 1, "no lost race: {:#?}", show(&reqs));
    let forced = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.body["force"] != serde_json::json!(false))
        .count();
    assert_eq!(forced, 0, "a ref update was forced");

    let last = c.wait_converged(WAIT).await.unwrap();
    let report = a.flush(&RoomConfig::default()).await.unwrap();
    assert!(report.up_to_index <= last);
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, leader);
    assert_eq!(cloned.changes.len(), 45);
    assert_linear(&cloned);
    c.shutdown().await;
}

/// A GitHub room's key directory: a member is a user with write access
/// (`GET /repos/{o}/{r}/collaborators/{user}/permission`), whose keys are
/// read with `GET /users/{user}/keys`, the answer parsed into keys; a user
/// GitHub does not know, or who may only read the repository, is nobody; a
/// name that is not a GitHub login never reaches a URL, and a second read
/// is a conditional request answered 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_directory_reads_users_keys_conditionally() {
    use skygit_actors::ports::identity::{KeyDirectory, SigningKey};
    use skygit_remotes::github::keys::GithubKeys;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let alice = SigningKey::from_ed25519_seed([7; 32]);
    let line = alice.public().to_openssh().expect("openssh");
    server.add_user("alice", "token-of-alice");
    server.add_ssh_key("alice", &format!("{line} alice@laptop"));
    server.add_ssh_key("alice", "ssh-unknown AAAA this build cannot read it");
    server.add_user("bob", "token-of-bob");
    // Carol has keys on GitHub but no access to the repository; dan may
    // only read it; erin's write access is through a role (`maintain`).
    server.add_ssh_key("carol", &line);
    server.add_user("dan", "token-of-dan");
    server.add_ssh_key("dan", &line);
    server.set_permission("dan", "read");
    server.add_user("erin", "token-of-erin");
    server.set_permission("erin", "maintain");
    let remote = Arc::new(github_remote(&server.url(), TOKEN));

    let keys = GithubKeys::new(remote.clone());
    let got = keys
        .keys_of("alice")
        .await
        .expect("answers")
        .expect("a member");
    let data: Vec<_> = got.iter().map(|k| k.key_data().clone()).collect();
    assert_eq!(
        data,
        vec![alice.public().key_data().clone()],
        "the unreadable key is left out"
    );
    assert_eq!(keys.keys_of("bob").await.expect("answers"), Some(vec![]));
    assert_eq!(keys.keys_of("nobody").await.expect("answers"), None);
    assert_eq!(keys.keys_of("carol").await.expect("answers"), None);
    assert_eq!(keys.keys_of("dan").await.expect("answers"), None);
    assert_eq!(keys.keys_of("erin").await.expect("answers"), Some(vec![]));
    assert_eq!(keys.keys_of("../repos/acme").await.expect("answers"), None);
    // Cached: asking again costs nothing.
    let before = server.calls();
    keys.keys_of("alice").await.expect("answers");
    assert_eq!(server.calls(), before);
    // A new directory on the same client asks again, conditionally.
    GithubKeys::new(remote)
        .keys_of("alice")
        .await
        .expect("answers");
    let reqs = server.requests();
    let asked: Vec<(String, u16)> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/users/") || r.path.contains("/collaborators/"))
        .map(|r| (r.path.clone(), r.status))
        .collect();
    let may = |user: &str| format!("/repos/acme/room/collaborators/{user}/permission");
    let path = "/users/alice/keys?per_page=100".to_owned();
    assert_eq!(
        asked,
        vec![
            (may("alice"), 200),
            (path.clone(), 200),
            (may("bob"), 200),
            ("/users/bob/keys?per_page=100".into(), 200),
            (may("nobody"), 404),
            (may("carol"), 200),
            (may("dan"), 200),
            (may("erin"), 200),
            ("/users/erin/keys?per_page=100".into(), 200),
            (may("alice"), 304),
            (path, 304),
        ],
        "{:?}",
        show(&reqs)
    );
}
