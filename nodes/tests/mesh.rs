//! Real `skygit node` processes on loopback: they find each other through a
//! bare repository's presence refs, connect over WebRTC, form and grow the
//! raft group, replicate, commit to the repository, survive a killed
//! leader and voters leaving, and refuse a node whose certificate does not
//! match its presence record.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skygit_harness::{
    converged, link_phase, peer_entry, post_round, wait_for, wait_leader, wait_members, NodeProc,
    NodeSpec,
};
use skygit_tests::git_server::{git, repo_posts};

const SETTLE: Duration = Duration::from_secs(90);

/// The tests of this file run one at a time: each starts up to five node
/// processes, and on two cores several rooms at once would starve raft's
/// timers.
static ONE_ROOM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(dir: &Path, repo: &Path, user: &str, extra: &[&str]) -> NodeSpec {
    let args: Vec<&str> = ["--commit-interval", "1"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    NodeSpec::for_test(
        Path::new(env!("CARGO_BIN_EXE_skygit")),
        dir,
        repo,
        user,
        &args,
    )
}

fn bare_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    repo
}

async fn start(dir: &Path, repo: &Path, users: &[&str], extra: &[&str]) -> Vec<NodeProc> {
    let mut nodes = Vec::new();
    for u in users {
        nodes.push(
            NodeProc::start(spec(dir, repo, u, extra))
                .await
                .expect("node starts"),
        );
    }
    nodes
}

async fn wait_converged(nodes: &[&NodeProc], sent: &BTreeSet<String>) -> Vec<String> {
    converged(nodes, sent, SETTLE).await.expect("converged")
}

async fn post_all(nodes: &[&NodeProc], round: &str, each: u64, acked: &mut BTreeSet<String>) {
    post_round(nodes, round, each, acked)
        .await
        .expect("posts acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_form_a_room_commit_and_survive_a_killed_leader() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let t0 = Instant::now();
    let mut nodes = start(dir.path(), &repo, &["ana", "bo", "cy"], &[]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await.expect("three voters");
    let leader = wait_leader(&refs, SETTLE).await.expect("a leader");
    eprintln!("room formed with leader {leader} after {:?}", t0.elapsed());
    let mut acked = BTreeSet::new();
    post_all(&refs, "before", 5, &mut acked).await;
    wait_converged(&refs, &acked).await;
    // The leader commits to the repository.
    let scratch = dir.path().join("clone");
    wait_for(
        SETTLE,
        "the repository to hold the first messages",
        || async {
            let mut got = repo_posts(&repo, &scratch);
            got.sort();
            (got.len() == acked.len()).then_some(())
        },
    )
    .await
    .expect("committed");

    // Kill -9 the leader.
    let li = nodes
        .iter()
        .position(|n| n.node_id == leader)
        .expect("leader is a node");
    let mut dead = nodes.remove(li);
    dead.kill().await.expect("killed");
    let killed_at = Instant::now();
    let survivors: Vec<&NodeProc> = nodes.iter().collect();
    let next = wait_for(SETTLE, "a new leader", || async {
        let l = wait_leader(&survivors, Duration::from_millis(1))
            .await
            .ok()?;
        (l != leader).then_some(l)
    })
    .await
    .expect("new leader");
    eprintln!("new leader {next} {:?} after the kill", killed_at.elapsed());
    post_all(&survivors, "after", 5, &mut acked).await;
    wait_converged(&survivors, &acked).await;
    wait_for(SETTLE, "the new leader to commit the rest", || async {
        let got = repo_posts(&repo, &scratch);
        let set: BTreeSet<String> = got.iter().cloned().collect();
        (got.len() == acked.len() && set == acked).then_some(())
    })
    .await
    .expect("the repository holds every acknowledged message exactly once");
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_keep_going_while_voters_leave_and_lose_nothing_when_they_return() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let users = ["ana", "bo", "cy", "dee", "eli"];
    let mut nodes = start(dir.path(), &repo, &users, &[]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE)
        .await
        .expect("three voters, two learners");
    let mut acked = BTreeSet::new();
    post_all(&refs, "all five", 2, &mut acked).await;
    wait_converged(&refs, &acked).await;

    // Two voters that are not the leader leave at once.
    let leader = wait_leader(&refs, SETTLE).await.expect("leader");
    let status = refs
        .iter()
        .find(|n| n.node_id == leader)
        .expect("leader")
        .status()
        .await
        .expect("status");
    let voters: Vec<u64> = status.membership.expect("membership").voters;
    let leaving: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|v| *v != leader)
        .take(2)
        .collect();
    assert_eq!(leaving.len(), 2);
    let mut gone = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        if leaving.contains(&nodes[i].node_id) {
            gone.push(nodes.remove(i));
        } else {
            i += 1;
        }
    }
    let (a, b) = gone.split_at_mut(1);
    let (ra, rb) = tokio::join!(
        a[0].stop(Duration::from_secs(30)),
        b[0].stop(Duration::from_secs(30))
    );
    ra.expect("first voter left");
    rb.expect("second voter left");
    let rest: Vec<&NodeProc> = nodes.iter().collect();
    post_all(&rest, "two gone", 2, &mut acked).await;
    wait_converged(&rest, &acked).await;

    // The leader leaves later.
    let li = nodes
        .iter()
        .position(|n| n.node_id == leader)
        .expect("leader");
    let mut third = nodes.remove(li);
    third
        .stop(Duration::from_secs(30))
        .await
        .expect("third voter left");
    gone.push(third);
    let rest: Vec<&NodeProc> = nodes.iter().collect();
    wait_leader(&rest, SETTLE)
        .await
        .expect("a leader among the two left");
    post_all(&rest, "three gone", 2, &mut acked).await;
    wait_converged(&rest, &acked).await;

    // They come back with their data: nothing lost, nothing twice.
    for g in &gone {
        nodes.push(NodeProc::start(g.spec.clone()).await.expect("restarts"));
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    post_all(&all, "back", 1, &mut acked).await;
    wait_converged(&all, &acked).await;
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_does_not_match_its_record_is_refused() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let mut nodes = start(dir.path(), &repo, &["ana", "bo"], &[]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 2, SETTLE).await.expect("two voters");
    let mut liar = NodeProc::start(spec(
        dir.path(),
        &repo,
        "mallory",
        &["--fault-wrong-fingerprint"],
    ))
    .await
    .expect("starts");
    // The honest nodes see the liar's record and try; every attempt is
    // refused, so it never gets a link or a place in the group.
    wait_for(SETTLE, "the honest nodes to refuse the liar", || async {
        for n in &refs {
            let s = n.status().await.ok()?;
            if peer_entry(&s, liar.node_id)?.failures < 2 {
                return None;
            }
        }
        Some(())
    })
    .await
    .expect("refused");
    for n in &refs {
        let s = n.status().await.expect("status");
        let members: Vec<u64> = s
            .membership
            .iter()
            .flat_map(|m| m.voters.iter().chain(&m.learners).copied())
            .collect();
        assert!(!members.contains(&liar.node_id), "the liar joined: {s:?}");
        assert_ne!(
            link_phase(&s, liar.node_id),
            "open",
            "a link to the liar is open: {s:?}"
        );
    }
    liar.kill().await.expect("killed");
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

fn signals(s: &skygit_api::Status) -> (u64, u64) {
    s.signals
        .as_ref()
        .map_or((0, 0), |g| (g.via_repo, g.via_mesh))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_link_is_re_signalled_over_the_mesh_without_repository_writes() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let nodes = start(dir.path(), &repo, &["ana", "bo", "cy"], &["--fault-api"]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await.expect("three voters");
    // The smallest and the largest id: the first offers to the second, and
    // the third node is linked to both.
    let mut ids: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node_id, i))
        .collect();
    ids.sort();
    let (low, high) = (&nodes[ids[0].1], &nodes[ids[2].1]);
    let before_low = signals(&low.status().await.expect("status"));
    let before_high = signals(&high.status().await.expect("status"));
    low.drop_link(high.node_id).await.expect("link dropped");
    wait_for(SETTLE, "the link to come back", || async {
        let s = low.status().await.ok()?;
        (link_phase(&s, high.node_id) == "open").then_some(())
    })
    .await
    .expect("reconnected");
    let after_low = signals(&low.status().await.expect("status"));
    let after_high = signals(&high.status().await.expect("status"));
    assert!(
        after_low.1 > before_low.1,
        "the offer went over the mesh: {before_low:?} -> {after_low:?}"
    );
    assert!(
        after_high.1 > before_high.1,
        "the answer went over the mesh: {before_high:?} -> {after_high:?}"
    );
    assert_eq!(
        after_low.0, before_low.0,
        "no repository write for the offer"
    );
    assert_eq!(
        after_high.0, before_high.0,
        "no repository write for the answer"
    );
    let mut sent = BTreeSet::new();
    post_all(&refs, "after the reconnect", 1, &mut sent).await;
    wait_converged(&refs, &sent).await;
    for mut n in nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

/// The current link attempt to `peer` (0 when not listed).
fn attempt(s: &skygit_api::Status, peer: u64) -> u64 {
    peer_entry(s, peer).map_or(0, |p| p.attempt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_refused_and_the_node_keeps_serving_the_others() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let nodes = start(dir.path(), &repo, &["ana", "bo", "cy"], &["--fault-api"]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await.expect("three voters");
    let (attacker, victim) = (&nodes[0], &nodes[1]);
    let mut sent = BTreeSet::new();

    // Frames that break the envelope codec: a wrong wire version, junk
    // after the right one, an empty frame. The victim drops each frame and
    // keeps the link.
    let before = victim.status().await.expect("status");
    let attempt_before = attempt(&before, attacker.node_id);
    for bad in [vec![9u8, 1, 2, 3], vec![1u8, 255, 255, 255, 255, 7], vec![]] {
        attacker
            .send_raw(victim.node_id, "frame", bad)
            .await
            .expect("frame sent");
    }
    post_all(&refs, "after bad frames", 1, &mut sent).await;
    wait_converged(&refs, &sent).await;
    let after = victim.status().await.expect("status");
    assert_eq!(link_phase(&after, attacker.node_id), "open", "{after:?}");
    assert_eq!(
        attempt(&after, attacker.node_id),
        attempt_before,
        "a bad frame must not cost the link: {after:?}"
    );

    // Bytes that break the mesh's own framing (unknown version, unknown
    // kind, a lone chunk continuation): the victim drops the link.
    for bad in [vec![7u8, 0, 1], vec![1u8, 99, 0], vec![1u8, 2, 0, 0]] {
        attacker.send_raw(victim.node_id, "wire", bad).await.ok();
        wait_for(SETTLE, "the link to be dropped and made again", || async {
            let s = victim.status().await.ok()?;
            let attempt = attempt(&s, attacker.node_id);
            let reconnected = link_phase(&s, attacker.node_id) == "open";
            let attacker_side = attacker.status().await.ok()?;
            let both = link_phase(&attacker_side, victim.node_id) == "open";
            (attempt > attempt_before && reconnected && both).then_some(attempt)
        })
        .await
        .expect("dropped, then reconnected");
    }
    // Meanwhile the victim served the third node, and the room goes on.
    post_all(&refs, "after bad wire bytes", 1, &mut sent).await;
    wait_converged(&refs, &sent).await;
    for mut n in nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_config_sets_the_voter_count() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_skygit"))
        .args(["init", "--repo", &repo.to_string_lossy(), "--voters", "1"])
        .output()
        .expect("init runs");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let nodes = start(dir.path(), &repo, &["ana", "bo", "cy"], &[]).await;
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    // One voter, the other two learners, and the room still replicates.
    wait_members(&refs, 1, SETTLE)
        .await
        .expect("one voter, two learners");
    let mut sent = BTreeSet::new();
    post_all(&refs, "one voter", 1, &mut sent).await;
    wait_converged(&refs, &sent).await;
    for mut n in nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}
