//! Re-forming a room's raft group (issue 15) with in-process nodes and a
//! real `git daemon`: the survivors of a lost majority found a new epoch
//! by a compare-and-swap commit and keep committing; a node of the old
//! group that comes back joins the new one and carries what it held; the
//! repository ends with every acknowledged message exactly once.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use skygit_actors::consensus::Proposed;
use skygit_actors::layout;
use skygit_actors::local::LocalCluster;
use skygit_consensus::model::ChangeKind;
use skygit_consensus::reform::ReformPolicy;
use skygit_consensus::NodeId;
use skygit_tests::committing::*;
use skygit_tests::git_server::{clone_and_read, git, GitDaemon};
use skygit_tests::*;
use ulid::Ulid;

const WAIT: Duration = Duration::from_secs(60);

/// A two-node room on a fresh repository that re-forms after 2 s.
async fn reforming_room(dir: &Path) -> (GitDaemon, String, LocalCluster) {
    let daemon = GitDaemon::start(&dir.join("srv")).expect("git daemon");
    let url = daemon.create("room.git").expect("repository");
    let mut opts = committing_options(git_factory(url.clone(), dir));
    opts.reform = Some(ReformPolicy {
        after: Duration::from_secs(2),
        ..Default::default()
    });
    let c = cluster(dir, 2, Some(opts)).await;
    (daemon, url, c)
}

/// Waits until node `id` runs in group `epoch` or a newer one.
async fn wait_epoch(c: &LocalCluster, id: NodeId, epoch: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.handle(id).is_none_or(|h| h.replica.group().epoch < epoch) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} never reached group epoch {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node's outbox is empty: what the nodes carried or
/// queued committed.
async fn wait_outboxes_empty(c: &LocalCluster) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while c
        .ids()
        .iter()
        .any(|id| !c.handle(*id).expect("runs").storage.outbox.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carried requests never committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every post in the repository, by request id, checking that none is
/// there twice.
fn posts_in_repo(url: &str, into: &Path) -> BTreeSet<Ulid> {
    let cloned = clone_and_read(url, into);
    let mut seen = BTreeSet::new();
    for ch in &cloned.changes {
        if matches!(ch.kind, ChangeKind::Post { .. }) {
            assert!(
                seen.insert(ch.request),
                "request {} is in the repository twice",
                ch.request
            );
        }
    }
    seen
}

/// The branch's group epochs along first parents, oldest first.
fn epochs_in_repo(url: &str, into: &Path) -> Vec<u64> {
    let _ = std::fs::remove_dir_all(into);
    git(&["clone", "--quiet", "--bare", url, &into.to_string_lossy()]);
    let log = git(&[
        "-C",
        &into.to_string_lossy(),
        "log",
        "--first-parent",
        "--reverse",
        "--format=%B%x00",
        "main",
    ]);
    log.split('\0')
        .filter(|m| !m.trim().is_empty())
        .map(layout::group_epoch)
        .collect()
}

/// A partition of a two-node room: neither side reaches a majority of the
/// two voters, so both try to re-form and the branch lets one win epoch 1.
/// The winner commits; the other, whose state is another history than the
/// branch's above the new base, does not found on top of it and queues.
/// Healed, it joins and carries what it held; the repository has every
/// acknowledged post once.
#[actix_rt::test]
async fn one_side_of_a_split_two_node_room_re_forms_and_the_other_joins_when_healed() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_daemon, url, c) = reforming_room(dir.path()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let other = *c.ids().iter().find(|id| **id != leader).expect("two nodes");
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        let (req, _) = post_committed(&c, leader, "ana", format!("before {i}")).await;
        acked.insert(req.id);
    }
    flush(&c).await;
    for i in 0..3 {
        let (req, _) = post_committed(&c, leader, "ana", format!("unflushed {i}")).await;
        acked.insert(req.id);
    }

    c.isolate(leader, true);
    let (req, proposed) = post(&c, leader, "ana", "queued".into())
        .await
        .expect("submitted");
    assert!(matches!(proposed, Proposed::Queued { .. }), "{proposed:?}");
    acked.insert(req.id);
    // One side wins epoch 1 and commits.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (winner, loser) = loop {
        let e = |id| c.handle(id).expect("runs").replica.group().epoch;
        match (e(leader), e(other)) {
            (1, 0) => break (leader, other),
            (0, 1) => break (other, leader),
            (a, b) => assert!(
                a + b < 2 && tokio::time::Instant::now() < deadline,
                "epochs {a} and {b}: exactly one side re-forms"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for i in 0..2 {
        let (req, outcome) = commit(&c, winner, "bo", post_command(format!("winner {i}"))).await;
        assert!(outcome.is_settled(), "{outcome:?}");
        acked.insert(req.id);
    }
    // The other side takes posts into its outbox and stays in epoch 0.
    let (req, proposed) = post(&c, loser, "cy", "loser".into())
        .await
        .expect("submitted");
    assert!(matches!(proposed, Proposed::Queued { .. }), "{proposed:?}");
    acked.insert(req.id);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        c.handle(loser).expect("runs").replica.group().epoch,
        0,
        "the other side founds nothing on top of the newer group"
    );

    let mut replaced = c
        .handle(loser)
        .expect("runs")
        .storage
        .state_machine
        .watch_replaced();
    replaced.borrow_and_update();
    c.isolate(leader, false);
    wait_epoch(&c, loser, 1).await;
    // What the other side carried commits in the new group.
    wait_outboxes_empty(&c).await;
    flush(&c).await;
    let in_repo = posts_in_repo(&url, &dir.path().join("clone"));
    let missing: Vec<_> = acked.difference(&in_repo).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the repository: {missing:?}"
    );
    assert_eq!(in_repo.len(), acked.len());
    let epochs = epochs_in_repo(&url, &dir.path().join("bare"));
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    assert_eq!(epochs.last(), Some(&1));
    // The joiner's state was replaced by the new group's snapshot, and
    // its readers (the event stream) were told to re-read.
    assert!(replaced.has_changed().expect("the state machine lives"));
    for id in c.ids() {
        let ids: BTreeSet<Ulid> = message_ids(&c, id).into_iter().collect();
        assert_eq!(ids, acked, "node {id}");
    }
    c.shutdown().await;
}

/// The survivor of a two-node room whose other node is killed keeps
/// committing alone; the killed node, restarted, joins the new group.
#[actix_rt::test]
async fn the_survivor_of_a_two_node_room_keeps_committing_alone() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_daemon, url, mut c) = reforming_room(dir.path()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let other = *c.ids().iter().find(|id| **id != leader).expect("two nodes");
    let mut acked = BTreeSet::new();
    for i in 0..4 {
        let (req, _) = post_committed(&c, other, "bo", format!("before {i}")).await;
        acked.insert(req.id);
    }
    c.stop_node(leader).await;
    let started = tokio::time::Instant::now();
    let (req, outcome) = commit(&c, other, "bo", post_command("alone".into())).await;
    assert!(outcome.is_settled(), "{outcome:?}");
    acked.insert(req.id);
    eprintln!(
        "the survivor committed {:.1} s after losing its peer",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(c.handle(other).expect("runs").replica.group().epoch, 1);
    flush(&c).await;

    c.start_node(leader).await.expect("restarts");
    wait_epoch(&c, leader, 1).await;
    let (req, _) = post_committed(&c, leader, "ana", "back".into()).await;
    acked.insert(req.id);
    flush(&c).await;
    let in_repo = posts_in_repo(&url, &dir.path().join("clone"));
    assert_eq!(in_repo, acked);
    c.shutdown().await;
}

/// A 2|3 split of a five-node room whose two-node side holds two of the
/// three voters: that side keeps committing and writes to the repository;
/// the three-node side re-forms, first catching up from the repository
/// with what the other side wrote. Healed, every node is in the new group
/// and the repository has every acknowledged post once.
#[actix_rt::test]
async fn a_side_without_a_voter_majority_catches_up_from_the_repository_and_re_forms() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = GitDaemon::start(&dir.path().join("srv")).expect("git daemon");
    let url = daemon.create("room.git").expect("repository");
    let mut opts = committing_options(git_factory(url.clone(), dir.path()));
    opts.voters = Some(3);
    opts.reform = Some(ReformPolicy {
        after: Duration::from_secs(4),
        ..Default::default()
    });
    let c = cluster(dir.path(), 5, Some(opts)).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let voters = c.handle(leader).expect("runs").replica.voters();
    let partner = *voters.iter().find(|v| **v != leader).expect("three voters");
    let side_a = [leader, partner];
    let side_b: Vec<NodeId> = c
        .ids()
        .into_iter()
        .filter(|id| !side_a.contains(id))
        .collect();
    let mut acked = BTreeSet::new();
    for i in 0..3 {
        let (req, _) = post_committed(&c, side_b[0], "cy", format!("together {i}")).await;
        acked.insert(req.id);
    }
    flush(&c).await;

    c.split(&side_a);
    // The side with the voter majority goes on and writes at once.
    let mut written_by_a = BTreeSet::new();
    for i in 0..3 {
        let (req, outcome) = commit(&c, leader, "ana", post_command(format!("side a {i}"))).await;
        assert!(outcome.is_settled(), "{outcome:?}");
        acked.insert(req.id);
        written_by_a.insert(req.id);
    }
    flush_once(&c, leader)
        .await
        .expect("side a writes to the repository");

    // The other side re-forms from what it holds and what the repository
    // holds.
    for id in &side_b {
        wait_epoch(&c, *id, 1).await;
    }
    let (req, outcome) = commit(&c, side_b[1], "dee", post_command("side b".into())).await;
    assert!(outcome.is_settled(), "{outcome:?}");
    acked.insert(req.id);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held: BTreeSet<Ulid> = message_ids(&c, side_b[0]).into_iter().collect();
        if written_by_a.is_subset(&held) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "side b never held what side a wrote to the repository"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Side a still commits, in its own group.
    let (req, outcome) = commit(&c, partner, "bo", post_command("side a later".into())).await;
    assert!(outcome.is_settled(), "{outcome:?}");
    acked.insert(req.id);

    c.split(&[]);
    for id in side_a {
        wait_epoch(&c, id, 1).await;
    }
    wait_outboxes_empty(&c).await;
    flush(&c).await;
    assert_eq!(posts_in_repo(&url, &dir.path().join("clone")), acked);
    for id in c.ids() {
        let ids: BTreeSet<Ulid> = message_ids(&c, id).into_iter().collect();
        assert_eq!(ids, acked, "node {id}");
    }
    c.shutdown().await;
}
