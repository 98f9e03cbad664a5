//! A room whose nodes all run in this process over the in-process
//! transport: the single-process demo, the raft benchmark and the
//! integration tests use it. The room forms as every room does: each node
//! runs presence (an in-memory channel), the mesh actor (offers and
//! answers over [`InProcNet`]) and the membership controller, which starts
//! the group and grows it. Each node has its own RocksDB directory, so
//! stopping and starting a node exercises real recovery from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skygit_consensus::membership::{MembershipPolicy, MAX_VOTERS};
use skygit_consensus::model::{RoomId, UserId};
use skygit_consensus::ports::SystemClock;
use skygit_consensus::NodeId;
use skygit_storage::Faults;

use crate::committer::CommitterOptions;
use crate::inproc::InProcNet;
use crate::membership::{bootstrap_rule, Bootstrap, SetVoters};
use crate::mesh::MeshOptions;
use crate::ports::RepoRemote;
use crate::ports::SeededRng;
use crate::presence::{LocalPresence, PresenceOptions};
use crate::room::{start_room, MeshPorts, RoomError, RoomHandle, RoomPorts, RoomSpec};

/// Longest [`LocalCluster::start`] waits for the room to form.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Presence in one process costs a lock, not a repository write: poll and
/// beat often so that peers meet (and crashed ones are noticed) at once.
const PRESENCE: PresenceOptions = PresenceOptions {
    heartbeat: Duration::from_secs(1),
    fast_poll: Duration::from_millis(50),
    slow_poll: Duration::from_millis(500),
};

/// Links in one process open at once; a failed one is retried soon.
const MESH: MeshOptions = MeshOptions {
    connect_timeout: Duration::from_secs(5),
    backoff_base: Duration::from_millis(100),
    backoff_max: Duration::from_secs(1),
};

/// How long a new node waits to see the others before it starts a group.
const SETTLE: Duration = Duration::from_millis(300);

/// Settings of a local room.
#[derive(Clone)]
pub struct LocalOptions {
    pub raft: openraft::Config,
    pub faults: Faults,
    /// Seed for node RNGs (node `i` uses `seed + i`); OS entropy if `None`.
    pub seed: Option<u64>,
    /// The user of each node; `user<id>` for nodes not listed.
    pub users: BTreeMap<NodeId, UserId>,
    /// Each node's handle on the room's repository (none: no committing).
    pub repo: Option<RepoFactory>,
    pub committer: CommitterOptions,
    /// Verify identities: each node signs with a key of its own (made from
    /// its id), and every node knows every node's user and key.
    pub sign: bool,
    /// Re-form the group when its majority is gone (with a repository).
    pub reform: Option<skygit_consensus::reform::ReformPolicy>,
    /// The room's voter count (default: every node, at most five).
    pub voters: Option<usize>,
}

/// Makes node `id`'s repository remote.
pub type RepoFactory = Arc<dyn Fn(NodeId) -> Arc<dyn RepoRemote> + Send + Sync>;

impl LocalOptions {
    pub fn new(room: &RoomId) -> Self {
        Self {
            raft: skygit_consensus::config::raft_config(
                room.as_str(),
                skygit_consensus::config::DEFAULT_SNAPSHOT_EVERY,
                skygit_consensus::config::DEFAULT_KEEP_AFTER_SNAPSHOT,
            ),
            faults: Faults::default(),
            seed: None,
            users: BTreeMap::new(),
            repo: None,
            committer: CommitterOptions::default(),
            sign: false,
            reform: None,
            voters: None,
        }
    }
}

/// Nodes whose keys an in-process room that signs knows.
const SIGNING_NODES: NodeId = 16;

/// Node `id`'s key in an in-process room that signs.
fn node_key(id: NodeId) -> skygit_ports::identity::SigningKey {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&id.to_be_bytes());
    skygit_ports::identity::SigningKey::from_ed25519_seed(seed)
}

/// A room of nodes in this process.
pub struct LocalCluster {
    pub room: RoomId,
    base: PathBuf,
    net: InProcNet,
    presence: Arc<LocalPresence>,
    opts: LocalOptions,
    nodes: BTreeMap<NodeId, RoomHandle>,
    /// The voter count every node's controller aims for.
    voters: usize,
    /// Why a node may not start a group (the repository holds a log).
    refused: Option<String>,
}

impl LocalCluster {
    /// Starts nodes `1..=n` under `base` and waits until they form the
    /// room: every node a member and up to [`MAX_VOTERS`] of them voters
    /// (the membership controller's target is pinned to that). A room
    /// from an earlier run with fewer nodes grows the same way.
    pub async fn start(
        base: impl Into<PathBuf>,
        room: RoomId,
        n: u64,
        opts: LocalOptions,
    ) -> Result<Self, RoomError> {
        let voters = opts.voters.unwrap_or(n as usize).clamp(1, MAX_VOTERS);
        let mut c = Self {
            room,
            base: base.into(),
            net: InProcNet::new(),
            presence: Arc::new(LocalPresence::default()),
            opts,
            nodes: BTreeMap::new(),
            voters,
            refused: None,
        };
        for id in 1..=n {
            c.start_node(id).await?;
        }
        let in_group = c.nodes.values().any(|h| !h.replica.voters().is_empty());
        if let (false, Some(reason)) = (in_group, c.refused.take()) {
            c.shutdown().await;
            return Err(RoomError::NotFormed(reason));
        }
        if !c.wait_formed(FORM_TIMEOUT).await {
            return Err(RoomError::NotFormed(format!(
                "{n} nodes did not form a room with {} voters within {FORM_TIMEOUT:?}",
                c.voters
            )));
        }
        Ok(c)
    }

    /// Waits until a leader's membership holds every running node and
    /// the target number of voters.
    async fn wait_formed(&self, timeout: Duration) -> bool {
        poll_until(timeout, || async {
            let Some(l) = self.wait_leader(Duration::from_millis(100)).await else {
                return false;
            };
            let m = self.nodes[&l].replica.metrics();
            let membership = m.membership_config.membership();
            let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
            // Formed means the voters' change is over: one configuration
            // (not the joint one of a change in flight) that the leader has
            // applied. A leader lost during a joint configuration leaves a
            // group that cannot elect when the old configuration's majority
            // needed it.
            let settled = membership.get_joint_config().len() == 1
                && m.membership_config.log_id().as_ref().map(|l| l.index)
                    <= m.last_applied.as_ref().map(|l| l.index);
            settled
                && membership.voter_ids().count() == self.voters
                && self.nodes.keys().all(|id| members.contains(id))
        })
        .await
    }

    /// Starts node `id` from whatever its directory holds (empty or not);
    /// it joins the room through presence, the mesh and the membership
    /// controller.
    pub async fn start_node(&mut self, id: NodeId) -> Result<(), RoomError> {
        let joined = self.net.join(id);
        let seeded = |salt: u64| -> Box<SeededRng> {
            Box::new(match self.opts.seed {
                Some(s) => SeededRng::from_seed(s.wrapping_add(id).wrapping_add(salt)),
                None => SeededRng::from_os(),
            })
        };
        let user = self.user_of(id)?;
        let identity = if self.opts.sign {
            let mut keys = skygit_ports::identity::StaticKeys::default();
            for n in 1..=SIGNING_NODES.max(id) {
                keys.0
                    .entry(self.user_of(n)?.to_string())
                    .or_default()
                    .push(node_key(n).public());
            }
            Some(crate::room::RoomIdentity {
                key: Arc::new(node_key(id)),
                directory: Arc::new(keys),
            })
        } else {
            None
        };
        let repo = self.opts.repo.as_ref().map(|f| f(id));
        let bootstrap = match &repo {
            Some(r) => bootstrap_rule(r.as_ref(), &r.head().await, SETTLE).await,
            None => Bootstrap::After(SETTLE),
        };
        if let Bootstrap::Refuse(reason) = &bootstrap {
            self.refused = Some(reason.clone());
        }
        let data_dir = self.base.join(format!("node-{id}"));
        let attachments = crate::media::BlobStore::open(data_dir.join("attachments"))
            .map_err(RoomError::Attachments)?;
        let spec = RoomSpec {
            room: self.room.clone(),
            node_id: id,
            user,
            data_dir,
            raft: self.opts.raft.clone(),
            faults: self.opts.faults,
            committer: self.opts.committer,
            disk: None,
            room_config: None,
            attachments: Some(attachments),
        };
        let ports = RoomPorts {
            link: joined.link,
            incoming: joined.incoming,
            clock: Arc::new(SystemClock),
            rng: seeded(0),
            presence: self.presence.clone(),
            repo,
            mesh: MeshPorts {
                transport: joined.transport,
                events: joined.events,
                presence: PRESENCE,
                mesh: MESH,
                policy: MembershipPolicy {
                    voters: self.voters,
                    pinned: true,
                    tick: Duration::from_millis(100),
                    ..Default::default()
                },
                bootstrap,
                rng: seeded(1 << 32),
                identity,
                reform: self.opts.reform,
            },
            media_stores: None,
        };
        let handle = start_room(spec, ports).await?;
        self.nodes.insert(id, handle);
        Ok(())
    }

    /// Node `id`'s user: as the options name it, else `user<id>`.
    pub fn user_of(&self, id: NodeId) -> Result<UserId, RoomError> {
        match self.opts.users.get(&id) {
            Some(u) => Ok(u.clone()),
            None => UserId::new(format!("user{id}")).map_err(RoomError::User),
        }
    }

    /// Stops node `id` as a crash would: it vanishes from the network at
    /// once, then raft stops. Its directory stays.
    pub async fn stop_node(&mut self, id: NodeId) {
        self.net.leave(id);
        if let Some(h) = self.nodes.remove(&id) {
            h.stop().await;
        }
    }

    /// The room's in-process network (tests join it as other peers).
    pub fn net(&self) -> &InProcNet {
        &self.net
    }

    /// Splits the room in two: `side` and the rest (see
    /// [`InProcNet::split`]); an empty `side` heals.
    pub fn split(&self, side: &[NodeId]) {
        self.net.split(side);
    }

    /// Cuts node `id` off from the others, or heals it.
    pub fn isolate(&self, id: NodeId, isolated: bool) {
        self.net.isolate(id, isolated);
    }

    /// Makes running node `id` a voter: raises every controller's voter
    /// target by one and waits until the leader's controller has promoted
    /// it (once it caught up).
    pub async fn add_voter(&mut self, id: NodeId) -> Result<(), String> {
        let leader = self
            .wait_leader(Duration::from_secs(10))
            .await
            .ok_or("no leader")?;
        let target = self.nodes[&leader].replica.voters().len() + 1;
        if target > MAX_VOTERS {
            return Err(format!("a room has at most {MAX_VOTERS} voters"));
        }
        self.voters = target;
        for h in self.nodes.values() {
            h.membership.do_send(SetVoters(target));
        }
        let voter = poll_until(FORM_TIMEOUT, || async {
            self.wait_leader(Duration::from_millis(100))
                .await
                .is_some_and(|l| self.nodes[&l].replica.voters().contains(&id))
        })
        .await;
        voter
            .then_some(())
            .ok_or_else(|| format!("node {id} did not become a voter"))
    }

    /// Takes node `id` out of the cluster's care (to hand it to a
    /// [`Rooms`](crate::room::Rooms) registry, say); it keeps running.
    pub fn take(&mut self, id: NodeId) -> Option<RoomHandle> {
        self.nodes.remove(&id)
    }

    /// The running node `id`.
    pub fn handle(&self, id: NodeId) -> Option<&RoomHandle> {
        self.nodes.get(&id)
    }

    /// Ids of the running nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until the running nodes that know a leader all name the same
    /// one, and that node is running and sees itself as leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let named: BTreeSet<NodeId> = self
                .nodes
                .values()
                .filter_map(|h| h.replica.metrics().current_leader)
                .collect();
            if let [l] = named.into_iter().collect::<Vec<_>>()[..] {
                let leads = self
                    .nodes
                    .get(&l)
                    .is_some_and(|h| h.replica.metrics().state == openraft::ServerState::Leader);
                if leads {
                    return Some(l);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied everything the leader
    /// has committed; returns that index.
    pub async fn wait_converged(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.wait_leader(Duration::from_millis(200)).await {
                let target = self.nodes[&l].replica.metrics().last_log_index;
                let all = self.nodes.values().all(|h| {
                    let m = h.replica.metrics();
                    m.last_applied.as_ref().map(|x| x.index) == target
                });
                if all {
                    if let Some(t) = target {
                        return Some(t);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node gracefully: the leader first, so its committer
    /// flushes while the others can still confirm the `synced` record.
    pub async fn shutdown(mut self) {
        let leader = self.wait_leader(Duration::from_millis(200)).await;
        let mut ids = self.ids();
        ids.sort_by_key(|id| Some(*id) != leader);
        for id in ids {
            if let Some(h) = self.nodes.remove(&id) {
                h.flush_and_stop().await;
            }
            self.net.leave(id);
        }
    }
}

/// Checks `done` every 20 ms until it holds or `timeout` passes; answers
/// whether it held.
async fn poll_until<F, Fut>(timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
