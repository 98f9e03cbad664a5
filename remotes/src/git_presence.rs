//! The presence channel of a plain git remote: one ref per node.
//!
//! Each node announces itself by pointing its own ref,
//! `refs/skygit/presence/<node_id>` (the id in decimal), at a parentless
//! commit whose tree holds a single file, `presence.json`, the encoded
//! [`PresenceRecord`]. Because every node writes only its own ref, writers
//! never contend, and the log branch is never touched: publishing is a
//! *forced* update of that one ref, so no compare-and-swap is needed and a
//! stale record can always be replaced.
//!
//! Two ways to reach the repository:
//!
//! - a **local path** (the demo and the tests): the bare repository is
//!   opened directly with libgit2 (created when missing). A publish writes
//!   three objects and moves one ref; a fetch reads the refs. No cache, no
//!   push.
//! - a **URL** (`git://`, `http(s)://`, `ssh://`, `file://`): a bare cache
//!   repository of our own holds the objects. A publish builds the commit
//!   there and pushes `+refs/skygit/presence/<id>`; a fetch lists the
//!   remote's refs (one round trip, like `git ls-remote`) and fetches only
//!   the presence refs whose commit the cache does not hold yet, into
//!   `refs/skygit/peers/<id>`.
//!
//! Decoded records are cached by commit id, so an unchanged ref costs no
//! object read at all: it is git's equivalent of a conditional request.
//!
//! Everything read is untrusted (see the design's security model): at most
//! [`MAX_PRESENCE_REFS`] refs are read, objects are size-checked through
//! the object database's header before they are loaded, and a record that
//! is malformed, oversized, or claims another node's id than its ref's is
//! skipped with a warning — one bad record never fails a whole fetch.
//!
//! libgit2 blocks, so every operation runs on tokio's blocking pool, one at
//! a time per instance (the repository is behind a mutex).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use git2::{
    AutotagOption, Direction, FetchOptions, FileMode, ObjectType, Oid, Repository, Signature, Time,
};
use skygit_ports::{PresenceChannel, PresenceError, PresenceRecord, MAX_PRESENCE_RECORD_BYTES};

use crate::git::{callbacks, is_url, push_refspec, redact, set_timeouts};

/// A node's id (`skygit_consensus::NodeId`, which this crate does not
/// depend on directly).
pub type NodeId = u64;

/// Where each node's presence ref lives (followed by its decimal id).
pub const PRESENCE_REF_PREFIX: &str = "refs/skygit/presence/";
/// The file of a presence commit's tree that holds the record.
pub const PRESENCE_FILE: &str = "presence.json";
/// Most presence refs one fetch reads; the rest are ignored (and logged).
pub const MAX_PRESENCE_REFS: usize = 256;
/// Author and committer of presence commits.
pub const PRESENCE_AUTHOR_NAME: &str = "skygit";
pub const PRESENCE_AUTHOR_EMAIL: &str = "skygit@localhost";

/// Where fetched presence refs are kept in the cache repository.
const PEER_REF_PREFIX: &str = "refs/skygit/peers/";
/// Largest commit or tree object of a presence ref that is loaded (a
/// presence commit's are a few hundred bytes).
const MAX_META_OBJECT_BYTES: usize = 16 * 1024;
/// Largest pack one fetch may download: every ref's record at its largest,
/// plus room for its commit and tree.
const MAX_FETCH_BYTES: usize =
    MAX_PRESENCE_REFS * (MAX_PRESENCE_RECORD_BYTES + 2 * MAX_META_OBJECT_BYTES);

/// A presence channel over per-node refs of a git repository.
pub struct GitPresence {
    shared: Arc<Shared>,
}

struct Shared {
    /// The canonical path of a local repository, or the remote's URL.
    location: String,
    /// Whether `location` is a URL (reached through the cache repository).
    remote: bool,
    node_id: NodeId,
    writes: AtomicU64,
    reads: AtomicU64,
    blob_reads: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// The repository itself (local path) or the cache repository (URL).
    repo: Repository,
    /// What each presence commit read so far decoded to.
    decoded: HashMap<Oid, Decoded>,
}

#[derive(Clone)]
pub(crate) enum Decoded {
    Record(PresenceRecord),
    Refused(String),
}

impl Decoded {
    /// The record, when it belongs to node `id` named by ref `name`;
    /// otherwise logs why it is skipped: a warning the first time commit
    /// `commit` is read (`fresh`), a debug line after (an unchanged bad ref
    /// is not news).
    pub(crate) fn accept(
        self,
        name: &str,
        commit: &dyn std::fmt::Display,
        id: NodeId,
        fresh: bool,
    ) -> Option<PresenceRecord> {
        let refused = match self {
            Decoded::Record(r) if r.node_id == id => return Some(r),
            Decoded::Record(r) => format!("the record claims node {}", r.node_id),
            Decoded::Refused(reason) => reason,
        };
        if fresh {
            tracing::warn!(r#ref = %name, %commit, reason = %refused, "skipping a presence record");
        } else {
            tracing::debug!(r#ref = %name, %commit, reason = %refused, "skipping a presence record");
        }
        None
    }
}

/// The node a presence ref names, when its name ends in the id's
/// canonical decimal form (`007`, `+7` and `1/2` name none).
pub(crate) fn node_of(name: &str) -> Option<NodeId> {
    let suffix = name.strip_prefix(PRESENCE_REF_PREFIX)?;
    suffix
        .parse::<NodeId>()
        .ok()
        .filter(|id| id.to_string() == suffix)
}

/// Keeps the first [`MAX_PRESENCE_REFS`] of refs sorted by node id (the
/// lowest ids), warning when some are dropped.
pub(crate) fn cap_refs<T>(sorted: &mut Vec<T>) {
    if sorted.len() > MAX_PRESENCE_REFS {
        tracing::warn!(
            refs = sorted.len(),
            kept = MAX_PRESENCE_REFS,
            "too many presence refs; ignoring those of the highest node ids"
        );
        sorted.truncate(MAX_PRESENCE_REFS);
    }
}

impl GitPresence {
    /// The presence channel of the repository at `url_or_path`, for node
    /// `node_id`. A local path is used directly (created as a bare
    /// repository when missing); a URL is reached through a bare cache
    /// repository kept at `cache_dir` (created when missing). Nothing is
    /// sent over the network here.
    pub fn open(
        url_or_path: &str,
        node_id: NodeId,
        cache_dir: &Path,
    ) -> Result<Self, PresenceError> {
        let (location, remote, repo) = if is_url(url_or_path) {
            set_timeouts();
            let repo = match Repository::open_bare(cache_dir) {
                Ok(r) => r,
                Err(_) => Repository::init_bare(cache_dir).map_err(|e| {
                    PresenceError::Unavailable(format!(
                        "presence cache repository {}: {}",
                        cache_dir.display(),
                        e.message()
                    ))
                })?,
            };
            (url_or_path.to_owned(), true, repo)
        } else {
            let path = Path::new(url_or_path);
            let repo = if path.exists() {
                Repository::open(path).map_err(|e| {
                    PresenceError::Unavailable(format!(
                        "opening {}: {}",
                        path.display(),
                        e.message()
                    ))
                })?
            } else {
                let r = Repository::init_bare(path).map_err(|e| {
                    PresenceError::Unavailable(format!(
                        "creating {}: {}",
                        path.display(),
                        e.message()
                    ))
                })?;
                tracing::info!(path = %path.display(), "created a bare repository for the room");
                r
            };
            let canonical = std::fs::canonicalize(path)
                .map_err(|e| PresenceError::Unavailable(format!("{}: {e}", path.display())))?
                .to_string_lossy()
                .into_owned();
            (canonical, false, repo)
        };
        Ok(Self {
            shared: Arc::new(Shared {
                location,
                remote,
                node_id,
                writes: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                blob_reads: AtomicU64::new(0),
                state: Mutex::new(State {
                    repo,
                    decoded: HashMap::new(),
                }),
            }),
        })
    }

    /// Where this channel points, for logs and errors (never a secret).
    pub fn describe(&self) -> String {
        redact(&self.shared.location)
    }

    /// The node this channel publishes for.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// How many publishes were attempted (records that passed the local
    /// checks and were sent to the repository).
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// How many fetches were attempted.
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }

    /// How many `presence.json` blobs were loaded: a fetch that finds every
    /// ref unchanged loads none.
    pub fn blob_reads(&self) -> u64 {
        self.shared.blob_reads.load(Ordering::Relaxed)
    }

    /// Runs `f` with the repository on the blocking pool, inside `span`.
    fn run<T, F>(&self, span: tracing::Span, f: F) -> BoxFuture<'static, Result<T, PresenceError>>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &mut State) -> Result<T, PresenceError> + Send + 'static,
    {
        let shared = self.shared.clone();
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let mut guard = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let result = f(&shared, &mut guard);
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "presence operation failed");
                }
                result
            });
            task.await
                .map_err(|e| PresenceError::Unavailable(format!("git task failed: {e}")))?
        })
    }
}

impl PresenceChannel for GitPresence {
    fn publish(&self, record: PresenceRecord) -> BoxFuture<'_, Result<(), PresenceError>> {
        let span = tracing::debug_span!(
            "presence_publish",
            node = self.shared.node_id,
            repo = %self.describe()
        );
        self.run(span, move |shared, state| shared.publish(state, &record))
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>> {
        let span = tracing::debug_span!(
            "presence_fetch",
            node = self.shared.node_id,
            repo = %self.describe()
        );
        self.run(span, |shared, state| shared.fetch(state))
    }
}

/// A presence ref that names a node: its full name, the node, its commit.
struct Listed {
    name: String,
    id: NodeId,
    oid: Oid,
}

impl Shared {
    fn own_ref(&self) -> String {
        format!("{PRESENCE_REF_PREFIX}{}", self.node_id)
    }

    /// An error message without any secret of the remote's URL in it.
    fn scrub(&self, msg: String) -> String {
        if !self.remote {
            return msg;
        }
        let mut out = msg.replace(&self.location, &redact(&self.location));
        // libgit2 may quote only the authority part of the URL.
        if let Some((_, rest)) = self.location.split_once("://") {
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            if let Some(at) = authority.rfind('@') {
                let userinfo = &authority[..at];
                if !userinfo.is_empty() {
                    out = out.replace(userinfo, "***");
                }
            }
        }
        out
    }

    fn error(&self, what: &str, e: git2::Error) -> PresenceError {
        PresenceError::Unavailable(self.scrub(format!("{what}: {}", e.message())))
    }

    fn publish(&self, state: &mut State, record: &PresenceRecord) -> Result<(), PresenceError> {
        if record.node_id != self.node_id {
            return Err(PresenceError::Unavailable(format!(
                "a record of node {} cannot be published as node {}",
                record.node_id, self.node_id
            )));
        }
        let bytes = record.to_json();
        // Never publish what readers would refuse.
        PresenceRecord::from_json(&bytes).map_err(|e| {
            PresenceError::Unavailable(format!("this node's record would be refused: {e}"))
        })?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let oid = self.build(&state.repo, &bytes, record.last_seen)?;
        let own = self.own_ref();
        state
            .repo
            .reference(&own, oid, true, "skygit presence")
            .map_err(|e| self.error("presence ref", e))?;
        if self.remote {
            self.push(&state.repo, &own)?;
        }
        // Our own record needs no read-back.
        state.decoded.insert(oid, Decoded::Record(record.clone()));
        tracing::debug!(
            commit = %oid,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "published presence"
        );
        Ok(())
    }

    /// Writes the parentless commit holding `bytes` as `presence.json`.
    fn build(
        &self,
        repo: &Repository,
        bytes: &[u8],
        last_seen_ms: i64,
    ) -> Result<Oid, PresenceError> {
        let blob = repo.blob(bytes).map_err(|e| self.error("write blob", e))?;
        let mut tb = repo
            .treebuilder(None)
            .map_err(|e| self.error("tree builder", e))?;
        tb.insert(PRESENCE_FILE, blob, FileMode::Blob.into())
            .map_err(|e| self.error("tree entry", e))?;
        let tree_id = tb.write().map_err(|e| self.error("write tree", e))?;
        let tree = repo.find_tree(tree_id).map_err(|e| self.error("tree", e))?;
        let sig = Signature::new(
            PRESENCE_AUTHOR_NAME,
            PRESENCE_AUTHOR_EMAIL,
            &Time::new(last_seen_ms.div_euclid(1000), 0),
        )
        .map_err(|e| self.error("signature", e))?;
        let message = format!("presence of node {}\n", self.node_id);
        repo.commit(None, &sig, &sig, &message, &tree, &[])
            .map_err(|e| self.error("write commit", e))
    }

    /// Force-pushes our presence ref (and nothing else) to the remote.
    fn push(&self, repo: &Repository, own: &str) -> Result<(), PresenceError> {
        let mut remote = repo
            .remote_anonymous(&self.location)
            .map_err(|e| self.error("remote", e))?;
        let rejected = push_refspec(&mut remote, &format!("+{own}:{own}"))
            .map_err(|e| self.error("push", e))?;
        match rejected {
            None => Ok(()),
            Some(s) => Err(PresenceError::Unavailable(
                self.scrub(format!("push rejected: {s}")),
            )),
        }
    }

    fn fetch(&self, state: &mut State) -> Result<Vec<PresenceRecord>, PresenceError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let raw = if self.remote {
            self.list_remote(&state.repo)?
        } else {
            self.list_local(&state.repo)?
        };
        let mut listed = select(raw);
        if self.remote {
            self.download(&state.repo, &mut listed)?;
        }
        let mut out = Vec::with_capacity(listed.len());
        let mut fresh_reads = 0usize;
        for l in &listed {
            let (decoded, fresh) = match state.decoded.get(&l.oid) {
                Some(d) => (d.clone(), false),
                None => {
                    let d = match decode(&state.repo, l.oid, &self.blob_reads) {
                        Ok(r) => Decoded::Record(r),
                        Err(reason) => Decoded::Refused(reason),
                    };
                    state.decoded.insert(l.oid, d.clone());
                    fresh_reads += 1;
                    (d, true)
                }
            };
            if let Some(r) = decoded.accept(&l.name, &l.oid, l.id, fresh) {
                out.push(r);
            }
        }
        // Forget commits no ref points at any more.
        state
            .decoded
            .retain(|oid, _| listed.iter().any(|l| l.oid == *oid));
        tracing::debug!(
            refs = listed.len(),
            records = out.len(),
            decoded = fresh_reads,
            "fetched presence"
        );
        Ok(out)
    }

    /// The repository's presence refs, read directly.
    fn list_local(&self, repo: &Repository) -> Result<Vec<(String, Option<Oid>)>, PresenceError> {
        let refs = repo
            .references_glob(&format!("{PRESENCE_REF_PREFIX}*"))
            .map_err(|e| self.error("list refs", e))?;
        let mut out = Vec::new();
        for r in refs {
            let r = r.map_err(|e| self.error("read ref", e))?;
            let Ok(name) = r.name() else {
                tracing::warn!("skipping a presence ref whose name is not UTF-8");
                continue;
            };
            // A symbolic ref has no target of its own: refused in `select`.
            out.push((name.to_owned(), r.target()));
            if out.len() > 4 * MAX_PRESENCE_REFS {
                break; // more than `select` will ever keep
            }
        }
        Ok(out)
    }

    /// The remote's presence refs (one round trip, like `git ls-remote`).
    fn list_remote(&self, repo: &Repository) -> Result<Vec<(String, Option<Oid>)>, PresenceError> {
        let mut remote = repo
            .remote_anonymous(&self.location)
            .map_err(|e| self.error("remote", e))?;
        remote
            .connect_auth(Direction::Fetch, Some(callbacks()), None)
            .map_err(|e| self.error("connect", e))?;
        let listed = remote
            .list()
            .map_err(|e| self.error("list refs", e))?
            .iter()
            .filter(|h| h.name().starts_with(PRESENCE_REF_PREFIX))
            .map(|h| (h.name().to_owned(), Some(h.oid())))
            .collect();
        let _ = remote.disconnect();
        Ok(listed)
    }

    /// Fetches the listed commits the cache does not hold yet, and points
    /// `listed` at what was fetched (a ref may have moved since listing).
    fn download(&self, repo: &Repository, listed: &mut [Listed]) -> Result<(), PresenceError> {
        let odb = repo.odb().map_err(|e| self.error("odb", e))?;
        let missing: Vec<usize> = (0..listed.len())
            .filter(|&i| !odb.exists(listed[i].oid))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let specs: Vec<String> = missing
            .iter()
            .map(|&i| format!("+{}:{PEER_REF_PREFIX}{}", listed[i].name, listed[i].id))
            .collect();
        let mut remote = repo
            .remote_anonymous(&self.location)
            .map_err(|e| self.error("remote", e))?;
        let mut cb = callbacks();
        cb.transfer_progress(|p| p.received_bytes() <= MAX_FETCH_BYTES);
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(cb)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        remote
            .fetch(&specs, Some(&mut fo), None)
            .map_err(|e| self.error("fetch", e))?;
        for &i in &missing {
            let local = format!("{PEER_REF_PREFIX}{}", listed[i].id);
            if let Ok(oid) = repo.refname_to_id(&local) {
                listed[i].oid = oid;
            }
        }
        tracing::debug!(refs = missing.len(), "fetched changed presence refs");
        Ok(())
    }
}

/// The refs that name a node by a canonical decimal id, sorted by id, at
/// most [`MAX_PRESENCE_REFS`] of them; the others are logged and dropped.
fn select(raw: Vec<(String, Option<Oid>)>) -> Vec<Listed> {
    let mut out = Vec::new();
    for (name, oid) in raw {
        match (node_of(&name), oid) {
            (Some(id), Some(oid)) => out.push(Listed { name, id, oid }),
            (None, _) => {
                tracing::warn!(r#ref = %name, reason = "the ref name is not a decimal node id", "skipping a presence record");
            }
            (_, None) => {
                tracing::warn!(r#ref = %name, reason = "the ref is symbolic", "skipping a presence record");
            }
        }
    }
    out.sort_by_key(|l| l.id);
    cap_refs(&mut out);
    out
}

/// Reads and checks the record of presence commit `oid`, loading no
/// object larger than its bound.
fn decode(repo: &Repository, oid: Oid, blob_reads: &AtomicU64) -> Result<PresenceRecord, String> {
    let odb = repo
        .odb()
        .map_err(|e| format!("object database: {}", e.message()))?;
    let header = |id: Oid, want: ObjectType, max: usize, what: &str| {
        let (size, kind) = odb
            .read_header(id)
            .map_err(|e| format!("{what} {id}: {}", e.message()))?;
        if kind != want {
            return Err(format!("{what} {id} is a {kind}, not a {want}"));
        }
        if size > max {
            return Err(format!("{what} {id} is {size} bytes, more than {max}"));
        }
        Ok(())
    };
    header(oid, ObjectType::Commit, MAX_META_OBJECT_BYTES, "commit")?;
    let commit = repo
        .find_commit(oid)
        .map_err(|e| format!("commit {oid}: {}", e.message()))?;
    let tree_id = commit.tree_id();
    header(tree_id, ObjectType::Tree, MAX_META_OBJECT_BYTES, "tree")?;
    let tree = repo
        .find_tree(tree_id)
        .map_err(|e| format!("tree {tree_id}: {}", e.message()))?;
    let entry = tree
        .get_name(PRESENCE_FILE)
        .ok_or_else(|| format!("commit {oid} holds no {PRESENCE_FILE}"))?;
    let blob_id = entry.id();
    header(
        blob_id,
        ObjectType::Blob,
        MAX_PRESENCE_RECORD_BYTES,
        PRESENCE_FILE,
    )?;
    blob_reads.fetch_add(1, Ordering::Relaxed);
    let blob = repo
        .find_blob(blob_id)
        .map_err(|e| format!("{PRESENCE_FILE} {blob_id}: {}", e.message()))?;
    PresenceRecord::from_json(blob.content()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_decimal_ids_are_selected() {
        let oid = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let raw = [
            "7",
            "007",
            "+7",
            "x",
            "3",
            "1/2",
            "",
            "18446744073709551616",
        ]
        .iter()
        .map(|s| (format!("{PRESENCE_REF_PREFIX}{s}"), Some(oid)))
        .chain([(format!("{PRESENCE_REF_PREFIX}9"), None)])
        .collect();
        let ids: Vec<NodeId> = select(raw).iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![3, 7]);
    }

    #[test]
    fn at_most_the_bound_of_refs_is_selected() {
        let oid = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let raw = (0..(MAX_PRESENCE_REFS as u64 + 10))
            .rev()
            .map(|i| (format!("{PRESENCE_REF_PREFIX}{i}"), Some(oid)))
            .collect();
        let sel = select(raw);
        assert_eq!(sel.len(), MAX_PRESENCE_REFS);
        assert_eq!(sel[0].id, 0);
        assert_eq!(sel[MAX_PRESENCE_REFS - 1].id, MAX_PRESENCE_REFS as u64 - 1);
    }

    #[test]
    fn secrets_are_scrubbed_from_errors() {
        let dir = tempfile::tempdir().unwrap();
        let url = "https://user:ghp_secret@127.0.0.1:1/room.git";
        let p = GitPresence::open(url, 1, &dir.path().join("cache")).unwrap();
        assert_eq!(p.describe(), "https://***@127.0.0.1:1/room.git");
        let msg = p.shared.scrub(format!(
            "failed to reach {url} as user:ghp_secret@127.0.0.1"
        ));
        assert!(!msg.contains("ghp_secret"), "{msg}");
    }
}
