//! `skygit node --local-nodes N`: several raft members of a room in this
//! process over the in-process transport; member 1 is driven from the
//! terminal and serves the HTTP API. Also the terminal side every node
//! shares: recent history, then messages as they commit; typed lines post.

use anyhow::Context;
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_actors::room::RoomHandle;
use skygit_consensus::model::{ApplyOutcome, Command, ConversationId, MAX_CONTENT_BYTES};
use skygit_storage::AppliedEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::config::NodeConfig;

/// Most bytes of message lines gathered into one write to the terminal.
const PRINT_BATCH_BYTES: usize = 256 * 1024;

/// Appends the terminal line of `e`, if it shows a message.
fn push_event(out: &mut String, e: &AppliedEvent) {
    use std::fmt::Write;
    if let (ApplyOutcome::Applied { index }, Some(m)) = (&e.outcome, &e.message) {
        let text = if m.message.deleted {
            "(deleted)"
        } else {
            m.message.content.as_str()
        };
        let edited = if m.message.edited_at.is_some() {
            " (edited)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "[{index:>6}] #{} {}: {text}{edited}",
            m.message.conversation, m.message.sender
        );
    }
}

/// Prints every message as it is applied. The messages that arrived
/// together go out in one write, on a blocking thread, so a busy room costs
/// one system call per burst and a slow or stuck terminal holds up no
/// runtime worker. A terminal that went away ends the printing, not the node.
async fn print_applied(mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<AppliedEvent>>) {
    loop {
        let mut out = String::new();
        let mut lagged = 0u64;
        match events.recv().await {
            Ok(e) => push_event(&mut out, &e),
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(RecvError::Closed) => return,
        }
        while out.len() < PRINT_BATCH_BYTES {
            match events.try_recv() {
                Ok(e) => push_event(&mut out, &e),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => lagged += n,
                Err(_) => break,
            }
        }
        if lagged > 0 {
            eprintln!("({lagged} messages not shown; the terminal fell behind)");
        }
        if out.is_empty() {
            continue;
        }
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::info!(error = %e, "standard output is gone; messages are no longer printed");
            return;
        }
    }
}

pub async fn run(
    mut cfg: NodeConfig,
    local_nodes: u64,
    api: std::net::SocketAddr,
) -> anyhow::Result<()> {
    crate::auth::github_user(&mut cfg).await?;
    let mut opts = LocalOptions::new(&cfg.room);
    opts.raft = cfg.raft.clone();
    opts.users.insert(1, cfg.user.clone());
    opts.repo = Some(crate::repo::factory(
        &cfg.room,
        &cfg.remote,
        &cfg.data_dir,
        local_nodes,
    )?);
    opts.committer.interval = cfg.commit_interval;
    let dir = cfg.data_dir.join("local");
    let cluster = LocalCluster::start(&dir, cfg.room.clone(), local_nodes, opts)
        .await
        .with_context(|| format!("cannot start room {} in {}", cfg.room, dir.display()))?;
    let me = cluster.handle(1).context("node 1 did not start")?;
    // The HTTP API, web UI and CLI reach member 1.
    let secret = crate::api::secret::load_or_create(&cfg.data_dir)?;
    let state = crate::api::ApiState::new(
        secret.clone(),
        crate::api::Served::new(me.clone(), None, None),
    );
    let bound = crate::api::serve(api, state).await?;
    crate::api::secret::write_endpoint(&cfg.data_dir, &format!("http://{bound}"))?;
    println!("api: http://{bound}");
    println!("secret: {secret}");
    println!("ui: http://{bound}/#secret={secret}");
    eprintln!(
        "skygit node {} in room {} as {} ({} raft member(s) in this process); type a line to post, Ctrl-C to stop",
        me.node_id,
        cfg.room,
        cfg.user,
        local_nodes
    );
    let io = terminal(me)?;
    let signal = crate::shutdown_signal().await?;
    eprintln!("{signal}: shutting down");
    io.abort();
    cluster.shutdown().await;
    let _ = std::fs::remove_file(cfg.data_dir.join(crate::api::secret::ENDPOINT_FILE));
    Ok(())
}

/// The terminal side of a node: recent history, then every message as it
/// commits; lines typed on standard input are posted.
pub struct Terminal {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Terminal {
    pub fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

pub fn terminal(me: &RoomHandle) -> anyhow::Result<Terminal> {
    for m in me
        .storage
        .reader
        .messages(&ConversationId::general(), None, None, 20)?
    {
        let text = if m.message.deleted {
            "(deleted)"
        } else {
            m.message.content.as_str()
        };
        println!(
            "[{:>6}] #{} {}: {text}",
            m.index, m.message.conversation, m.message.sender
        );
    }
    let printer = tokio::spawn(print_applied(me.storage.state_machine.subscribe()));
    let consensus = me.consensus.clone();
    let user = me.user.clone();
    // Standard input is read on a plain thread: tokio's stdin would hold
    // the runtime open at shutdown while the terminal stays open.
    let (tx, mut typed) = tokio::sync::mpsc::channel::<String>(64);
    std::thread::Builder::new()
        .name("skygit-stdin".into())
        .spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the input thread")?;
    let input = async move {
        while let Some(line) = typed.recv().await {
            let line = line.trim().to_owned();
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_CONTENT_BYTES {
                eprintln!(
                    "not posted: the line is {} bytes; the limit is {MAX_CONTENT_BYTES}",
                    line.len()
                );
                continue;
            }
            let submit = Submit {
                sender: user.clone(),
                command: Command::Post {
                    conversation: ConversationId::general(),
                    content: line,
                    attachments: Vec::new(),
                },
                id: None,
            };
            match consensus.send(submit).await {
                Ok(Ok((_, Proposed::Queued { outbox_len, reason }))) => {
                    eprintln!(
                        "(no leader reachable: kept in the outbox, {outbox_len} waiting: {reason})"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("not posted: {e}"),
                Err(e) => eprintln!("not posted: {e}"),
            }
        }
    };
    let input = tokio::spawn(input);
    Ok(Terminal {
        tasks: vec![printer, input],
    })
}
