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

/// The first 8 characters of an id, for trace lines.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn short_opt(id: Option<&str>) -> &str {
    id.map(short).unwrap_or("none")
}

/// A probability usable by `random_bool`.
fn prob(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A deterministic 40-hex id of `kind` over `parts`.
fn object_id(kind: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..20])
}

fn tree_id(tree: &Tree) -> String {
    let mut h = Sha256::new();
    h.update(b"tree");
    for (path, blob) in tree {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(blob.as_bytes());
    }
    hex::encode(&h.finalize()[..20])
}

/// Whether git would accept `path` as a file's path.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("path of {} bytes", path.len()));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} holds a NUL"));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!("{path:?} is not a clean relative path"));
    }
    Ok(())
}

/// The entries of `tree` under folder `dir` (which ends in `/`).
fn under<'a>(tree: &'a Tree, dir: &'a str) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)> {
    tree.range::<str, _>((Bound::Included(dir), Bound::Unbounded))
        .take_while(move |(p, _)| p.starts_with(dir))
}

/// A path of `tree` that is both a file and a folder, if any.
fn file_folder_clash(tree: &Tree, path: &str) -> Option<String> {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let folder = &path[..end + i];
        if tree.contains_key(folder) {
            return Some(folder.to_owned());
        }
        end += i + 1;
    }
    let dir = format!("{path}/");
    let clash = under(tree, &dir).next().is_some();
    clash.then(|| path.to_owned())
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

/// The simulated repository host shared by every node of a run.
#[derive(Clone)]
pub struct SimRepoHost {
    inner: Arc<Mutex<Host>>,
}

impl SimRepoHost {
    /// A host with an empty branch. Must be created inside the
    /// simulation's runtime (the write budgets read tokio time).
    pub fn new(seed: u64, faults: RepoFaults, trace: Trace) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Host {
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults,
                outage: false,
                ignore_cas: false,
                blobs: BTreeMap::new(),
                commits: BTreeMap::new(),
                head: None,
                updates: Vec::new(),
                presence: BTreeMap::new(),
                clients: BTreeMap::new(),
                stats: RepoStats::default(),
                trace,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Host> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `node`'s handle; implements both [`RepoRemote`] and
    /// [`PresenceChannel`].
    pub fn client(&self, node: NodeId) -> SimRepo {
        SimRepo {
            host: self.clone(),
            node,
        }
    }

    /// While down, every call is answered 503 (after its latency).
    pub fn set_outage(&self, down: bool) {
        let mut h = self.lock();
        h.outage = down;
        h.event(0, "repo.set_outage", if down { "down" } else { "up" });
    }

    /// Replaces the fault settings (e.g. [`RepoFaults::none`] for a quiet
    /// period at the end of a run).
    pub fn set_faults(&self, faults: RepoFaults) {
        let mut h = self.lock();
        h.faults = faults;
        h.event(0, "repo.set_faults", format_args!("{faults:?}"));
    }

    /// The `committer-ignores-cas` canary: commits ignore `expected_head`
    /// and force-move the branch to a new commit whose parent is
    /// `expected_head`, overwriting whatever moved the branch meanwhile.
    pub fn set_ignore_cas(&self, on: bool) {
        let mut h = self.lock();
        h.ignore_cas = on;
        h.event(0, "repo.set_ignore_cas", on);
    }

    /// Stores raw bytes as `node`'s presence record, as a hostile or
    /// broken client could (at most 256 KiB; larger is dropped).
    pub fn inject_presence(&self, node: NodeId, bytes: Vec<u8>) {
        let mut h = self.lock();
        if bytes.len() > MAX_STORED_PRESENCE_BYTES {
            h.event(
                0,
                "repo.inject_presence",
                format_args!("n{node} dropped bytes={}", bytes.len()),
            );
            return;
        }
        h.event(
            0,
            "repo.inject_presence",
            format_args!("n{node} bytes={}", bytes.len()),
        );
        h.presence.insert(node, Arc::new(bytes));
    }

    /// The branch head `(sha, message)`, without faults or latency.
    pub fn head(&self) -> Option<(String, String)> {
        let h = self.lock();
        let sha = h.head.clone()?;
        let message = h.commits.get(&sha).map(|c| c.message.clone())?;
        Some((sha, message))
    }

    /// Every file of the head commit's tree: path -> bytes.
    pub fn files_at_head(&self) -> BTreeMap<String, Vec<u8>> {
        let h = self.lock();
        let Some(c) = h.head.as_ref().and_then(|s| h.commits.get(s)) else {
            return BTreeMap::new();
        };
        c.tree
            .iter()
            .map(|(path, id)| {
                let bytes = h.blobs.get(id).map(|b| b.as_ref().clone());
                (path.to_string(), bytes.unwrap_or_default())
            })
            .collect()
    }

    /// Checks the history invariants; one string per violation:
    /// (1) every commit that was ever the branch head is a first-parent
    /// ancestor of the current head (linear, nothing lost);
    /// (2) no two successful updates moved the branch from the same
    /// version (both built on the same head, or both on an empty branch).
    pub fn check_history(&self) -> Vec<String> {
        let h = self.lock();
        let mut out = Vec::new();
        let mut ancestors = BTreeSet::new();
        let mut next = h.head.clone();
        while let Some(sha) = next {
            if !ancestors.insert(sha.clone()) {
                out.push(format!("the history of the head loops at {}", short(&sha)));
                break;
            }
            next = h.commits.get(&sha).and_then(|c| c.parent.clone());
        }
        let mut reported = BTreeSet::new();
        for (i, u) in h.updates.iter().enumerate() {
            if !ancestors.contains(&u.to) && reported.insert(u.to.as_str()) {
                out.push(format!(
                    "lost commit: {} (update #{i} by n{}, {} -> {}) is not a first-parent \
                     ancestor of the head {}",
                    short(&u.to),
                    u.node,
                    short_opt(u.from.as_deref()),
                    short(&u.to),
                    short_opt(h.head.as_deref()),
                ));
            }
        }
        let mut by_base: BTreeMap<Option<&str>, Vec<(usize, &RefUpdate)>> = BTreeMap::new();
        for (i, u) in h.updates.iter().enumerate() {
            by_base.entry(u.base.as_deref()).or_default().push((i, u));
        }
        for (base, ups) in by_base {
            if ups.len() < 2 {
                continue;
            }
            let list: Vec<String> = ups
                .iter()
                .map(|(i, u)| format!("#{i} by n{} -> {}", u.node, short(&u.to)))
                .collect();
            out.push(format!(
                "double update: {} successful updates moved the branch from {}: {}",
                ups.len(),
                base.map(short).unwrap_or("the empty branch"),
                list.join(", ")
            ));
        }
        if out.len() > MAX_VIOLATIONS {
            let more = out.len() - MAX_VIOLATIONS;
            out.truncate(MAX_VIOLATIONS);
            out.push(format!("... and {more} more violations"));
        }
        out
    }

    /// Counters of the run so far.
    pub fn stats(&self) -> RepoStats {
        self.lock().stats.clone()
    }
}

/// One node's handle on the host.
#[derive(Clone)]
pub struct SimRepo {
    host: SimRepoHost,
    node: NodeId,
}

impl SimRepo {
    /// The node this handle calls as.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Counts the call, then waits its seeded latency.
    async fn latency(&self, op: Op) {
        let wait = self.host.lock().start(self.node, op);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs `f` on the host, under its lock, after the call's latency.
    async fn call<T>(&self, op: Op, f: impl FnOnce(&mut Host, NodeId) -> T) -> T {
        self.latency(op).await;
        let mut h = self.host.lock();
        f(&mut h, self.node)
    }
}

impl RepoRemote for SimRepo {
    fn describe(&self) -> String {
        "sim://repo".into()
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        Box::pin(self.call(Op::Head, |h, n| h.head(n)))
    }

    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        // The request is on its way: the host applies it after the
        // latency whether or not the caller is still waiting.
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let res = this.call(Op::Commit, move |h, n| h.commit(n, req)).await;
            let _ = tx.send(res);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(RepoError::Unknown("the host went away".into())))
        })
    }

    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        Box::pin(self.call(Op::History, move |h, n| h.history(n, from, max)))
    }

    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        Box::pin(self.call(Op::List, move |h, n| h.list(n, commit, prefix, max)))
    }

    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        Box::pin(self.call(Op::ReadBlob, move |h, n| h.read_blob(n, id, max_bytes)))
    }

    fn calls(&self) -> u64 {
        self.host
            .lock()
            .clients
            .get(&self.node)
            .map(|c| c.calls)
            .unwrap_or(0)
    }
}

impl PresenceChannel for SimRepo {
    fn publish(&self, record: PresenceRecord) -> BoxFuture<'_, Result<(), PresenceError>> {
        Box::pin(async move {
            // Checked by the client before any call, as the real channels do.
            let refused = if record.node_id != self.node {
                Some(format!(
                    "a record of node {} cannot be published as node {}",
                    record.node_id, self.node
                ))
            } else {
                PresenceRecord::from_json(&record.to_json())
                    .err()
                    .map(|e| format!("this node's record would be refused: {e}"))
            };
            if let Some(reason) = refused {
                self.host
                    .lock()
                    .event(self.node, "repo.publish_refused", &reason);
                return Err(PresenceError::Unavailable(reason));
            }
            let bytes = record.to_json();
            self.call(Op::Publish, move |h, n| h.publish(n, bytes))
                .await
        })
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>> {
        Box::pin(self.call(Op::Fetch, |h, n| h.fetch(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skygit_actors::ports::PRESENCE_VERSION;

    fn host(seed: u64, faults: RepoFaults) -> SimRepoHost {
        SimRepoHost::new(seed, faults, Trace::new(None).expect("trace"))
    }

    fn req(expected: Option<&str>, files: &[(&str, &str)], message: &str) -> CommitRequest {
        CommitRequest {
            expected_head: expected.map(str::to_owned),
            files: files
                .iter()
                .map(|(p, b)| (p.to_string(), b.as_bytes().to_vec()))
                .collect(),
            message: message.to_owned(),
            time_secs: 1_700_000_000,
        }
    }

    fn record(node: NodeId) -> PresenceRecord {
        PresenceRecord {
            version: PRESENCE_VERSION,
            user: format!("u{node}"),
            node_id: node,
            session_id: format!("s{node}"),
            last_seen: 1_700_000_000_000,
            dtls_fingerprint: "sha-256 AB:CD".into(),
            in_group: true,
            signals: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cas_conflict_when_expected_head_is_stale() {
        let h = host(1, RepoFaults::none());
        let (a, b) = (h.client(1), h.client(2));
        let c1 = a.commit(req(None, &[("x", "1")], "init")).await.unwrap();
        // A second initial commit finds the branch taken.
        assert_eq!(
            b.commit(req(None, &[("y", "1")], "init too")).await,
            Err(RepoError::Conflict)
        );
        let c2 = a
            .commit(req(Some(&c1), &[("x", "2")], "second"))
            .await
            .unwrap();
        // b still believes c1 is the head.
        assert_eq!(
            b.commit(req(Some(&c1), &[("z", "3")], "stale")).await,
            Err(RepoError::Conflict)
        );
        // An unknown expected head is a conflict too.
        assert_eq!(
            b.commit(req(Some(&"0".repeat(40)), &[("z", "3")], "bogus"))
                .await,
            Err(RepoError::Conflict)
        );
        assert_eq!(h.head().map(|(s, _)| s), Some(c2.clone()));
        assert_eq!(h.stats().conflicts, 3);
        assert_eq!(h.stats().commits, 2);
        assert_eq!(a.calls(), 2);
        assert_eq!(b.calls(), 3);
        assert!(h.check_history().is_empty(), "{:?}", h.check_history());
    }

    #[tokio::test(start_paused = true)]
    async fn linear_history_passes_check_history() {
        let h = host(2, RepoFaults::none());
        let clients = [h.client(1), h.client(2), h.client(3)];
        let mut head: Option<String> = None;
        for i in 0..30u32 {
            let c = &clients[(i % 3) as usize];
            let r = req(
                head.as_deref(),
                &[(&format!("d/{i}.txt"), "x")],
                &format!("c{i}"),
            );
            head = Some(c.commit(r).await.unwrap());
        }
        assert_eq!(h.head(), Some((head.unwrap(), "c29".into())));
        assert!(h.check_history().is_empty(), "{:?}", h.check_history());
        assert_eq!(h.files_at_head().len(), 30);
        assert_eq!(h.stats().commits, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn ignoring_cas_loses_a_commit_and_check_history_reports_it() {
        let h = host(3, RepoFaults::none());
        let (a, b) = (h.client(1), h.client(2));
        let base = a.commit(req(None, &[("x", "0")], "init")).await.unwrap();
        h.set_ignore_cas(true);
        let ca = a
            .commit(req(Some(&base), &[("a", "1")], "from a"))
            .await
            .unwrap();
        let cb = b
            .commit(req(Some(&base), &[("b", "1")], "from b"))
            .await
            .unwrap();
        assert_ne!(ca, cb);
        assert_eq!(h.head().map(|(s, _)| s), Some(cb));
        // a's file is gone from the branch.
        assert!(!h.files_at_head().contains_key("a"));
        let v = h.check_history();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].starts_with("lost commit") && v[0].contains(short(&ca)),
            "{v:?}"
        );
        assert!(
            v[1].starts_with("double update") && v[1].contains(short(&base)),
            "{v:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn list_history_and_read_blob_agree_with_commits() {
        let h = host(4, RepoFaults::none());
        let c = h.client(1);
        let c1 = c
            .commit(req(
                None,
                &[
                    (".messages/config.json", "{}"),
                    ("a/b/c.json", "abc"),
                    ("a/bc", "not under a/b"),
                ],
                "one",
            ))
            .await
            .unwrap();
        let c2 = c
            .commit(req(
                Some(&c1),
                &[("a/b/c.json", "changed"), ("a/b/d/e.json", "deep")],
                "two",
            ))
            .await
            .unwrap();

        let hist = c.history(&c2, 10).await.unwrap();
        let shas: Vec<_> = hist
            .iter()
            .map(|i| (i.sha.as_str(), i.message.as_str()))
            .collect();
        assert_eq!(shas, vec![(c2.as_str(), "two"), (c1.as_str(), "one")]);
        assert_eq!(c.history(&c2, 1).await.unwrap().len(), 1);
        assert!(c.history(&c2, 0).await.unwrap().is_empty());
        assert!(matches!(
            c.history(&"f".repeat(40), 5).await,
            Err(RepoError::NotFound(_))
        ));

        let listed = c.list(&c2, "a/b", 10).await.unwrap();
        let paths: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["a/b/c.json", "a/b/d/e.json"]);
        assert!(listed.iter().all(|e| e.kind == EntryKind::File));
        assert_eq!(listed[0].size, Some(7));
        assert_eq!(c.read_blob(&listed[0].id, 100).await.unwrap(), b"changed");
        // The old commit still has the old content.
        let old = c.list(&c1, "a/b/", 10).await.unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(c.read_blob(&old[0].id, 100).await.unwrap(), b"abc");
        // Everything, sorted.
        let all = c.list(&c2, "", 10).await.unwrap();
        let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                ".messages/config.json",
                "a/b/c.json",
                "a/b/d/e.json",
                "a/bc"
            ]
        );
        // More than max: refused, never silently partial.
        assert!(matches!(
            c.list(&c2, "", 3).await,
            Err(RepoError::Invalid(_))
        ));
        assert_eq!(c.list(&c2, "", 4).await.unwrap().len(), 4);
        // A missing folder is empty; a file is not a folder.
        assert!(c.list(&c2, "nothing", 10).await.unwrap().is_empty());
        assert!(matches!(
            c.list(&c2, "a/bc", 10).await,
            Err(RepoError::Invalid(_))
        ));
        assert!(matches!(
            c.list(&"e".repeat(40), "", 10).await,
            Err(RepoError::NotFound(_))
        ));
        // Blob bounds.
        assert!(matches!(
            c.read_blob(&listed[0].id, 6).await,
            Err(RepoError::Invalid(_))
        ));
        assert!(matches!(
            c.read_blob(&"d".repeat(40), 6).await,
            Err(RepoError::NotFound(_))
        ));
        let files = h.files_at_head();
        assert_eq!(
            files.get("a/b/c.json").map(Vec::as_slice),
            Some(&b"changed"[..])
        );
        assert_eq!(files.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_is_refused_without_panic() {
        let h = host(5, RepoFaults::none());
        let c = h.client(1);
        let too_many: Vec<(String, Vec<u8>)> = (0..=MAX_FILES_PER_COMMIT)
            .map(|i| (format!("f{i}"), Vec::new()))
            .collect();
        let r = CommitRequest {
            expected_head: None,
            files: too_many,
            message: "m".into(),
            time_secs: 0,
        };
        assert!(matches!(c.commit(r).await, Err(RepoError::Invalid(_))));
        let r = CommitRequest {
            expected_head: None,
            files: vec![("big".into(), vec![0u8; MAX_BLOB_BYTES + 1])],
            message: "m".into(),
            time_secs: 0,
        };
        assert!(matches!(c.commit(r).await, Err(RepoError::Invalid(_))));
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a"] {
            assert!(
                matches!(
                    c.commit(req(None, &[(bad, "x")], "m")).await,
                    Err(RepoError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        // A file where a folder is, and the reverse.
        assert!(matches!(
            c.commit(req(None, &[("a", "x"), ("a/b", "y")], "m")).await,
            Err(RepoError::Invalid(_))
        ));
        let c1 = c.commit(req(None, &[("a/b", "y")], "m")).await.unwrap();
        assert!(matches!(
            c.commit(req(Some(&c1), &[("a", "x")], "m")).await,
            Err(RepoError::Invalid(_))
        ));
        // Nothing of the refused requests landed.
        assert_eq!(h.stats().commits, 1);
        assert!(h.check_history().is_empty());
        // Wild fault settings do not panic either.
        h.set_faults(RepoFaults {
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(1),
            p_5xx: f64::NAN,
            p_409: -1.0,
            p_422: 7.0,
            ..RepoFaults::none()
        });
        assert_eq!(
            c.commit(req(Some(&c1), &[("c", "z")], "m")).await,
            Err(RepoError::Conflict)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outage_refuses_everything_until_lifted() {
        let faults = RepoFaults {
            latency_min: Duration::from_millis(100),
            latency_max: Duration::from_millis(100),
            ..RepoFaults::none()
        };
        let h = host(6, faults);
        let c = h.client(1);
        let c1 = c.commit(req(None, &[("x", "1")], "init")).await.unwrap();
        let id = c.list(&c1, "", 10).await.unwrap()[0].id.clone();
        h.set_outage(true);
        let t0 = Instant::now();
        assert!(matches!(c.head().await, Err(RepoError::Unavailable(_))));
        // The refusal comes after the call's latency.
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert!(matches!(
            c.commit(req(Some(&c1), &[("x", "2")], "m")).await,
            Err(RepoError::Unavailable(_))
        ));
        assert!(matches!(
            c.history(&c1, 5).await,
            Err(RepoError::Unavailable(_))
        ));
        assert!(matches!(
            c.list(&c1, "", 5).await,
            Err(RepoError::Unavailable(_))
        ));
        assert!(matches!(
            c.read_blob(&id, 5).await,
            Err(RepoError::Unavailable(_))
        ));
        assert!(matches!(
            c.publish(record(1)).await,
            Err(PresenceError::Unavailable(_))
        ));
        assert!(matches!(
            c.fetch().await,
            Err(PresenceError::Unavailable(_))
        ));
        assert_eq!(h.stats().outage_refusals, 7);
        assert_eq!(h.head().map(|(s, _)| s), Some(c1.clone()));
        h.set_outage(false);
        assert_eq!(
            c.head().await.unwrap().map(|hd| hd.commit_sha),
            Some(c1.clone())
        );
        assert!(c.commit(req(Some(&c1), &[("x", "2")], "m")).await.is_ok());
        assert!(c.publish(record(1)).await.is_ok());
        assert_eq!(c.fetch().await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn write_budget_rate_limits_and_frees_after_the_window() {
        let faults = RepoFaults {
            writes_per_minute: 3,
            writes_per_hour: 5,
            ..RepoFaults::none()
        };
        let h = host(7, faults);
        let (a, b) = (h.client(1), h.client(2));
        let t0 = Instant::now();
        for _ in 0..3 {
            a.publish(record(1)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // t0+30s: the minute holds 3 writes; the oldest leaves at t0+60s.
        match a.publish(record(1)).await {
            Err(PresenceError::RateLimited { retry_after_ms }) => {
                assert_eq!(retry_after_ms, 30_000)
            }
            other => panic!("{other:?}"),
        }
        match a.commit(req(None, &[("x", "1")], "m")).await {
            Err(RepoError::RateLimited { retry_after_ms }) => assert_eq!(retry_after_ms, 30_000),
            other => panic!("{other:?}"),
        }
        // Budgets are per client; reads are not limited.
        b.publish(record(2)).await.unwrap();
        assert!(a.head().await.is_ok());
        // Once the oldest write left the minute, one more fits.
        tokio::time::sleep_until(t0 + MINUTE).await;
        let c1 = a.commit(req(None, &[("x", "1")], "m")).await.unwrap();
        tokio::time::sleep(MINUTE).await;
        a.publish(record(1)).await.unwrap();
        // Five writes in the hour: the next waits for the first to leave it.
        let now = t0.elapsed();
        match a.commit(req(Some(&c1), &[("x", "2")], "m")).await {
            Err(RepoError::RateLimited { retry_after_ms }) => {
                assert_eq!(Duration::from_millis(retry_after_ms), HOUR - now)
            }
            other => panic!("{other:?}"),
        }
        tokio::time::sleep_until(t0 + HOUR).await;
        assert!(a.commit(req(Some(&c1), &[("x", "2")], "m")).await.is_ok());
        assert_eq!(h.stats().rate_limited, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_answer_applies_the_commit_yet_answers_unknown() {
        let h = host(
            8,
            RepoFaults {
                p_lost_answer: 1.0,
                ..RepoFaults::none()
            },
        );
        let c = h.client(1);
        assert!(matches!(
            c.commit(req(None, &[("x", "1")], "init")).await,
            Err(RepoError::Unknown(_))
        ));
        // It landed: the head tells.
        let head = c.head().await.unwrap().expect("the commit landed");
        assert_eq!(head.message, "init");
        assert_eq!(
            h.files_at_head().get("x").map(Vec::as_slice),
            Some(&b"1"[..])
        );
        // Repeating it blindly conflicts.
        assert_eq!(
            c.commit(req(None, &[("x", "1")], "init")).await,
            Err(RepoError::Conflict)
        );
        let s = h.stats();
        assert_eq!((s.commits, s.lost_answers, s.conflicts), (1, 1, 1));
        assert!(h.check_history().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn presence_round_trip_skips_garbage() {
        let h = host(9, RepoFaults::none());
        let (a, b) = (h.client(1), h.client(2));
        a.publish(record(1)).await.unwrap();
        b.publish(record(2)).await.unwrap();
        let mut newer = record(2);
        newer.last_seen += 5000;
        b.publish(newer.clone()).await.unwrap();
        h.inject_presence(3, b"{not json".to_vec());
        // A record claiming another node's id than its slot's.
        h.inject_presence(4, record(5).to_json());
        let got = a.fetch().await.unwrap();
        assert_eq!(got, vec![record(1), newer]);
        // Publishing as another node, or a record readers refuse, fails
        // before reaching the host.
        assert!(matches!(
            a.publish(record(2)).await,
            Err(PresenceError::Unavailable(_))
        ));
        let mut bad = record(1);
        bad.user = String::new();
        assert!(matches!(
            a.publish(bad).await,
            Err(PresenceError::Unavailable(_))
        ));
        let s = h.stats();
        assert_eq!((s.presence_publishes, s.presence_fetches), (3, 1));
        // Presence never touches the branch.
        assert!(h.head().is_none());
    }

    /// A scripted run of two clients under heavy faults: every outcome and
    /// the trace digest.
    async fn scripted(seed: u64) -> (Vec<String>, String) {
        let trace = Trace::new(None).expect("trace");
        let faults = RepoFaults {
            p_5xx: 0.2,
            p_409: 0.1,
            p_422: 0.1,
            p_lost_answer: 0.15,
            p_rate_limit: 0.05,
            slow_read: 0.2,
            ..RepoFaults::default()
        };
        let h = SimRepoHost::new(seed, faults, trace.clone());
        let clients = [h.client(1), h.client(2)];
        let mut out = Vec::new();
        for i in 0..60usize {
            let c = &clients[i % 2];
            let head = c.head().await;
            out.push(format!("{head:?}"));
            let expected = match head {
                Ok(hd) => hd.map(|h| h.commit_sha),
                Err(_) => continue,
            };
            let r = req(
                expected.as_deref(),
                &[(&format!("f/{i}"), "x")],
                &format!("c{i}"),
            );
            out.push(format!("{:?}", c.commit(r).await));
            out.push(format!("{:?}", c.publish(record(c.node())).await));
            out.push(format!("{:?}", c.fetch().await.map(|v| v.len())));
        }
        out.push(format!("{:?}", h.stats()));
        assert!(h.check_history().is_empty(), "{:?}", h.check_history());
        (out, trace.digest())
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_outcomes_other_seed_differs() {
        let a = scripted(1).await;
        let b = scripted(1).await;
        assert_eq!(a, b);
        let c = scripted(2).await;
        assert_ne!(a.0, c.0);
        assert_ne!(a.1, c.1);
        // The faults did happen.
        let joined = a.0.join("\n");
        assert!(joined.contains("Unavailable"), "{joined}");
        assert!(joined.contains("Conflict"), "{joined}");
        assert!(joined.contains("Unknown"), "{joined}");
    }
}
