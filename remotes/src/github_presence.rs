//! The presence channel of a GitHub repository: one ref per node, written
//! and read through GitHub's REST API (the Git Data API).
//!
//! It stores presence exactly as the plain-git channel
//! ([`GitPresence`](crate::GitPresence)) does, so a room can move between
//! backends and `git` shows the same thing either way: each node points its
//! own ref, `refs/skygit/presence/<node_id>` (decimal), at a parentless
//! commit whose tree holds one file, `presence.json`, the encoded
//! [`PresenceRecord`]. The commit is made by `skygit <skygit@localhost>` at
//! the record's `last_seen` (whole seconds, UTC) with the message
//! `presence of node <id>`, so both backends make the very same commit for
//! the same record. Every node writes only its own ref and never the log
//! branch, so writers never contend: the ref is updated with `force: true`.
//!
//! Why refs and not a file on a branch: a shared branch would make every
//! heartbeat a compare-and-swap against every other node's, and move the
//! log branch's history; per-node refs need neither.
//!
//! Cost, against GitHub's limits (see the design's "GitHub facts"):
//!
//! - a **publish** is three writes: create the tree (content inline),
//!   create the commit, move the ref (`PATCH .../git/refs/skygit/presence/<id>`).
//!   The very first publish of a node finds no ref (422 "Reference does not
//!   exist") and creates it (`POST .../git/refs`): four writes once. Writes
//!   are counted against the secondary limits (80 a minute, 500 an hour)
//!   through the [`GithubRemote`]'s write budget, so a channel made with
//!   [`GithubPresence::with_remote`] shares it with that remote's commits;
//!   a spent budget is [`PresenceError::RateLimited`] before GitHub is
//!   asked.
//! - a **fetch** is one conditional read of
//!   `GET .../git/matching-refs/skygit/presence/` (`If-None-Match`; a 304
//!   costs no quota and no further call), plus, for each ref whose commit
//!   is not known yet, three reads: the commit (for its tree), the tree (for
//!   the `presence.json` blob and its size), the blob. Decoded records are
//!   cached by commit id, so an unchanged ref costs nothing.
//!
//! Everything read is untrusted (the design's security model): at most
//! [`MAX_PRESENCE_REFS`] refs are read, the smallest ids first; every answer
//! is read with a size bound; a blob whose tree entry says it is larger
//! than [`MAX_PRESENCE_RECORD_BYTES`] is refused without being downloaded.
//! A ref whose name is not a canonical decimal id, which points at
//! something else than a commit, or whose record is malformed, oversized
//! or claims another node's id is skipped with one warning per commit: one
//! bad record never fails a fetch. A failure that is not the record's
//! fault (a rate limit, GitHub unreachable, a refused token) fails the
//! fetch instead, so a transient error never makes peers look offline.
//!
//! The token is only ever sent in the `Authorization` header (by the
//! shared [`GithubRemote`] plumbing); it is in no error or log line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use skygit_ports::{
    PresenceChannel, PresenceError, PresenceRecord, RepoError, MAX_PRESENCE_RECORD_BYTES,
};

use crate::git::redact;
use crate::git_presence::{cap_refs, node_of, Decoded};
pub use crate::git_presence::{
    NodeId, MAX_PRESENCE_REFS, PRESENCE_AUTHOR_EMAIL, PRESENCE_AUTHOR_NAME, PRESENCE_FILE,
    PRESENCE_REF_PREFIX,
};
use crate::github::{check_sha, unexpected, Answer, GithubConfig, GithubRemote, Method};
use crate::RemoteOptions;

/// The error of a publish on a repository without any commit: GitHub's Git
/// Data API answers 409 there, and the room's first commit is the log
/// branch's.
pub const EMPTY_REPOSITORY: &str =
    "the repository is empty; initialise the room first (skygit init)";

/// Largest answer of the presence ref listing read (GitHub lists a ref in
/// about 350 bytes: this is thousands of refs, far more than are used).
const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;
/// Largest commit or tree answer of a presence commit read (theirs are a
/// few hundred bytes; a bigger one is not a presence commit).
const MAX_META_ANSWER_BYTES: usize = 64 * 1024;
/// Listed entries looked at before the rest is ignored (more than
/// [`MAX_PRESENCE_REFS`] valid ones are cut down after sorting).
const MAX_LISTED_ENTRIES: usize = 4 * MAX_PRESENCE_REFS;

/// A presence channel over per-node refs of a GitHub repository.
pub struct GithubPresence {
    remote: Arc<GithubRemote>,
    node_id: NodeId,
    writes: AtomicU64,
    reads: AtomicU64,
    blob_reads: AtomicU64,
    /// One publish at a time, so an older record never overtakes a newer.
    publishing: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What each presence commit read (or published) so far decoded to.
    decoded: BTreeMap<String, Decoded>,
    /// Listed refs refused for their name or target, by (ref, sha): warned
    /// about once.
    warned: BTreeSet<(String, String)>,
}

/// Why a presence commit could not be read.
enum ReadFail {
    /// The record's fault: skip it (and remember that).
    Refused(String),
    /// Not the record's fault: the fetch fails.
    Fatal(PresenceError),
}

/// A presence ref that names a node: its full name, the node, its commit.
struct Listed {
    name: String,
    id: NodeId,
    sha: String,
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct ListedRef {
    #[serde(rename = "ref")]
    name: String,
    object: ListedObject,
}

#[derive(Deserialize)]
struct ListedObject {
    sha: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct CommitAnswer {
    tree: Sha,
}

#[derive(Deserialize)]
struct TreeAnswer {
    tree: Vec<TreeAnswerEntry>,
}

#[derive(Deserialize)]
struct TreeAnswerEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    sha: String,
    #[serde(default)]
    size: Option<u64>,
}

/// The `author`/`committer` of a presence commit: the same as the plain-git
/// channel's (whole seconds of `last_seen`, UTC).
fn presence_signature(last_seen_ms: i64) -> Value {
    let date = chrono::DateTime::from_timestamp(last_seen_ms.div_euclid(1000), 0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({ "name": PRESENCE_AUTHOR_NAME, "email": PRESENCE_AUTHOR_EMAIL, "date": date })
}

/// The commit message of node `id`'s presence commits.
fn presence_message(id: NodeId) -> String {
    format!("presence of node {id}\n")
}

/// A listed ref's node id: the ref name's suffix, when it is a canonical
/// decimal id (`7`, not `007`, `+7` or `7/x`).
impl GithubPresence {
    /// The presence channel of GitHub repository `owner/name`, reached as
    /// `opts` says (API base URL, token), for node `node_id`. It makes its
    /// own [`GithubRemote`] (see [`GithubPresence::remote`] to commit
    /// through it, sharing its write budget). No call is made yet; like
    /// [`GithubRemote::new`] it must run inside a tokio runtime (the HTTP
    /// client starts a task).
    pub fn open(
        owner: &str,
        name: &str,
        opts: &RemoteOptions,
        node_id: NodeId,
    ) -> Result<Self, PresenceError> {
        let (owner, name) = match crate::parse_github_spec(&format!("github:{owner}/{name}")) {
            Some(Ok(parsed)) => parsed,
            Some(Err(e)) => return Err(PresenceError::Unavailable(e.to_string())),
            None => {
                return Err(PresenceError::Unavailable(
                    "not a GitHub repository".to_owned(),
                ))
            }
        };
        let remote = GithubRemote::new(GithubConfig {
            api: opts
                .github_api
                .clone()
                .unwrap_or_else(|| crate::github::DEFAULT_API.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            owner,
            name,
            branch: opts
                .branch
                .clone()
                .unwrap_or_else(|| crate::DEFAULT_BRANCH.to_owned()),
            token: opts.token.clone(),
        })
        .map_err(|e| PresenceError::Unavailable(format!("GitHub presence channel: {e}")))?;
        Ok(Self::with_remote(Arc::new(remote), node_id))
    }

    /// The presence channel of `remote`'s repository for node `node_id`,
    /// sharing `remote`'s client, conditional-request cache and write
    /// budget (so presence and commits together stay under GitHub's
    /// secondary limits).
    pub fn with_remote(remote: Arc<GithubRemote>, node_id: NodeId) -> Self {
        Self {
            remote,
            node_id,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            blob_reads: AtomicU64::new(0),
            publishing: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// The GitHub remote this channel calls through (to commit the room's
    /// log with the same write budget).
    pub fn remote(&self) -> Arc<GithubRemote> {
        self.remote.clone()
    }

    /// Where this channel points, for logs and errors (never a secret).
    pub fn describe(&self) -> String {
        let cfg = &self.remote.cfg;
        format!(
            "github:{}/{} presence refs via {}",
            cfg.owner,
            cfg.name,
            redact(&cfg.api)
        )
    }

    /// The node this channel publishes for.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Write calls (POST, PATCH) this channel made: three per publish, four
    /// for a node's first. A call GitHub answered with a server error and
    /// that was repeated counts once; one refused by the local write budget
    /// counts too.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Read calls (GET) this channel made, conditional ones answered 304
    /// included: one per fetch, plus three per changed ref.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// How many `presence.json` blobs were downloaded: a fetch that finds
    /// every ref unchanged downloads none.
    pub fn blob_reads(&self) -> u64 {
        self.blob_reads.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_ref(&self) -> String {
        format!("{PRESENCE_REF_PREFIX}{}", self.node_id)
    }

    /// A message without the token in it (the plumbing never puts it in
    /// one; this makes sure).
    fn scrub(&self, msg: String) -> String {
        match self.remote.cfg.token.as_deref() {
            Some(t) if !t.is_empty() => msg.replace(t, "***"),
            _ => msg,
        }
    }

    fn error(&self, what: &str, e: RepoError) -> PresenceError {
        match e {
            RepoError::RateLimited { retry_after_ms } => {
                PresenceError::RateLimited { retry_after_ms }
            }
            e => PresenceError::Unavailable(self.scrub(format!("{what}: {e}"))),
        }
    }

    /// An answer with a status this step does not expect.
    fn unexpected(&self, what: &str, a: &Answer) -> PresenceError {
        if a.status == StatusCode::CONFLICT {
            return PresenceError::Unavailable(EMPTY_REPOSITORY.to_owned());
        }
        self.error(what, unexpected(what, a.status, a))
    }

    async fn write(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &Value,
        repeatable: bool,
    ) -> Result<Answer, PresenceError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.remote
            .write(method, path, body, repeatable)
            .await
            .map_err(|e| self.error(what, e))
    }

    async fn get(&self, path: &str, max_bytes: usize) -> Result<Answer, RepoError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.remote.get(path, max_bytes).await
    }

    /// A created object's id from a 201 answer.
    fn created(&self, what: &str, a: &Answer) -> Result<String, PresenceError> {
        if a.status != StatusCode::CREATED {
            return Err(self.unexpected(what, a));
        }
        let s: Sha = a.json(what).map_err(|e| self.error(what, e))?;
        check_sha(&s.sha).map_err(|e| self.error(what, e))?;
        Ok(s.sha)
    }

    async fn publish_impl(&self, record: PresenceRecord) -> Result<(), PresenceError> {
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
        let text = String::from_utf8(bytes).map_err(|e| {
            PresenceError::Unavailable(format!("this node's record is not UTF-8: {e}"))
        })?;
        let _one_at_a_time = self.publishing.lock().await;
        let started = std::time::Instant::now();
        let repo = self.remote.repo_path();

        let a = self
            .write(
                "create presence tree",
                Method::Post,
                &format!("{repo}/git/trees"),
                &json!({ "tree": [{
                    "path": PRESENCE_FILE, "mode": "100644", "type": "blob", "content": text,
                }] }),
                true,
            )
            .await?;
        let tree = self.created("create presence tree", &a)?;

        let signature = presence_signature(record.last_seen);
        let a = self
            .write(
                "create presence commit",
                Method::Post,
                &format!("{repo}/git/commits"),
                &json!({
                    "message": presence_message(self.node_id),
                    "tree": tree,
                    "parents": [],
                    "author": signature,
                    "committer": signature,
                }),
                true,
            )
            .await?;
        let commit = self.created("create presence commit", &a)?;

        let own = self.own_ref();
        self.point_own_ref(&repo, &own, &commit).await?;
        // Our own record needs no read-back.
        self.state()
            .decoded
            .insert(commit.clone(), Decoded::Record(record));
        tracing::debug!(
            %commit,
            bytes = text.len(),
            ms = started.elapsed().as_millis() as u64,
            "published presence"
        );
        Ok(())
    }

    /// Moves this node's ref to `commit`, creating it the first time.
    async fn point_own_ref(
        &self,
        repo: &str,
        own: &str,
        commit: &str,
    ) -> Result<(), PresenceError> {
        const WHAT: &str = "update presence ref";
        // A forced update of our own ref: repeating it is harmless.
        let update = json!({ "sha": commit, "force": true });
        let path = format!("{repo}/git/{own}");
        let a = self
            .write(WHAT, Method::Patch, &path, &update, true)
            .await?;
        let missing = a.status == StatusCode::NOT_FOUND
            || (a.status == StatusCode::UNPROCESSABLE_ENTITY
                && a.message().contains("Reference does not exist"));
        if a.status == StatusCode::OK {
            return Ok(());
        }
        if !missing {
            return Err(self.unexpected(WHAT, &a));
        }
        const CREATE: &str = "create presence ref";
        let a = self
            .write(
                CREATE,
                Method::Post,
                &format!("{repo}/git/refs"),
                &json!({ "ref": own, "sha": commit }),
                false,
            )
            .await?;
        match a.status {
            StatusCode::CREATED => Ok(()),
            // Created meanwhile (an earlier attempt that did land): update.
            StatusCode::UNPROCESSABLE_ENTITY if a.message().contains("already exists") => {
                let a = self
                    .write(WHAT, Method::Patch, &path, &update, true)
                    .await?;
                if a.status == StatusCode::OK {
                    Ok(())
                } else {
                    Err(self.unexpected(WHAT, &a))
                }
            }
            _ => Err(self.unexpected(CREATE, &a)),
        }
    }

    async fn fetch_impl(&self) -> Result<Vec<PresenceRecord>, PresenceError> {
        const WHAT: &str = "list presence refs";
        let prefix = PRESENCE_REF_PREFIX
            .strip_prefix("refs/")
            .unwrap_or(PRESENCE_REF_PREFIX);
        let a = self
            .get(
                &format!("{}/git/matching-refs/{prefix}", self.remote.repo_path()),
                MAX_LISTING_BYTES,
            )
            .await
            .map_err(|e| self.error(WHAT, e))?;
        match a.status {
            StatusCode::OK => {}
            // An empty repository holds no refs at all.
            StatusCode::CONFLICT => return Ok(Vec::new()),
            _ => return Err(self.error(WHAT, unexpected(WHAT, a.status, &a))),
        }
        let entries: Vec<Value> = a.json(WHAT).map_err(|e| self.error(WHAT, e))?;
        let listed = self.select(entries);

        let mut out = Vec::with_capacity(listed.len());
        let mut fresh_reads = 0usize;
        for l in &listed {
            let known = self.state().decoded.get(&l.sha).cloned();
            let (decoded, fresh) = match known {
                Some(d) => (d, false),
                None => {
                    let d = match self.read_record(&l.sha).await {
                        Ok(r) => Decoded::Record(r),
                        Err(ReadFail::Refused(reason)) => Decoded::Refused(reason),
                        Err(ReadFail::Fatal(e)) => return Err(e),
                    };
                    self.state().decoded.insert(l.sha.clone(), d.clone());
                    fresh_reads += 1;
                    (d, true)
                }
            };
            if let Some(r) = decoded.accept(&l.name, &l.sha, l.id, fresh) {
                out.push(r);
            }
        }
        // Forget commits no ref points at any more.
        self.state()
            .decoded
            .retain(|sha, _| listed.iter().any(|l| l.sha == *sha));
        tracing::debug!(
            refs = listed.len(),
            records = out.len(),
            decoded = fresh_reads,
            "fetched presence"
        );
        Ok(out)
    }

    /// The listed refs that name a node by a canonical decimal id and point
    /// at a commit, sorted by id, at most [`MAX_PRESENCE_REFS`]; the others
    /// are warned about (once per ref and commit) and dropped.
    fn select(&self, entries: Vec<Value>) -> Vec<Listed> {
        let mut out = Vec::new();
        let mut refused: Vec<(String, String, String)> = Vec::new();
        if entries.len() > MAX_LISTED_ENTRIES {
            tracing::warn!(
                listed = entries.len(),
                read = MAX_LISTED_ENTRIES,
                "too many presence refs; ignoring the rest of the listing"
            );
        }
        for entry in entries.into_iter().take(MAX_LISTED_ENTRIES) {
            let r: ListedRef = match serde_json::from_value(entry) {
                Ok(r) => r,
                Err(e) => {
                    refused.push((
                        String::new(),
                        String::new(),
                        format!("malformed entry: {e}"),
                    ));
                    continue;
                }
            };
            let id = node_of(&r.name);
            let reason = if id.is_none() {
                "the ref name is not a decimal node id".to_owned()
            } else if check_sha(&r.object.sha).is_err() {
                "the ref does not name an object id".to_owned()
            } else {
                match (id, r.object.kind.as_deref()) {
                    (Some(id), None | Some("commit")) => {
                        out.push(Listed {
                            name: r.name,
                            id,
                            sha: r.object.sha.to_ascii_lowercase(),
                        });
                        continue;
                    }
                    (_, kind) => format!(
                        "the ref points at a {}, not a commit",
                        kind.unwrap_or_default()
                            .chars()
                            .take(32)
                            .collect::<String>()
                    ),
                }
            };
            // Bounded: these are logged.
            refused.push((
                r.name.chars().take(256).collect(),
                r.object.sha.chars().take(64).collect(),
                reason,
            ));
        }
        {
            let mut state = self.state();
            let mut still = BTreeSet::new();
            for (name, sha, reason) in refused {
                let key = (name, sha);
                if !state.warned.contains(&key) {
                    tracing::warn!(r#ref = %key.0, commit = %key.1, %reason, "skipping a presence record");
                }
                still.insert(key);
            }
            state.warned = still;
        }
        out.sort_by_key(|l| l.id);
        out.dedup_by_key(|l| l.id);
        cap_refs(&mut out);
        out
    }

    /// Reads and checks the record of presence commit `sha`: its commit,
    /// its tree, its `presence.json` blob (refused by the tree's size before
    /// it is downloaded).
    async fn read_record(&self, sha: &str) -> Result<PresenceRecord, ReadFail> {
        let repo = self.remote.repo_path();
        let a = self
            .get(&format!("{repo}/git/commits/{sha}"), MAX_META_ANSWER_BYTES)
            .await
            .map_err(|e| self.read_fail("read presence commit", e))?;
        if a.status != StatusCode::OK {
            return Err(self.read_fail(
                "read presence commit",
                unexpected("read presence commit", a.status, &a),
            ));
        }
        let c: CommitAnswer = a
            .json("presence commit")
            .map_err(|e| self.read_fail("read presence commit", e))?;
        check_sha(&c.tree.sha).map_err(|e| self.read_fail("presence commit's tree", e))?;

        let a = self
            .get(
                &format!("{repo}/git/trees/{}", c.tree.sha),
                MAX_META_ANSWER_BYTES,
            )
            .await
            .map_err(|e| self.read_fail("read presence tree", e))?;
        if a.status != StatusCode::OK {
            return Err(self.read_fail(
                "read presence tree",
                unexpected("read presence tree", a.status, &a),
            ));
        }
        let t: TreeAnswer = a
            .json("presence tree")
            .map_err(|e| self.read_fail("read presence tree", e))?;
        let entry = t
            .tree
            .into_iter()
            .find(|e| e.path == PRESENCE_FILE)
            .ok_or_else(|| ReadFail::Refused(format!("commit {sha} holds no {PRESENCE_FILE}")))?;
        if entry.kind != "blob" {
            return Err(ReadFail::Refused(format!(
                "{PRESENCE_FILE} of commit {sha} is not a file"
            )));
        }
        check_sha(&entry.sha).map_err(|e| self.read_fail(PRESENCE_FILE, e))?;
        if let Some(size) = entry.size.filter(|s| *s > MAX_PRESENCE_RECORD_BYTES as u64) {
            return Err(ReadFail::Refused(format!(
                "{PRESENCE_FILE} {} is {size} bytes, more than {MAX_PRESENCE_RECORD_BYTES}",
                entry.sha
            )));
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.blob_reads.fetch_add(1, Ordering::Relaxed);
        let bytes = self
            .remote
            .read_blob_impl(&entry.sha, MAX_PRESENCE_RECORD_BYTES)
            .await
            .map_err(|e| self.read_fail("read presence blob", e))?;
        PresenceRecord::from_json(&bytes).map_err(|e| ReadFail::Refused(e.to_string()))
    }

    /// Whether a failed read is the record's fault (skip it) or not (fail
    /// the fetch).
    fn read_fail(&self, what: &str, e: RepoError) -> ReadFail {
        match e {
            RepoError::Invalid(_) | RepoError::NotFound(_) => {
                ReadFail::Refused(self.scrub(format!("{what}: {e}")))
            }
            e => ReadFail::Fatal(self.error(what, e)),
        }
    }
}

impl PresenceChannel for GithubPresence {
    fn publish(&self, record: PresenceRecord) -> BoxFuture<'_, Result<(), PresenceError>> {
        let span =
            tracing::debug_span!("presence_publish", node = self.node_id, repo = %self.describe());
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = self.publish_impl(record).await;
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "presence publish failed");
                }
                result
            },
            span,
        ))
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>> {
        let span =
            tracing::debug_span!("presence_fetch", node = self.node_id, repo = %self.describe());
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = self.fetch_impl().await;
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "presence fetch failed");
                }
                result
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_decimal_ids_name_a_node() {
        let p = |s: &str| node_of(&format!("{PRESENCE_REF_PREFIX}{s}"));
        assert_eq!(p("7"), Some(7));
        assert_eq!(p("0"), Some(0));
        assert_eq!(p("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "007",
            "+7",
            "-7",
            "x",
            "1/2",
            "",
            " 7",
            "18446744073709551616",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(node_of("refs/heads/7"), None);
    }

    #[test]
    fn signatures_are_the_git_channels() {
        // 1_763_800_000_999 ms is 08:26:40.999 UTC: whole seconds, like
        // libgit2's `Time::new(last_seen.div_euclid(1000), 0)`.
        assert_eq!(
            presence_signature(1_763_800_000_999),
            json!({ "name": "skygit", "email": "skygit@localhost", "date": "2025-11-22T08:26:40Z" })
        );
        assert_eq!(presence_message(42), "presence of node 42\n");
    }

    fn listed(name: &str, sha: &str, kind: &str) -> Value {
        json!({ "ref": name, "object": { "sha": sha, "type": kind } })
    }

    #[tokio::test]
    async fn selection_keeps_valid_refs_sorted_and_bounded() {
        let p = GithubPresence::open("acme", "chat", &RemoteOptions::default(), 1).expect("open");
        let sha = "a".repeat(40);
        let mut entries = vec![
            listed("refs/skygit/presence/9", &sha, "commit"),
            listed("refs/skygit/presence/009", &sha, "commit"),
            listed("refs/skygit/presence/3", &sha, "commit"),
            listed("refs/skygit/presence/4", &sha, "tag"),
            listed("refs/skygit/presence/5", "nothex", "commit"),
            listed("refs/heads/6", &sha, "commit"),
            json!({ "ref": 7 }),
        ];
        let ids: Vec<NodeId> = p.select(entries.clone()).iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![3, 9]);
        entries.clear();
        for i in (0..(MAX_PRESENCE_REFS as u64 + 10)).rev() {
            entries.push(listed(&format!("{PRESENCE_REF_PREFIX}{i}"), &sha, "commit"));
        }
        let sel = p.select(entries);
        assert_eq!(sel.len(), MAX_PRESENCE_REFS);
        assert_eq!(sel[0].id, 0);
        assert_eq!(sel[MAX_PRESENCE_REFS - 1].id, MAX_PRESENCE_REFS as u64 - 1);
    }

    #[tokio::test]
    async fn bad_owner_or_name_is_refused() {
        assert!(GithubPresence::open("acme", "a/b", &RemoteOptions::default(), 1).is_err());
        assert!(GithubPresence::open("", "chat", &RemoteOptions::default(), 1).is_err());
    }

    #[tokio::test]
    async fn describe_names_the_repository_and_not_the_token() {
        let opts = RemoteOptions {
            github_api: Some("https://ghe.example.invalid/api/v3/".into()),
            token: Some("ghp_secret".into()),
            ..Default::default()
        };
        let p = GithubPresence::open("acme", "chat", &opts, 5).expect("open");
        let d = p.describe();
        assert_eq!(
            d,
            "github:acme/chat presence refs via https://ghe.example.invalid/api/v3"
        );
        assert!(!d.contains("ghp_secret"));
        assert_eq!(p.node_id(), 5);
        assert_eq!(p.scrub("x ghp_secret y".into()), "x *** y");
    }
}
