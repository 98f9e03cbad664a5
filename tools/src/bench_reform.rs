//! `skygit-tools bench reform`: how long three people stay unable to talk
//! when two of their room's three voters close their laptops. Each run
//! starts five node processes over WebRTC on a fresh repository, waits for
//! three voters and two learners, kills (SIGKILL) the leader and another
//! voter, and posts through the survivors until one post commits:
//! `loss_to_commit_ms` is from the kill to that answer. Over the runs it
//! prints p50 and max (and every run).
//!
//! It prints numbers; it asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use skygit_harness::{leader_and_another_voter, post_to, wait_members, NodeProc, NodeSpec};

#[derive(Args)]
pub struct ReformBenchArgs {
    /// Runs, each a fresh room of five nodes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// The nodes' `--reform-after-secs`.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    reform_after_secs: u64,
    /// Where the nodes keep their data (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

const SETTLE: Duration = Duration::from_secs(120);

/// One run: milliseconds from the loss of the majority to the first post
/// a survivor had committed.
async fn run(dir: &std::path::Path, bin: &std::path::Path, after: u64) -> anyhow::Result<f64> {
    let repo = dir.join("room.git");
    let mut nodes = Vec::new();
    for user in ["ana", "bo", "cy", "dee", "eli"] {
        let mut spec = NodeSpec::new(bin, &repo, user, &dir.join(user));
        spec.args = [
            "--fast-poll-ms",
            "200",
            "--commit-interval",
            "1",
            "--reform-after-secs",
            &after.to_string(),
        ]
        .map(String::from)
        .to_vec();
        nodes.push(NodeProc::start(spec).await?);
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await?;
    let (leader, other) = leader_and_another_voter(&refs, SETTLE).await?;
    let (mut doomed, survivors): (Vec<NodeProc>, Vec<NodeProc>) = nodes
        .into_iter()
        .partition(|n| n.node_id == leader || n.node_id == other);
    for n in &mut doomed {
        n.kill().await?;
    }
    let lost = Instant::now();
    let mut i = 0u64;
    let committed = loop {
        anyhow::ensure!(
            lost.elapsed() < SETTLE,
            "no survivor committed in {SETTLE:?}"
        );
        let n = &survivors[(i % survivors.len() as u64) as usize];
        i += 1;
        let p = post_to(n.http(), &n.api, &format!("after the loss #{i}")).await?;
        if p.index.is_some() {
            break lost.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for mut n in survivors {
        n.kill().await?;
    }
    Ok(committed.as_secs_f64() * 1e3)
}

pub async fn reform(args: ReformBenchArgs) -> anyhow::Result<()> {
    let work = crate::work_dir(args.data_dir.clone())?;
    let bin = crate::skygit_binary()?;
    let mut times = Vec::new();
    for r in 0..args.runs {
        let dir = work.path.join(format!("run-{r}"));
        let ms = run(&dir, &bin, args.reform_after_secs).await?;
        eprintln!(
            "run {}: first commit {:.1} s after the loss",
            r + 1,
            ms / 1e3
        );
        times.push(ms);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[(sorted.len() - 1) / 2];
    let max = sorted[sorted.len() - 1];
    println!(
        "bench reform: {} runs, --reform-after-secs {}: loss to first commit p50 {:.1} s, max {:.1} s",
        args.runs,
        args.reform_after_secs,
        p50 / 1e3,
        max / 1e3
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "runs": args.runs,
                "reform_after_secs": args.reform_after_secs,
                "loss_to_commit_ms": times,
                "p50_ms": p50,
                "max_ms": max,
            })
        );
    }
    Ok(())
}
