//! `skygit-tools bench raft`: messages per second and latency from send to
//! applied on every node, over durable RocksDB storage and the in-process
//! transport. Prints a human summary on stderr and, with `--json`, one JSON
//! object on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_consensus::model::{ApplyOutcome, Command, ConversationId, RoomId};
use tokio::sync::broadcast::error::RecvError;
use ulid::Ulid;

#[derive(Args)]
pub struct RaftBenchArgs {
    /// Raft nodes (1 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    nodes: u64,
    /// Concurrent senders, spread over the nodes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    senders: u64,
    /// Messages in all.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    size: u64,
    /// Where the nodes' RocksDB directories go (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Verify identities, as a GitHub room or one with a members file
    /// does: every node signs its presence and each post with its key, the
    /// leader checks the signature of every forwarded post.
    #[arg(long)]
    sign: bool,
}

pub async fn raft(args: RaftBenchArgs) -> anyhow::Result<()> {
    let work = crate::work_dir(args.data_dir.clone())?;
    let dir = work.path.clone();
    let room = RoomId::new("bench:raft")?;
    // Default raft settings: snapshots at the default interval are part of
    // the measured cost.
    let mut opts = LocalOptions::new(&room);
    opts.sign = args.sign;
    let c = LocalCluster::start(&dir, room, args.nodes, opts).await?;
    c.wait_leader(Duration::from_secs(30))
        .await
        .context("no leader")?;

    // One collector per node records when each request is applied there.
    let total = args.messages;
    let mut collectors = Vec::new();
    for id in c.ids() {
        let mut rx = c
            .handle(id)
            .context("node")?
            .storage
            .state_machine
            .subscribe();
        collectors.push(tokio::spawn(async move {
            let mut seen: BTreeMap<Ulid, Instant> = BTreeMap::new();
            while (seen.len() as u64) < total {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Ok(e)) => {
                        seen.entry(e.request).or_insert_with(Instant::now);
                    }
                    Ok(Err(RecvError::Lagged(n))) => {
                        bail!("collector on node {id} lagged by {n} events")
                    }
                    Ok(Err(RecvError::Closed)) | Err(_) => bail!("node {id} stopped applying"),
                }
            }
            Ok(seen)
        }));
    }

    let content = Arc::new("x".repeat(args.size as usize));
    let start = Instant::now();
    let mut senders = Vec::new();
    let n = args.nodes;
    for s in 0..args.senders {
        let count = total / args.senders + u64::from(s < total % args.senders);
        let node = s % n + 1;
        let addr = c.handle(node).context("node")?.consensus.clone();
        // A node posts as its own user (a verifying leader refuses any
        // other name through a link).
        let user = c.user_of(node)?;
        let content = content.clone();
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let t = Instant::now();
                let submit = Submit {
                    sender: user.clone(),
                    command: Command::Post {
                        conversation: ConversationId::general(),
                        content: content.to_string(),
                        attachments: Vec::new(),
                    },
                    id: None,
                };
                let (req, p) = addr.send(submit).await??;
                if !matches!(p, Proposed::Committed(ApplyOutcome::Applied { .. })) {
                    bail!("message not applied: {p:?}");
                }
                sent.push((req.id, t));
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent_at = BTreeMap::new();
    for s in senders {
        sent_at.extend(s.await??);
    }
    let mut applied: Vec<BTreeMap<Ulid, Instant>> = Vec::new();
    for col in collectors {
        applied.push(col.await??);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last = start;
    for (id, t0) in &sent_at {
        let done = applied
            .iter()
            .map(|m| m.get(id).copied())
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("message {id} was not applied on every node"))?
            .into_iter()
            .max()
            .unwrap_or(*t0);
        last = last.max(done);
        hist.record(done.duration_since(*t0).as_micros().max(1) as u64)?;
    }
    let elapsed = last.duration_since(start).as_secs_f64();
    c.shutdown().await;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let rate = total as f64 / elapsed;
    eprintln!(
        "raft bench{}: {} nodes, {} senders, {} messages of {} B: {:.0} messages/s, send-to-applied-everywhere p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if args.sign { " (signed)" } else { "" },
        args.nodes,
        args.senders,
        total,
        args.size,
        rate,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    if args.json {
        let out = serde_json::json!({
            "bench": "raft",
            "storage": "rocksdb-durable",
            "transport": "inproc",
            "nodes": args.nodes,
            "signed": args.sign,
            "senders": args.senders,
            "messages": total,
            "message_bytes": args.size,
            "elapsed_s": elapsed,
            "messages_per_sec": rate,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": hist.max() as f64 / 1000.0,
        });
        println!("{out}");
    }
    Ok(())
}
