//! `skygit-tools demo` with node processes: starts `skygit node` processes on a
//! bare repository in the data directory (no token, only loopback). They
//! find each other through the repository's presence refs and connect
//! over WebRTC. The demo prints each node's API address, posts through
//! every node, kills the leader with SIGKILL, posts again, restarts it,
//! checks that every node holds the same messages in the same order, stops
//! the room and checks the repository's history against the room's log.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skygit_harness::{wait_for, wait_leader, wait_members, NodeProc, NodeSpec};
use skygit_remotes::git::GitRemote;

const WAIT: Duration = Duration::from_secs(120);
const USERS: [&str; 5] = ["ana", "bo", "cy", "dee", "eli"];

async fn post_round(
    nodes: &[NodeProc],
    round: &str,
    each: u64,
    sent: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    for (user, text, p) in skygit_harness::post_round(&refs, round, each, sent).await? {
        let how = match p.index {
            Some(i) => format!("committed at index {i}"),
            None => "queued in the outbox".to_owned(),
        };
        println!("  {user} posted {text:?}: {how}");
    }
    Ok(())
}

async fn converged(nodes: &[NodeProc], sent: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    skygit_harness::converged(&refs, sent, WAIT).await
}

pub async fn run(
    n: u64,
    messages: u64,
    data_dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<()> {
    let work = crate::work_dir(data_dir)?;
    let dir = work.path.clone();
    let repo = dir.join("room.git");
    std::fs::create_dir_all(&dir)?;
    // Creates the bare repository before the nodes race to.
    GitRemote::open(&repo.to_string_lossy(), "main", &dir.join("git-cache-demo"))?;
    let bin = crate::skygit_binary()?;
    println!(
        "starting {n} node processes on the repository {}",
        repo.display()
    );
    let t0 = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..n as usize {
        let user = USERS[i % USERS.len()];
        let mut spec = NodeSpec::new(&bin, &repo, user, &dir.join(user));
        spec.args = ["--fast-poll-ms", "500", "--commit-interval", "2"]
            .map(String::from)
            .to_vec();
        let node = NodeProc::start(spec).await?;
        println!(
            "  {user}: node {} api {} (log {})",
            node.node_id,
            node.api,
            node.spec.log.display()
        );
        nodes.push(node);
    }
    {
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        wait_members(&refs, n.min(3) as usize, WAIT)
            .await
            .context("the nodes did not form a room")?;
    }
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>(), WAIT).await?;
    println!(
        "the room formed over WebRTC in {:.1} s; leader: node {leader}",
        t0.elapsed().as_secs_f64()
    );
    let mut sent = BTreeSet::new();
    post_round(&nodes, "hello", messages, &mut sent).await?;
    converged(&nodes, &sent).await?;
    if n >= 3 {
        let li = nodes
            .iter()
            .position(|x| x.node_id == leader)
            .context("leader is not a node")?;
        println!(
            "killing the leader, node {leader} ({}), with SIGKILL",
            nodes[li].spec.user
        );
        let mut dead = nodes.remove(li);
        dead.kill().await?;
        let killed = Instant::now();
        let next = wait_for(WAIT, "a new leader", || async {
            let l = wait_leader(&nodes.iter().collect::<Vec<_>>(), Duration::from_millis(1))
                .await
                .ok()?;
            (l != leader).then_some(l)
        })
        .await?;
        println!(
            "new leader: node {next}, {:.1} s after the kill",
            killed.elapsed().as_secs_f64()
        );
        post_round(&nodes, "after the crash", messages, &mut sent).await?;
        println!("restarting {} from its data directory", dead.spec.user);
        let back = NodeProc::start(dead.spec.clone()).await?;
        nodes.insert(li, back);
    }
    let log = converged(&nodes, &sent).await?;
    println!(
        "\nevery node holds the same {} messages in the same order:",
        log.len()
    );
    for m in &log {
        println!("  {m}");
    }
    if keep {
        println!("\nthe room keeps running; open a node's web UI or dashboard:");
        for node in &nodes {
            println!(
                "  {}: {}/#secret={}  dashboard {}/dashboard#secret={}",
                node.spec.user, node.api, node.secret, node.api, node.secret
            );
        }
        println!("Ctrl-C stops the room");
        let _ = skygit::shutdown_signal().await?;
    }
    println!(
        "\nstopping the room; the leader commits the rest to {}",
        repo.display()
    );
    for node in nodes.iter_mut().rev() {
        node.stop(Duration::from_secs(60)).await?;
    }
    let history = crate::demo::read_back(&dir, &repo).await?;
    let in_repo: Vec<String> = history
        .messages
        .iter()
        .map(|m| m.record.message.content.clone())
        .collect();
    println!(
        "the repository holds {} messages up to raft index {}",
        in_repo.len(),
        history.watermark,
    );
    if in_repo != log {
        bail!("the repository's history differs from the room's log");
    }
    println!("the repository's history matches the room's log");
    crate::demo::show_repository(work, &repo)
}
