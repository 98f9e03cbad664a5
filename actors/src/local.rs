//! A room whose nodes all run in this process over the in-process
//! transport: the single-process demo, the raft benchmark and the
//! integration tests use it. Each node has its own RocksDB directory, so
//! stopping and starting a node exercises real recovery from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use skygit_consensus::inproc::InProcNet;
use skygit_consensus::model::{RoomId, UserId};
use skygit_consensus::ports::SystemClock;
use skygit_consensus::NodeId;
use skygit_storage::Faults;

use crate::committer::CommitterOptions;
use crate::ports::RepoRemote;
use crate::ports::SeededRng;
use crate::presence::LocalPresence;
use crate::room::{start_room, RoomError, RoomHandle, RoomPorts, RoomSpec};

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
        }
    }
}

/// A room of nodes in this process.
pub struct LocalCluster {
    pub room: RoomId,
    base: PathBuf,
    net: InProcNet,
    presence: Arc<LocalPresence>,
    opts: LocalOptions,
    nodes: BTreeMap<NodeId, RoomHandle>,
}

fn node_name(id: NodeId) -> BasicNode {
    BasicNode::new(format!("inproc:{id}"))
}

impl LocalCluster {
    /// Starts nodes `1..=n` under `base` and makes them all voters: a new
    /// room is initialized with them; a room from an earlier run with fewer
    /// nodes grows to `n` voters once it has a leader. (It does not shrink:
    /// with fewer nodes than voters it may have no quorum.)
    pub async fn start(
        base: impl Into<PathBuf>,
        room: RoomId,
        n: u64,
        opts: LocalOptions,
    ) -> Result<Self, RoomError> {
        let mut c = Self {
            room,
            base: base.into(),
            net: InProcNet::new(),
            presence: Arc::new(LocalPresence::default()),
            opts,
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start_node(id).await?;
        }
        let first = c.handle(1).ok_or(RoomError::NotRunning(1))?;
        let raft = first.replica.raft();
        if !raft.is_initialized().await.unwrap_or(false) {
            let members: BTreeMap<NodeId, BasicNode> =
                (1..=n).map(|id| (id, node_name(id))).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::warn!(error = %e, "initialize");
            }
            return Ok(c);
        }
        let voters = first.replica.voters();
        let missing: Vec<NodeId> = (1..=n).filter(|id| !voters.contains(id)).collect();
        if !missing.is_empty() {
            tracing::info!(?missing, "adding nodes to the room's voters");
            for id in missing {
                if let Err(e) = c.add_voter(id).await {
                    tracing::warn!(node = id, error = %e, "could not add the node as a voter");
                }
            }
        }
        Ok(c)
    }

    /// Starts node `id` from whatever its directory holds (empty or not).
    pub async fn start_node(&mut self, id: NodeId) -> Result<(), RoomError> {
        let (link, incoming) = self.net.join(id);
        let rng = match self.opts.seed {
            Some(s) => SeededRng::from_seed(s.wrapping_add(id)),
            None => SeededRng::from_os(),
        };
        let user = match self.opts.users.get(&id) {
            Some(u) => u.clone(),
            None => UserId::new(format!("user{id}")).map_err(RoomError::User)?,
        };
        let spec = RoomSpec {
            room: self.room.clone(),
            node_id: id,
            user,
            data_dir: self.base.join(format!("node-{id}")),
            raft: self.opts.raft.clone(),
            faults: self.opts.faults,
            committer: self.opts.committer,
            disk: None,
            room_config: None,
        };
        let ports = RoomPorts {
            mesh: None,
            link,
            incoming,
            clock: Arc::new(SystemClock),
            rng: Box::new(rng),
            presence: self.presence.clone(),
            repo: self.opts.repo.as_ref().map(|f| f(id)),
        };
        let handle = start_room(spec, ports).await?;
        self.nodes.insert(id, handle);
        Ok(())
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

    /// Cuts node `id` off from the others, or heals it.
    pub fn isolate(&self, id: NodeId, isolated: bool) {
        self.net.isolate(id, isolated);
    }

    /// Adds a running node as a learner and then as a voter.
    pub async fn add_voter(&self, id: NodeId) -> Result<(), String> {
        let leader = self
            .wait_leader(Duration::from_secs(10))
            .await
            .ok_or("no leader")?;
        let replica = self
            .handle(leader)
            .ok_or("leader vanished")?
            .replica
            .clone();
        let raft = replica.raft();
        raft.add_learner(id, node_name(id), true)
            .await
            .map_err(|e| e.to_string())?;
        let mut voters = replica.voters();
        voters.insert(id);
        raft.change_membership(voters, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
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
                h.shutdown().await;
            }
            self.net.leave(id);
        }
    }
}
