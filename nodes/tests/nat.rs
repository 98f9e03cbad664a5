//! Two teammates at home, each behind their own NAT router, meet through
//! STUN, or through a TURN relay when their NATs map every destination to
//! a new port; a real TURN server (coturn's `turnserver`) runs on the
//! "internet" between them.
//!
//! Each test builds its own networks from namespaces: an "internet" bridge
//! (in the test's namespace, where the TURN server listens), and for each
//! home a router namespace (its WAN on the bridge, `MASQUERADE` out, new
//! inbound connections dropped as home routers do) and a host namespace on
//! a private subnet behind it. The two private subnets have no route to
//! each other: a link can only go through the routers. Each node also has a
//! point-to-point link to the test's namespace for its HTTP API, which its
//! WebRTC transport does not use (`--bind` names the private address).
//!
//! Needs root, `iptables` and `turnserver` (`scripts/setup.sh` installs
//! them). Elsewhere the tests say why they skipped; under CI they fail.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use skygit_api::LinkPath;
use skygit_harness::nat::{
    can_run, start_nodes, Homes, Mapping, Turn, TURN_PASSWORD, TURN_SECRET, TURN_USER,
};
use skygit_harness::{
    converged, post_round, skip_unless_required, wait_for, wait_members, NodeProc,
};
use skygit_tests::git_server::git;

const SETTLE: Duration = Duration::from_secs(120);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skygit"))
}

/// The current link attempt of `n` to `other` (0 before the first).
async fn tries(n: &NodeProc, other: u64) -> u64 {
    n.status()
        .await
        .ok()
        .and_then(|s| s.peers.into_iter().find(|p| p.node_id == other))
        .map_or(0, |p| p.attempt)
}

/// Both nodes link, the link takes `path` on both sides, posts from both
/// replicate, and the room commits them to its repository.
async fn meet_through(nodes: &mut [NodeProc], repo: &Path, path: LinkPath) {
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 2, SETTLE)
        .await
        .expect("a room of two homes");
    for (n, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        let seen = wait_for(SETTLE, "the link's path to be known", || async {
            let s = n.status().await.ok()?;
            s.peers
                .iter()
                .find(|p| p.node_id == other.node_id)
                .and_then(|p| p.path)
        })
        .await
        .expect("a path");
        assert_eq!(seen, path, "{}'s link to {}", n.spec.user, other.spec.user);
        let ice = n.status().await.expect("status").ice.expect("ice status");
        assert!(ice.problem.is_none(), "{}: {:?}", n.spec.user, ice.problem);
    }
    let mut sent = BTreeSet::new();
    post_round(&refs, "from home", 3, &mut sent)
        .await
        .expect("posted");
    converged(&refs, &sent, SETTLE).await.expect("replicated");
    let r = nodes[0]
        .http()
        .post(format!("{}/push", nodes[0].api))
        .send()
        .await
        .expect("push");
    assert!(r.status().is_success(), "push: {}", r.status());
    let log = git(&["--git-dir", &repo.to_string_lossy(), "log", "-p", "main"]);
    for text in &sent {
        assert!(
            log.contains(text.as_str()),
            "{text:?} is not in the repository"
        );
    }
    for n in nodes.iter_mut() {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

fn room(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    repo
}

/// Builds the homes or says why the test cannot run.
fn homes_or_skip(k: u32, mapping: Mapping) -> Option<Homes> {
    if let Err(why) = can_run() {
        skip_unless_required(&why);
        return None;
    }
    match Homes::build(k, mapping) {
        Ok(h) => Some(h),
        Err(e) => {
            skip_unless_required(&format!("cannot build the home networks: {e}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homes_behind_nat_meet_through_stun() {
    let Some(homes) = homes_or_skip(0, Mapping::Cone) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let stun = format!("--ice-server=stun:{}:3478", homes.internet());
    let mut nodes = start_nodes(bin(), &homes, &repo, dir.path(), &[stun], false)
        .await
        .expect("nodes start");
    meet_through(&mut nodes, &repo, LinkPath::Srflx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_meet_through_the_turn_relay() {
    let Some(homes) = homes_or_skip(1, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-username={TURN_USER}"),
        format!("--turn-credential={TURN_PASSWORD}"),
    ];
    let mut nodes = start_nodes(bin(), &homes, &repo, dir.path(), &ice, false)
        .await
        .expect("nodes start");
    meet_through(&mut nodes, &repo, LinkPath::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_rest_api_credentials_are_made_from_the_shared_secret() {
    let Some(homes) = homes_or_skip(2, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, true, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-secret={TURN_SECRET}"),
    ];
    let mut nodes = start_nodes(bin(), &homes, &repo, dir.path(), &ice, false)
        .await
        .expect("nodes start");
    meet_through(&mut nodes, &repo, LinkPath::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_turn_credentials_are_reported_and_the_node_keeps_trying() {
    let Some(homes) = homes_or_skip(3, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-username={TURN_USER}"),
        "--turn-credential=wrong-password".to_owned(),
    ];
    let mut nodes = start_nodes(bin(), &homes, &repo, dir.path(), &ice, false)
        .await
        .expect("nodes start");
    let (a, b) = (&nodes[0], &nodes[1]);
    // Each node says why it has no relay, and keeps trying to link.
    for n in [a, b] {
        let problem = wait_for(SETTLE, "the status to report the TURN problem", || async {
            n.status().await.ok()?.ice?.problem
        })
        .await
        .expect("a reported problem");
        assert!(problem.contains("TURN"), "{problem}");
    }
    let first = tries(a, b.node_id).await;
    wait_for(SETTLE, "another link attempt", || async {
        (tries(a, b.node_id).await > first).then_some(())
    })
    .await
    .expect("the node keeps trying");
    for n in [a, b] {
        let s = n.status().await.expect("the node still answers");
        let other = if n.node_id == a.node_id { b } else { a };
        let p = s.peers.iter().find(|p| p.node_id == other.node_id);
        assert!(
            p.is_none_or(|p| p.path.is_none()),
            "no link can open through symmetric NATs without a relay: {p:?}"
        );
        let log = std::fs::read_to_string(&n.spec.log).unwrap_or_default();
        assert!(
            log.contains("no relay candidate from the TURN server"),
            "{}'s log says why",
            n.spec.user
        );
        assert!(
            !log.contains("wrong-password") && !log.contains(TURN_PASSWORD),
            "a credential in {}'s log",
            n.spec.user
        );
    }
    assert!(
        turn.log().contains("credentials are incorrect"),
        "the TURN server refused the credentials: {}",
        turn.log()
    );
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_moves_to_another_network_reconnects_and_catches_up() {
    let Some(homes) = homes_or_skip(4, Mapping::Cone) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let stun = format!("--ice-server=stun:{}:3478", homes.internet());
    let mut nodes = start_nodes(bin(), &homes, &repo, dir.path(), &[stun], true)
        .await
        .expect("nodes start");
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 2, SETTLE)
        .await
        .expect("a room of two homes");
    let mut sent = BTreeSet::new();
    post_round(&refs, "before the move", 2, &mut sent)
        .await
        .expect("posted");
    converged(&refs, &sent, SETTLE).await.expect("replicated");
    let (mover, stayer) = (&nodes[0], &nodes[1]);
    let attempt = tries(stayer, mover.node_id).await;

    // The first host joins another network: its old address is gone.
    let new_ip = homes.move_host(1, 3).expect("moved");
    // The link breaks and is set up again from the new address, with no
    // restart; meanwhile the room keeps the other node's posts.
    wait_for(SETTLE, "a new link from the new address", || async {
        let s = stayer.status().await.ok()?;
        let p = s.peers.iter().find(|p| p.node_id == mover.node_id)?;
        (p.attempt > attempt && p.path.is_some() && p.state == skygit_api::PeerState::Connected)
            .then_some(())
    })
    .await
    .expect("reconnected");
    post_round(&refs, "after the move", 2, &mut sent)
        .await
        .expect("posted after the move");
    converged(&refs, &sent, SETTLE)
        .await
        .expect("the moved host caught up");
    let log = std::fs::read_to_string(&mover.spec.log).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the moved node ({new_ip}) panicked: {log}"
    );
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}
