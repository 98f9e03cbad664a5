//! The committer against a real git server on loopback (`git daemon`):
//! what a `git clone` shows after flushes, leader changes, commits whose
//! outcome is unknown, a committer killed mid-flush, two committers racing
//! on one ref, and read-back from the repository alone.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use skygit_actors::committer::{CommitterError, Flush, FlushReason, Flusher};
use skygit_actors::layout::{self, RoomConfig};
use skygit_actors::local::{LocalCluster, RepoFactory};
use skygit_actors::ports::{CommitInfo, CommitRequest, RepoError, RepoHead, RepoRemote, TreeEntry};
use skygit_actors::readback::{self, ReadbackLimits};
use skygit_consensus::model::{ChangeKind, Command, UserId};
use skygit_consensus::NodeId;
use skygit_remotes::git::GitRemote;
use skygit_tests::committing::*;
use skygit_tests::git_server::{clone_and_read, git, GitDaemon};
use skygit_tests::*;
use ulid::Ulid;

const WAIT: Duration = Duration::from_secs(60);

/// A room of `n` nodes committing to a fresh repository served by a
/// `git daemon` (which lives as long as the returned handle).
async fn git_room(dir: &Path, n: u64) -> (GitDaemon, String, LocalCluster) {
    let daemon = GitDaemon::start(&dir.join("srv")).unwrap();
    let url = daemon.create("room.git").unwrap();
    let c = cluster(
        dir,
        n,
        Some(committing_options(git_factory(url.clone(), dir))),
    )
    .await;
    (daemon, url, c)
}

#[actix_rt::test]
async fn flushes_write_exactly_the_committed_prefix_and_render_the_same_bytes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 3).await;
    let leader = c.wait_leader(WAIT).await.unwrap();

    let (target, last) = post_every_kind(&c, leader, "deploy at 5").await;

    let report = flush(&c).await;
    assert_eq!(report.up_to_index, last);
    let one = clone_and_read(&url, &dir.path().join("clone1"));
    assert_repo_matches_room(&one, &c, leader);
    assert_eq!(one.changes.len(), 34);
    assert_eq!(*one.watermarks.last().unwrap(), last);
    // Edits and deletes are lines of their own; history is not rewritten.
    let kinds: Vec<&str> = one
        .changes
        .iter()
        .map(|ch| match ch.kind {
            ChangeKind::Post { .. } => "post",
            ChangeKind::Edit { .. } => "edit",
            ChangeKind::Delete { .. } => "delete",
            ChangeKind::CreateConversation { .. } => "conversation",
            ChangeKind::Call { .. } => "call",
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "edit").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "delete").count(), 1);
    // Rendering a file's changes again gives its bytes.
    for (path, bytes) in &one.files {
        let changes = layout::parse_batch(path, bytes).unwrap();
        let again = layout::render(&changes).unwrap();
        assert_eq!(again.files, vec![(path.clone(), bytes.clone())]);
    }
    wait_synced(&c, last).await;
    for id in c.ids() {
        let r = &c.handle(id).unwrap().storage.reader;
        let m = r.message(target).unwrap().unwrap();
        // The first commit whose watermark covers the message holds it.
        let holder = one
            .watermarks
            .iter()
            .position(|w| *w >= m.index)
            .map(|i| one.commits[i].clone());
        assert_eq!(r.commit_for(m.index).unwrap(), holder);
        assert_eq!(
            r.commit_for(m.last_change_index).unwrap().as_ref(),
            one.commits.last()
        );
    }

    // A second flush adds a commit and leaves the first one's files alone.
    for i in 0..10 {
        post_committed(&c, leader, "cy", format!("later {i}")).await;
    }
    let report = flush(&c).await;
    assert_eq!(report.commits, 1);
    assert_eq!(report.changes, 10);
    let two = clone_and_read(&url, &dir.path().join("clone2"));
    assert_repo_matches_room(&two, &c, leader);
    assert_eq!(two.commits.len(), one.commits.len() + 1);
    for f in &one.files {
        assert!(two.files.contains(f), "{} changed or vanished", f.0);
    }
    // Nothing new: no commit.
    let report = flush(&c).await;
    assert_eq!(report.commits, 0);
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_new_leader_writes_what_its_predecessor_had_not() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let daemon = GitDaemon::start(&dir.path().join("srv")).unwrap();
    let url = daemon.create("room.git").unwrap();
    let mut c = cluster(
        dir.path(),
        3,
        Some(committing_options(git_factory(url.clone(), dir.path()))),
    )
    .await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    for i in 0..20 {
        post_committed(&c, leader, "ana", format!("before {i}")).await;
    }
    flush(&c).await;
    let mut last = 0;
    for i in 0..15 {
        last = post_committed(&c, leader, "ana", format!("unflushed {i}"))
            .await
            .1;
    }
    c.wait_converged(WAIT).await.unwrap();
    // A crash: no shutdown flush.
    c.stop_node(leader).await;
    let next = c.wait_leader(WAIT).await.unwrap();
    assert_ne!(next, leader);
    // The new leader's first flush happens by itself.
    wait_synced(&c, last).await;
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, next);
    assert_eq!(cloned.changes.len(), 35);
    c.shutdown().await;
}

/// A git remote whose first commit of messages misbehaves after (or
/// instead of) reaching the server.
struct Faulty {
    inner: GitRemote,
    commits: AtomicUsize,
    mode: FaultMode,
}

#[derive(Clone, Copy)]
enum FaultMode {
    /// Commit, then report the outcome unknown (a timeout after the push).
    LandThenUnknown,
    /// Report the outcome unknown without committing.
    UnknownWithoutLanding,
    /// Commit, then hang for ever: the process dies before recording.
    LandThenHang,
}

impl RepoRemote for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        self.inner.head()
    }
    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        // The room's config and the founding of its group come first; the
        // fault hits the first commit that writes a batch file.
        let batch = req.files.iter().any(|(path, _)| path.ends_with(".jsonl"));
        let n = if batch {
            self.commits.fetch_add(1, Ordering::SeqCst)
        } else {
            usize::MAX
        };
        Box::pin(async move {
            if n != 0 {
                return self.inner.commit(req).await;
            }
            match self.mode {
                FaultMode::LandThenUnknown => {
                    self.inner.commit(req).await?;
                    Err(RepoError::Unknown("connection reset after the push".into()))
                }
                FaultMode::UnknownWithoutLanding => Err(RepoError::Unknown(
                    "connection reset before the push".into(),
                )),
                FaultMode::LandThenHang => {
                    self.inner.commit(req).await?;
                    futures::future::pending().await
                }
            }
        })
    }
    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        self.inner.history(from, max)
    }
    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        self.inner.list(commit, prefix, max)
    }
    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        self.inner.read_blob(id, max_bytes)
    }
    fn calls(&self) -> u64 {
        self.inner.calls()
    }
}

/// Node `faulty`'s remote misbehaves as `mode` says; the others are plain.
fn faulty_factory(url: String, caches: &Path, faulty: NodeId, mode: FaultMode) -> RepoFactory {
    let caches = caches.to_owned();
    Arc::new(move |id: NodeId| {
        let inner =
            GitRemote::open(&url, "main", &caches.join(format!("cache-{id}"))).expect("git remote");
        if id == faulty {
            Arc::new(Faulty {
                inner,
                commits: AtomicUsize::new(0),
                mode,
            }) as Arc<dyn RepoRemote>
        } else {
            Arc::new(inner)
        }
    })
}

async fn unknown_outcome_case(mode: FaultMode) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let daemon = GitDaemon::start(&dir.path().join("srv")).unwrap();
    let url = daemon.create("room.git").unwrap();
    // Node 1 bootstraps the room, so it leads first.
    let c = cluster(
        dir.path(),
        1,
        Some(committing_options(faulty_factory(
            url.clone(),
            dir.path(),
            1,
            mode,
        ))),
    )
    .await;
    let mut last = 0;
    for i in 0..12 {
        last = post_committed(&c, 1, "ana", format!("m {i}")).await.1;
    }
    let report = flush(&c).await;
    assert_eq!(report.up_to_index, last);
    wait_synced(&c, last).await;
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, 1);
    assert_eq!(cloned.changes.len(), 12);
    // The config commit, the founding, then commits of the messages that
    // never repeat a range (a commit written twice would show a watermark
    // that does not rise, and its changes twice).
    let w = &cloned.watermarks;
    assert_eq!(w.iter().filter(|w| **w == 0).count(), 2, "watermarks {w:?}");
    assert!(w[2..].windows(2).all(|p| p[0] < p[1]), "watermarks {w:?}");
    assert_eq!(w.last(), Some(&last), "watermarks {w:?}");
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_commit_that_landed_with_an_unknown_outcome_is_not_written_twice() {
    unknown_outcome_case(FaultMode::LandThenUnknown).await;
}

#[actix_rt::test]
async fn a_commit_that_did_not_land_with_an_unknown_outcome_is_written() {
    unknown_outcome_case(FaultMode::UnknownWithoutLanding).await;
}

#[actix_rt::test]
async fn a_committer_killed_during_a_flush_leaves_no_gap_and_no_duplicate() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let daemon = GitDaemon::start(&dir.path().join("srv")).unwrap();
    let url = daemon.create("room.git").unwrap();
    // Node 1's remote hangs after its push.
    let mut c = LocalCluster::start(
        dir.path(),
        room(),
        3,
        committing_options(faulty_factory(
            url.clone(),
            dir.path(),
            1,
            FaultMode::LandThenHang,
        )),
    )
    .await
    .unwrap();
    // Make node 1 the one that commits.
    let mut leader = c.wait_leader(WAIT).await.unwrap();
    while leader != 1 {
        c.stop_node(leader).await;
        c.start_node(leader).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        leader = c.wait_leader(WAIT).await.unwrap();
    }
    for i in 0..25 {
        post_committed(&c, 1, "ana", format!("m {i}")).await;
    }
    // The flush pushes and then hangs before recording the sync.
    let committer = c.handle(1).unwrap().committer.clone();
    actix_rt::spawn(async move {
        let _ = committer.send(Flush(FlushReason::OnDemand)).await;
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let heads = git(&["ls-remote", &url, "refs/heads/main"]);
        let sha = heads.split_whitespace().next().unwrap_or("").to_owned();
        if !sha.is_empty() {
            let msg = git(&[
                "--git-dir",
                &daemon.path("room.git").to_string_lossy(),
                "log",
                "-1",
                "--format=%B",
                &sha,
            ]);
            if layout::watermark(&msg).unwrap_or(0) > 0 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hanging commit never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed mid-flush.
    c.stop_node(1).await;
    let next = c.wait_leader(WAIT).await.unwrap();
    let mut last = 0;
    for i in 0..10 {
        last = post_committed(&c, next, "bob", format!("after {i}"))
            .await
            .1;
    }
    flush(&c).await;
    wait_synced(&c, last).await;
    // Node 1 restarts (its remote is healthy now) and catches up.
    c.start_node(1).await.unwrap();
    c.wait_converged(WAIT).await.unwrap();
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, next);
    assert_eq!(cloned.changes.len(), 35);
    c.shutdown().await;
}

#[actix_rt::test]
async fn two_committers_racing_on_one_ref_keep_history_linear_and_complete() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 3).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let remote = |name: &str| -> Arc<dyn RepoRemote> {
        Arc::new(GitRemote::open(&url, "main", &dir.path().join(name)).unwrap())
    };
    let user = UserId::new("committer").unwrap();
    let mk = |node: NodeId, name: &str| {
        let h = c.handle(node).unwrap();
        Flusher::new(
            remote(name),
            h.storage.reader.clone(),
            h.consensus.clone(),
            user.clone(),
            Duration::from_secs(30),
        )
    };
    let a = mk(leader, "race-a");
    let b = mk(follower, "race-b");
    race_committers(&c, leader, follower, &a, &b).await;
    let last = c.wait_converged(WAIT).await.unwrap();
    let report = a.flush(&RoomConfig::default()).await.unwrap();
    assert!(report.up_to_index <= last);
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_repo_matches_room(&cloned, &c, leader);
    assert_eq!(cloned.changes.len(), 45);
    assert_linear(&cloned);
    c.shutdown().await;
}

#[actix_rt::test]
async fn history_reads_back_from_the_repository_alone() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 3).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            post_committed(&c, leader, "ana", format!("m {i}"))
                .await
                .0
                .id,
        );
        if i % 3 == 2 {
            flush(&c).await;
        }
    }
    commit(
        &c,
        leader,
        "ana",
        Command::Edit {
            message: ids[1],
            content: "edited".into(),
        },
    )
    .await;
    let (_, del) = commit(&c, leader, "ana", Command::Delete { message: ids[2] }).await;
    flush(&c).await;
    wait_synced(&c, del.effective_index().unwrap()).await;

    // A node with an empty disk: only the repository.
    let fresh = GitRemote::open(&url, "main", &dir.path().join("fresh-cache")).unwrap();
    let history = readback::load(&fresh, ReadbackLimits::default())
        .await
        .unwrap();
    assert_eq!(history.config, Some(RoomConfig::default()));
    let reader = &c.handle(leader).unwrap().storage.reader;
    let room = reader.all_messages().unwrap();
    assert_eq!(history.messages.len(), room.len());
    for (archived, live) in history.messages.iter().zip(&room) {
        assert_eq!(&archived.record, live);
        assert_eq!(
            Some(archived.git_hash.clone()),
            reader.commit_for(live.last_change_index).unwrap(),
            "git hash of {}",
            live.message.id
        );
    }
    assert!(history.messages.iter().any(|m| m.record.message.deleted));
    c.shutdown().await;
}

/// Commits `files` (path, bytes, symlink?) on top of a fresh room in a
/// bare repository at `bare`, with watermark 100.
fn hostile_repo(bare: &Path, work: &Path, files: &[(&str, Vec<u8>, bool)]) {
    git(&[
        "init",
        "--quiet",
        "--bare",
        "--initial-branch=main",
        &bare.to_string_lossy(),
    ]);
    git(&[
        "clone",
        "--quiet",
        &bare.to_string_lossy(),
        &work.to_string_lossy(),
    ]);
    let w = work.to_string_lossy().into_owned();
    std::fs::create_dir_all(work.join(".messages")).unwrap();
    std::fs::write(
        work.join(layout::CONFIG_PATH),
        RoomConfig::default().to_bytes(),
    )
    .unwrap();
    for (path, bytes, link) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if *link {
            std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        } else {
            std::fs::write(&p, bytes).unwrap();
        }
    }
    commit_and_push(&w, "x\n\nRaft-Last-Index: 100");
}

/// Commits everything in the work tree `work` as another writer would and
/// pushes it to the branch.
fn commit_and_push(work: &str, message: &str) {
    git(&["-C", work, "add", "-A"]);
    git(&[
        "-C",
        work,
        "-c",
        "user.name=x",
        "-c",
        "user.email=x@x",
        "commit",
        "--quiet",
        "-m",
        message,
    ]);
    git(&["-C", work, "push", "--quiet", "origin", "HEAD:main"]);
}

#[actix_rt::test]
async fn hostile_repository_files_fail_read_back_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = ".messages/general/2025/11/22/000000000003-000000000003.jsonl";
    let line = |index: u64| {
        format!(
            "{{\"index\":{index},\"term\":1,\"kind\":\"post\",\"conversation\":\"general\",\"message\":\"{id}\",\"request\":\"{id}\",\"sender\":\"ana\",\"at\":1763800000000,\"time\":\"x\",\"content\":\"hi\"}}\n",
            id = Ulid::from_parts(1, index as u128)
        )
    };
    // A post naming a file of 10 bytes, and pointer files for it.
    let oid = "ab".repeat(32);
    let with_file = line(3).replace(
        ",\"content\":\"hi\"}",
        &format!(
            ",\"content\":\"hi\",\"attachments\":[{{\"sha256\":\"{oid}\",\"size\":10,\"name\":\"a.png\",\"media_type\":\"image/png\"}}]}}"
        ),
    );
    let pointer_path = format!(".messages/lfs/{oid}");
    let pointer = |oid: &str, size: &str| {
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
            .into_bytes()
    };
    let other = "cd".repeat(32);
    // The well-formed file loads, so the failures below are the hostile ones.
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>, bool)>, &'a str);
    let cases: Vec<Case> = vec![
        ("fine", vec![(good, line(3).into_bytes(), false)], ""),
        (
            "fine-with-a-file",
            vec![
                (good, with_file.clone().into_bytes(), false),
                (&pointer_path, pointer(&oid, "10"), false),
                (
                    ".messages/lfs/.gitattributes",
                    b"[0-9a-f]* filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
                    false,
                ),
            ],
            "",
        ),
        (
            "pointer-names-another-object",
            vec![
                (good, with_file.clone().into_bytes(), false),
                (&pointer_path, pointer(&other, "10"), false),
            ],
            "names object",
        ),
        (
            "pointer-with-a-bad-size",
            vec![
                (good, with_file.clone().into_bytes(), false),
                (&pointer_path, pointer(&oid, "-1"), false),
            ],
            "not a Git LFS pointer",
        ),
        (
            "pointer-size-disagrees",
            vec![
                (good, with_file.clone().into_bytes(), false),
                (&pointer_path, pointer(&oid, "11"), false),
            ],
            "pointer says 11 bytes",
        ),
        (
            "stray-name-among-files",
            vec![
                (good, line(3).into_bytes(), false),
                (".messages/attachments/run.sh", b"echo".to_vec(), false),
            ],
            "not a SHA-256",
        ),
        (
            "broken-json",
            vec![(good, b"{\"index\": 3,".to_vec(), false)],
            good,
        ),
        (
            "huge",
            vec![(good, vec![b'x'; layout::MAX_BATCH_FILE_BYTES + 1], false)],
            "limit",
        ),
        (
            "wrong-index",
            vec![(good, line(7).into_bytes(), false)],
            "index 7",
        ),
        (
            "stray-path",
            vec![(".messages/notes.txt", b"hello".to_vec(), false)],
            ".messages/notes.txt",
        ),
        (
            "symlink",
            vec![(good, Vec::new(), true)],
            "not a regular file",
        ),
        (
            "above-watermark",
            vec![(
                ".messages/general/2025/11/22/000000000200-000000000200.jsonl",
                line(200).into_bytes(),
                false,
            )],
            "watermark",
        ),
    ];
    for (name, files, want) in cases {
        let bare = dir.path().join(format!("{name}.git"));
        hostile_repo(&bare, &dir.path().join(format!("{name}-work")), &files);
        let remote = GitRemote::open(
            &bare.to_string_lossy(),
            "main",
            &dir.path().join(format!("{name}-cache")),
        )
        .unwrap();
        let result = readback::load(&remote, ReadbackLimits::default()).await;
        if want.is_empty() {
            let h = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(h.messages.len(), 1);
        } else {
            let err = result.expect_err(name).to_string();
            assert!(
                err.contains(want),
                "{name}: {err:?} does not mention {want:?}"
            );
        }
    }
}

#[actix_rt::test]
async fn the_committer_keeps_a_bounded_flush_history_and_takes_a_new_interval_at_once() {
    use skygit_actors::committer::{GetCommitterInfo, GetFlushes, SetInterval, FLUSH_HISTORY};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 1).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let h = c.handle(leader).unwrap();
    // No interval flush from here on until the interval is shortened.
    h.committer
        .send(SetInterval(Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    post_committed(&c, leader, "ana", "first".to_owned()).await;
    let report = flush(&c).await;
    let history = h.committer.send(GetFlushes).await.unwrap();
    // (The flush on becoming leader may finish after it, on a busy machine.)
    let last = history
        .iter()
        .rev()
        .find(|f| f.reason == "OnDemand")
        .expect("the flush is remembered");
    assert!(last.ok, "{last:?}");
    assert_eq!(last.head, report.head);
    let head = git(&["ls-remote", &url, "refs/heads/main"]);
    assert!(head.starts_with(report.head.as_deref().unwrap()), "{head}");

    // A short interval flushes soon.
    h.committer
        .send(SetInterval(Some(Duration::from_millis(300))))
        .await
        .unwrap();
    let info = h.committer.send(GetCommitterInfo).await.unwrap();
    assert!(info.leader);
    post_committed(&c, leader, "ana", "second".to_owned()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let history = h.committer.send(GetFlushes).await.unwrap();
        if history
            .iter()
            .any(|f| f.reason == "Interval" && f.commits == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interval flush: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The history stays bounded however often the interval fires.
    h.committer
        .send(SetInterval(Some(Duration::from_millis(20))))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut full_at = None;
    loop {
        let history = h.committer.send(GetFlushes).await.unwrap();
        assert!(history.len() <= FLUSH_HISTORY, "{}", history.len());
        let newest = history.last().map(|f| f.at_ms);
        match full_at {
            None if history.len() == FLUSH_HISTORY => full_at = newest,
            // Full, and flushes went on: still at the bound.
            Some(t) if newest > Some(t) => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the interval stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

/// Room settings changed through the log reach `config.json`: at once and
/// alone (the watermark stays), or with a batch of changes; the rest of
/// the file is kept, and a flush with nothing new writes nothing.
#[actix_rt::test]
async fn room_settings_reach_config_json_alone_or_with_a_batch() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 3).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let (_, _) = post_committed(&c, leader, "ana", "before the settings".into()).await;
    // (The flush on becoming leader may have written it already.)
    let first = flush(&c).await;
    assert!(first.up_to_index > 0, "{first:?}");
    let config_of = |cloned: &skygit_tests::git_server::Cloned| {
        RoomConfig::from_bytes(&std::fs::read(cloned.dir.join(layout::CONFIG_PATH)).unwrap())
            .unwrap()
    };
    let before = clone_and_read(&url, &dir.path().join("clone0"));

    // Asked on a follower; the leader writes config.json without waiting
    // for its interval (an hour here).
    let (_, outcome) = commit(
        &c,
        follower,
        "bo",
        Command::Configure {
            commit_interval_secs: Some(90),
            voters: None,
        },
    )
    .await;
    assert!(outcome.is_settled(), "{outcome:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let alone = loop {
        let cloned = clone_and_read(&url, &dir.path().join("clone1"));
        if config_of(&cloned).commit_interval_secs == 90 {
            break cloned;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "config.json never changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alone.commits.len(), before.commits.len() + 1);
    assert_eq!(
        alone.watermarks.last(),
        before.watermarks.last(),
        "a settings commit leaves the watermark"
    );
    assert_eq!(alone.files, before.files, "no batch file changed");
    let config = config_of(&alone);
    assert_eq!(
        config,
        config_of(&before)
            .with_settings(&c.handle(leader).unwrap().storage.reader.settings().unwrap()),
        "only the settings changed"
    );
    assert_eq!(config.voters, config_of(&before).voters);

    // Settings and messages together: one commit holds both.
    for i in 0..3 {
        post_committed(&c, leader, "cy", format!("after {i}")).await;
    }
    let (_, outcome) = commit(
        &c,
        leader,
        "ana",
        Command::Configure {
            commit_interval_secs: None,
            voters: Some(5),
        },
    )
    .await;
    assert!(outcome.is_settled(), "{outcome:?}");
    let report = flush(&c).await;
    let both = clone_and_read(&url, &dir.path().join("clone2"));
    let config = config_of(&both);
    assert_eq!((config.commit_interval_secs, config.voters), (90, 5));
    assert_eq!(both.changes.len(), 4, "every message is in the repository");
    assert_eq!(*both.watermarks.last().unwrap(), report.up_to_index);
    let touched = git(&[
        "-C",
        &both.dir.to_string_lossy(),
        "show",
        "--name-only",
        "--format=",
        "HEAD",
    ]);
    assert!(
        touched.lines().any(|p| p == layout::CONFIG_PATH)
            && touched.lines().any(|p| p.ends_with(".jsonl")),
        "the last commit holds the settings and the batch: {touched}"
    );
    // Nothing new since: no commit.
    assert_eq!(flush(&c).await.commits, 0);
    c.shutdown().await;
}

/// A `config.json` this build cannot read (a newer layout, say) is never
/// replaced with the defaults plus the room's settings; messages still
/// reach the repository.
#[actix_rt::test]
async fn an_unreadable_config_json_is_not_replaced_by_the_settings() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, url, c) = git_room(dir.path(), 3).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    post_committed(&c, leader, "ana", "first".into()).await;
    let w = flush(&c).await.up_to_index;

    // Another writer puts a config.json of layout version 2 on the branch,
    // keeping the watermark.
    let bare = daemon.path("room.git").to_string_lossy().into_owned();
    let work = dir.path().join("work");
    let work_s = work.to_string_lossy().into_owned();
    git(&["clone", "--quiet", "--branch", "main", &bare, &work_s]);
    let newer = b"{\"version\": 2, \"shards\": 4}\n".to_vec();
    std::fs::write(work.join(layout::CONFIG_PATH), &newer).unwrap();
    commit_and_push(&work_s, &format!("a newer layout\n\nRaft-Last-Index: {w}"));

    let (_, outcome) = commit(
        &c,
        leader,
        "ana",
        Command::Configure {
            commit_interval_secs: Some(90),
            voters: None,
        },
    )
    .await;
    assert!(outcome.is_settled(), "{outcome:?}");
    post_committed(&c, leader, "ana", "second".into()).await;
    let report = flush(&c).await;
    assert!(report.up_to_index > w, "{report:?}");
    let cloned = clone_and_read(&url, &dir.path().join("clone"));
    assert_eq!(
        std::fs::read(cloned.dir.join(layout::CONFIG_PATH)).unwrap(),
        newer,
        "the unreadable file is left as it was"
    );
    assert_eq!(
        cloned.changes.len(),
        2,
        "both messages are in the repository"
    );
    c.shutdown().await;
}

/// Two nodes that find the room's branch empty race for the founding of
/// its group: the branch is created once (with the room's config) and
/// exactly one of them founds, by compare-and-swap.
#[actix_rt::test]
async fn two_nodes_founding_on_an_empty_branch_leave_exactly_one_founder() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let daemon = GitDaemon::start(&srv).unwrap();
    let url = daemon.create("room.git").unwrap();
    let a = GitRemote::open(&url, "main", &dir.path().join("a")).unwrap();
    let b = GitRemote::open(&url, "main", &dir.path().join("b")).unwrap();
    let (ra, rb) = tokio::join!(
        skygit_actors::membership::claim_founding(&a, 1, 0, None),
        skygit_actors::membership::claim_founding(&b, 2, 0, None),
    );
    // `Ok(None)`: this node founds. A lost compare-and-swap on the
    // founding commit is an error the node retries on its next tick.
    let outcomes = [ra, rb];
    for o in &outcomes {
        assert!(
            matches!(o, Ok(_) | Err(RepoError::Conflict)),
            "{outcomes:?}"
        );
    }
    let founders: Vec<NodeId> = [1, 2]
        .into_iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Ok(None)))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(founders.len(), 1, "{outcomes:?}");
    let founder = founders[0];
    let bare = srv.join("room.git");
    let log = git(&[
        "--git-dir",
        &bare.to_string_lossy(),
        "log",
        "--format=%B%x00",
        "main",
    ]);
    let commits: Vec<&str> = log
        .split('\0')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(commits.len(), 2, "{log}");
    assert!(
        commits[0].contains(&format!("Group-Founder: {founder}")),
        "{log}"
    );
    assert!(!commits[1].contains("Group-Founder"), "{log}");
    let config = git(&[
        "--git-dir",
        &bare.to_string_lossy(),
        "show",
        "main:.messages/config.json",
    ]);
    assert!(config.contains("commit_interval"), "{config}");
    // Asked again (the loser's next tick), each learns who founded.
    for (id, remote) in [(1, &a), (2, &b)] {
        let again = skygit_actors::membership::claim_founding(remote, id, 0, None)
            .await
            .expect("reads the branch");
        match again {
            None => assert_eq!(id, founder),
            Some(reason) => {
                assert_ne!(id, founder);
                assert!(reason.contains(&format!("node {founder}")), "{reason}");
            }
        }
    }
}

/// A committer never writes after a newer group's founding: once the
/// branch holds the founding of epoch 1, the epoch-0 leader's flush is
/// refused (`Superseded`) and the branch stays where the founding left it.
#[actix_rt::test]
async fn a_committer_of_a_superseded_group_writes_nothing_after_the_newer_founding() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, url, c) = git_room(dir.path(), 1).await;
    let leader = c.wait_leader(WAIT).await.unwrap();
    let (_, first) = post_committed(&c, leader, "ana", "before".into()).await;
    assert_eq!(flush(&c).await.up_to_index, first);
    // Another group (epoch 1) is founded on the branch.
    let other = GitRemote::open(&url, "main", &dir.path().join("other")).unwrap();
    let head = other.head().await.unwrap().expect("a head");
    let founding = other
        .commit(CommitRequest {
            expected_head: Some(head.commit_sha),
            files: Vec::new(),
            message: skygit_actors::layout::founding_message(99, 1, first, first),
            time_secs: 0,
        })
        .await
        .unwrap();
    post_committed(&c, leader, "ana", "after".into()).await;
    let refused = flush_once(&c, leader).await;
    assert!(
        matches!(
            refused,
            Err(CommitterError::Superseded { head: 1, ours: 0 })
        ),
        "{refused:?}"
    );
    assert_eq!(
        other.head().await.unwrap().map(|h| h.commit_sha),
        Some(founding),
        "the branch moved after the newer founding"
    );
    c.shutdown().await;
}
