//! Raft over the in-process transport with real RocksDB storage: ordering,
//! deduplication, leader failure, restart and snapshot catch-up.

use std::collections::BTreeSet;
use std::time::Duration;

use skygit_actors::consensus::Proposed;
use skygit_actors::local::LocalOptions;
use skygit_consensus::model::{ApplyOutcome, Command};
use skygit_tests::*;
use ulid::Ulid;

const CONVERGE: Duration = Duration::from_secs(60);

/// `senders` concurrent senders, sender `s` posting through node
/// `s % n + 1`, `total` messages in all. Every post must be acknowledged:
/// applied, or queued in the outbox when a leader change leaves none
/// reachable (on a loaded machine heartbeats can be late); the function
/// returns once every node holds all of them.
async fn post_many(
    c: &skygit_actors::local::LocalCluster,
    senders: u64,
    total: u64,
) -> BTreeSet<Ulid> {
    let n = c.ids().len() as u64;
    let per = total / senders;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let node = s % n + 1;
        let sender = format!("sender{s}");
        let handle = c.handle(node).expect("node").consensus.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per {
                let msg = skygit_actors::consensus::Submit {
                    sender: skygit_consensus::model::UserId::new(sender.clone()).unwrap(),
                    command: post_command(format!("{sender} message {i}")),
                    id: None,
                };
                let (req, p) = handle.send(msg).await.expect("actor").expect("accepted");
                assert!(
                    matches!(
                        p,
                        Proposed::Committed(ApplyOutcome::Applied { .. }) | Proposed::Queued { .. }
                    ),
                    "{p:?}"
                );
                ids.push(req.id);
            }
            ids
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.expect("sender task"));
    }
    for node in c.ids() {
        wait_holds(c, node, &all, CONVERGE).await;
    }
    all
}

async fn order_test(n: u64) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), n, None).await;
    let sent = post_many(&c, 8, 1000).await;
    assert_eq!(sent.len(), 1000);
    c.wait_converged(CONVERGE).await.expect("converged");
    let log = assert_same_log(&c);
    assert_eq!(log.len(), 1000);
    assert_eq!(log.iter().copied().collect::<BTreeSet<_>>(), sent);
    c.shutdown().await;
}

#[actix_rt::test]
async fn three_nodes_apply_1000_messages_in_the_same_order() {
    order_test(3).await;
}

#[actix_rt::test]
async fn five_nodes_apply_1000_messages_in_the_same_order() {
    order_test(5).await;
}

#[actix_rt::test]
async fn a_proposal_retried_after_a_leader_change_applies_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3, None).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let (req, index) = post_committed(&c, follower, "ana", "only once".into()).await;
    c.stop_node(leader).await;
    let new_leader = c.wait_leader(CONVERGE).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    // The client did not see the answer and proposes the same request
    // again, until the room answers (the follower may not know the new
    // leader yet, then the request waits in its outbox).
    let again = propose_until_committed(&c, follower, &req).await;
    assert_eq!(
        again,
        ApplyOutcome::Duplicate {
            original_index: index
        }
    );
    c.start_node(leader).await.unwrap();
    c.wait_converged(CONVERGE).await.expect("converged");
    for id in c.ids() {
        let n = message_ids(&c, id).iter().filter(|m| **m == req.id).count();
        assert_eq!(n, 1, "node {id} holds the message {n} times");
    }
    assert_same_log(&c);
    c.shutdown().await;
}

#[actix_rt::test]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_message() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3, None).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let mut acked = BTreeSet::new();
    let mut queued = BTreeSet::new();
    let mut round = 0u64;
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.len() < 600 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} posts acknowledged after 120 s",
            acked.len()
        );
        round += 1;
        if round == 200 && !killed {
            // Kill the leader while posts to the other nodes are in flight.
            let in_flight: Vec<_> = c
                .ids()
                .into_iter()
                .filter(|i| *i != leader)
                .map(|node| {
                    let h = c.handle(node).unwrap().consensus.clone();
                    actix_rt::spawn(async move {
                        h.send(skygit_actors::consensus::Submit {
                            sender: skygit_consensus::model::UserId::new("racer").unwrap(),
                            command: post_command(format!("racing the crash on {node}")),
                            id: None,
                        })
                        .await
                    })
                })
                .collect();
            c.stop_node(leader).await;
            killed = true;
            for t in in_flight {
                if let Ok(Ok(Ok((req, p)))) = t.await {
                    match p {
                        Proposed::Committed(o) => {
                            assert!(o.is_settled());
                            acked.insert(req.id);
                        }
                        Proposed::Queued { .. } => {
                            queued.insert(req.id);
                        }
                    }
                }
            }
        }
        for node in c.ids() {
            if let Some((req, p)) = post(&c, node, "bo", format!("round {round} via {node}")).await
            {
                match p {
                    Proposed::Committed(o) => {
                        assert!(o.is_settled(), "{o:?}");
                        acked.insert(req.id);
                    }
                    Proposed::Queued { .. } => {
                        queued.insert(req.id);
                    }
                }
            }
        }
    }
    let new_leader = c.wait_leader(CONVERGE).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    c.wait_converged(CONVERGE)
        .await
        .expect("survivors converge");
    let log: BTreeSet<Ulid> = assert_same_log(&c).into_iter().collect();
    let missing: Vec<_> = acked.difference(&log).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");

    // The killed node comes back and catches up; queued posts commit too.
    c.start_node(leader).await.unwrap();
    let everything: BTreeSet<Ulid> = acked.union(&queued).copied().collect();
    wait_holds(&c, leader, &everything, CONVERGE).await;
    assert_same_log(&c);
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_restarted_node_rejoins_with_every_message() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3, None).await;
    let before = post_many(&c, 3, 300).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let victim = c.ids().into_iter().find(|i| *i != leader).unwrap();
    c.stop_node(victim).await;
    let mut during = BTreeSet::new();
    for i in 0..200 {
        let (req, _) =
            post_committed(&c, leader, "cy", format!("while {victim} is down: {i}")).await;
        during.insert(req.id);
    }
    c.start_node(victim).await.unwrap();
    c.wait_converged(CONVERGE).await.expect("converged");
    let log: BTreeSet<Ulid> = assert_same_log(&c).into_iter().collect();
    assert_eq!(log.len(), 500);
    assert!(before.is_subset(&log) && during.is_subset(&log));
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_node_with_an_empty_disk_catches_up_through_a_snapshot() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LocalOptions::new(&room());
    // Snapshot every 100 entries and keep no log behind it, so a new node
    // cannot be fed from the log.
    opts.raft = skygit_consensus::config::raft_config("test:room", 100, 0);
    let mut c = cluster(dir.path(), 3, Some(opts)).await;
    // Room settings set early: the snapshot must carry them.
    let (_, outcome) = commit(
        &c,
        1,
        "ana",
        Command::Configure {
            commit_interval_secs: Some(42),
            voters: Some(3),
        },
    )
    .await;
    assert!(
        matches!(outcome, ApplyOutcome::Applied { .. }),
        "{outcome:?}"
    );
    let sent = post_many(&c, 4, 600).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while c.handle(leader).unwrap().replica.metrics().purged.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never purged its log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_node(4).await.unwrap();
    c.add_voter(4).await.expect("node 4 joins");
    c.wait_converged(CONVERGE).await.expect("converged");
    let m4 = c.handle(4).unwrap().replica.metrics();
    assert!(m4.snapshot.is_some(), "node 4 has no snapshot: {m4:?}");
    // Node 4 never received the purged entries: its own log starts later.
    let mut log = c.handle(4).unwrap().storage.log.clone();
    let state = openraft::storage::RaftLogStorage::get_log_state(&mut log)
        .await
        .unwrap();
    assert!(
        state.last_purged_log_id.is_some(),
        "node 4 replayed the whole log"
    );
    let on4: BTreeSet<Ulid> = message_ids(&c, 4).into_iter().collect();
    assert_eq!(on4, sent);
    assert_same_log(&c);
    // The journal of changes not yet in the repository (no repository here,
    // so all of them) came with the snapshot: node 4 could commit them all
    // if it led, although the log entries behind them were purged.
    let journal = |id| {
        c.handle(id)
            .unwrap()
            .storage
            .reader
            .journal(0, 10_000)
            .unwrap()
    };
    assert_eq!(journal(4).len(), sent.len());
    assert_eq!(journal(4), journal(leader));
    // So did the room's settings, and node 4's actors were told.
    let settings = |id| c.handle(id).unwrap().storage.reader.settings().unwrap();
    assert_eq!(settings(4).commit_interval_secs, Some(42));
    assert_eq!(settings(4), settings(leader));
    let watched = *c
        .handle(4)
        .unwrap()
        .storage
        .state_machine
        .watch_settings()
        .borrow();
    assert_eq!(watched, settings(4));
    c.shutdown().await;
}

#[actix_rt::test]
async fn posts_without_a_leader_wait_in_the_outbox_and_commit_later() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3, None).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let others: Vec<_> = c.ids().into_iter().filter(|i| *i != leader).collect();
    let (survivor, other) = (others[0], others[1]);
    c.stop_node(leader).await;
    c.stop_node(other).await;
    let mut queued = BTreeSet::new();
    for i in 0..5 {
        let (req, p) = post(&c, survivor, "di", format!("alone {i}"))
            .await
            .unwrap();
        assert!(matches!(p, Proposed::Queued { .. }), "{p:?}");
        queued.insert(req.id);
    }
    assert_eq!(c.handle(survivor).unwrap().storage.outbox.len(), 5);
    // The survivor itself restarts: the outbox is on disk.
    c.stop_node(survivor).await;
    for id in [leader, other, survivor] {
        c.start_node(id).await.unwrap();
    }
    wait_holds(&c, survivor, &queued, CONVERGE).await;
    // The outbox entry is cleared once its proposal answers.
    let outbox = c.handle(survivor).unwrap().storage.outbox.clone();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !outbox.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never emptied: {}",
            outbox.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.wait_converged(CONVERGE).await.unwrap();
    assert_same_log(&c);
    c.shutdown().await;
}

/// The checks above can fail: with a state machine that forgets which
/// request ids it applied, a retried proposal is applied twice and the log
/// check reports it.
#[actix_rt::test]
async fn the_log_check_catches_a_state_machine_that_applies_twice() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LocalOptions::new(&room());
    opts.faults.apply = skygit_storage::ApplyMode::DuplicateApply;
    let c = cluster(dir.path(), 3, Some(opts)).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let (req, _) = post_committed(&c, leader, "ana", "twice".into()).await;
    let again = propose_until_committed(&c, leader, &req).await;
    assert!(matches!(again, ApplyOutcome::Applied { .. }), "{again:?}");
    c.wait_converged(CONVERGE).await.unwrap();
    let err = check_same_log(&c).expect_err("the duplicate must be caught");
    assert!(err.contains("distinct ids"), "{err}");
    c.shutdown().await;
}

/// One node directory serves two rooms: separate raft groups, separate
/// storage namespaces, no message crosses between them.
#[actix_rt::test]
async fn two_rooms_on_the_same_nodes_stay_apart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (
        skygit_consensus::model::RoomId::new("github:acme/alpha").unwrap(),
        skygit_consensus::model::RoomId::new("github:acme/beta").unwrap(),
    );
    let a = skygit_actors::local::LocalCluster::start(
        dir.path(),
        ra.clone(),
        3,
        LocalOptions::new(&ra),
    )
    .await
    .unwrap();
    let b = skygit_actors::local::LocalCluster::start(
        dir.path(),
        rb.clone(),
        3,
        LocalOptions::new(&rb),
    )
    .await
    .unwrap();
    a.wait_leader(CONVERGE).await.unwrap();
    b.wait_leader(CONVERGE).await.unwrap();
    let mut in_a = BTreeSet::new();
    let mut in_b = BTreeSet::new();
    for i in 0..20 {
        in_a.insert(
            post_committed(&a, 1 + i % 3, "ana", format!("alpha {i}"))
                .await
                .0
                .id,
        );
        in_b.insert(
            post_committed(&b, 1 + i % 3, "bo", format!("beta {i}"))
                .await
                .0
                .id,
        );
    }
    a.wait_converged(CONVERGE).await.unwrap();
    b.wait_converged(CONVERGE).await.unwrap();
    assert_eq!(
        assert_same_log(&a).into_iter().collect::<BTreeSet<_>>(),
        in_a
    );
    assert_eq!(
        assert_same_log(&b).into_iter().collect::<BTreeSet<_>>(),
        in_b
    );
    let rooms = std::fs::read_dir(dir.path().join("node-1/rooms"))
        .unwrap()
        .count();
    assert_eq!(rooms, 2, "each room has its own storage namespace");

    // The node-level registry refuses to open a room twice.
    let mut registry = skygit_actors::room::Rooms::default();
    let mut a = a;
    let h = a.take(1).unwrap();
    registry.add(h).unwrap();
    // Node 2 of the same room, handed to the same registry.
    let again = a.take(2).unwrap();
    assert!(matches!(
        registry.add(again),
        Err(skygit_actors::room::RoomError::AlreadyOpen(_))
    ));
    registry.shutdown_all().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer on the link sends garbage and an oversized forwarded post: the
/// garbage is dropped, the post refused before it reaches the log, and the
/// room keeps working.
#[actix_rt::test]
async fn a_rogue_peer_cannot_wedge_the_room() {
    use skygit_consensus::codec::{self, EnvelopeKind};
    use skygit_consensus::model::{ChatRequest, MAX_CONTENT_BYTES};
    use skygit_consensus::ports::{PeerLink, SystemClock};
    use skygit_consensus::replica::{ChatRpcRequest, ChatRpcResponse};
    use skygit_consensus::rpc::RpcMux;
    use std::sync::Arc;

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 3, None).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    // Node 99 holds a link to the leader (as an authenticated member
    // would) and misbehaves on it.
    let rogue = c.net().join(99);
    c.net().open_unannounced(99, leader);
    let (link, mut rx) = (rogue.link, rogue.incoming);
    for garbage in [
        vec![],
        vec![0xff; 64],
        vec![1, 3, 99, 1, 253, 255, 255, 255, 255],
    ] {
        link.send(leader, garbage).await.unwrap();
    }
    let mux = Arc::new(RpcMux::new(link, Arc::new(SystemClock)));
    let pump = mux.clone();
    actix_rt::spawn(async move {
        while let Some(f) = rx.recv().await {
            let _ = pump.on_frame(f);
        }
    });
    let oversized = ChatRequest {
        id: Ulid::new(),
        sender: skygit_consensus::model::UserId::new("mallory").unwrap(),
        at: 0,
        command: post_command("x".repeat(MAX_CONTENT_BYTES + 1)),
        signature: None,
    };
    let body = codec::to_bytes(&ChatRpcRequest::Propose(oversized.clone())).unwrap();
    let answer = mux
        .call(EnvelopeKind::Chat, leader, body, Duration::from_secs(10))
        .await
        .expect("the leader answers");
    let answer: ChatRpcResponse = codec::from_bytes(&answer).unwrap();
    assert!(matches!(answer, ChatRpcResponse::Invalid(_)), "{answer:?}");

    // Snapshot chunks out of sequence or beyond the size bound are refused.
    use skygit_consensus::network::{RaftRequest, RaftResponse, SnapshotChunk, MAX_SNAPSHOT_BYTES};
    let chunk = |offset, total| SnapshotChunk {
        vote: openraft::impls::Vote::new(1, 99),
        meta: Default::default(),
        offset,
        total,
        data: vec![0; 16],
    };
    for bad in [chunk(10, 100), chunk(0, MAX_SNAPSHOT_BYTES + 1)] {
        let body = codec::to_bytes(&RaftRequest::SnapshotChunk(bad)).unwrap();
        let answer = mux
            .call(EnvelopeKind::Raft, leader, body, Duration::from_secs(10))
            .await
            .expect("the leader answers");
        let answer: RaftResponse = codec::from_bytes(&answer).unwrap();
        assert!(matches!(answer, RaftResponse::Error(_)), "{answer:?}");
    }

    let (ok, _) = post_committed(&c, leader, "ana", "still working".into()).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let log = assert_same_log(&c);
    assert!(log.contains(&ok.id) && !log.contains(&oversized.id));
    c.shutdown().await;
}

/// Edits, deletes and conversations go through raft and the RocksDB state
/// machine: every node ends with the same state, a non-author is refused
/// everywhere, and pages of a conversation come back in log order.
#[actix_rt::test]
async fn edits_deletes_and_conversations_replicate() {
    use skygit_consensus::model::{Command, ConversationId, Rejection};

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 3, None).await;
    let ops = ConversationId::new("ops").unwrap();
    let (_, p) = commit(
        &c,
        1,
        "ana",
        Command::CreateConversation {
            conversation: ops.clone(),
            title: "Operations".into(),
        },
    )
    .await;
    assert!(
        matches!(
            p,
            ApplyOutcome::Applied { .. } | ApplyOutcome::Duplicate { .. }
        ),
        "{p:?}"
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let (req, _) = commit(
            &c,
            1 + i % 3,
            "ana",
            Command::Post {
                conversation: ops.clone(),
                content: format!("ops note {i}"),
                attachments: Vec::new(),
            },
        )
        .await;
        ids.push(req.id);
    }
    let (_, edited) = commit(
        &c,
        2,
        "ana",
        Command::Edit {
            message: ids[0],
            content: "ops note 0, corrected".into(),
        },
    )
    .await;
    assert!(matches!(
        edited,
        ApplyOutcome::Applied { .. } | ApplyOutcome::Duplicate { .. }
    ));
    let (_, refused) = commit(&c, 3, "bo", Command::Delete { message: ids[1] }).await;
    assert!(
        matches!(
            refused,
            ApplyOutcome::Rejected {
                reason: Rejection::NotAuthor(_),
                ..
            }
        ),
        "{refused:?}"
    );
    let (_, deleted) = commit(&c, 3, "ana", Command::Delete { message: ids[1] }).await;
    assert!(matches!(
        deleted,
        ApplyOutcome::Applied { .. } | ApplyOutcome::Duplicate { .. }
    ));
    c.wait_converged(CONVERGE).await.unwrap();

    let reference = c.handle(1).unwrap().storage.reader.all_messages().unwrap();
    for node in c.ids() {
        let reader = &c.handle(node).unwrap().storage.reader;
        assert_eq!(
            reader.all_messages().unwrap(),
            reference,
            "node {node} differs"
        );
        let m0 = reader.message(ids[0]).unwrap().unwrap();
        assert_eq!(m0.message.content, "ops note 0, corrected");
        assert!(m0.message.edited_at.is_some() && m0.last_change_index > m0.index);
        let m1 = reader.message(ids[1]).unwrap().unwrap();
        assert!(m1.message.deleted && m1.message.content.is_empty());
        let convs: Vec<_> = reader
            .conversations()
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.title))
            .collect();
        assert_eq!(convs, vec![(ops.clone(), "Operations".to_owned())]);
        // Paging: the newest two, then the two before them, then after.
        let last2 = reader.messages(&ops, None, None, 2).unwrap();
        assert_eq!(
            last2.iter().map(|m| m.message.id).collect::<Vec<_>>(),
            ids[3..5]
        );
        let before = reader
            .messages(&ops, None, Some(last2[0].index), 2)
            .unwrap();
        assert_eq!(
            before.iter().map(|m| m.message.id).collect::<Vec<_>>(),
            ids[1..3]
        );
        let after = reader
            .messages(&ops, Some(before[0].index), None, 10)
            .unwrap();
        assert_eq!(
            after.iter().map(|m| m.message.id).collect::<Vec<_>>(),
            ids[2..5]
        );
        assert!(reader
            .messages(&ConversationId::general(), None, None, 10)
            .unwrap()
            .is_empty());
    }
    c.shutdown().await;
}

/// Subscribers hear about every leader change.
#[actix_rt::test]
async fn subscribers_hear_leader_changes() {
    use actix::prelude::*;
    use skygit_actors::consensus::{LeaderChanged, SubscribeLeader};

    struct Listener(tokio::sync::mpsc::UnboundedSender<LeaderChanged>);
    impl Actor for Listener {
        type Context = Context<Self>;
    }
    impl Handler<LeaderChanged> for Listener {
        type Result = ();
        fn handle(&mut self, msg: LeaderChanged, _: &mut Self::Context) {
            let _ = self.0.send(msg);
        }
    }

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), 3, None).await;
    let leader = c.wait_leader(CONVERGE).await.unwrap();
    let watcher = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = Listener(tx).start();
    c.handle(watcher)
        .unwrap()
        .consensus
        .send(SubscribeLeader(listener.recipient()))
        .await
        .unwrap();
    let first = tokio::time::timeout(CONVERGE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.leader, Some(leader));
    assert!(!first.is_self);
    c.stop_node(leader).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(change) = tokio::time::timeout(left, rx.recv()).await else {
            // Say what each remaining node's raft sees, so a failure here
            // can be understood from the CI log alone.
            let report: Vec<String> =
                c.ids()
                    .into_iter()
                    .filter_map(|id| c.handle(id))
                    .map(|h| {
                        let m = h.replica.metrics();
                        format!(
                        "node {}: {:?} term {} leader {:?} last log {:?} applied {:?} voters {:?} \
                         last quorum acked {:?}",
                        m.id,
                        m.state,
                        m.current_term,
                        m.current_leader,
                        m.last_log_index,
                        m.last_applied.map(|l| l.index),
                        m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                        m.last_quorum_acked,
                    )
                    })
                    .collect();
            panic!(
                "no new leader announced within {CONVERGE:?} after stopping {leader}:\n{}",
                report.join("\n")
            );
        };
        let change = change.unwrap();
        if let Some(new) = change.leader.filter(|l| *l != leader) {
            assert!(change.term > first.term);
            assert_eq!(change.is_self, new == watcher);
            break;
        }
    }
    c.shutdown().await;
}

/// A room started earlier with one node, restarted with three: the new
/// nodes become voters and receive the history.
#[actix_rt::test]
async fn a_room_grows_when_restarted_with_more_nodes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 1, None).await;
    let (first, _) = post_committed(&c, 1, "ana", "alone".into()).await;
    c.shutdown().await;

    let c = cluster(dir.path(), 3, None).await;
    assert_eq!(
        c.handle(1).unwrap().replica.voters(),
        BTreeSet::from([1, 2, 3])
    );
    let (second, _) = post_committed(&c, 3, "bo", "together".into()).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let log = assert_same_log(&c);
    assert_eq!(log, vec![first.id, second.id]);
    c.shutdown().await;
}
