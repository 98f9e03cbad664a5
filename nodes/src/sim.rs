//! `skygit sim`: the deterministic simulator from the command line. One
//! seed replays one run exactly; `--sweep K` runs K seeds and lists the
//! failing ones with the command that replays each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use skygit_simulator::world::{self, Canary, FaultClass, Report, SimOptions};

#[derive(Args, Clone)]
pub struct SimArgs {
    /// The run's seed (with --sweep: the first seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many seeds, from --seed on.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    sweep: Option<u64>,
    /// With --sweep: stop at the first failing seed.
    #[arg(long)]
    stop_on_failure: bool,
    /// Nodes in the room.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// The room's voter count.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    voters: u64,
    /// Simulated time with workload and faults: `90s`, `5m`, `24h`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// A calm run: no network, repository, crash or clock faults.
    #[arg(long)]
    no_faults: bool,
    /// Plant a known bug: committer-ignores-cas, duplicate-apply,
    /// ack-before-durable.
    #[arg(long)]
    canary: Option<Canary>,
    /// Inject only these kinds of fault (comma-separated): crash,
    /// power-loss, leave, partition, link-failure, repo-outage, power-cut.
    #[arg(long, value_delimiter = ',')]
    fault_classes: Vec<FaultClass>,
    /// Write the event trace of the run here (single runs only).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// The committer's interval, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    commit_interval_secs: u64,
    /// Raft heartbeat, milliseconds (elections after 5 to 10 of them).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_ms: u64,
    /// Mean seconds between two user requests in the room.
    #[arg(long, default_value_t = 3.0)]
    request_every_secs: f64,
    /// Mean seconds between two injected faults.
    #[arg(long, default_value_t = 20.0)]
    fault_every_secs: f64,
    /// Runs at once during a sweep (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// `90`, `90s`, `5m`, `24h`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    if secs == 0 || secs > 30 * 86_400 {
        return Err(format!("{s:?}: between 1s and 30d"));
    }
    Ok(Duration::from_secs(secs))
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && (0.01..=86_400.0).contains(&v),
        "{what} must be between 0.01 and 86400 seconds"
    );
    Ok(Duration::from_secs_f64(v))
}

impl SimArgs {
    fn options(&self, seed: u64) -> anyhow::Result<SimOptions> {
        Ok(SimOptions {
            seed,
            nodes: self.nodes,
            voters: self.voters as usize,
            duration: self.duration,
            faults: !self.no_faults,
            canary: self.canary,
            trace_file: None,
            commit_interval: Duration::from_secs(self.commit_interval_secs),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            request_every: secs(self.request_every_secs, "--request-every-secs")?,
            fault_every: secs(self.fault_every_secs, "--fault-every-secs")?,
            fault_classes: if self.fault_classes.is_empty() {
                FaultClass::ALL.into_iter().collect()
            } else {
                self.fault_classes.iter().copied().collect()
            },
            ..SimOptions::default()
        })
    }

    /// The command that replays `seed` with these settings.
    fn replay(&self, seed: u64) -> String {
        let mut c = format!(
            "skygit sim --seed {seed} --nodes {} --voters {} --duration {}s",
            self.nodes,
            self.voters,
            self.duration.as_secs()
        );
        if self.no_faults {
            c.push_str(" --no-faults");
        }
        if let Some(k) = self.canary {
            c.push_str(&format!(" --canary {}", k.name()));
        }
        if self.commit_interval_secs != 10 {
            c.push_str(&format!(
                " --commit-interval-secs {}",
                self.commit_interval_secs
            ));
        }
        if self.heartbeat_ms != 100 {
            c.push_str(&format!(" --heartbeat-ms {}", self.heartbeat_ms));
        }
        if self.request_every_secs != 3.0 {
            c.push_str(&format!(
                " --request-every-secs {}",
                self.request_every_secs
            ));
        }
        if !self.fault_classes.is_empty() {
            let names: Vec<&str> = self.fault_classes.iter().map(|c| c.name()).collect();
            c.push_str(&format!(" --fault-classes {}", names.join(",")));
        }
        if self.fault_every_secs != 20.0 {
            c.push_str(&format!(" --fault-every-secs {}", self.fault_every_secs));
        }
        c
    }
}

fn print_violations(r: &Report) {
    for v in &r.violations {
        println!(
            "  VIOLATION {} at {:.3}s: {}",
            v.invariant, v.at_secs, v.detail
        );
        for line in &v.excerpt {
            println!("    | {line}");
        }
    }
}

/// Runs `skygit sim`. Builds its own runtimes (one per run).
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.sweep {
        None => single(args),
        Some(k) => sweep(args, k),
    }
}

fn single(args: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.stop_on_failure, "--stop-on-failure needs --sweep");
    let mut opts = args.options(args.seed)?;
    opts.trace_file = args.trace.clone();
    let r = world::run(opts).context("the simulation could not run")?;
    println!(
        "seed {}: {} · {} nodes · {:.0} simulated s in {:.2} s wall ({:.0}x) · {} events ({:.0}/s) · digest {}",
        r.seed,
        if r.ok { "ok" } else { "FAILED" },
        r.nodes,
        r.sim_seconds,
        r.wall_seconds,
        r.speedup,
        r.events,
        r.events_per_sec,
        r.digest
    );
    println!(
        "  workload: {} posts, {} edits, {} deletes, {} settings changes, {} retries; {} acknowledged ({} queued), {} refused, {} unanswered",
        r.workload.posts,
        r.workload.edits,
        r.workload.deletes,
        r.workload.settings,
        r.workload.retries,
        r.workload.acked,
        r.workload.queued,
        r.workload.refused,
        r.workload.unanswered
    );
    println!(
        "  faults: {} crashes, {} power losses ({} unsynced WAL bytes lost), {} graceful leaves, {} partitions (+{} one-way), {} link failures, {} repository outages, {} majority losses, clock skew up to {} ms",
        r.faults.crashes,
        r.faults.power_losses,
        r.faults.lost_wal_bytes,
        r.faults.graceful_leaves,
        r.faults.partitions,
        r.faults.asymmetric_partitions,
        r.faults.link_failures,
        r.faults.repo_outages,
        r.faults.majority_losses,
        r.faults.max_clock_skew_ms
    );
    println!(
        "  room: {} leader changes, {} commits on the branch, group epoch {} at the end",
        r.leader_changes, r.repo_commits, r.group_epoch
    );
    print_violations(&r);
    if !r.ok {
        println!("  replay: {}", args.replay(r.seed));
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if !r.ok {
        anyhow::bail!("{} invariant violation(s)", r.violations.len());
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Failure {
    seed: u64,
    replay: String,
    digest: String,
    violations: Vec<String>,
}

#[derive(serde::Serialize)]
struct SweepReport {
    runs: u64,
    ok: u64,
    failures: Vec<Failure>,
    first_seed: u64,
    sim_seconds: f64,
    wall_seconds: f64,
    speedup: f64,
    canary: Option<Canary>,
    /// Majority losses injected over the sweep.
    majority_losses: u64,
    /// The newest group epoch any run ended in.
    max_group_epoch: u64,
    /// Seconds from a majority loss to a leader of a newer group, for
    /// each one the survivors re-formed after.
    reform_seconds: Vec<f64>,
}

fn sweep(args: SimArgs, k: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.trace.is_none(),
        "--trace writes one run: replay a seed with it"
    );
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let wall = Instant::now();
    let seeds: Vec<u64> = (0..k).map(|i| args.seed.wrapping_add(i)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::sync::Mutex::new(Vec::<(u64, Result<Report, String>)>::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(seeds.len()) {
            s.spawn(|| loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { return };
                let res = args
                    .options(seed)
                    .map_err(|e| e.to_string())
                    .and_then(|o| world::run(o).map_err(|e| e.to_string()));
                let failed = !matches!(&res, Ok(r) if r.ok);
                match &res {
                    Ok(r) => println!(
                        "seed {seed}: {} · {:.0}x · digest {}",
                        if r.ok { "ok" } else { "FAILED" },
                        r.speedup,
                        &r.digest[..16]
                    ),
                    Err(e) => println!("seed {seed}: could not run: {e}"),
                }
                if let Ok(r) = &res {
                    if !r.ok {
                        print_violations(r);
                    }
                }
                if failed && args.stop_on_failure {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((seed, res));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(s, _)| *s);
    let mut report = SweepReport {
        runs: results.len() as u64,
        ok: 0,
        failures: Vec::new(),
        first_seed: args.seed,
        sim_seconds: 0.0,
        wall_seconds: wall.elapsed().as_secs_f64(),
        speedup: 0.0,
        canary: args.canary,
        majority_losses: 0,
        max_group_epoch: 0,
        reform_seconds: Vec::new(),
    };
    for (seed, res) in results {
        if let Ok(r) = &res {
            report.majority_losses += r.faults.majority_losses;
            report.max_group_epoch = report.max_group_epoch.max(r.group_epoch);
            report
                .reform_seconds
                .extend(r.faults.reform_seconds.iter().copied());
        }
        match res {
            Ok(r) if r.ok => {
                report.ok += 1;
                report.sim_seconds += r.sim_seconds;
            }
            Ok(r) => {
                report.sim_seconds += r.sim_seconds;
                report.failures.push(Failure {
                    seed,
                    replay: args.replay(seed),
                    digest: r.digest,
                    violations: r
                        .violations
                        .iter()
                        .map(|v| format!("{}: {}", v.invariant, v.detail))
                        .collect(),
                });
            }
            Err(e) => report.failures.push(Failure {
                seed,
                replay: args.replay(seed),
                digest: String::new(),
                violations: vec![format!("could not run: {e}")],
            }),
        }
    }
    report.speedup = report.sim_seconds / report.wall_seconds.max(1e-9);
    println!(
        "sweep: {} runs, {} ok, {} failed, {:.0} simulated s in {:.1} s wall",
        report.runs,
        report.ok,
        report.failures.len(),
        report.sim_seconds,
        report.wall_seconds
    );
    if report.majority_losses > 0 {
        let mut t = report.reform_seconds.clone();
        t.sort_by(f64::total_cmp);
        let at = |q: f64| {
            t.get(((t.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        println!(
            "  re-forming: {} majority losses, {} re-formed; seconds to a new group's leader: p50 {}, p90 {}, max {}",
            report.majority_losses,
            t.len(),
            at(0.5).map_or("-".into(), |v| format!("{v:.1}")),
            at(0.9).map_or("-".into(), |v| format!("{v:.1}")),
            t.last().map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    for f in &report.failures {
        println!("  FAILED seed {}: replay with: {}", f.seed, f.replay);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if !report.failures.is_empty() {
        anyhow::bail!("{} of {} seeds failed", report.failures.len(), report.runs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("999d").is_err());
    }
}
