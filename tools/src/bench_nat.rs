//! `bench nat`: how long two node processes behind NAT routers (network
//! namespaces, `skygit_harness::nat`) take from start to an open link
//! through server-reflexive candidates or a TURN relay. Needs root,
//! `iptables` and `turnserver` (`scripts/setup.sh`). The loopback (`host`)
//! figure is `bench mesh`'s `channel_open_ms`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use skygit_api::LinkPath;
use skygit_harness::nat::{can_run, start_nodes, Homes, Mapping, Turn, TURN_PASSWORD, TURN_USER};
use skygit_harness::{wait_for, NodeProc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Through {
    /// Two MASQUERADE routers and a STUN server.
    Srflx,
    /// Two port-randomizing routers and a TURN server.
    Relay,
}

#[derive(Args)]
pub struct NatBenchArgs {
    /// The path the link must take.
    #[arg(long, value_enum, default_value = "srflx")]
    through: Through,
    /// Rooms set up one after another (fresh networks and nodes each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Milliseconds from starting both nodes until each reports its link to
/// the other open on `path`.
async fn one(bin: &Path, run: u64, through: Through) -> anyhow::Result<f64> {
    let mapping = match through {
        Through::Srflx => Mapping::Cone,
        Through::Relay => Mapping::Symmetric,
    };
    let homes = Homes::build((run % 4) as u32, mapping).map_err(|e| anyhow::anyhow!(e))?;
    let dir = tempfile::tempdir()?;
    let _turn = Turn::start(&homes, false, dir.path()).map_err(|e| anyhow::anyhow!(e))?;
    let repo = dir.path().join("room.git");
    let init = std::process::Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&repo)
        .status()
        .context("git init")?;
    if !init.success() {
        bail!("git init failed");
    }
    let ip = homes.internet();
    let (ice, want) = match through {
        Through::Srflx => (
            vec![format!("--ice-server=stun:{ip}:3478")],
            LinkPath::Srflx,
        ),
        Through::Relay => (
            vec![
                format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
                format!("--turn-username={TURN_USER}"),
                format!("--turn-credential={TURN_PASSWORD}"),
            ],
            LinkPath::Relay,
        ),
    };
    let started = Instant::now();
    let mut nodes = start_nodes(bin, &homes, &repo, dir.path(), &ice, false).await?;
    let open = {
        let (a, b): (&NodeProc, &NodeProc) = (&nodes[0], &nodes[1]);
        wait_for(Duration::from_secs(120), "the link to open", || async {
            for (n, other) in [(a, b), (b, a)] {
                let s = n.status().await.ok()?;
                let p = s.peers.iter().find(|p| p.node_id == other.node_id)?;
                if p.path != Some(want) {
                    return None;
                }
            }
            Some(started.elapsed())
        })
        .await?
    };
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.ok();
    }
    Ok(open.as_secs_f64() * 1e3)
}

pub async fn nat(a: NatBenchArgs) -> anyhow::Result<()> {
    can_run().map_err(|e| anyhow::anyhow!("bench nat cannot run here: {e}"))?;
    let bin = crate::skygit_binary()?;
    let mut ms = Vec::new();
    for run in 0..a.runs {
        let t = one(&bin, run, a.through).await?;
        eprintln!(
            "run {}: link open through {:?} after {t:.0} ms",
            run + 1,
            a.through
        );
        ms.push(t);
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let through = format!("{:?}", a.through).to_lowercase();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "through": through,
                "runs": a.runs,
                "channel_open_ms": median,
                "channel_open_ms_min": ms[0],
                "channel_open_ms_max": ms[ms.len() - 1],
            })
        );
    } else {
        println!(
            "through {through}: channel open after {median:.0} ms (median of {}; min {:.0}, max {:.0}), from node start",
            a.runs,
            ms[0],
            ms[ms.len() - 1]
        );
    }
    Ok(())
}
