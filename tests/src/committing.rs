//! Helpers for tests of the committer: flushing the leader, waiting for
//! the sync to be recorded, comparing a clone with the room.

use std::collections::BTreeSet;
use std::time::Duration;

use skygit_actors::committer::{Flush, FlushReason, FlushReport};
use skygit_actors::local::LocalCluster;
use skygit_consensus::model::ChangeKind;
use skygit_consensus::NodeId;
use ulid::Ulid;

use crate::git_server::Cloned;
use crate::message_ids;

const WAIT: Duration = Duration::from_secs(60);

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
