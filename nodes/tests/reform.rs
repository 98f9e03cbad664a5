//! Real `skygit node` processes over WebRTC re-forming their room's group
//! (issue 15): five nodes, three voters; the leader and another voter are
//! killed (SIGKILL) and stay down; the three survivors found the next
//! epoch on the branch and commit again; the killed voters come back, join
//! it, and every acknowledged message is on every node and in the
//! repository exactly once.
//! And a two-node room whose other node is killed: the survivor commits
//! alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skygit_harness::{
    converged, leader_and_another_voter, post_round, wait_epoch, wait_members, NodeProc, NodeSpec,
};
use skygit_tests::git_server::{assert_repo_holds_each_once, git};

const SETTLE: Duration = Duration::from_secs(90);
/// The survivors re-form after this long without a reachable leader.
const REFORM_AFTER_SECS: &str = "5";

fn spec(dir: &Path, repo: &Path, user: &str) -> NodeSpec {
    NodeSpec::for_test(
        Path::new(env!("CARGO_BIN_EXE_skygit")),
        dir,
        repo,
        user,
        &[
            "--commit-interval",
            "1",
            "--reform-after-secs",
            REFORM_AFTER_SECS,
        ],
    )
}

fn bare_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    repo
}

async fn epoch_of(n: &NodeProc) -> Option<u64> {
    Some(n.status().await.ok()?.membership?.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_re_form_after_losing_two_voters_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let users = ["ana", "bo", "cy", "dee", "eli"];
    let mut nodes = Vec::new();
    for u in users {
        nodes.push(
            NodeProc::start(spec(dir.path(), &repo, u))
                .await
                .expect("node starts"),
        );
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&all, 3, SETTLE)
        .await
        .expect("three voters, two learners");
    let mut acked = BTreeSet::new();
    post_round(&all, "before", 1, &mut acked)
        .await
        .expect("posts acknowledged");
    converged(&all, &acked, SETTLE).await.expect("converged");

    // The leader and one more voter die without a goodbye.
    let (leader, other_voter) = leader_and_another_voter(&all, SETTLE)
        .await
        .expect("a leader and another voter");
    let mut killed = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        if [leader, other_voter].contains(&nodes[i].node_id) {
            let mut n = nodes.remove(i);
            n.kill().await.expect("killed");
            killed.push(n);
        } else {
            i += 1;
        }
    }
    let lost_at = Instant::now();
    let survivors: Vec<&NodeProc> = nodes.iter().collect();

    // The survivors post on: queued while leaderless, committed once the
    // group is re-formed.
    let mut round = 0;
    let committed_after = loop {
        round += 1;
        let answers = post_round(&survivors, &format!("survivors {round}"), 1, &mut acked)
            .await
            .expect("posts acknowledged");
        if answers.iter().any(|(_, _, p)| p.index.is_some()) {
            break lost_at.elapsed();
        }
        assert!(
            lost_at.elapsed() < SETTLE,
            "no survivor committed a post in {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "reform: first committed post {:.1} s after the majority was lost",
        committed_after.as_secs_f64()
    );
    wait_epoch(&survivors, 1, SETTLE)
        .await
        .expect("the survivors re-formed");
    converged(&survivors, &acked, SETTLE)
        .await
        .expect("the survivors converge");

    // The killed voters come back with their data and join epoch 1.
    for k in &killed {
        nodes.push(NodeProc::start(k.spec.clone()).await.expect("restarts"));
    }
    rejoin_and_settle(&mut nodes, &mut acked, &repo, dir.path()).await;
}

/// Every node joins epoch 1 and posts once more; then every node holds
/// every acknowledged message once, in one order, and so does the
/// repository. The nodes stop.
async fn rejoin_and_settle(
    nodes: &mut [NodeProc],
    acked: &mut BTreeSet<String>,
    repo: &Path,
    dir: &Path,
) {
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_epoch(&all, 1, SETTLE).await.expect("joined");
    post_round(&all, "back", 1, acked)
        .await
        .expect("posts acknowledged");
    converged(&all, acked, SETTLE)
        .await
        .expect("every node holds every message once");
    // The repository too, once the leader committed.
    assert_repo_holds_each_once(repo, &dir.join("clone"), acked, SETTLE).await;
    for n in nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

/// A two-node room over WebRTC whose other node is killed: the survivor
/// re-forms alone and keeps committing; the killed node, restarted, joins
/// its group, and every message is on both and in the repository once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_two_node_room_keeps_committing_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = bare_repo(dir.path());
    let mut nodes = Vec::new();
    for u in ["ana", "bo"] {
        nodes.push(
            NodeProc::start(spec(dir.path(), &repo, u))
                .await
                .expect("node starts"),
        );
    }
    let both: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&both, 2, SETTLE).await.expect("two voters");
    let mut acked = BTreeSet::new();
    post_round(&both, "before", 1, &mut acked)
        .await
        .expect("posts acknowledged");
    converged(&both, &acked, SETTLE).await.expect("converged");

    let mut gone = nodes.remove(0);
    gone.kill().await.expect("killed");
    let survivor = [&nodes[0]];
    let mut round = 0;
    loop {
        round += 1;
        let answers = post_round(&survivor, &format!("alone {round}"), 1, &mut acked)
            .await
            .expect("posts acknowledged");
        if answers.iter().any(|(_, _, p)| p.index.is_some()) {
            break;
        }
        assert!(round < 240, "the survivor never committed alone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(epoch_of(&nodes[0]).await, Some(1), "the survivor re-formed");

    nodes.push(NodeProc::start(gone.spec.clone()).await.expect("restarts"));
    rejoin_and_settle(&mut nodes, &mut acked, &repo, dir.path()).await;
}
