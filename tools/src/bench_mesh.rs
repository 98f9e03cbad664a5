//! `skygit-tools bench mesh`: node processes on loopback over real WebRTC,
//! driven through their HTTP API. It measures:
//!
//! - `channel_open_ms`: from a node's start to its first open data
//!   channel (median over the nodes);
//! - `first_commit_ms`: from the first post to its commit in the
//!   repository;
//! - `p50_ms` / `p99_ms`: send to applied on every node, at a light load
//!   of 100 messages/s;
//! - `messages_per_sec`: sustained throughput of 1 KiB messages from many
//!   concurrent senders, counted when every node has applied them (its
//!   applied index reached the highest index the posts were answered with;
//!   the event streams are closed for this run).
//!
//! It prints numbers; it asserts nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use skygit_harness::{post_to, wait_for, wait_members, NodeProc, NodeSpec};
use skygit_remotes::git::GitRemote;
use tokio::sync::mpsc;

#[derive(Args)]
pub struct MeshBenchArgs {
    /// Node processes (2 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=5))]
    nodes: u64,
    /// Messages in the throughput run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Messages in the latency run (sent at 100 per second).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    latency_messages: u64,
    /// Concurrent senders in the throughput run.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    senders: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    size: u64,
    /// Where the nodes keep their data (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Waits until every node's event stream has reported each id in `ids`;
/// returns, per id, the latest applied time over the nodes.
async fn applied_everywhere(
    streams: &mut [mpsc::Receiver<(String, u64)>],
    ids: &BTreeMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    for s in streams.iter_mut() {
        let mut seen = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        while seen < ids.len() {
            let (id, at) = tokio::time::timeout_at(deadline, s.recv())
                .await
                .context("not every message was applied on every node in time")?
                .context("an event stream ended")?;
            if ids.contains_key(&id) {
                seen += 1;
                let e = latest.entry(id).or_insert(0);
                *e = (*e).max(at);
            }
        }
    }
    Ok(latest)
}

pub async fn mesh(args: MeshBenchArgs) -> anyhow::Result<()> {
    let work = crate::work_dir(args.data_dir.clone())?;
    let dir = work.path.clone();
    let repo = dir.join("room.git");
    let reader = GitRemote::open(
        &repo.to_string_lossy(),
        "main",
        &dir.join("git-cache-bench"),
    )?;
    let bin = crate::skygit_binary()?;
    let mut nodes = Vec::new();
    let mut open_ms = Vec::new();
    for i in 0..args.nodes {
        let user = format!("bench{i}");
        let mut spec = NodeSpec::new(&bin, &repo, &user, &dir.join(&user));
        spec.args = ["--fast-poll-ms", "200", "--commit-interval", "1"]
            .map(String::from)
            .to_vec();
        nodes.push((Instant::now(), NodeProc::start(spec).await?));
    }
    for (started, n) in &nodes {
        let opened = wait_for(Duration::from_secs(120), "a first open channel", || async {
            let s = n.status().await.ok()?;
            s.peers.iter().any(|p| p.phase == "open").then(Instant::now)
        })
        .await?;
        open_ms.push(opened.duration_since(*started).as_secs_f64() * 1e3);
    }
    open_ms.sort_by(f64::total_cmp);
    let nodes: Vec<NodeProc> = nodes.into_iter().map(|(_, n)| n).collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(
        &refs,
        (args.nodes as usize).min(3),
        Duration::from_secs(120),
    )
    .await?;
    let mut streams = Vec::new();
    for n in &nodes {
        streams.push(n.events().await?);
    }

    // First commit: one post, then the repository's watermark.
    let t = Instant::now();
    let first = nodes[0].post("first").await?;
    let index = first.index.context("the first post did not commit")?;
    wait_for(Duration::from_secs(120), "the first commit", || async {
        let head = skygit_actors::ports::RepoRemote::head(&reader)
            .await
            .ok()??;
        let w = skygit_actors::readback::watermark_of(&reader, &head)
            .await
            .ok()?;
        (w >= index).then_some(())
    })
    .await?;
    let first_commit_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut ids = BTreeMap::new();
    ids.insert(first.id.clone(), 0);
    applied_everywhere(&mut streams, &ids, Duration::from_secs(60)).await?;

    // Latency at 100 messages/s.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let body = "x".repeat(args.size as usize);
    let mut posts = Vec::new();
    for i in 0..args.latency_messages {
        tick.tick().await;
        let n = &nodes[(i % args.nodes) as usize];
        let (api, body, client) = (n.api.clone(), body.clone(), n.http().clone());
        let at = now_us();
        posts.push(tokio::spawn(async move {
            let posted = post_to(&client, &api, &body).await.ok()?;
            Some((posted.id, at))
        }));
    }
    for p in posts {
        if let Some((id, at)) = p.await? {
            sent.insert(id, at);
        }
    }
    let applied = applied_everywhere(&mut streams, &sent, Duration::from_secs(120)).await?;
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| applied.get(id).map(|a| a.saturating_sub(*at) as f64 / 1e3))
        .collect();
    lat.sort_by(f64::total_cmp);

    // Throughput with many senders. The event streams close first: a page
    // that follows every message is a client's load, not the mesh's, and
    // decoding three copies of every message would tax the nodes' two cores
    // from inside the measuring process. A post answers with its raft
    // index, so "applied everywhere" is every node's applied index reaching
    // the highest index answered.
    drop(streams);
    let per_sender = args.messages.div_ceil(args.senders);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let api = nodes[(s % args.nodes) as usize].api.clone();
        let client = nodes[(s % args.nodes) as usize].http().clone();
        let body = body.clone();
        let count = per_sender.min(args.messages.saturating_sub(s * per_sender));
        tasks.push(tokio::spawn(async move {
            let (mut committed, mut last, mut other) = (0u64, 0u64, 0u64);
            for _ in 0..count {
                match post_to(&client, &api, &body).await {
                    Ok(posted) => match posted.index {
                        Some(i) => {
                            committed += 1;
                            last = last.max(i);
                        }
                        None => other += 1,
                    },
                    Err(_) => other += 1,
                }
            }
            (committed, last, other)
        }));
    }
    let (mut committed, mut last, mut not_committed) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (c, l, o) = t.await?;
        committed += c;
        last = last.max(l);
        not_committed += o;
    }
    if not_committed > 0 {
        eprintln!(
            "{not_committed} posts were refused, failed or only queued; they are not counted"
        );
    }
    // Polled finely: the run lasts seconds, and the wait is part of it.
    let deadline = Instant::now() + Duration::from_secs(600);
    for n in &nodes {
        while n.status().await?.consensus.applied_index.unwrap_or(0) < last {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not apply the run in time",
                n.spec.user
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    let mps = committed as f64 / elapsed;
    for mut n in nodes {
        n.stop(Duration::from_secs(60)).await.ok();
    }
    let channel_open_ms = percentile(&open_ms, 0.5);
    let p50 = percentile(&lat, 0.5);
    let p99 = percentile(&lat, 0.99);
    eprintln!(
        "{} nodes over WebRTC: channel open {channel_open_ms:.0} ms (median), first commit {first_commit_ms:.0} ms; \
         latency at 100/s over {} messages: p50 {p50:.2} ms, p99 {p99:.2} ms; \
         throughput: {} messages of {} bytes from {} senders in {elapsed:.2} s = {mps:.0} messages/s",
        args.nodes,
        lat.len(),
        committed,
        args.size,
        args.senders
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "nodes": args.nodes,
                "transport": "webrtc",
                "messages": committed,
                "size": args.size,
                "senders": args.senders,
                "messages_per_sec": mps,
                "p50_ms": p50,
                "p99_ms": p99,
                "latency_messages": lat.len(),
                "channel_open_ms": channel_open_ms,
                "first_commit_ms": first_commit_ms,
            })
        );
    }
    Ok(())
}
