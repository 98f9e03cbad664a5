//! Helpers for tests of the committer (against git and against the GitHub
//! test server alike): room options, a workload of every change kind,
//! racing committers, flushing the leader, waiting for the sync to be
//! recorded, comparing a clone with the room.

use std::collections::BTreeSet;
use std::time::Duration;

use skygit_actors::committer::{
    CommitterError, CommitterOptions, Flush, FlushReason, FlushReport, Flusher,
};
use skygit_actors::layout::RoomConfig;
use skygit_actors::local::{LocalCluster, LocalOptions, RepoFactory};
use skygit_consensus::model::{ChangeKind, Command, ConversationId};
use skygit_consensus::NodeId;
use ulid::Ulid;

use crate::git_server::{git, Cloned};
use crate::{commit, message_ids, post_committed};

const WAIT: Duration = Duration::from_secs(60);

/// Each node of a room gets its own git adapter (and cache repository,
/// under `caches`) for `url`.
pub fn git_factory(url: String, caches: &std::path::Path) -> RepoFactory {
    let caches = caches.to_owned();
    std::sync::Arc::new(move |id: NodeId| {
        std::sync::Arc::new(
            skygit_remotes::git::GitRemote::open(&url, "main", &caches.join(format!("cache-{id}")))
                .expect("git remote"),
        ) as std::sync::Arc<dyn skygit_actors::ports::RepoRemote>
    })
}

/// One on-demand flush through `node`'s committer, whatever it answers.
pub async fn flush_once(c: &LocalCluster, node: NodeId) -> Result<FlushReport, CommitterError> {
    c.handle(node)
        .expect("the node runs")
        .committer
        .send(Flush(FlushReason::OnDemand))
        .await
        .expect("the committer actor answers")
}

/// Flushes through the current leader's committer (retrying while
/// leadership moves) and answers its report.
pub async fn flush(c: &LocalCluster) -> FlushReport {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = c.wait_leader(WAIT).await.expect("leader");
        let h = c.handle(leader).expect("leader runs");
        match h
            .committer
            .send(Flush(FlushReason::OnDemand))
            .await
            .expect("actor")
        {
            Ok(r) => return r,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "flush keeps failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits until every node knows the repository holds everything up to
/// `up_to` and has emptied its journal.
pub async fn wait_synced(c: &LocalCluster, up_to: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done = c.ids().iter().all(|id| {
            let r = &c.handle(*id).expect("node").storage.reader;
            r.synced_up_to().expect("readable") >= up_to
                && r.journal(0, 1).expect("readable").is_empty()
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sync of {up_to} never recorded everywhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The posts, edits and deletes of the repository must be exactly the
/// room's: every message of node `node` posted once.
pub fn assert_repo_matches_room(cloned: &Cloned, c: &LocalCluster, node: NodeId) {
    let posted: Vec<Ulid> = cloned
        .changes
        .iter()
        .filter_map(|ch| match ch.kind {
            ChangeKind::Post { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    let unique: BTreeSet<Ulid> = posted.iter().copied().collect();
    assert_eq!(
        unique.len(),
        posted.len(),
        "a post is in the repository twice"
    );
    let room: BTreeSet<Ulid> = message_ids(c, node).into_iter().collect();
    assert_eq!(
        unique, room,
        "the repository and the room hold different messages"
    );
    for w in cloned.watermarks.windows(2) {
        assert!(
            w[0] < w[1] || w[1] == 0,
            "watermarks go backwards: {:?}",
            cloned.watermarks
        );
    }
}

/// Local-room options with `factory`'s repository, flushing only when a
/// test asks (and on becoming leader).
pub fn committing_options(factory: RepoFactory) -> LocalOptions {
    let mut o = LocalOptions::new(&crate::room());
    o.repo = Some(factory);
    o.committer = CommitterOptions {
        interval: Some(Duration::from_secs(3600)),
        call_timeout: Duration::from_secs(30),
    };
    o
}

/// Posts 30 messages as `ana`, creates conversation `ops` and posts
/// `ops_text` there as `bob`, edits and then deletes the first message:
/// 34 changes of every kind. Answers the first message's id and the index
/// of the last change.
pub async fn post_every_kind(c: &LocalCluster, node: NodeId, ops_text: &str) -> (Ulid, u64) {
    let mut first = None;
    for i in 0..30 {
        let (req, _) = post_committed(c, node, "ana", format!("message {i}")).await;
        first.get_or_insert(req.id);
    }
    let ops = ConversationId::new("ops").expect("valid name");
    let create = Command::CreateConversation {
        conversation: ops.clone(),
        title: "Ops".into(),
    };
    commit(c, node, "bob", create).await;
    let post = Command::Post {
        conversation: ops,
        content: ops_text.into(),
        attachments: Vec::new(),
    };
    commit(c, node, "bob", post).await;
    let target = first.expect("30 posts");
    let edit = Command::Edit {
        message: target,
        content: "message 0, edited".into(),
    };
    commit(c, node, "ana", edit).await;
    let (_, last) = commit(c, node, "ana", Command::Delete { message: target }).await;
    let last = last.effective_index().expect("the delete applies");
    (target, last)
}

/// Three rounds of two committers (`a` on `leader`, `b` on `follower`)
/// flushing at once while `follower` is cut off, so they render different
/// prefixes on the same head: 45 posts in all.
pub async fn race_committers(
    c: &LocalCluster,
    leader: NodeId,
    follower: NodeId,
    a: &Flusher,
    b: &Flusher,
) {
    let config = RoomConfig::default();
    for round in 0..3 {
        for i in 0..10 {
            post_committed(c, leader, "ana", format!("round {round} message {i}")).await;
        }
        c.wait_converged(WAIT).await.expect("converged");
        c.isolate(follower, true);
        for i in 0..5 {
            post_committed(c, leader, "ana", format!("round {round} late {i}")).await;
        }
        let (ra, rb) = tokio::join!(a.flush(&config), b.flush(&config));
        ra.expect("committer a");
        rb.expect("committer b");
        c.isolate(follower, false);
    }
}

/// Asserts the clone's history has no merge commit.
pub fn assert_linear(cloned: &Cloned) {
    let dir = cloned.dir.to_string_lossy();
    let merges = git(&["-C", &dir, "rev-list", "--merges", "HEAD"]);
    assert!(merges.trim().is_empty(), "history is not linear");
}
