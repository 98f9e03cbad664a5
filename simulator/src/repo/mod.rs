//! The simulated repository host: the room's log branch and the nodes'
//! presence records, as GitHub would keep them, with GitHub's failures.
//!
//! The host keeps a real commit history in memory: content-addressed
//! blobs, commits with a parent, a full tree and a message, and the
//! branch head. A commit is a compare-and-swap on the branch (the
//! request's `expected_head` must be the head), as GitHub's non-forced
//! ref update is. Every successful ref update is recorded, so the checker
//! can ask afterwards whether the branch ever lost a commit or was moved
//! twice from the same version ([`SimRepoHost::check_history`]).
//!
//! Presence records live beside the branch (like the per-node refs of a
//! real repository), one per node, never in the commit history.
//!
//! Faults ([`RepoFaults`]): a seeded latency per call (reads are
//! sometimes much slower), 502/503 answers, injected 409/422 refusals of
//! a commit, commits that land but whose answer is lost, secondary rate
//! limit answers, per-client write budgets (a minute and an hour window,
//! like GitHub's secondary limits) and a whole-host outage. The
//! `committer-ignores-cas` canary ([`SimRepoHost::set_ignore_cas`]) makes
//! commits force-move the branch, which the history check must catch.
//!
//! Determinism: every random choice is drawn from one seeded ChaCha8
//! generator under the host's lock, and time is tokio's (paused) clock,
//! so a run's calls, in the runtime's deterministic order, always meet
//! the same answers.

mod handles;
mod objects;

pub use handles::*;
use objects::*;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Display;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use skygit_actors::ports::{
    CommitInfo, CommitRequest, EntryKind, PresenceChannel, PresenceError, PresenceRecord,
    RepoError, RepoHead, RepoRemote, TreeEntry, MAX_PRESENCE_RECORD_BYTES,
};
use skygit_consensus::NodeId;
use tokio::time::Instant;

use crate::trace::Trace;

/// Most files one commit request may carry.
pub const MAX_FILES_PER_COMMIT: usize = 10_000;
/// Largest file one commit request may carry.
pub const MAX_BLOB_BYTES: usize = 16 * 1024 * 1024;
/// Largest commit message accepted.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest path accepted.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most presence records one fetch reads (the real channels' bound).
pub const MAX_PRESENCE_RECORDS: usize = 256;
/// Largest raw presence record the host stores (readers refuse anything
/// over [`MAX_PRESENCE_RECORD_BYTES`] anyway).
const MAX_STORED_PRESENCE_BYTES: usize = 4 * MAX_PRESENCE_RECORD_BYTES;
/// Violations [`SimRepoHost::check_history`] lists before summarising.
const MAX_VIOLATIONS: usize = 100;
/// Wait a secondary rate-limit answer asks for (GitHub: a minute).
const SECONDARY_LIMIT_WAIT_MS: u64 = 60_000;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// What the host does wrong, and how slowly.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RepoFaults {
    /// Latency of every call, drawn uniformly from `latency_min..=latency_max`.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Chance a read (head, history, list, read_blob, fetch) is slow, and
    /// by how much.
    pub slow_read: f64,
    pub slow_read_extra: Duration,
    /// Chance a write (commit, publish) is slow, and by how much. A write
    /// is applied when its request reaches the host, even if the caller
    /// has given up on it or crashed meanwhile.
    pub slow_write: f64,
    pub slow_write_extra: Duration,
    /// Chance a call is answered 502/503, without effect.
    pub p_5xx: f64,
    /// Chance a commit is answered 409 (a ref update conflict), without effect.
    pub p_409: f64,
    /// Chance a commit is answered 422 ("not a fast forward"), without effect.
    pub p_422: f64,
    /// Chance a write is applied but its answer is lost (a timeout).
    pub p_lost_answer: f64,
    /// Chance a write is answered with a secondary rate limit (a minute).
    pub p_rate_limit: f64,
    /// Per-client write budgets; 0 disables a window.
    pub writes_per_minute: u32,
    pub writes_per_hour: u32,
}

impl RepoFaults {
    /// No faults, no latency, no write budget.
    pub fn none() -> Self {
        Self {
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
            slow_read: 0.0,
            slow_read_extra: Duration::ZERO,
            slow_write: 0.0,
            slow_write_extra: Duration::ZERO,
            p_5xx: 0.0,
            p_409: 0.0,
            p_422: 0.0,
            p_lost_answer: 0.0,
            p_rate_limit: 0.0,
            writes_per_minute: 0,
            writes_per_hour: 0,
        }
    }
}

impl Default for RepoFaults {
    /// Roughly what GitHub does on a bad day.
    fn default() -> Self {
        Self {
            latency_min: Duration::from_millis(30),
            latency_max: Duration::from_millis(300),
            slow_read: 0.02,
            slow_read_extra: Duration::from_secs(2),
            slow_write: 0.05,
            slow_write_extra: Duration::from_secs(8),
            p_5xx: 0.02,
            p_409: 0.005,
            p_422: 0.005,
            p_lost_answer: 0.01,
            p_rate_limit: 0.002,
            writes_per_minute: 80,
            writes_per_hour: 500,
        }
    }
}

/// What the host saw and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepoStats {
    /// Every call that reached the host.
    pub calls: u64,
    pub reads: u64,
    pub writes: u64,
    /// Commits that moved the branch (including those whose answer was lost).
    pub commits: u64,
    /// Compare-and-swaps lost for real (the branch had moved).
    pub conflicts: u64,
    pub injected_5xx: u64,
    /// Injected 409 and 422 refusals.
    pub injected_conflicts: u64,
    /// Writes applied whose answer was lost.
    pub lost_answers: u64,
    /// Writes refused by a budget or an injected secondary limit.
    pub rate_limited: u64,
    pub outage_refusals: u64,
    /// Presence records stored.
    pub presence_publishes: u64,
    /// Presence fetches answered.
    pub presence_fetches: u64,
}

/// A tree: full path -> blob id.
type Tree = BTreeMap<Arc<str>, Arc<str>>;

struct Commit {
    parent: Option<String>,
    tree: Arc<Tree>,
    message: String,
}

/// One successful move of the branch.
struct RefUpdate {
    node: NodeId,
    /// The head before the update.
    from: Option<String>,
    /// The head the writer built on (the new commit's parent).
    base: Option<String>,
    to: String,
}

#[derive(Default)]
struct Client {
    calls: u64,
    /// Times of this client's writes in the last hour, oldest first.
    writes: VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Head,
    Commit,
    History,
    List,
    ReadBlob,
    Publish,
    Fetch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Head => "head",
            Op::Commit => "commit",
            Op::History => "history",
            Op::List => "list",
            Op::ReadBlob => "read_blob",
            Op::Publish => "publish",
            Op::Fetch => "fetch",
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Op::Commit | Op::Publish)
    }
}

/// Why a call failed before reaching its operation.
enum Fault {
    Outage,
    ServerError,
    RateLimited(u64),
}

impl From<Fault> for RepoError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Outage => RepoError::Unavailable("sim://repo is down (503)".into()),
            Fault::ServerError => RepoError::Unavailable("sim://repo answered 502".into()),
            Fault::RateLimited(ms) => RepoError::RateLimited { retry_after_ms: ms },
        }
    }
}

impl From<Fault> for PresenceError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Outage => PresenceError::Unavailable("sim://repo is down (503)".into()),
            Fault::ServerError => PresenceError::Unavailable("sim://repo answered 502".into()),
            Fault::RateLimited(ms) => PresenceError::RateLimited { retry_after_ms: ms },
        }
    }
}

struct Host {
    rng: ChaCha8Rng,
    faults: RepoFaults,
    outage: bool,
    ignore_cas: bool,
    blobs: BTreeMap<Arc<str>, Arc<Vec<u8>>>,
    commits: BTreeMap<String, Commit>,
    head: Option<String>,
    updates: Vec<RefUpdate>,
    presence: BTreeMap<NodeId, Arc<Vec<u8>>>,
    clients: BTreeMap<NodeId, Client>,
    stats: RepoStats,
    trace: Trace,
}

impl Host {
    fn client(&mut self, node: NodeId) -> &mut Client {
        self.clients.entry(node).or_default()
    }

    fn event(&self, node: NodeId, kind: &str, detail: impl Display) {
        self.trace.event(node, kind, detail);
    }

    fn head_sha(&self) -> Option<&str> {
        self.head.as_deref()
    }

    /// Counts a call and draws its latency.
    fn start(&mut self, node: NodeId, op: Op) -> Duration {
        self.stats.calls += 1;
        if op.is_write() {
            self.stats.writes += 1;
        } else {
            self.stats.reads += 1;
        }
        self.client(node).calls += 1;
        let f = self.faults;
        let (lo, hi) = {
            let (a, b) = (nanos(f.latency_min), nanos(f.latency_max));
            (a.min(b), a.max(b))
        };
        let mut latency = Duration::from_nanos(self.rng.random_range(lo..=hi));
        if !op.is_write() && self.rng.random_bool(prob(f.slow_read)) {
            latency = latency.saturating_add(f.slow_read_extra);
        }
        if op.is_write() && self.rng.random_bool(prob(f.slow_write)) {
            latency = latency.saturating_add(f.slow_write_extra);
        }
        latency
    }

    /// How long until `node` may write again, or `None` (and the write
    /// counted) when its budget allows one now.
    fn take_budget(&mut self, node: NodeId) -> Option<u64> {
        let (per_minute, per_hour) = (
            self.faults.writes_per_minute as usize,
            self.faults.writes_per_hour as usize,
        );
        let now = Instant::now();
        let w = &mut self.client(node).writes;
        while w.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            w.pop_front();
        }
        let last_minute = w
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < MINUTE)
            .count();
        let mut wait = Duration::ZERO;
        if per_hour > 0 && w.len() >= per_hour {
            // The write that must leave the hour for one more to fit.
            if let Some(t) = w.get(w.len() - per_hour) {
                wait = wait.max(HOUR.saturating_sub(now.duration_since(*t)));
            }
        }
        if per_minute > 0 && last_minute >= per_minute {
            if let Some(t) = w.get(w.len() - per_minute) {
                wait = wait.max(MINUTE.saturating_sub(now.duration_since(*t)));
            }
        }
        if wait > Duration::ZERO {
            let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            return Some(ms.max(1));
        }
        w.push_back(now);
        None
    }

    /// The faults every call may meet once its latency has passed.
    fn prelude(&mut self, node: NodeId, op: Op) -> Result<(), Fault> {
        if self.outage {
            self.stats.outage_refusals += 1;
            self.event(node, "repo.outage", op.name());
            return Err(Fault::Outage);
        }
        if op.is_write() {
            if let Some(ms) = self.take_budget(node) {
                self.stats.rate_limited += 1;
                self.event(
                    node,
                    "repo.rate_limited",
                    format_args!("{} budget retry_after_ms={ms}", op.name()),
                );
                return Err(Fault::RateLimited(ms));
            }
            if self.rng.random_bool(prob(self.faults.p_rate_limit)) {
                self.stats.rate_limited += 1;
                self.event(
                    node,
                    "repo.rate_limited",
                    format_args!(
                        "{} secondary retry_after_ms={SECONDARY_LIMIT_WAIT_MS}",
                        op.name()
                    ),
                );
                return Err(Fault::RateLimited(SECONDARY_LIMIT_WAIT_MS));
            }
        }
        if self.rng.random_bool(prob(self.faults.p_5xx)) {
            self.stats.injected_5xx += 1;
            self.event(node, "repo.5xx", op.name());
            return Err(Fault::ServerError);
        }
        Ok(())
    }

    fn invalid(&self, node: NodeId, op: Op, reason: String) -> RepoError {
        self.event(node, "repo.invalid", format_args!("{} {reason}", op.name()));
        RepoError::Invalid(reason)
    }

    fn not_found(&self, node: NodeId, op: Op, what: String) -> RepoError {
        self.event(node, "repo.not_found", format_args!("{} {what}", op.name()));
        RepoError::NotFound(what)
    }

    fn head(&mut self, node: NodeId) -> Result<Option<RepoHead>, RepoError> {
        self.prelude(node, Op::Head)?;
        let head = self.head.as_ref().and_then(|sha| {
            self.commits.get(sha).map(|c| RepoHead {
                commit_sha: sha.clone(),
                message: c.message.clone(),
            })
        });
        self.event(
            node,
            "repo.head",
            short_opt(head.as_ref().map(|h| h.commit_sha.as_str())),
        );
        Ok(head)
    }

    fn validate(req: &CommitRequest) -> Result<(), String> {
        if req.files.len() > MAX_FILES_PER_COMMIT {
            return Err(format!(
                "{} files in one commit (at most {MAX_FILES_PER_COMMIT})",
                req.files.len()
            ));
        }
        if req.message.len() > MAX_MESSAGE_BYTES {
            return Err(format!(
                "a commit message of {} bytes (at most {MAX_MESSAGE_BYTES})",
                req.message.len()
            ));
        }
        for (path, bytes) in &req.files {
            check_path(path)?;
            if bytes.len() > MAX_BLOB_BYTES {
                return Err(format!(
                    "{path}: {} bytes (at most {MAX_BLOB_BYTES})",
                    bytes.len()
                ));
            }
        }
        Ok(())
    }

    fn commit(&mut self, node: NodeId, req: CommitRequest) -> Result<String, RepoError> {
        let op = Op::Commit;
        self.prelude(node, op)?;
        if let Err(reason) = Self::validate(&req) {
            return Err(self.invalid(node, op, reason));
        }
        for status in ["409", "422"] {
            let p = if status == "409" {
                self.faults.p_409
            } else {
                self.faults.p_422
            };
            if self.rng.random_bool(prob(p)) {
                self.stats.injected_conflicts += 1;
                self.event(node, "repo.injected_conflict", status);
                return Err(RepoError::Conflict);
            }
        }
        let expected = req.expected_head.as_deref();
        let moved = expected != self.head_sha();
        let unknown_parent = expected.is_some_and(|e| !self.commits.contains_key(e));
        if (moved && !self.ignore_cas) || unknown_parent {
            self.stats.conflicts += 1;
            self.event(
                node,
                "repo.conflict",
                format_args!(
                    "expected {} head {}",
                    short_opt(expected),
                    short_opt(self.head_sha())
                ),
            );
            return Err(RepoError::Conflict);
        }

        // Build the commit on the expected head's tree.
        let mut tree: Tree = match expected.and_then(|e| self.commits.get(e)) {
            Some(parent) => (*parent.tree).clone(),
            None => Tree::new(),
        };
        let nfiles = req.files.len();
        let mut new_blobs = Vec::with_capacity(nfiles);
        let mut new_paths = Vec::with_capacity(nfiles);
        for (path, bytes) in req.files {
            let id: Arc<str> = object_id("blob", &[&bytes]).into();
            let path: Arc<str> = path.into();
            tree.insert(path.clone(), id.clone());
            new_paths.push(path);
            new_blobs.push((id, bytes));
        }
        // The base tree has no clash, so any clash involves a new path.
        for path in &new_paths {
            if let Some(clash) = file_folder_clash(&tree, path) {
                return Err(self.invalid(
                    node,
                    op,
                    format!("{clash} would be both a file and a folder"),
                ));
            }
        }
        let sha = object_id(
            "commit",
            &[
                expected.unwrap_or("").as_bytes(),
                tree_id(&tree).as_bytes(),
                &req.time_secs.to_le_bytes(),
                req.message.as_bytes(),
            ],
        );
        for (id, bytes) in new_blobs {
            self.blobs.entry(id).or_insert_with(|| Arc::new(bytes));
        }
        let base = req.expected_head.clone();
        self.commits.entry(sha.clone()).or_insert_with(|| Commit {
            parent: base.clone(),
            tree: Arc::new(tree),
            message: req.message,
        });
        let from = self.head.replace(sha.clone());
        self.stats.commits += 1;
        let detail = format!(
            "{}->{} files={nfiles}{}",
            short_opt(from.as_deref()),
            short(&sha),
            if moved { " forced" } else { "" }
        );
        self.updates.push(RefUpdate {
            node,
            from,
            base,
            to: sha.clone(),
        });
        if self.rng.random_bool(prob(self.faults.p_lost_answer)) {
            self.stats.lost_answers += 1;
            self.event(node, "repo.lost_answer", format_args!("commit {detail}"));
            return Err(RepoError::Unknown(
                "sim://repo: the answer to the ref update was lost (timeout)".into(),
            ));
        }
        self.event(node, "repo.commit", format_args!("ok {detail}"));
        Ok(sha)
    }

    fn history(
        &mut self,
        node: NodeId,
        from: &str,
        max: usize,
    ) -> Result<Vec<CommitInfo>, RepoError> {
        let op = Op::History;
        self.prelude(node, op)?;
        if !self.commits.contains_key(from) {
            return Err(self.not_found(node, op, format!("commit {}", short(from))));
        }
        let mut out = Vec::new();
        let mut next = Some(from.to_owned());
        while let Some(sha) = next {
            if out.len() >= max {
                break;
            }
            let Some(c) = self.commits.get(&sha) else {
                break;
            };
            next = c.parent.clone();
            out.push(CommitInfo {
                sha,
                message: c.message.clone(),
            });
        }
        self.event(
            node,
            "repo.history",
            format_args!("{} n={}", short(from), out.len()),
        );
        Ok(out)
    }

    fn list(
        &mut self,
        node: NodeId,
        commit: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<TreeEntry>, RepoError> {
        let op = Op::List;
        self.prelude(node, op)?;
        let Some(c) = self.commits.get(commit) else {
            return Err(self.not_found(node, op, format!("commit {}", short(commit))));
        };
        let tree = c.tree.clone();
        let folder = prefix.trim_end_matches('/');
        if tree.contains_key(folder) {
            return Err(self.invalid(node, op, format!("{folder} is not a folder")));
        }
        let dir = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let mut out = Vec::new();
        for (path, id) in under(&tree, &dir) {
            if out.len() >= max {
                // As the real adapters do: never a silently partial listing.
                return Err(self.invalid(
                    node,
                    op,
                    format!("{folder:?} holds more than {max} files"),
                ));
            }
            out.push(TreeEntry {
                path: path.to_string(),
                kind: EntryKind::File,
                id: id.to_string(),
                size: self.blobs.get(id).map(|b| b.len() as u64),
            });
        }
        self.event(
            node,
            "repo.list",
            format_args!("{} {folder:?} n={}", short(commit), out.len()),
        );
        Ok(out)
    }

    fn read_blob(
        &mut self,
        node: NodeId,
        id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, RepoError> {
        let op = Op::ReadBlob;
        self.prelude(node, op)?;
        let Some(blob) = self.blobs.get(id).cloned() else {
            return Err(self.not_found(node, op, format!("blob {}", short(id))));
        };
        if blob.len() > max_bytes {
            return Err(self.invalid(
                node,
                op,
                format!(
                    "blob {} is {} bytes, more than the limit of {max_bytes}",
                    short(id),
                    blob.len()
                ),
            ));
        }
        self.event(
            node,
            "repo.read_blob",
            format_args!("{} bytes={}", short(id), blob.len()),
        );
        Ok(blob.as_ref().clone())
    }

    fn publish(&mut self, node: NodeId, bytes: Vec<u8>) -> Result<(), PresenceError> {
        self.prelude(node, Op::Publish)?;
        let len = bytes.len();
        self.presence.insert(node, Arc::new(bytes));
        self.stats.presence_publishes += 1;
        if self.rng.random_bool(prob(self.faults.p_lost_answer)) {
            self.stats.lost_answers += 1;
            self.event(
                node,
                "repo.lost_answer",
                format_args!("publish bytes={len}"),
            );
            return Err(PresenceError::Unavailable(
                "sim://repo: the answer to the presence update was lost (timeout)".into(),
            ));
        }
        self.event(node, "repo.publish", format_args!("bytes={len}"));
        Ok(())
    }

    fn fetch(&mut self, node: NodeId) -> Result<Vec<PresenceRecord>, PresenceError> {
        self.prelude(node, Op::Fetch)?;
        let mut out = Vec::new();
        let mut skipped = 0usize;
        for (owner, bytes) in self.presence.iter().take(MAX_PRESENCE_RECORDS) {
            match PresenceRecord::from_json(bytes) {
                // A record claiming another node's id than its ref's is
                // skipped, as the real channels do.
                Ok(r) if r.node_id == *owner => out.push(r),
                _ => skipped += 1,
            }
        }
        self.stats.presence_fetches += 1;
        self.event(
            node,
            "repo.fetch",
            format_args!("{} skipped={skipped}", out.len()),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
