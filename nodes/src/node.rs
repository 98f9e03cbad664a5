//! `skygit node`: this process's member of a room. It announces itself in
//! the repository (per-node presence refs), connects to the other online
//! nodes over WebRTC, joins or starts the room's raft group, serves the
//! local HTTP API, posts what is typed on standard input and prints what
//! commits.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skygit_actors::ice::IceServer;
use skygit_actors::layout::RoomConfig;
use skygit_actors::ports::identity::{KeyDirectory, RepoMembers, SigningKey};
use skygit_actors::ports::{PresenceChannel, RepoError, RepoHead, RepoRemote, SeededRng};
use skygit_actors::presence::PresenceOptions;
use skygit_actors::room::{start_room, MeshPorts, RoomIdentity, RoomPorts, RoomSpec};
use skygit_consensus::membership::{MembershipPolicy, MAX_VOTERS};
use skygit_consensus::model::RoomId;
use skygit_consensus::ports::{PeerLink, SystemClock};
use skygit_consensus::reform::ReformPolicy;
use skygit_consensus::NodeId;
use skygit_mesh::{Mesh, MeshConfig};
use skygit_storage::Faults;

use crate::api::{ApiState, Served};
use crate::config::NodeConfig;

/// Settings of the mesh node beyond the shared node configuration.
#[derive(Args, Clone, Debug)]
pub struct MeshArgs {
    /// The HTTP API's address (port 0 picks a free one; the address is
    /// printed as `api: http://...`).
    #[arg(long, env = "SKYGIT_API", default_value = "127.0.0.1:0")]
    pub api: SocketAddr,
    /// IPs the WebRTC transport gathers host candidates on (repeatable;
    /// `0.0.0.0` is every interface's address but loopback).
    #[arg(
        long = "bind",
        env = "SKYGIT_BIND",
        value_delimiter = ',',
        default_value = "0.0.0.0,127.0.0.1"
    )]
    pub bind: Vec<IpAddr>,
    /// Presence poll interval while connecting, in milliseconds.
    #[arg(long, env = "SKYGIT_FAST_POLL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub fast_poll_ms: u64,
    /// Presence poll interval once settled, in seconds.
    #[arg(long, env = "SKYGIT_SLOW_POLL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub slow_poll_secs: u64,
    /// Presence heartbeat (a repository write) interval, in seconds:
    /// default 60 on a git remote, 300 on GitHub, whose secondary limit
    /// allows 500 writes an hour for presence and commits together.
    #[arg(long, env = "SKYGIT_HEARTBEAT_SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: Option<u64>,
    /// Raft voters of the room (1 to 5); every other node is a learner.
    /// Default: the room's `config.json`, else 3.
    #[arg(long, env = "SKYGIT_VOTERS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_VOTERS as u64))]
    pub voters: Option<u64>,
    /// Seconds without a reachable leader, while a majority of the voters
    /// is unreachable and at least half of the members are, before the
    /// survivors re-form the room's group (a new epoch, founded by a
    /// compare-and-swap commit on the branch). 0 never re-forms: the
    /// survivors then queue until the old voters return.
    #[arg(long, env = "SKYGIT_REFORM_AFTER_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub reform_after_secs: u64,
    /// Test fault: publish a certificate fingerprint that is not this
    /// node's (its peers must refuse it).
    #[arg(long, hide = true)]
    pub fault_wrong_fingerprint: bool,
    /// Test fault: serve `POST /faults/drop-link/{peer}` and
    /// `POST /faults/send/{peer}/{wire|frame}`.
    #[arg(long, hide = true)]
    pub fault_api: bool,
}

/// How long TURN REST-API credentials this node makes are valid (a link
/// older than this loses its relay and is set up again with fresh ones).
const TURN_REST_TTL: Duration = Duration::from_secs(24 * 3600);

/// Largest node-id file the node reads.
const MAX_ID_FILE: u64 = 64;

/// This node's raft id: made once per data directory and kept in
/// `node-id` (openraft ids must never be reused by another node).
pub fn node_id(data_dir: &Path) -> anyhow::Result<NodeId> {
    let path = data_dir.join("node-id");
    if let Ok(meta) = std::fs::metadata(&path) {
        anyhow::ensure!(
            meta.len() <= MAX_ID_FILE,
            "{} is not a node id file",
            path.display()
        );
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let id: NodeId = text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a node id", path.display()))?;
        anyhow::ensure!(id != 0, "{} holds node id 0", path.display());
        return Ok(id);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Below 2^53 so the id survives JavaScript's numbers in the UI.
    let id = (rand::random::<u64>() >> 11).max(1);
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The room's `config.json` at the branch head: the defaults when the
/// repository has none or it is invalid (logged), `None` when the branch
/// or the file could not be read (the committer then tries itself).
async fn room_config(
    remote: &dyn RepoRemote,
    head: &Result<Option<RepoHead>, RepoError>,
) -> Option<RoomConfig> {
    let head = match head {
        Ok(Some(h)) => h,
        Ok(None) => return Some(RoomConfig::default()),
        Err(_) => return None,
    };
    match skygit_actors::readback::config_at(remote, &head.commit_sha).await {
        Ok(Some(Ok(c))) => Some(c),
        Ok(None) => Some(RoomConfig::default()),
        Ok(Some(Err(e))) => {
            tracing::warn!(error = %e, "the room's config.json is invalid; using the defaults");
            Some(RoomConfig::default())
        }
        Err(_) => None,
    }
}

/// Opens `room` on this node: its presence channel and repository, a
/// WebRTC endpoint of its own and the room's actors (one raft group per
/// repository; the node id is the node's for every room).
pub async fn open_room(
    cfg: NodeConfig,
    args: MeshArgs,
    id: NodeId,
    room: RoomId,
) -> anyhow::Result<Served> {
    let spec = room.as_str().to_owned();
    let cache = cfg.data_dir.join("cache").join(room.storage_key());
    // On GitHub presence and commits share one remote, so they share its
    // write budget and conditional-request cache.
    let mut github_keys = None;
    let (presence, remote, heartbeat): (Arc<dyn PresenceChannel>, Arc<dyn RepoRemote>, u64) =
        match skygit_remotes::parse_github_spec(&spec) {
            Some(parsed) => {
                let (owner, name) =
                    parsed.map_err(|e| anyhow::anyhow!("repository {spec}: {e}"))?;
                let p = skygit_remotes::GithubPresence::open(&owner, &name, &cfg.remote, id)
                    .map_err(|e| anyhow::anyhow!("presence channel: {e}"))?;
                github_keys = Some(Arc::new(skygit_remotes::github::keys::GithubKeys::new(
                    p.remote(),
                )));
                let remote: Arc<dyn RepoRemote> = p.remote();
                (Arc::new(p), remote, args.heartbeat_secs.unwrap_or(300))
            }
            None => {
                let p = skygit_remotes::GitPresence::open(&spec, id, &cache.join("presence"))
                    .map_err(|e| anyhow::anyhow!("presence channel: {e}"))?;
                let remote = crate::repo::open_remote(&room, &cfg.remote, &cfg.data_dir, id)?;
                (Arc::new(p), remote, args.heartbeat_secs.unwrap_or(60))
            }
        };
    let fast = Duration::from_millis(args.fast_poll_ms);
    let presence_opts = PresenceOptions {
        heartbeat: Duration::from_secs(heartbeat),
        fast_poll: fast,
        slow_poll: Duration::from_secs(args.slow_poll_secs),
    };
    // One read of the branch head serves the bootstrap rule and the
    // room's config.
    let head = remote.head().await;
    let bootstrap = skygit_actors::membership::bootstrap_rule(
        remote.as_ref(),
        &head,
        2 * fast + Duration::from_secs(1),
    )
    .await;
    let config = room_config(remote.as_ref(), &head).await;
    let directory: Option<Arc<dyn KeyDirectory>> = match github_keys {
        Some(keys) => Some(keys),
        None => members_directory(&remote, &head).await?,
    };
    let identity = match directory {
        Some(directory) => Some(room_identity(&cfg, &spec, directory).await?),
        None => {
            tracing::info!(room = %spec, "this room does not verify identities (no {})", skygit_actors::members::ALLOWED_SIGNERS_PATH);
            None
        }
    };
    let voters = args
        .voters
        .or(config.as_ref().map(|c| u64::from(c.voters)))
        .unwrap_or(3)
        .clamp(1, MAX_VOTERS as u64);
    let ice_servers = cfg
        .ice
        .servers(config.as_ref().and_then(|c| c.ice_servers.as_deref()));
    let turn_rest = cfg.ice.turn_secret.as_ref().map(|s| {
        skygit_mesh::ice::TurnRest::new(s.clone(), cfg.user.as_str().to_owned(), TURN_REST_TTL)
    });
    let browser_ice = crate::api::calls::BrowserIce {
        servers: ice_servers.clone(),
        rest: turn_rest.clone(),
    };
    for why in skygit_mesh::ice::unusable(&ice_servers, turn_rest.as_ref()) {
        tracing::warn!(room = %spec, "ICE server {why}");
    }
    tracing::info!(room = %spec, servers = %IceServer::describe(&ice_servers), "ICE servers");
    let (mesh, incoming, events) = Mesh::new(
        id,
        MeshConfig {
            bind_ips: args.bind.clone(),
            ice_servers,
            turn_rest,
            ..MeshConfig::default()
        },
    )
    .await
    .context("cannot start the WebRTC transport")?;
    let transport = Arc::new(crate::transport::WebRtcTransport {
        mesh: mesh.clone(),
        wrong_fingerprint: args.fault_wrong_fingerprint,
    });
    let link: Arc<dyn PeerLink> = mesh.clone();
    let handle = start_room(
        RoomSpec {
            room: room.clone(),
            node_id: id,
            user: cfg.user.clone(),
            data_dir: cfg.data_dir.clone(),
            raft: cfg.raft.clone(),
            faults: Faults::default(),
            committer: skygit_actors::committer::CommitterOptions {
                interval: cfg.commit_interval,
                ..Default::default()
            },
            disk: None,
            room_config: config.clone(),
            attachments: Some(
                skygit_actors::media::BlobStore::open(
                    cfg.data_dir.join("attachments").join(room.storage_key()),
                )
                .context("cannot open the attachment store")?,
            ),
        },
        RoomPorts {
            link,
            incoming,
            clock: Arc::new(SystemClock),
            rng: Box::new(SeededRng::from_os()),
            presence,
            repo: Some(remote.clone()),
            mesh: MeshPorts {
                transport,
                events: crate::transport::forward_events(events),
                presence: presence_opts,
                mesh: Default::default(),
                policy: MembershipPolicy {
                    voters: voters as usize,
                    pinned: args.voters.is_some(),
                    ..Default::default()
                },
                bootstrap,
                rng: Box::new(SeededRng::from_os()),
                identity,
                reform: (args.reform_after_secs > 0).then(|| ReformPolicy {
                    after: Duration::from_secs(args.reform_after_secs),
                    ..Default::default()
                }),
            },
            media_stores: Some(media_stores(
                spec.clone(),
                remote.clone(),
                cfg.remote.clone(),
                cfg.s3.clone(),
            )),
        },
    )
    .await
    .with_context(|| format!("cannot start room {room} in {}", cfg.data_dir.display()))?;
    let served = Served::new(handle, Some(mesh), Some(remote))
        .with_media(config.map(|c| c.media).unwrap_or_default())
        .with_ice(browser_ice);
    // The label every actor of the room uses too.
    crate::metrics::spawn_room_sampler(served.handle.clone(), served.spec.clone());
    Ok(served)
}

/// Opens the room's attachment stores as its `config.json` says: git
/// blobs read back through the repository, Git LFS (the `media.lfs_url`, else GitHub's endpoint for a GitHub
/// room, git-lfs's standalone layout for a local path, or the endpoint
/// derived from an http(s) remote), S3 (`media.s3` with this node's
/// credentials). The GitHub token goes only to GitHub's own endpoint.
fn media_stores(
    spec: String,
    repo: Arc<dyn RepoRemote>,
    remote: skygit_remotes::RemoteOptions,
    s3: Option<skygit_remotes::media::s3::S3Credentials>,
) -> skygit_actors::committer::media::StoreFactory {
    use skygit_actors::layout::MediaStorage;
    use skygit_remotes::media::{lfs, s3::S3Store};
    Arc::new(move |config, kind| match kind {
        MediaStorage::GitLfs => {
            if let Some(url) = &config.lfs_url {
                let store = lfs::LfsHttp::new(url, None).map_err(|e| e.to_string())?;
                return Ok(Some(Arc::new(store)));
            }
            if let Some(parsed) = skygit_remotes::parse_github_spec(&spec) {
                let (owner, name) = parsed.map_err(|e| e.to_string())?;
                let web = match remote.github_api.as_deref() {
                    None => "https://github.com".to_owned(),
                    Some(api) => api
                        .trim_end_matches('/')
                        .trim_end_matches("/api/v3")
                        .to_owned(),
                };
                let auth = remote
                    .token
                    .clone()
                    .map(|t| ("x-access-token".to_owned(), t));
                let store = lfs::LfsHttp::new(&format!("{web}/{owner}/{name}.git/info/lfs"), auth)
                    .map_err(|e| e.to_string())?;
                return Ok(Some(Arc::new(store)));
            }
            if let Some(local) = lfs::LfsLocal::for_path(std::path::Path::new(&spec)) {
                return Ok(Some(Arc::new(local)));
            }
            match lfs::LfsHttp::derive_endpoint(&spec) {
                Some(url) => Ok(Some(Arc::new(
                    lfs::LfsHttp::new(&url, None).map_err(|e| e.to_string())?,
                ))),
                None => Err(format!(
                    "no Git LFS endpoint for {spec}: set media.lfs_url in config.json"
                )),
            }
        }
        MediaStorage::External => {
            let location = config
                .s3
                .as_ref()
                .ok_or("config.json's media.s3 is missing")?;
            let creds = s3.as_ref().ok_or(
                "no S3 credentials on this node: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or s3_access_key_id and s3_secret_access_key in its config file)",
            )?;
            let store = S3Store::new(location, creds).map_err(|e| e.to_string())?;
            Ok(Some(Arc::new(store)))
        }
        MediaStorage::Git => Ok(Some(Arc::new(skygit_actors::ports::media::RepoBlobs::new(
            repo.clone(),
        )))),
        MediaStorage::Disabled => Ok(None),
    })
}

/// A plain git room verifies identities when its members file lists
/// anyone; a members file that cannot be read stops the node (running
/// unverified would let anyone who can break the file be anyone).
async fn members_directory(
    remote: &Arc<dyn RepoRemote>,
    head: &Result<Option<RepoHead>, RepoError>,
) -> anyhow::Result<Option<Arc<dyn KeyDirectory>>> {
    let directory = RepoMembers::new(remote.clone());
    let members = match head {
        Ok(None) => return Ok(None),
        Ok(Some(_)) => directory
            .read()
            .await
            .context("cannot read the room's members file")?,
        Err(e) => anyhow::bail!("cannot read the room's branch: {e}"),
    };
    Ok((!members.keys.is_empty()).then(|| Arc::new(directory) as Arc<dyn KeyDirectory>))
}

/// This node's key, checked against what `directory` says its user holds.
async fn room_identity(
    cfg: &NodeConfig,
    room: &str,
    directory: Arc<dyn KeyDirectory>,
) -> anyhow::Result<RoomIdentity> {
    let listed = directory.keys_of(cfg.user.as_str()).await;
    let agent = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let key = match (&cfg.ssh_key, &agent, &listed) {
        (Some(path), _, _) => SigningKey::from_file(path, agent.as_deref())?,
        (None, Some(socket), Ok(Some(keys))) => SigningKey::choose_from_agent(socket, |k| {
            keys.iter().any(|listed| listed.key_data() == k.key_data())
        })
        .with_context(|| format!("room {room} verifies who its members are ({}): give your SSH key with --ssh-key FILE, or add one listed for {} to ssh-agent", directory.name(), cfg.user))?,
        (None, Some(_), Ok(None)) => anyhow::bail!(
            "{} is not a member of room {room} ({}): no key in ssh-agent can sign for it",
            cfg.user,
            directory.name()
        ),
        (None, Some(_), Err(e)) => anyhow::bail!(
            "cannot choose a key from ssh-agent for room {room}: {e}; give it with --ssh-key FILE"
        ),
        (None, None, _) => anyhow::bail!(
            "room {room} verifies who its members are ({}): give your SSH key with --ssh-key FILE (one listed for {} there), or run ssh-agent holding it",
            directory.name(),
            cfg.user
        ),
    };
    match listed {
        Ok(Some(keys)) if keys.iter().any(|k| k.key_data() == key.public().key_data()) => {
            tracing::info!(room, user = %cfg.user, key = %key.fingerprint(), agent = key.in_agent(), by = directory.name(), "this node's identity");
        }
        Ok(Some(_)) => {
            tracing::error!(room, user = %cfg.user, key = %key.fingerprint(), by = directory.name(), "this key is not one of the user's keys: peers will refuse this node")
        }
        Ok(None) => {
            tracing::error!(room, user = %cfg.user, by = directory.name(), "this user is not a member of the room: peers will refuse this node")
        }
        Err(e) => tracing::warn!(room, error = %e, "cannot check this node's own key now"),
    }
    Ok(RoomIdentity {
        key: Arc::new(key),
        directory,
    })
}

pub async fn run(mut cfg: NodeConfig, args: MeshArgs) -> anyhow::Result<()> {
    crate::auth::github_user(&mut cfg).await?;
    let id = node_id(&cfg.data_dir)?;
    let secret = crate::api::secret::load_or_create(&cfg.data_dir)?;
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off");
            None
        }
    };
    let primary = open_room(cfg.clone(), args.clone(), id, cfg.room.clone()).await?;
    let mut state = ApiState::new(secret.clone(), primary);
    state.faults = args.fault_api;
    state.metrics = metrics;
    if !args.api.ip().is_loopback() {
        // Listening beyond loopback was asked for: requests may name this
        // address (or any, on a wildcard address); the secret still holds.
        let ip = args.api.ip();
        state.extra_hosts.push(if ip.is_unspecified() {
            "*".to_owned()
        } else {
            ip.to_string()
        });
    }
    // Actors start only on an actix arbiter; the API's handlers run on
    // plain tokio tasks, so a new room is opened on this one.
    let arbiter = actix_rt::Arbiter::current();
    let (c, a) = (cfg.clone(), args.clone());
    state.opener = Some(Arc::new(move |spec: String| {
        let (c, a, arbiter) = (c.clone(), a.clone(), arbiter.clone());
        Box::pin(async move {
            let room = RoomId::new(spec)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let queued = arbiter.spawn_fn(move || {
                actix_rt::spawn(async move {
                    let _ = tx.send(open_room(c, a, id, room).await);
                });
            });
            anyhow::ensure!(queued, "the node is stopping");
            rx.await
                .map_err(|_| anyhow::anyhow!("the node stopped while opening the room"))?
        })
    }));
    let state = Arc::new(state);
    let api = crate::api::serve_shared(args.api, state.clone()).await?;
    let url = format!("http://{api}");
    crate::api::secret::write_endpoint(&cfg.data_dir, &url)?;
    // The first line is what scripts and the test harness read.
    println!("api: {url}");
    println!("secret: {secret}");
    println!("ui: {url}/#secret={secret}");
    println!("dashboard: {url}/dashboard#secret={secret}");
    let first = state
        .room(None)
        .await
        .map_err(|e| anyhow::anyhow!(e.body.error))?;
    eprintln!(
        "skygit node {id} in room {} as {}; web UI {url}/ ; type a line to post, Ctrl-C to stop",
        cfg.room, cfg.user
    );
    let io = crate::local_node::terminal(&first.handle)?;
    drop(first);
    let signal = crate::shutdown_signal().await?;
    eprintln!("{signal}: shutting down");
    io.abort();
    let rooms = std::mem::take(&mut *state.rooms.write().await);
    for r in rooms {
        r.handle.clone().shutdown().await;
        if let Some(m) = &r.mesh {
            m.shutdown().await;
        }
    }
    let _ = std::fs::remove_file(cfg.data_dir.join(crate::api::secret::ENDPOINT_FILE));
    Ok(())
}
