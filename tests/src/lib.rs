//! Helpers shared by skygit's cross-crate integration tests.

pub mod committing;
pub mod git_server;

use std::collections::BTreeSet;
use std::time::Duration;

use skygit_actors::consensus::{Propose, Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_consensus::model::{ApplyOutcome, ChatRequest, Command, ConversationId, RoomId, UserId};
use skygit_consensus::NodeId;
use ulid::Ulid;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn room() -> RoomId {
    RoomId::new("test:room").expect("valid room")
}

/// Starts a local room of `n` nodes in `dir` and waits for a leader.
pub async fn cluster(dir: &std::path::Path, n: u64, opts: Option<LocalOptions>) -> LocalCluster {
    let opts = opts.unwrap_or_else(|| LocalOptions::new(&room()));
    let c = LocalCluster::start(dir, room(), n, opts)
        .await
        .expect("cluster starts");
    c.wait_leader(Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    c
}

pub fn post_command(text: String) -> Command {
    Command::Post {
        conversation: ConversationId::general(),
        content: text,
        attachments: Vec::new(),
    }
}

/// Posts `text` as `sender` through node `node`'s consensus actor.
pub async fn post(
    c: &LocalCluster,
    node: NodeId,
    sender: &str,
    text: String,
) -> Option<(ChatRequest, Proposed)> {
    let h = c.handle(node)?;
    let msg = Submit {
        sender: UserId::new(sender).expect("valid user"),
        command: post_command(text),
        id: None,
    };
    h.consensus.send(msg).await.ok()?.ok()
}

/// Submits `command` as `sender` through node `node` and waits for the
/// room's answer: while the request is only queued (no leader reachable,
/// as happens when a loaded machine delays heartbeats), it is proposed
/// again with the same id, as a client would.
pub async fn commit(
    c: &LocalCluster,
    node: NodeId,
    sender: &str,
    command: Command,
) -> (ChatRequest, ApplyOutcome) {
    let addr = c.handle(node).expect("node runs").consensus.clone();
    let submit = Submit {
        sender: UserId::new(sender).expect("valid user"),
        command,
        id: None,
    };
    let (req, proposed) = addr.send(submit).await.expect("actor").expect("accepted");
    if let Proposed::Committed(outcome) = proposed {
        return (req, outcome);
    }
    let outcome = propose_until_committed(c, node, &req).await;
    (req, outcome)
}

/// Proposes `req` through node `node` until the room answers (a queued
/// answer means no leader was reachable; the request is proposed again).
pub async fn propose_until_committed(
    c: &LocalCluster,
    node: NodeId,
    req: &ChatRequest,
) -> ApplyOutcome {
    let addr = c.handle(node).expect("node runs").consensus.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let proposed = addr
            .send(Propose(req.clone()))
            .await
            .expect("actor")
            .expect("accepted");
        if let Proposed::Committed(outcome) = proposed {
            return outcome;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never committed",
            req.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts `text` and waits until it commits; returns the request and the
/// index it took effect at.
pub async fn post_committed(
    c: &LocalCluster,
    node: NodeId,
    sender: &str,
    text: String,
) -> (ChatRequest, u64) {
    let (req, outcome) = commit(c, node, sender, post_command(text)).await;
    let index = outcome
        .effective_index()
        .unwrap_or_else(|| panic!("post refused: {outcome:?}"));
    (req, index)
}

/// Proposes a prepared request through node `node`.
pub async fn propose(c: &LocalCluster, node: NodeId, req: ChatRequest) -> Option<Proposed> {
    c.handle(node)?
        .consensus
        .send(Propose(req))
        .await
        .ok()?
        .ok()
}

/// The ids of node `node`'s messages in log order.
pub fn message_ids(c: &LocalCluster, node: NodeId) -> Vec<Ulid> {
    c.handle(node)
        .expect("node runs")
        .storage
        .reader
        .all_message_ids()
        .expect("readable")
}

/// Waits until the room has converged and node `node` holds every one of
/// `ids` (queued posts commit from outboxes in the background).
pub async fn wait_holds(c: &LocalCluster, node: NodeId, ids: &BTreeSet<Ulid>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        c.wait_converged(within).await.expect("the room converges");
        let log: BTreeSet<Ulid> = message_ids(c, node).into_iter().collect();
        let missing = ids.difference(&log).count();
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node} still misses {missing} messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that every running node holds the same messages in the same
/// order, each once; returns them, or what is wrong.
pub fn check_same_log(c: &LocalCluster) -> Result<Vec<Ulid>, String> {
    let ids = c.ids();
    let first = message_ids(c, ids[0]);
    let unique: BTreeSet<_> = first.iter().collect();
    if unique.len() != first.len() {
        return Err(format!(
            "node {} holds {} messages but only {} distinct ids",
            ids[0],
            first.len(),
            unique.len()
        ));
    }
    for id in &ids[1..] {
        if message_ids(c, *id) != first {
            return Err(format!("node {id} disagrees with node {}", ids[0]));
        }
    }
    Ok(first)
}

/// Asserts [`check_same_log`].
pub fn assert_same_log(c: &LocalCluster) -> Vec<Ulid> {
    check_same_log(c).unwrap_or_else(|e| panic!("{e}"))
}

/// `len` bytes that do not compress (xorshift from `seed`): file contents
/// for the attachment tests.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
