//! `skygit-tools demo`: by default a room of node processes over WebRTC (see
//! `demo_procs`); with `--in-process`, a room of several nodes in this process, on real RocksDB
//! storage and the in-process transport, committing to an embedded local
//! repository (a bare git repository in the data directory). It posts from
//! every node, crashes the leader, keeps posting, restarts the crashed
//! node, checks that every node holds the same log, then stops the room
//! (the leader flushes) and reads the history back from the repository
//! alone. Exit status 0 only if the nodes and the repository agree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_actors::readback::{self, ReadbackLimits};
use skygit_consensus::model::{Command, ConversationId, RoomId, UserId};
use skygit_consensus::NodeId;
use skygit_remotes::git::GitRemote;
use skygit_remotes::RemoteOptions;
use ulid::Ulid;

#[derive(Args)]
pub struct DemoArgs {
    /// Nodes in the room (1 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    nodes: u64,
    /// Messages each node posts before and after the crash.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    messages: u64,
    /// Keep the room's data here (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the nodes inside this process over the in-process transport
    /// instead of as separate processes over WebRTC.
    #[arg(long)]
    in_process: bool,
    /// After the checks, keep the node processes running until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

const WAIT: Duration = Duration::from_secs(30);
const USERS: [&str; 5] = ["ana", "bo", "cy", "dee", "eli"];

async fn post_round(
    c: &LocalCluster,
    round: &str,
    per_node: u64,
    sent: &mut BTreeSet<Ulid>,
) -> anyhow::Result<()> {
    for i in 0..per_node {
        for id in c.ids() {
            let h = c.handle(id).context("node vanished")?;
            let submit = Submit {
                sender: h.user.clone(),
                command: Command::Post {
                    conversation: ConversationId::general(),
                    content: format!("{round} #{i} from node {id}"),
                    attachments: Vec::new(),
                },
                id: None,
            };
            let (req, p) = h.consensus.send(submit).await??;
            match p {
                Proposed::Committed(o) => {
                    println!("  node {id} ({}) posted {} -> {o:?}", h.user, req.id)
                }
                Proposed::Queued { outbox_len, .. } => {
                    println!(
                        "  node {id} ({}) queued {} in its outbox ({outbox_len} waiting)",
                        h.user, req.id
                    )
                }
            }
            sent.insert(req.id);
        }
    }
    Ok(())
}

fn log_of(c: &LocalCluster, id: NodeId) -> anyhow::Result<Vec<Ulid>> {
    Ok(c.handle(id)
        .context("node vanished")?
        .storage
        .reader
        .all_message_ids()?)
}

/// Reads the room's history back from the repository at `repo` alone,
/// through a fresh cache below `dir`.
pub async fn read_back(dir: &Path, repo: &Path) -> anyhow::Result<readback::History> {
    let fresh = GitRemote::open(
        &repo.to_string_lossy(),
        "main",
        &dir.join("git-cache-reader"),
    )?;
    readback::load(&fresh, ReadbackLimits::default())
        .await
        .context("cannot read the history back from the repository")
}

/// Keeps the demo's repository (a temporary directory loses the nodes'
/// data but keeps the repository) and tells the user how to look at it.
pub fn show_repository(work: crate::WorkDir, repo: &Path) -> anyhow::Result<()> {
    let repo = work.keep_only(repo)?;
    println!(
        "the room's repository stays at {0}; read it with: git --git-dir {0} log --stat, or git clone {0}",
        repo.display()
    );
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.in_process {
        return crate::demo_procs::run(args.nodes, args.messages, args.data_dir, args.keep).await;
    }
    let work = crate::work_dir(args.data_dir)?;
    let dir = work.path.clone();
    let repo = dir.join("room.git");
    let room = RoomId::new(repo.to_string_lossy().into_owned())?;
    let mut opts = LocalOptions::new(&room);
    opts.repo = Some(skygit::repo::factory(
        &room,
        &RemoteOptions::default(),
        &dir,
        args.nodes,
    )?);
    for id in 1..=args.nodes {
        opts.users
            .insert(id, UserId::new(USERS[(id as usize - 1) % USERS.len()])?);
    }
    println!(
        "starting a room of {} nodes in {}",
        args.nodes,
        dir.display()
    );
    let mut c = LocalCluster::start(&dir, room, args.nodes, opts).await?;
    let leader = c.wait_leader(WAIT).await.context("no leader elected")?;
    println!("leader: node {leader}");

    let mut sent = BTreeSet::new();
    post_round(&c, "hello", args.messages, &mut sent).await?;

    if args.nodes >= 3 {
        println!("crashing the leader, node {leader}");
        c.stop_node(leader).await;
        let next = c
            .wait_leader(WAIT)
            .await
            .context("no new leader after the crash")?;
        println!("new leader: node {next}");
        post_round(&c, "after the crash", args.messages, &mut sent).await?;
        println!("restarting node {leader} from its RocksDB directory");
        c.start_node(leader).await?;
    }
    let index = c
        .wait_converged(WAIT)
        .await
        .context("nodes did not converge")?;
    // Posts queued while no leader was reachable commit from the outboxes.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let on_first: BTreeSet<Ulid> = log_of(&c, 1)?.into_iter().collect();
        if sent.is_subset(&on_first) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} posted messages never committed",
                sent.difference(&on_first).count()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.wait_converged(WAIT).await;
    }
    c.wait_converged(WAIT)
        .await
        .context("nodes did not converge")?;
    println!("\nthe room's log as node 1 holds it (up to raft index {index}):");
    let h1 = c.handle(1).context("node 1")?;
    for m in h1.storage.reader.all_messages()? {
        println!(
            "  [{:>4}] {}: {}",
            m.index, m.message.sender, m.message.content
        );
    }
    let reference = log_of(&c, 1)?;
    let mut agree = true;
    for id in c.ids() {
        let log = log_of(&c, id)?;
        let same = log == reference;
        agree &= same;
        println!(
            "node {id}: {} messages, {}",
            log.len(),
            if same {
                "same order as node 1"
            } else {
                "DIFFERS from node 1"
            }
        );
    }
    println!(
        "\nstopping the room; the leader commits the log to {}",
        repo.display()
    );
    c.shutdown().await;
    if !agree {
        bail!("nodes disagree on the log");
    }
    println!(
        "all {} nodes hold the same {} messages in the same order",
        args.nodes,
        reference.len()
    );
    let history = read_back(&dir, &repo).await?;
    let in_repo: Vec<Ulid> = history
        .messages
        .iter()
        .map(|m| m.record.message.id)
        .collect();
    println!(
        "the repository holds {} messages up to raft index {} (head {})",
        in_repo.len(),
        history.watermark,
        history.head.as_deref().unwrap_or("-"),
    );
    if in_repo != reference {
        bail!("the repository's history differs from the room's log");
    }
    println!("the repository's history matches the room's log");
    crate::demo::show_repository(work, &repo)
}
