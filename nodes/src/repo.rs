//! Commands that work on the room's repository: `skygit init`, `skygit
//! push` and `skygit history`, and opening a room's remote.

use skygit_api::SyncState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use skygit_actors::committer::{CommitterOptions, Flush, FlushReason};
use skygit_actors::layout::{self, RoomConfig};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_actors::ports::{CommitRequest, RepoRemote};
use skygit_actors::readback::{self, ReadbackLimits};
use skygit_consensus::model::RoomId;
use skygit_remotes::RemoteOptions;

use crate::config::{default_data_dir, resolve_remote, NodeConfig, RemoteOverrides};

/// Flags that say how to reach a repository.
#[derive(Args, Clone, Default)]
pub struct RemoteArgs {
    /// The log branch.
    #[arg(long, env = "SKYGIT_BRANCH")]
    pub branch: Option<String>,
    /// GitHub API base URL (GitHub Enterprise, tests).
    #[arg(long, env = "SKYGIT_GITHUB_API")]
    pub github_api: Option<String>,
}

impl RemoteArgs {
    /// The overrides these flags give; the token only ever comes from the
    /// environment or the config file, never from a flag (flags show in
    /// process listings).
    pub fn overrides(&self) -> RemoteOverrides {
        RemoteOverrides {
            branch: self.branch.clone(),
            github_api: self.github_api.clone(),
            token: std::env::var("GITHUB_TOKEN").ok(),
            commit_interval_secs: None,
        }
    }
}

/// Where a room's git remote keeps its cache repository.
fn cache_dir(data_dir: &Path, room: &RoomId, node: u64) -> PathBuf {
    data_dir
        .join("git-cache")
        .join(room.storage_key())
        .join(format!("node-{node}"))
}

/// Opens room `room`'s repository for node `node`.
pub fn open_remote(
    room: &RoomId,
    opts: &RemoteOptions,
    data_dir: &Path,
    node: u64,
) -> anyhow::Result<Arc<dyn RepoRemote>> {
    let cache = cache_dir(data_dir, room, node);
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    skygit_remotes::open(room.as_str(), opts, &cache)
        .with_context(|| format!("cannot open repository {room}"))
}

/// A repository factory for a local cluster of `room` with `nodes`
/// members, each with its own cache below `data_dir`: every remote is
/// opened now, so a bad spec is an error here rather than a node without a
/// committer later.
pub fn factory(
    room: &RoomId,
    opts: &RemoteOptions,
    data_dir: &Path,
    nodes: u64,
) -> anyhow::Result<skygit_actors::local::RepoFactory> {
    let mut remotes = std::collections::BTreeMap::new();
    for id in 1..=nodes {
        remotes.insert(id, open_remote(room, opts, data_dir, id)?);
    }
    let first = remotes.get(&1).cloned().context("no raft member")?;
    Ok(Arc::new(move |id| {
        remotes.get(&id).cloned().unwrap_or_else(|| first.clone())
    }))
}

#[derive(Args)]
pub struct InitArgs {
    /// The room's repository (`github:owner/name`, a git URL or a path;
    /// a path that does not exist becomes a new bare repository).
    #[arg(long, env = "SKYGIT_REPO")]
    repo: String,
    /// How often the leader commits, in seconds.
    #[arg(long, default_value_t = layout::DEFAULT_COMMIT_INTERVAL_SECS)]
    commit_interval: u64,
    /// Raft voters (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    voters: u8,
    /// A STUN or TURN server every node of the room uses (`stun:host:port`,
    /// `turn:host:port`), repeatable; `none`: no servers, host candidates
    /// only. Default: public STUN servers. TURN credentials stay with each
    /// node (`--turn-username`/`--turn-credential` or `--turn-secret` on
    /// `skygit node`).
    #[arg(long = "ice-server", value_delimiter = ',')]
    ice_servers: Vec<String>,
    #[command(flatten)]
    media: MediaArgs,
    /// Replace a different `config.json`. (In a running room, change the
    /// settings with `PUT /settings` or the UI instead: settings changed
    /// there are the room's, and its leader writes them back.)
    #[arg(long)]
    force: bool,
    /// Where the git cache lives.
    #[arg(long, env = "SKYGIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Where `skygit init` says the room keeps its attachments
/// (`config.json`'s `media`). S3 credentials are never among them: each
/// node takes them from its environment or config file.
#[derive(Args)]
pub struct MediaArgs {
    /// Where files go: `git` (blobs in the commit), `git-lfs`, `external`
    /// (S3-compatible storage) or `disabled`.
    #[arg(long, default_value = "git-lfs")]
    media_storage: String,
    /// Where files up to `--media-small-max-bytes` go instead (default:
    /// `--media-storage`).
    #[arg(long)]
    media_small_storage: Option<String>,
    #[arg(long, default_value_t = layout::DEFAULT_SMALL_MAX_BYTES)]
    media_small_max_bytes: u64,
    /// The largest file the room accepts.
    #[arg(long, default_value_t = layout::DEFAULT_MAX_ATTACHMENT_BYTES)]
    media_max_bytes: u64,
    /// The Git LFS endpoint (default: derived from the remote's URL).
    #[arg(long)]
    lfs_url: Option<String>,
    /// The S3-compatible service (`external`): its URL.
    #[arg(long)]
    s3_endpoint: Option<String>,
    #[arg(long)]
    s3_bucket: Option<String>,
    #[arg(long, default_value = "")]
    s3_prefix: String,
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
}

fn media_storage(s: &str) -> anyhow::Result<layout::MediaStorage> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        anyhow::anyhow!("media storage {s:?} is not one of git, git-lfs, external, disabled")
    })
}

impl MediaArgs {
    fn config(&self) -> anyhow::Result<layout::MediaConfig> {
        let s3 = match (&self.s3_endpoint, &self.s3_bucket) {
            (Some(endpoint), Some(bucket)) => Some(layout::S3Location {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                prefix: self.s3_prefix.clone(),
                region: self.s3_region.clone(),
            }),
            (None, None) => None,
            _ => bail!("--s3-endpoint and --s3-bucket go together"),
        };
        let c = layout::MediaConfig {
            storage: media_storage(&self.media_storage)?,
            small_storage: self
                .media_small_storage
                .as_deref()
                .map(media_storage)
                .transpose()?,
            small_max_bytes: self.media_small_max_bytes,
            max_bytes: self.media_max_bytes,
            s3,
            lfs_url: self.lfs_url.clone(),
        };
        c.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(c)
    }
}

/// `skygit init`: writes `.messages/config.json`.
pub async fn init(a: InitArgs) -> anyhow::Result<()> {
    let ice_servers = (!a.ice_servers.is_empty()).then(|| {
        a.ice_servers
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty() && *u != "none")
            .map(skygit_actors::ice::IceServer::url)
            .collect::<Vec<_>>()
    });
    let want = RoomConfig {
        commit_interval_secs: a.commit_interval,
        voters: a.voters,
        ice_servers,
        media: a.media.config()?,
        ..RoomConfig::default()
    };
    want.validate().context("invalid room settings")?;
    let room = RoomId::new(a.repo.as_str()).context("invalid repository")?;
    let opts = resolve_remote(&RemoteOverrides::default(), a.remote.overrides())?;
    let remote = open_remote(
        &room,
        &opts,
        &a.data_dir.unwrap_or_else(default_data_dir),
        0,
    )?;
    let head = remote.head().await.context("cannot read the branch")?;
    let (expected_head, watermark) = match &head {
        None => (None, 0),
        Some(h) => {
            match readback::config_at(remote.as_ref(), &h.commit_sha).await? {
                // The index of a settings change made in the room is not
                // a setting.
                Some(Ok(c))
                    if RoomConfig {
                        settings_index: 0,
                        ..c.clone()
                    } == want =>
                {
                    println!(
                        "{} is already a skygit room with these settings",
                        remote.describe()
                    );
                    return Ok(());
                }
                Some(existing) if !a.force => {
                    let what = match existing {
                        Ok(c) => format!("different settings: {c:?}"),
                        Err(e) => format!("an unreadable file: {e}"),
                    };
                    bail!(
                        "{} already has {} with {what}; use --force to replace it",
                        remote.describe(),
                        layout::CONFIG_PATH
                    );
                }
                _ => {}
            }
            let w = readback::watermark_of(remote.as_ref(), h).await?;
            (Some(h.commit_sha.clone()), w)
        }
    };
    let message = match &head {
        None => layout::init_message(),
        // The head's group epoch carries over (see `layout::group_epoch`).
        Some(h) => layout::with_epoch(
            format!("skygit: room settings\n\nRaft-Last-Index: {watermark}\n"),
            layout::group_epoch(&h.message),
        ),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sha = remote
        .commit(CommitRequest {
            expected_head,
            files: vec![(layout::CONFIG_PATH.to_owned(), want.to_bytes())],
            message,
            time_secs: now,
        })
        .await
        .context("cannot commit the room config")?;
    println!("initialised {} at {sha}", remote.describe());
    Ok(())
}

/// `skygit push`: starts this node's room, flushes the leader's committer
/// and stops. The node must not be running (its storage is locked); a
/// running node takes `POST /push` once the HTTP API exists.
pub async fn push(cfg: NodeConfig, local_nodes: u64) -> anyhow::Result<()> {
    let mut opts = LocalOptions::new(&cfg.room);
    opts.raft = cfg.raft.clone();
    opts.users.insert(1, cfg.user.clone());
    opts.repo = Some(factory(&cfg.room, &cfg.remote, &cfg.data_dir, local_nodes)?);
    opts.committer = CommitterOptions {
        interval: Some(Duration::from_secs(layout::MAX_COMMIT_INTERVAL_SECS)),
        ..CommitterOptions::default()
    };
    let dir = cfg.data_dir.join("local");
    let cluster = LocalCluster::start(&dir, cfg.room.clone(), local_nodes, opts)
        .await
        .with_context(|| {
            format!(
                "cannot open room {} in {} (is `skygit node` running?)",
                cfg.room,
                dir.display()
            )
        })?;
    let result = async {
        let leader = cluster
            .wait_leader(Duration::from_secs(30))
            .await
            .context("no leader among this node's raft members")?;
        let committer = cluster
            .handle(leader)
            .context("leader vanished")?
            .committer
            .clone();
        committer
            .send(Flush(FlushReason::OnDemand))
            .await
            .context("the committer stopped")?
            .context("push failed")
    }
    .await;
    cluster.shutdown().await;
    let r = result?;
    println!(
        "pushed {} change(s) in {} commit(s); the repository holds the log up to index {} at {}",
        r.changes,
        r.commits,
        r.up_to_index,
        r.head.as_deref().unwrap_or("-")
    );
    Ok(())
}

#[derive(Args)]
pub struct HistoryArgs {
    /// The room's repository.
    #[arg(long, env = "SKYGIT_REPO")]
    repo: String,
    /// Only this conversation.
    #[arg(long)]
    conversation: Option<String>,
    /// One JSON object per message instead of text.
    #[arg(long)]
    json: bool,
    /// Where the git cache lives.
    #[arg(long, env = "SKYGIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// `skygit history`: the room's messages read back from the repository
/// alone (no node, no peers).
pub async fn history(a: HistoryArgs) -> anyhow::Result<()> {
    let room = RoomId::new(a.repo.as_str()).context("invalid repository")?;
    let opts = resolve_remote(&RemoteOverrides::default(), a.remote.overrides())?;
    let remote = open_remote(
        &room,
        &opts,
        &a.data_dir.unwrap_or_else(default_data_dir),
        0,
    )?;
    let h = readback::load(remote.as_ref(), ReadbackLimits::default())
        .await
        .with_context(|| format!("cannot read the history of {}", remote.describe()))?;
    let web = crate::api::web_url_of(room.as_str());
    for m in &h.messages {
        let msg = &m.record.message;
        if a.conversation
            .as_deref()
            .is_some_and(|c| c != msg.conversation.as_str())
        {
            continue;
        }
        if a.json {
            let view = crate::api::messages::message_of(
                &m.record,
                Some(m.git_hash.clone()),
                SyncState::Synchronized,
                |h| web.as_ref().map(|w| format!("{w}/commit/{h}")),
                |_| false,
            );
            println!("{}", serde_json::to_string(&view)?);
        } else {
            let text = if msg.deleted {
                "(deleted)"
            } else {
                msg.content.as_str()
            };
            let edited = if msg.edited_at.is_some() {
                " (edited)"
            } else {
                ""
            };
            println!(
                "[{:>6}] {} #{} {}: {text}{edited}",
                m.record.index,
                &m.git_hash.get(..8).unwrap_or(""),
                msg.conversation,
                msg.sender
            );
        }
    }
    eprintln!(
        "{} message(s); the repository holds the log up to index {}",
        h.messages.len(),
        h.watermark
    );
    Ok(())
}
