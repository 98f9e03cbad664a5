//! `GET /status` and `GET /peers`: how this node and its room stand.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::rooms::{FlushInfo, Repository};

/// A peer's connection in the UI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    Connected,
    Connecting,
    Backoff,
    Offline,
}

/// The kind of path a link's selected candidate pair takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkPath {
    /// Directly between the hosts' addresses.
    Host,
    /// Through NAT, on addresses found with STUN.
    Srflx,
    /// Through a TURN server.
    Relay,
}

/// A peer's part in the room's raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Voter,
    Learner,
}

/// Another node of the room, as this node's mesh sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub node_id: u64,
    pub user: String,
    pub state: PeerState,
    /// The mesh's own word for the link (`idle`, `offering`, `answering`,
    /// `open`, `backoff`).
    pub phase: String,
    /// The link's round-trip time, when measured.
    pub rtt_ms: Option<f64>,
    /// The path the open link takes, once known.
    pub path: Option<LinkPath>,
    /// Its part in the group (none: not a member).
    pub role: Option<Role>,
    /// How many entries it lags behind this node (leaders only).
    pub lag: Option<u64>,
    /// Link attempts that failed in a row.
    pub failures: u32,
    /// The current link attempt.
    pub attempt: u64,
}

/// `GET /peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerList {
    pub peers: Vec<Peer>,
}

/// The raft replica on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Consensus {
    pub node_id: u64,
    /// The leader raft names (it may be unreachable: see
    /// `leader_reachable`).
    pub leader: Option<u64>,
    pub term: u64,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Requests kept in the outbox.
    pub outbox_len: u64,
}

/// How far this node has applied what it knows is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatchUp {
    pub applied_index: u64,
    pub target_index: u64,
    pub done: bool,
}

/// The membership controller on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// How many voters the controller aims for.
    pub target_voters: u64,
    /// The target is this node's own (its command line), not the room's.
    pub voters_pinned: bool,
    /// Every voter; while `joint`, of both the old and the new configuration.
    pub voters: Vec<u64>,
    /// A change of voters is under way (raft's joint configuration): a
    /// majority of both the old and the new voters is needed to commit.
    pub joint: bool,
    pub learners: Vec<u64>,
    pub online: Vec<u64>,
    pub leaving: Vec<u64>,
    pub last_step: Option<String>,
    pub waiting: Option<String>,
    /// The epoch of the raft group this node is in (0: the room's first).
    pub epoch: u64,
    /// The room index the group's log numbers on from.
    pub base: u64,
    /// Why the group is not re-formed yet, while no leader is reachable.
    pub reform_waiting: Option<String>,
    /// The last time this node moved into a new group.
    pub reformed: Option<Reformation>,
}

/// A node's move into a new raft group of its room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reformation {
    /// When (this node's clock, milliseconds since the Unix epoch).
    pub at_ms: i64,
    pub epoch: u64,
    pub base: u64,
    /// The node whose founding commit won the epoch.
    pub founder: u64,
    /// Whether this node founded it (otherwise it joined).
    pub founded: bool,
    /// Why: the old group's majority was gone, or a newer group was found.
    pub reason: String,
    /// Requests this node carried over to be proposed again.
    pub carried: u64,
}

/// The presence actor: this node's record in the room and what it sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    pub session_id: String,
    /// This node's DTLS certificate fingerprint.
    pub fingerprint: String,
    pub in_group: bool,
    pub fast_poll: bool,
    pub online: Vec<u64>,
    pub publishes: u64,
    pub polls: u64,
    pub errors: u64,
    /// Set while the channel asked us to slow down (milliseconds left).
    pub throttled_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Signals this node sent through the repository and over the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signals {
    pub via_repo: u64,
    pub via_mesh: u64,
}

/// How this node checks who its peers are (rooms that verify identities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Where the members' SSH keys come from: `github` (the users' keys on
    /// GitHub) or `allowed_signers` (the room's members file).
    pub verified_by: String,
    /// Peers this node will not link to, and why.
    pub refused: Vec<RefusedPeer>,
}

/// A peer refused a link because its identity did not verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusedPeer {
    pub node_id: u64,
    /// The user the peer claims to be.
    pub user: String,
    pub reason: String,
}

/// Candidates one offer or answer carried, by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gathered {
    pub host: u32,
    pub srflx: u32,
    pub relay: u32,
}

/// The STUN and TURN servers this node gathers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ice {
    /// The servers' URLs (credentials are never shown).
    pub servers: Vec<String>,
    /// What this node's last offer or answer carried.
    pub last_gathered: Option<Gathered>,
    /// A TURN server is configured and gave no relay candidate.
    pub problem: Option<String>,
}

/// A follower's replication, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    pub node_id: u64,
    pub matched_index: Option<u64>,
    pub lag: u64,
}

/// The committer on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Committer {
    /// This node's committer writes the repository (it leads).
    pub leader: bool,
    /// Everything up to this log index is in the repository.
    pub synced_up_to: u64,
    pub interval_secs: u64,
    pub last_flush: Option<FlushInfo>,
}

/// Calls to the repository's host and its write budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoApi {
    pub calls: u64,
    pub writes_last_minute: Option<u64>,
    pub writes_last_hour: Option<u64>,
    pub write_limit_minute: Option<u64>,
    pub write_limit_hour: Option<u64>,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The node's version.
    pub version: String,
    /// The room's repository spec.
    pub room: String,
    pub node_id: u64,
    pub user: String,
    pub repository: Repository,
    pub consensus: Consensus,
    /// This node can reach the leader raft names (or is it).
    pub leader_reachable: bool,
    pub catch_up: CatchUp,
    pub membership: Option<Membership>,
    pub presence: Option<Presence>,
    pub peers: Vec<Peer>,
    pub signals: Option<Signals>,
    /// `None` on a room that does not verify identities: peers' users are
    /// what they say.
    pub identity: Option<Identity>,
    /// STUN and TURN (nodes on the WebRTC mesh).
    pub ice: Option<Ice>,
    /// Per follower (leaders only).
    pub replication: Option<Vec<Replication>>,
    pub committer: Option<Committer>,
    pub repo_api: Option<RepoApi>,
    /// Messages this node's state machine applied since it started.
    pub messages_applied_total: u64,
}
