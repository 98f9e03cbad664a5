//! The git presence channel against real repositories: a local bare
//! repository (checked with the real `git` CLI) and a `git daemon` on
//! loopback.

use std::path::Path;
use std::process::{Command, Stdio};

use skygit_github_server::git_daemon::GitDaemon;
use skygit_ports::{
    PresenceChannel, PresenceError, PresenceRecord, Signal, SignalKind, PRESENCE_VERSION,
};
use skygit_remotes::GitPresence;

const T0: i64 = 1_763_800_000_123;

fn record(id: u64, last_seen: i64, signals: Vec<Signal>) -> PresenceRecord {
    PresenceRecord {
        version: PRESENCE_VERSION,
        user: format!("user{id}"),
        node_id: id,
        session_id: format!("session-{id}-{last_seen}"),
        last_seen,
        dtls_fingerprint: format!("sha-256 {id:02X}:AB:CD"),
        in_group: id % 2 == 1,
        signals,
        identity: None,
    }
}

fn signal(to: u64, attempt: u64) -> Signal {
    Signal {
        to,
        to_session: format!("session-{to}"),
        from_session: "mine".into(),
        attempt,
        kind: SignalKind::Offer,
        sdp: format!("v=0\r\no=- {attempt} 2 IN IP4 127.0.0.1\r\n"),
    }
}

/// Runs the real git CLI in `dir`, feeding `input`; answers its stdout.
fn git_in(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "tester")
        .env("GIT_AUTHOR_EMAIL", "tester@example.invalid")
        .env("GIT_COMMITTER_NAME", "tester")
        .env("GIT_COMMITTER_EMAIL", "tester@example.invalid")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git runs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(bytes) = input {
            stdin.write_all(bytes).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("git finishes");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn init_bare(path: &Path) {
    let parent = path.parent().expect("parent");
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    git_in(
        parent,
        &["init", "--quiet", "--bare", "--initial-branch=main", name],
        None,
    );
}

/// Writes a commit whose tree holds `files` (name, content) and answers
/// its id, with the git CLI.
fn write_commit(repo: &Path, files: &[(&str, &[u8])], parent: Option<&str>) -> String {
    let mut listing = String::new();
    for (name, bytes) in files {
        let blob = git_in(repo, &["hash-object", "-w", "--stdin"], Some(bytes));
        listing.push_str(&format!("100644 blob {blob}\t{name}\n"));
    }
    let tree = git_in(repo, &["mktree"], Some(listing.as_bytes()));
    let mut args = vec!["commit-tree", tree.as_str(), "-m", "written by a test"];
    if let Some(p) = parent {
        args.extend(["-p", p]);
    }
    git_in(repo, &args, None)
}

/// Points `refname` at a presence commit holding `content`.
fn write_presence_ref(repo: &Path, refname: &str, content: &[u8]) {
    let commit = write_commit(repo, &[("presence.json", content)], None);
    git_in(repo, &["update-ref", refname, &commit], None);
}

fn presence_refs(repo: &Path) -> Vec<String> {
    let out = git_in(
        repo,
        &[
            "for-each-ref",
            "--format=%(refname)",
            "refs/skygit/presence",
        ],
        None,
    );
    out.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn nodes_publish_and_fetch_through_a_local_bare_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("room.git");
    init_bare(&repo);
    let main = write_commit(&repo, &[("README", b"the room\n")], None);
    git_in(&repo, &["update-ref", "refs/heads/main", &main], None);

    let nodes: Vec<GitPresence> = (1..=3)
        .map(|id| {
            GitPresence::open(
                repo.to_str().unwrap(),
                id,
                &dir.path().join(format!("cache{id}")),
            )
            .unwrap()
        })
        .collect();
    let mut published: Vec<PresenceRecord> = (1..=3)
        .map(|id| record(id, T0 + id as i64, vec![signal(id % 3 + 1, id)]))
        .collect();
    // Writers never contend: publish all three at once.
    let (a, b, c) = tokio::join!(
        nodes[0].publish(published[0].clone()),
        nodes[1].publish(published[1].clone()),
        nodes[2].publish(published[2].clone()),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();

    for n in &nodes {
        assert_eq!(n.fetch().await.unwrap(), published);
        assert_eq!(n.writes(), 1);
        assert_eq!(n.reads(), 1);
        // Its own record was cached when published: two blobs read.
        assert_eq!(n.blob_reads(), 2);
        assert_eq!(
            n.describe(),
            std::fs::canonicalize(&repo).unwrap().to_string_lossy()
        );
    }

    // Nothing changed: nothing is read again.
    assert_eq!(nodes[0].fetch().await.unwrap(), published);
    assert_eq!(nodes[0].blob_reads(), 2);
    assert_eq!(nodes[0].reads(), 2);

    // Republishing replaces the record.
    published[1] = record(2, T0 + 60_000, vec![signal(1, 7), signal(3, 8)]);
    nodes[1].publish(published[1].clone()).await.unwrap();
    assert_eq!(nodes[1].writes(), 2);
    for n in &nodes {
        assert_eq!(n.fetch().await.unwrap(), published);
    }
    assert_eq!(nodes[0].blob_reads(), 3, "only the changed record is read");

    // What git itself sees: three presence refs, each a parentless commit
    // by skygit at last_seen holding presence.json, and main untouched.
    assert_eq!(
        presence_refs(&repo),
        vec![
            "refs/skygit/presence/1",
            "refs/skygit/presence/2",
            "refs/skygit/presence/3"
        ]
    );
    assert_eq!(git_in(&repo, &["rev-parse", "refs/heads/main"], None), main);
    assert_eq!(
        git_in(
            &repo,
            &["for-each-ref", "--format=%(refname)", "refs/heads"],
            None
        ),
        "refs/heads/main"
    );
    assert_eq!(
        git_in(
            &repo,
            &["cat-file", "blob", "refs/skygit/presence/2:presence.json"],
            None
        )
        .as_bytes(),
        published[1].to_json().as_slice()
    );
    assert_eq!(
        git_in(
            &repo,
            &[
                "log",
                "-1",
                "--format=%an <%ae> %at|%cn <%ce> %ct|%P",
                "refs/skygit/presence/2"
            ],
            None
        ),
        format!(
            "skygit <skygit@localhost> {t}|skygit <skygit@localhost> {t}|",
            t = (T0 + 60_000) / 1000
        )
    );
    assert_eq!(
        git_in(
            &repo,
            &["ls-tree", "--name-only", "refs/skygit/presence/3"],
            None
        ),
        "presence.json"
    );

    // A node publishes only its own record.
    let err = nodes[0]
        .publish(record(2, T0, Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, PresenceError::Unavailable(_)), "{err:?}");
    assert_eq!(nodes[0].writes(), 1);
    assert_eq!(nodes[1].fetch().await.unwrap(), published);
}

#[tokio::test]
async fn a_missing_local_repository_is_created_bare() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("new-room.git");
    let p = GitPresence::open(repo.to_str().unwrap(), 4, &dir.path().join("cache")).unwrap();
    assert_eq!(p.fetch().await.unwrap(), Vec::new());
    let r = record(4, T0, Vec::new());
    p.publish(r.clone()).await.unwrap();
    assert_eq!(p.fetch().await.unwrap(), vec![r]);
    assert_eq!(
        git_in(&repo, &["rev-parse", "--is-bare-repository"], None),
        "true"
    );
    assert_eq!(presence_refs(&repo), vec!["refs/skygit/presence/4"]);
}

#[tokio::test]
async fn bad_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("room.git");
    init_bare(&repo);
    let path = repo.to_str().unwrap();
    let one = GitPresence::open(path, 1, &dir.path().join("c1")).unwrap();
    let two = GitPresence::open(path, 2, &dir.path().join("c2")).unwrap();
    let good = vec![record(1, T0, Vec::new()), record(2, T0 + 1, Vec::new())];
    one.publish(good[0].clone()).await.unwrap();
    two.publish(good[1].clone()).await.unwrap();

    // Garbage JSON.
    write_presence_ref(
        &repo,
        "refs/skygit/presence/3",
        b"{\"version\": 1, \"user\": ",
    );
    // A valid record claiming another node.
    write_presence_ref(
        &repo,
        "refs/skygit/presence/4",
        &record(5, T0, Vec::new()).to_json(),
    );
    // Oversized (and otherwise valid JSON).
    let mut big = record(6, T0, Vec::new());
    big.dtls_fingerprint = "A".repeat(70 * 1024);
    assert!(big.to_json().len() > 64 * 1024);
    write_presence_ref(&repo, "refs/skygit/presence/6", &big.to_json());
    // Valid records under names that are not canonical decimal ids.
    write_presence_ref(
        &repo,
        "refs/skygit/presence/notanumber",
        &record(9, T0, Vec::new()).to_json(),
    );
    write_presence_ref(
        &repo,
        "refs/skygit/presence/007",
        &record(7, T0, Vec::new()).to_json(),
    );
    // A ref straight at a blob, and a commit without presence.json.
    let blob = git_in(
        &repo,
        &["hash-object", "-w", "--stdin"],
        Some(&record(8, T0, Vec::new()).to_json()),
    );
    git_in(
        &repo,
        &["update-ref", "refs/skygit/presence/8", &blob],
        None,
    );
    let other = write_commit(&repo, &[("other.json", b"{}")], None);
    git_in(
        &repo,
        &["update-ref", "refs/skygit/presence/10", &other],
        None,
    );
    // A wrong record version.
    let mut v2 = String::from_utf8(record(11, T0, Vec::new()).to_json()).unwrap();
    v2 = v2.replace("\"version\":1", "\"version\":2");
    write_presence_ref(&repo, "refs/skygit/presence/11", v2.as_bytes());

    assert_eq!(one.fetch().await.unwrap(), good);
    // Blobs read: node 2's, the garbage, the mismatched and the wrong
    // version one. The oversized one was refused from its header.
    assert_eq!(one.blob_reads(), 4);
    // The refusals are remembered: nothing is read again.
    assert_eq!(one.fetch().await.unwrap(), good);
    assert_eq!(one.blob_reads(), 4);
    assert_eq!(two.fetch().await.unwrap(), good);
}

#[tokio::test]
async fn at_most_256_refs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("room.git");
    init_bare(&repo);
    let path = repo.to_str().unwrap();
    for id in 0..260u64 {
        let p = GitPresence::open(path, id, dir.path()).unwrap();
        p.publish(record(id, T0, Vec::new())).await.unwrap();
    }
    let reader = GitPresence::open(path, 1000, dir.path()).unwrap();
    let got = reader.fetch().await.unwrap();
    assert_eq!(got.len(), 256);
    let ids: Vec<u64> = got.iter().map(|r| r.node_id).collect();
    assert_eq!(ids, (0..256).collect::<Vec<u64>>());
    assert_eq!(reader.blob_reads(), 256);
}

#[tokio::test]
async fn nodes_publish_and_fetch_through_a_git_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = GitDaemon::start(&dir.path().join("srv")).unwrap();
    let url = daemon.create("room.git").unwrap();
    assert!(url.starts_with("git://127.0.0.1:"));

    let a = GitPresence::open(&url, 1, &dir.path().join("cache-a")).unwrap();
    let b = GitPresence::open(&url, 2, &dir.path().join("cache-b")).unwrap();
    assert_eq!(a.describe(), url);
    assert_eq!(b.fetch().await.unwrap(), Vec::new());

    let mut published = vec![
        record(1, T0, vec![signal(2, 1)]),
        record(2, T0 + 5, Vec::new()),
    ];
    a.publish(published[0].clone()).await.unwrap();
    b.publish(published[1].clone()).await.unwrap();
    assert_eq!(a.fetch().await.unwrap(), published);
    assert_eq!(b.fetch().await.unwrap(), published);
    assert_eq!(a.blob_reads(), 1);
    assert_eq!(b.blob_reads(), 1);

    // Unchanged refs: no blob is read, no object is fetched.
    let peers_ref = |cache: &str| {
        git_in(
            &dir.path().join(cache),
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                "refs/skygit/peers",
            ],
            None,
        )
    };
    let before = peers_ref("cache-b");
    assert!(before.starts_with("refs/skygit/peers/1 "), "{before}");
    assert_eq!(b.fetch().await.unwrap(), published);
    assert_eq!(b.blob_reads(), 1);
    assert_eq!(b.reads(), 3);
    assert_eq!(peers_ref("cache-b"), before);

    // A republished record replaces the old one, and is the only one read.
    published[0] = record(1, T0 + 30_000, vec![signal(2, 2)]);
    a.publish(published[0].clone()).await.unwrap();
    assert_eq!(b.fetch().await.unwrap(), published);
    assert_eq!(b.blob_reads(), 2);
    assert_ne!(peers_ref("cache-b"), before);
    assert_eq!(a.writes(), 2);
    assert_eq!(b.writes(), 1);

    // The server holds the two presence refs and no log branch.
    let served = daemon.path("room.git");
    assert_eq!(
        presence_refs(&served),
        vec!["refs/skygit/presence/1", "refs/skygit/presence/2"]
    );
    assert_eq!(
        git_in(
            &served,
            &["for-each-ref", "--format=%(refname)", "refs/heads"],
            None
        ),
        ""
    );
    assert_eq!(
        git_in(
            &served,
            &["cat-file", "blob", "refs/skygit/presence/1:presence.json"],
            None
        )
        .as_bytes(),
        published[0].to_json().as_slice()
    );
}

#[tokio::test]
async fn an_unreachable_remote_is_unavailable_and_its_secret_stays_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://alice:hunter2secret@127.0.0.1:1/room.git";
    let p = GitPresence::open(url, 1, &dir.path().join("cache")).unwrap();
    assert!(!p.describe().contains("hunter2secret"));
    for err in [
        p.fetch().await.unwrap_err(),
        p.publish(record(1, T0, Vec::new())).await.unwrap_err(),
    ] {
        let PresenceError::Unavailable(msg) = &err else {
            panic!("expected unavailable, got {err:?}");
        };
        assert!(!msg.contains("hunter2secret"), "{msg}");
        assert!(!err.to_string().contains("hunter2secret"));
    }
    assert_eq!(p.reads(), 1);
    assert_eq!(p.writes(), 1);
}
