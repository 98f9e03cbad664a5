//! `skygit-tools bench commit`: one flush of many messages through each
//! repository backend, timed from the committer's side: a one-node room on
//! real RocksDB holds the messages in its journal, and the leader's
//! committer reads the branch, renders the batch files, commits and records
//! the sync. Backends:
//!
//! - `git`: `git daemon` on loopback (needs the `git` command);
//! - `github`: the GitHub-compatible test server on loopback, backed by a
//!   bare repository.
//!
//! Prints a human summary on stderr and, with `--json`, one JSON object on
//! stdout: `{"git": {"seconds", "remote_calls", ...}, "github": {...}}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use skygit_actors::committer::{CommitterOptions, Flush, FlushReason};
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions, RepoFactory};
use skygit_actors::ports::RepoRemote;
use skygit_consensus::model::{Command, ConversationId, RoomId, UserId};
use skygit_github_server::git_daemon::GitDaemon;
use skygit_github_server::GithubServer;
use skygit_remotes::git::GitRemote;
use skygit_remotes::github::{GithubConfig, GithubRemote};

#[derive(Args)]
pub struct CommitBenchArgs {
    /// Messages in the flush.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    size: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Concurrent senders filling the journal (setup, not measured).
const SENDERS: u64 = 64;
const TOKEN: &str = "bench-token";

struct Measured {
    seconds: f64,
    remote_calls: u64,
    commits: usize,
    changes: usize,
    bytes_written: u64,
}

async fn fill(c: &LocalCluster, messages: u64, size: u64) -> anyhow::Result<()> {
    let h = c.handle(1).context("node 1")?;
    let text: String = "x".repeat(size as usize);
    let per = messages.div_ceil(SENDERS);
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let consensus = h.consensus.clone();
        let text = text.clone();
        let n = per.min(messages.saturating_sub(s * per));
        tasks.push(actix_rt::spawn(async move {
            let sender = UserId::new(format!("sender{s}"))?;
            let conversation = ConversationId::new(format!("room-{}", s % 4))?;
            for _ in 0..n {
                let submit = Submit {
                    sender: sender.clone(),
                    command: Command::Post {
                        conversation: conversation.clone(),
                        content: text.clone(),
                        attachments: Vec::new(),
                    },
                    id: None,
                };
                match consensus.send(submit).await?? {
                    (_, Proposed::Committed(o)) if o.is_settled() => {}
                    other => bail!("a benchmark post was not applied: {other:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Fills a one-node room with `messages`, then times one flush.
async fn one_backend(
    name: &str,
    remote: Arc<dyn RepoRemote>,
    messages: u64,
    size: u64,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let room = RoomId::new(format!("bench:{name}"))?;
    let mut opts = LocalOptions::new(&room);
    let factory: RepoFactory = Arc::new(move |_| remote.clone());
    opts.repo = Some(factory);
    opts.committer = CommitterOptions {
        interval: Some(Duration::from_secs(7 * 24 * 3600)),
        call_timeout: Duration::from_secs(600),
    };
    let c = LocalCluster::start(dir.path(), room, 1, opts).await?;
    c.wait_leader(Duration::from_secs(30))
        .await
        .context("no leader")?;
    let committer = c.handle(1).context("node 1")?.committer.clone();
    // The first flush initialises the repository; the measured one starts
    // with the head known, as a leader's periodic flush does.
    committer.send(Flush(FlushReason::OnDemand)).await??;
    eprintln!("{name}: posting {messages} messages ...");
    fill(&c, messages, size).await?;
    let started = Instant::now();
    let r = committer.send(Flush(FlushReason::OnDemand)).await??;
    let seconds = started.elapsed().as_secs_f64();
    c.shutdown().await;
    if r.changes as u64 != messages {
        bail!(
            "{name}: the flush wrote {} of {messages} messages",
            r.changes
        );
    }
    Ok(Measured {
        seconds,
        remote_calls: r.remote_calls,
        commits: r.commits,
        changes: r.changes,
        bytes_written: messages * size,
    })
}

fn json_of(m: &Measured) -> serde_json::Value {
    serde_json::json!({
        "seconds": m.seconds,
        "remote_calls": m.remote_calls,
        "commits": m.commits,
        "messages": m.changes,
        "messages_per_second": m.changes as f64 / m.seconds.max(1e-9),
        "content_bytes": m.bytes_written,
    })
}

pub async fn commit(a: CommitBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    let daemon =
        GitDaemon::start(&dir.path().join("git-srv")).context("cannot start git daemon")?;
    let url = daemon
        .create("room.git")
        .context("cannot create the repository")?;
    let git: Arc<dyn RepoRemote> = Arc::new(GitRemote::open(
        &url,
        "main",
        &dir.path().join("git-cache"),
    )?);
    let git = one_backend("git", git, a.messages, a.size).await?;

    let server = GithubServer::start(&dir.path().join("gh.git"), "bench", "room", TOKEN)
        .context("cannot start the GitHub test server")?;
    let github: Arc<dyn RepoRemote> = Arc::new(GithubRemote::new(GithubConfig {
        api: server.url(),
        owner: "bench".into(),
        name: "room".into(),
        branch: "main".into(),
        token: Some(TOKEN.into()),
    })?);
    let github = one_backend("github", github, a.messages, a.size).await?;

    for (name, m) in [("git", &git), ("github", &github)] {
        eprintln!(
            "{name:>6}: {} messages in {} commit(s), {:.3} s, {} remote calls",
            m.changes, m.commits, m.seconds, m.remote_calls
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "git": json_of(&git), "github": json_of(&github) })
        );
    }
    Ok(())
}
