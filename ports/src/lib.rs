//! The ports a room talks through, and the formats that cross them.
//!
//! Each port has a real implementation (WebRTC in `skygit-mesh`, the
//! remotes in `skygit-remotes`, or here when it is small) and a simulated
//! one (in `skygit-simulator`); the in-process transport is in
//! `skygit-actors`. Actors never touch the wall clock, an RNG, a socket or
//! the repository except through these. [`layout`] is the repository's
//! file format (batch files, trailers, `config.json`) and [`readback`] a
//! room's history read from the repository alone. This crate needs no
//! actor framework: the real adapters depend on it, not on the actors.

pub mod ice;
pub mod identity;
pub mod layout;
pub mod media;
pub mod members;
pub mod readback;

use std::sync::Arc;

use futures::future::BoxFuture;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ulid::Ulid;

pub use skygit_consensus::ports::{IncomingFrame, LinkError, PeerLink, SystemClock, WallClock};

use skygit_consensus::NodeId;

/// The node's randomness. One seeded generator per node, so a simulation
/// replays from its seed.
pub trait RandomSource: Send + 'static {
    fn next_u128(&mut self) -> u128;
    fn next_u64(&mut self) -> u64;
}

/// A ChaCha8 generator: seeded from the OS for a real node, from the run's
/// seed in the simulator.
pub struct SeededRng(ChaCha8Rng);

impl SeededRng {
    pub fn from_seed(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Seeded from the operating system's entropy.
    pub fn from_os() -> Self {
        Self(ChaCha8Rng::from_os_rng())
    }
}

impl RandomSource for SeededRng {
    fn next_u128(&mut self) -> u128 {
        self.0.random()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

/// Makes request and message ids: ULIDs from the wall-clock port and the
/// node's RNG, strictly increasing on one node even when the clock stalls
/// or steps back.
pub struct IdGen {
    clock: Arc<dyn WallClock>,
    rng: Box<dyn RandomSource>,
    last: Ulid,
}

impl IdGen {
    pub fn new(clock: Arc<dyn WallClock>, rng: Box<dyn RandomSource>) -> Self {
        Self {
            clock,
            rng,
            last: Ulid::nil(),
        }
    }

    pub fn next_id(&mut self) -> Ulid {
        let ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let fresh = Ulid::from_parts(ms, self.rng.next_u128());
        let id = if fresh > self.last {
            fresh
        } else {
            self.last.increment().unwrap_or(fresh)
        };
        self.last = id;
        id
    }

    /// The wall clock this generator stamps with.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Version of the presence record format; records of another version are
/// ignored (and logged) by readers.
pub const PRESENCE_VERSION: u32 = 1;
/// Largest encoded presence record a reader accepts.
pub const MAX_PRESENCE_RECORD_BYTES: usize = 64 * 1024;
/// Most signals one record carries (one per peer being connected to).
pub const MAX_SIGNALS_PER_RECORD: usize = 16;
/// Largest SDP a signal may carry.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// One node's presence record, as published through the repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceRecord {
    #[serde(default = "presence_version")]
    pub version: u32,
    pub user: String,
    pub node_id: NodeId,
    pub session_id: String,
    /// Publisher's wall clock, milliseconds since the Unix epoch.
    pub last_seen: i64,
    /// The node's DTLS certificate fingerprint (`sha-256 AB:CD:...`): a
    /// data channel is kept only when the remote end presents it.
    pub dtls_fingerprint: String,
    /// Whether the node is a member of the room's raft group (it holds raft
    /// state); a newcomer waits to be added by the leader.
    #[serde(default)]
    pub in_group: bool,
    /// WebRTC offers and answers addressed to other nodes.
    #[serde(default)]
    pub signals: Vec<Signal>,
    /// The node's SSH signature of its claim (room, node, session, user,
    /// fingerprint: [`identity::presence_claim`]); `None` on a room that
    /// does not verify identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn presence_version() -> u32 {
    PRESENCE_VERSION
}

/// A WebRTC session description addressed to one peer's session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub to: NodeId,
    /// The addressee's session; a signal for an earlier session is stale.
    pub to_session: String,
    /// The sender's session the description belongs to.
    pub from_session: String,
    /// Distinguishes connection attempts: an answer names the offer's.
    pub attempt: u64,
    pub kind: SignalKind,
    pub sdp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    Offer,
    Answer,
}

/// Why a presence record read from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds {MAX_PRESENCE_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("record version {0}; this node reads version {PRESENCE_VERSION}")]
    Version(u32),
    #[error("record breaks a bound: {0}")]
    Bound(String),
}

impl PresenceRecord {
    /// Encodes the record as the JSON stored in the repository.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a record read from the repository or a peer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_PRESENCE_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let r: PresenceRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if r.version != PRESENCE_VERSION {
            return Err(RecordError::Version(r.version));
        }
        if r.signals.len() > MAX_SIGNALS_PER_RECORD {
            return Err(RecordError::Bound(format!(
                "{} signals (at most {MAX_SIGNALS_PER_RECORD})",
                r.signals.len()
            )));
        }
        if r.identity
            .as_ref()
            .is_some_and(|s| s.len() > identity::MAX_SIGNATURE_BYTES)
        {
            return Err(RecordError::Bound("identity signature length".into()));
        }
        if r.user.is_empty() || r.user.len() > 64 || r.session_id.len() > 128 {
            return Err(RecordError::Bound("user or session length".into()));
        }
        if r.signals.iter().any(|s| s.sdp.len() > MAX_SDP_BYTES) {
            return Err(RecordError::Bound(format!(
                "an SDP over {MAX_SDP_BYTES} bytes"
            )));
        }
        Ok(r)
    }
}

/// A failure of the presence channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence channel unavailable: {0}")]
    Unavailable(String),
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
}

/// Where nodes of a room announce themselves: per-node refs of the room's
/// repository (on GitHub or any git remote), or the simulator's host.
pub trait PresenceChannel: Send + Sync + 'static {
    /// Writes this node's record, replacing its previous one.
    fn publish(&self, record: PresenceRecord) -> BoxFuture<'_, Result<(), PresenceError>>;
    /// Reads every node's latest record.
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>>;
}

/// The head of the room's log branch as the repository reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoHead {
    pub commit_sha: String,
    /// The head commit's message (its trailers carry the raft watermark).
    pub message: String,
}

/// A failure of the repository remote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The branch is not where the commit expected it: the
    /// compare-and-swap was lost. Re-read the head and try again.
    #[error("the branch moved (compare-and-swap lost)")]
    Conflict,
    /// A write may or may not have happened (a timeout or a broken
    /// connection during a call that is not idempotent). Re-read the head
    /// to learn whether it landed; never repeat the call blindly.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("repository unavailable: {0}")]
    Unavailable(String),
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The credentials were refused or lack write access.
    #[error("access denied: {0}")]
    Denied(String),
    /// The repository answered with something this build does not accept.
    #[error("unexpected answer from the repository: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
}

/// A set of files to commit on top of an expected head.
///
/// Author and committer are both [`layout::COMMITTER_NAME`] at
/// `time_secs` (UTC), so the same request on the same head gives the same
/// commit id on every backend.
///
/// [`layout::COMMITTER_NAME`]: crate::layout::COMMITTER_NAME
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    /// `None` for the first commit of an empty branch.
    pub expected_head: Option<String>,
    /// Files to add or replace, by path.
    pub files: Vec<(String, Vec<u8>)>,
    pub message: String,
    /// Author and commit time, seconds since the Unix epoch.
    pub time_secs: i64,
}

/// A commit of the log branch's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub sha: String,
    pub message: String,
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular (possibly executable) file.
    File,
    /// A symbolic link, a submodule or anything else that is not a file.
    Other,
}

/// A file or other non-directory entry of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Full path from the repository root.
    pub path: String,
    pub kind: EntryKind,
    /// The blob id, for [`RepoRemote::read_blob`].
    pub id: String,
    /// Size in bytes when the remote reports it.
    pub size: Option<u64>,
}

/// The repository the room's log is committed to (GitHub API, a git
/// remote, or the simulator's host). Every answer is untrusted input.
pub trait RepoRemote: Send + Sync + 'static {
    /// Where this remote points, for logs and errors (never a secret).
    fn describe(&self) -> String;
    /// The log branch's head, `None` for an empty repository or branch.
    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>>;
    /// Commits on top of `expected_head` and moves the branch there,
    /// failing with [`RepoError::Conflict`] if the branch moved. Answers
    /// the new commit's id.
    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>>;
    /// Up to `max` commits from `from` along first parents, newest first.
    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>>;
    /// The non-directory entries under folder `prefix` of `commit`'s tree
    /// (recursively), at most `max` of them.
    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>>;
    /// A blob's bytes, refused when larger than `max_bytes`.
    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>>;
    /// How many calls to the remote this adapter has made.
    fn calls(&self) -> u64;
    /// The host's write budget as this adapter counts it, when the host
    /// limits writes (GitHub's secondary limits).
    fn write_budget(&self) -> Option<WriteBudget> {
        None
    }
}

/// Writes made and allowed in the host's sliding windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteBudget {
    pub writes_last_minute: u64,
    pub writes_last_hour: u64,
    pub limit_minute: u64,
    pub limit_hour: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedClock(i64);
    impl WallClock for FixedClock {
        fn now_ms(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn ids_increase_even_when_the_clock_stalls() {
        let mut g = IdGen::new(
            Arc::new(FixedClock(1_700_000_000_000)),
            Box::new(SeededRng::from_seed(7)),
        );
        let mut prev = g.next_id();
        for _ in 0..1000 {
            let id = g.next_id();
            assert!(id > prev);
            prev = id;
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_ids() {
        let mk = || IdGen::new(Arc::new(FixedClock(5)), Box::new(SeededRng::from_seed(42)));
        let (mut a, mut b) = (mk(), mk());
        for _ in 0..10 {
            assert_eq!(a.next_id(), b.next_id());
        }
    }
}

/// What a peer transport reports about its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// The link to the peer is open and authenticated.
    Open(NodeId),
    /// The link failed (the peer may be gone); reconnect with backoff.
    Failed { peer: NodeId, reason: String },
    /// The link was closed.
    Closed(NodeId),
    /// The peer presented a certificate other than its presence record's.
    Refused { peer: NodeId, reason: String },
    /// The peer sent bytes that break the wire format; the link was dropped.
    Misbehaved { peer: NodeId, reason: String },
}

/// One link as the transport sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkInfo {
    pub peer: NodeId,
    pub open: bool,
    /// `connecting`, `open`, `failed` or `closed` (any case).
    pub state: String,
    pub rtt_us: Option<u64>,
    pub queued_frames: usize,
    /// The kind of path the link's selected candidate pair takes: `host`
    /// (direct), `srflx` (through NAT, found with STUN), `relay` (through
    /// a TURN server); none before it is known or on other transports.
    pub path: Option<&'static str>,
}

/// Sets up links to peers: WebRTC for a real node, the simulator's model
/// there. Session descriptions are opaque strings carried by signals.
pub trait PeerTransport: Send + Sync + 'static {
    /// This node's certificate fingerprint, published in its record.
    fn fingerprint(&self) -> String;
    /// Starts a link to `peer` as the offering side; returns the offer.
    fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>>;
    /// Answers `peer`'s offer; returns the answer.
    fn answer(
        &self,
        peer: NodeId,
        offer: String,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>>;
    /// Completes this node's offer to `peer` with its answer.
    fn accept_answer(&self, peer: NodeId, answer: String) -> BoxFuture<'_, Result<(), String>>;
    /// Closes the link to `peer`; a link that had not ended reports
    /// [`TransportEvent::Closed`].
    fn close(&self, peer: NodeId) -> BoxFuture<'_, ()>;
    /// Every link's state.
    fn links(&self) -> Vec<LinkInfo>;
}
