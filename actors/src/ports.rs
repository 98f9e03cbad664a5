//! The ports actors talk through. Each has a real implementation (in
//! `skygit` the binary, or here when it is small) and a simulated one (in
//! `skygit-simulator`). Actors never touch the wall clock, an RNG, a socket
//! or the repository except through these.

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

/// One node's presence record, as published through the repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceRecord {
    pub user: String,
    pub node_id: NodeId,
    pub session_id: String,
    /// Publisher's wall clock, milliseconds since the Unix epoch.
    pub last_seen: i64,
    pub dtls_fingerprint: String,
}

/// A failure of the presence channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence channel unavailable: {0}")]
    Unavailable(String),
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
}

/// Where nodes of a room announce themselves (a GitHub Discussion, per-node
/// refs of a git remote, or the simulator's host).
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
    /// The raft watermark read back from the head commit's trailers.
    pub raft_last_index: u64,
}

/// A failure of the repository remote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    #[error("the branch moved (compare-and-swap lost)")]
    Conflict,
    #[error("repository unavailable: {0}")]
    Unavailable(String),
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
}

/// A set of files to commit on top of an expected head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    pub expected_head: Option<String>,
    pub files: Vec<(String, Vec<u8>)>,
    pub message: String,
}

/// The repository the room's log is committed to (GitHub API, a git
/// remote, or the simulator's host).
pub trait RepoRemote: Send + Sync + 'static {
    /// The log branch's head, `None` for an empty repository.
    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>>;
    /// Commits on top of `expected_head`, failing with
    /// [`RepoError::Conflict`] if the branch moved.
    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>>;
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
