//! GitHub (or GitHub Enterprise) through its REST API, with octocrab as
//! the HTTP client.
//!
//! A commit is three calls when the head is known: create a tree with the
//! files inline on `base_tree`, create the commit, move the branch with
//! `force: false`. GitHub refuses a ref update that is not a fast forward
//! (422): that is the compare-and-swap. The Git Data API answers 409 on an
//! empty repository, so the first commit (the room's `config.json`) goes
//! through the contents API instead.
//!
//! Limits GitHub imposes, and what this adapter does about them:
//! - reads are conditional (`If-None-Match`); a 304 costs no quota;
//! - a 429, or a 403 with `retry-after` or `x-ratelimit-remaining: 0`,
//!   becomes [`RepoError::RateLimited`] with the wait GitHub asked for;
//! - writes are counted locally against the secondary limits (80 a minute,
//!   500 an hour) and refused before GitHub has to;
//! - reads and object creation (content-addressed, so repeating them is
//!   harmless) are retried a bounded number of times on 5xx and transport
//!   errors; the ref update and the contents call are never repeated: when
//!   their outcome is unknown the caller re-reads the branch.
//!
//! The token is sent in the `Authorization` header only; it never appears
//! in a log line or an error.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use skygit_actors::layout::{COMMITTER_EMAIL, COMMITTER_NAME};
use skygit_actors::ports::{
    CommitInfo, CommitRequest, EntryKind, RepoError, RepoHead, RepoRemote, TreeEntry,
};

/// The public GitHub API.
pub const DEFAULT_API: &str = "https://api.github.com";
/// Largest JSON answer read (a tree of 100,000 entries is about 20 MB).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Attempts of an idempotent call on a 5xx or transport error.
const MAX_ATTEMPTS: u32 = 3;
/// First retry delay; doubled per attempt.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait a rate-limit answer is trusted for.
const MAX_RATE_WAIT_MS: u64 = 3600 * 1000;
/// Secondary limits on content-creating requests.
const WRITES_PER_MINUTE: usize = 80;
const WRITES_PER_HOUR: usize = 500;
/// Conditional-request cache bounds.
const ETAG_CACHE_ENTRIES: usize = 256;
const ETAG_CACHE_MAX_BODY: usize = 1024 * 1024;
/// Commits remembered (tree and message), so a known head costs no read.
const COMMIT_CACHE_ENTRIES: usize = 64;
/// Commits per page of the history listing (GitHub's maximum).
const HISTORY_PAGE: usize = 100;

/// Where and how to reach a repository on GitHub.
#[derive(Clone)]
pub struct GithubConfig {
    /// API base URL, without a trailing slash.
    pub api: String,
    pub owner: String,
    pub name: String,
    pub branch: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("api", &self.api)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("branch", &self.branch)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// One answer, read whole (bounded).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Result<T, RepoError> {
        serde_json::from_slice(&self.body).map_err(|e| RepoError::Invalid(format!("{what}: {e}")))
    }

    pub(crate) fn message(&self) -> String {
        #[derive(Deserialize)]
        struct Msg {
            message: String,
        }
        serde_json::from_slice::<Msg>(&self.body)
            .map(|m| m.message)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect()
            })
    }

    fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.trim().parse().ok()
    }
}

/// Why one exchange failed before an answer was read.
enum CallError {
    /// Connection, timeout or protocol failure.
    Transport(String),
    /// The answer is larger than the caller accepts.
    TooLarge(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Method {
    Get,
    Post,
    Patch,
    Put,
}

impl Method {
    fn is_write(self) -> bool {
        self != Method::Get
    }
}

/// The GitHub remote of one repository and branch.
pub struct GithubRemote {
    client: octocrab::Octocrab,
    pub(crate) cfg: GithubConfig,
    calls: AtomicU64,
    /// Answers of conditional reads, by path: ETag and body.
    etags: Mutex<Bounded<(HeaderValue, Vec<u8>)>>,
    commits: Mutex<Bounded<CommitObj>>,
    writes: Mutex<VecDeque<Instant>>,
}

/// A map that keeps at most `capacity` entries, forgetting the oldest
/// inserted first.
struct Bounded<V> {
    capacity: usize,
    order: VecDeque<String>,
    entries: BTreeMap<String, V>,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            entries: BTreeMap::new(),
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    fn insert(&mut self, key: String, value: V) {
        if self.entries.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

#[derive(Clone)]
struct CommitObj {
    tree: String,
    message: String,
}

pub(crate) fn check_sha(s: &str) -> Result<(), RepoError> {
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(RepoError::Invalid(format!(
            "{:?} is not a commit id",
            s.chars().take(64).collect::<String>()
        )))
    }
}

/// The `author`/`committer` object of every commit the committer makes.
fn signature(time_secs: i64) -> Value {
    let date = chrono::DateTime::from_timestamp(time_secs, 0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({ "name": COMMITTER_NAME, "email": COMMITTER_EMAIL, "date": date })
}

/// Path segments are percent-encoded (branch names may hold `/`, which
/// GitHub expects unencoded in ref paths, so `/` is kept).
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl GithubRemote {
    /// A remote for `cfg`; no call is made yet.
    pub fn new(cfg: GithubConfig) -> Result<Self, RepoError> {
        let mut builder = octocrab::Octocrab::builder()
            .base_uri(cfg.api.as_str())
            .map_err(|e| RepoError::Invalid(format!("GitHub API URL {:?}: {e}", cfg.api)))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .add_header(http::header::ACCEPT, "application/vnd.github+json".into())
            .add_header(
                http::HeaderName::from_static("x-github-api-version"),
                "2022-11-28".into(),
            );
        if let Some(t) = &cfg.token {
            builder = builder.personal_token(t.clone());
        }
        let client = builder
            .build()
            .map_err(|e| RepoError::Invalid(format!("GitHub client: {e}")))?;
        Ok(Self {
            client,
            cfg,
            calls: AtomicU64::new(0),
            etags: Mutex::new(Bounded::new(ETAG_CACHE_ENTRIES)),
            commits: Mutex::new(Bounded::new(COMMIT_CACHE_ENTRIES)),
            writes: Mutex::new(VecDeque::new()),
        })
    }

    pub(crate) fn repo_path(&self) -> String {
        format!(
            "/repos/{}/{}",
            encode_path(&self.cfg.owner),
            encode_path(&self.cfg.name)
        )
    }

    /// Counts a write against the secondary limits, or says how long to
    /// wait for one.
    fn take_write_budget(&self) -> Result<(), RepoError> {
        let now = Instant::now();
        let mut w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            w.pop_front();
        }
        let last_minute = w
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < Duration::from_secs(60))
            .count();
        let wait = if w.len() >= WRITES_PER_HOUR {
            w.front()
                .map(|t| Duration::from_secs(3600).saturating_sub(now.duration_since(*t)))
        } else if last_minute >= WRITES_PER_MINUTE {
            w.get(w.len() - last_minute)
                .map(|t| Duration::from_secs(60).saturating_sub(now.duration_since(*t)))
        } else {
            None
        };
        if let Some(wait) = wait {
            return Err(RepoError::RateLimited {
                retry_after_ms: wait.as_millis().max(1) as u64,
            });
        }
        w.push_back(now);
        Ok(())
    }

    /// One HTTP exchange, retried on 5xx and transport errors when the call
    /// is safe to repeat. Rate-limit answers become errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        repeatable: bool,
        max_bytes: usize,
    ) -> Result<Answer, RepoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if method.is_write() {
                // Every attempt reaches GitHub, so every attempt counts.
                self.take_write_budget()?;
            }
            match self.call_once(method, path, body, max_bytes).await {
                Ok(a) if a.status.is_server_error() && repeatable && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(status = %a.status, path, attempt, "GitHub answered a server error; retrying");
                }
                Ok(a) if a.status.is_server_error() && !repeatable => {
                    return Err(RepoError::Unknown(format!(
                        "{} {path}: {} {}",
                        method_name(method),
                        a.status,
                        a.message()
                    )))
                }
                Ok(a) => return classify_limits(a),
                // An answer over the limit would be just as large again.
                Err(CallError::TooLarge(e)) => return Err(RepoError::Invalid(e)),
                Err(CallError::Transport(e)) if repeatable && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(error = %e, path, attempt, "GitHub call failed; retrying");
                }
                Err(CallError::Transport(e)) if repeatable => {
                    return Err(RepoError::Unavailable(e))
                }
                Err(CallError::Transport(e)) => return Err(RepoError::Unknown(e)),
            }
            tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)).await;
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        max_bytes: usize,
    ) -> Result<Answer, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let cached = if method == Method::Get {
            self.etags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .cloned()
        } else {
            None
        };
        let result = match method {
            Method::Get => {
                let mut h = HeaderMap::new();
                if let Some((etag, _)) = &cached {
                    h.insert(http::header::IF_NONE_MATCH, etag.clone());
                }
                self.client._get_with_headers(path, Some(h)).await
            }
            Method::Post => self.client._post(path, body).await,
            Method::Patch => self.client._patch(path, body).await,
            Method::Put => self.client._put(path, body).await,
        };
        let resp = result
            .map_err(|e| CallError::Transport(format!("{} {path}: {e}", method_name(method))))?;
        let (parts, b) = resp.into_parts();
        let bytes = http_body_util::Limited::new(b, max_bytes)
            .collect()
            .await
            .map_err(|e| {
                let what = format!("{} {path}: reading the answer: {e}", method_name(method));
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::TooLarge(format!("{what} (limit {max_bytes} bytes)"))
                } else {
                    CallError::Transport(what)
                }
            })?
            .to_bytes()
            .to_vec();
        let mut answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body: bytes,
        };
        if method == Method::Get {
            if answer.status == StatusCode::NOT_MODIFIED {
                if let Some((_, body)) = cached {
                    answer.status = StatusCode::OK;
                    answer.body = body;
                }
            } else if answer.status == StatusCode::OK && answer.body.len() <= ETAG_CACHE_MAX_BODY {
                if let Some(etag) = answer.headers.get(http::header::ETAG) {
                    self.etags
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(path.to_owned(), (etag.clone(), answer.body.clone()));
                }
            }
        }
        Ok(answer)
    }

    pub(crate) async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        repeatable: bool,
    ) -> Result<Answer, RepoError> {
        debug_assert!(method.is_write());
        self.call(method, path, Some(body), repeatable, MAX_ANSWER_BYTES)
            .await
    }

    pub(crate) async fn get(&self, path: &str, max_bytes: usize) -> Result<Answer, RepoError> {
        self.call(Method::Get, path, None, true, max_bytes).await
    }

    async fn commit_obj(&self, sha: &str) -> Result<CommitObj, RepoError> {
        check_sha(sha)?;
        if let Some(c) = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha)
        {
            return Ok(c.clone());
        }
        let a = self
            .get(
                &format!("{}/git/commits/{sha}", self.repo_path()),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => {
                return Err(RepoError::NotFound(format!("commit {sha}")))
            }
            s => return Err(unexpected("read commit", s, &a)),
        }
        let c: GitCommit = a.json("commit")?;
        check_sha(&c.tree.sha)?;
        let obj = CommitObj {
            tree: c.tree.sha,
            message: c.message,
        };
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha.to_owned(), obj.clone());
        Ok(obj)
    }

    async fn head_impl(&self) -> Result<Option<RepoHead>, RepoError> {
        let a = self
            .get(
                &format!(
                    "{}/git/ref/heads/{}",
                    self.repo_path(),
                    encode_path(&self.cfg.branch)
                ),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            // 409: an empty repository; 404: no such branch yet.
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(unexpected("read branch", s, &a)),
        }
        let r: GitRef = a.json("ref")?;
        check_sha(&r.object.sha)?;
        let c = self.commit_obj(&r.object.sha).await?;
        Ok(Some(RepoHead {
            commit_sha: r.object.sha,
            message: c.message,
        }))
    }

    /// The first commit of an empty repository: one file through the
    /// contents API (the Git Data API answers 409 there).
    async fn bootstrap(&self, req: &CommitRequest) -> Result<String, RepoError> {
        let [(path, bytes)] = req.files.as_slice() else {
            return Err(RepoError::Invalid(
                "the first commit of an empty GitHub repository holds exactly one file".into(),
            ));
        };
        let body = json!({
            "message": req.message,
            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
            "branch": self.cfg.branch,
            "author": signature(req.time_secs),
            "committer": signature(req.time_secs),
        });
        let a = self
            .write(
                Method::Put,
                &format!("{}/contents/{}", self.repo_path(), encode_path(path)),
                &body,
                false,
            )
            .await?;
        match a.status {
            StatusCode::OK | StatusCode::CREATED => {}
            // The file (so the branch) exists already: another writer won.
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                return Err(RepoError::Conflict)
            }
            s => return Err(unexpected("create the first commit", s, &a)),
        }
        let created: ContentsAnswer = a.json("contents answer")?;
        check_sha(&created.commit.sha)?;
        if let Some(tree) = created.commit.tree.filter(|t| check_sha(&t.sha).is_ok()) {
            // Known now: the next commit on it needs no read.
            self.commits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    created.commit.sha.clone(),
                    CommitObj {
                        tree: tree.sha,
                        message: req.message.clone(),
                    },
                );
        }
        Ok(created.commit.sha)
    }

    async fn commit_impl(&self, req: CommitRequest) -> Result<String, RepoError> {
        let Some(parent) = req.expected_head.clone() else {
            return self.bootstrap(&req).await;
        };
        let base = match self.commit_obj(&parent).await {
            Ok(c) => c,
            Err(RepoError::NotFound(_)) => return Err(RepoError::Conflict),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::with_capacity(req.files.len());
        for (path, bytes) in &req.files {
            match std::str::from_utf8(bytes) {
                Ok(text) => entries.push(json!({
                    "path": path, "mode": "100644", "type": "blob", "content": text,
                })),
                Err(_) => {
                    let sha = self.create_blob(bytes).await?;
                    entries.push(json!({
                        "path": path, "mode": "100644", "type": "blob", "sha": sha,
                    }));
                }
            }
        }
        let repo = self.repo_path();
        let a = self
            .write(
                Method::Post,
                &format!("{repo}/git/trees"),
                &json!({ "base_tree": base.tree, "tree": entries }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create tree", a.status, &a));
        }
        let tree: Sha = a.json("tree answer")?;
        check_sha(&tree.sha)?;
        let a = self
            .write(
                Method::Post,
                &format!("{repo}/git/commits"),
                &json!({
                    "message": req.message,
                    "tree": tree.sha,
                    "parents": [parent],
                    "author": signature(req.time_secs),
                    "committer": signature(req.time_secs),
                }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create commit", a.status, &a));
        }
        let commit: Sha = a.json("commit answer")?;
        check_sha(&commit.sha)?;
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                commit.sha.clone(),
                CommitObj {
                    tree: tree.sha,
                    message: req.message.clone(),
                },
            );
        let a = self
            .write(
                Method::Patch,
                &format!("{repo}/git/refs/heads/{}", encode_path(&self.cfg.branch)),
                &json!({ "sha": commit.sha, "force": false }),
                false,
            )
            .await?;
        match a.status {
            StatusCode::OK => Ok(commit.sha),
            // "Update is not a fast forward", or the ref vanished.
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => Err(RepoError::Conflict),
            s => Err(unexpected("update branch", s, &a)),
        }
    }

    async fn create_blob(&self, bytes: &[u8]) -> Result<String, RepoError> {
        let a = self
            .write(
                Method::Post,
                &format!("{}/git/blobs", self.repo_path()),
                &json!({
                    "content": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "encoding": "base64",
                }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create blob", a.status, &a));
        }
        let s: Sha = a.json("blob answer")?;
        check_sha(&s.sha)?;
        Ok(s.sha)
    }

    async fn history_impl(&self, from: &str, max: usize) -> Result<Vec<CommitInfo>, RepoError> {
        check_sha(from)?;
        let mut out = Vec::new();
        let mut page = 1usize;
        while out.len() < max {
            let a = self
                .get(
                    &format!(
                        "{}/commits?sha={from}&per_page={HISTORY_PAGE}&page={page}",
                        self.repo_path()
                    ),
                    MAX_ANSWER_BYTES,
                )
                .await?;
            if a.status != StatusCode::OK {
                return Err(unexpected("list commits", a.status, &a));
            }
            let list: Vec<ListedCommit> = a.json("commit list")?;
            let n = list.len();
            for c in list.into_iter().take(max - out.len()) {
                check_sha(&c.sha)?;
                out.push(CommitInfo {
                    sha: c.sha,
                    message: c.commit.message,
                });
            }
            if n < HISTORY_PAGE {
                break;
            }
            page += 1;
        }
        Ok(out)
    }

    async fn tree(&self, sha: &str, recursive: bool) -> Result<GitTree, RepoError> {
        check_sha(sha)?;
        let q = if recursive { "?recursive=1" } else { "" };
        let a = self
            .get(
                &format!("{}/git/trees/{sha}{q}", self.repo_path()),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => a.json("tree"),
            StatusCode::NOT_FOUND => Err(RepoError::NotFound(format!("tree {sha}"))),
            s => Err(unexpected("read tree", s, &a)),
        }
    }

    async fn list_impl(
        &self,
        commit: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<TreeEntry>, RepoError> {
        let mut tree = self.commit_obj(commit).await?.tree;
        let prefix = prefix.trim_end_matches('/');
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            let t = self.tree(&tree, false).await?;
            match t.tree.into_iter().find(|e| e.path == part) {
                Some(e) if e.kind == "tree" => tree = e.sha,
                Some(_) => return Err(RepoError::Invalid(format!("{prefix} is not a folder"))),
                None => return Ok(Vec::new()),
            }
        }
        let t = self.tree(&tree, true).await?;
        if t.truncated {
            return Err(RepoError::Invalid(format!(
                "{prefix} holds more entries than GitHub lists in one tree"
            )));
        }
        let mut out = Vec::new();
        for e in t.tree {
            if e.kind == "tree" {
                continue;
            }
            if out.len() >= max {
                return Err(RepoError::Invalid(format!(
                    "{prefix} holds more than {max} files"
                )));
            }
            let kind = match (e.kind.as_str(), e.mode.as_str()) {
                ("blob", "100644" | "100755") => EntryKind::File,
                _ => EntryKind::Other,
            };
            out.push(TreeEntry {
                path: format!("{prefix}/{}", e.path),
                kind,
                id: e.sha,
                size: e.size,
            });
        }
        Ok(out)
    }

    pub(crate) async fn read_blob_impl(
        &self,
        id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, RepoError> {
        check_sha(id)?;
        // base64 with line breaks, plus the JSON around it.
        let limit = max_bytes.saturating_mul(2).saturating_add(64 * 1024);
        let a = self
            .call(
                Method::Get,
                &format!("{}/git/blobs/{id}", self.repo_path()),
                None,
                true,
                limit,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(RepoError::NotFound(format!("blob {id}"))),
            s => return Err(unexpected("read blob", s, &a)),
        }
        let b: GitBlob = a.json("blob")?;
        if b.size > max_bytes as u64 {
            return Err(RepoError::Invalid(format!(
                "blob {id} is {} bytes, more than the limit of {max_bytes}",
                b.size
            )));
        }
        if b.encoding != "base64" {
            return Err(RepoError::Invalid(format!(
                "blob {id} has encoding {:?}",
                b.encoding
            )));
        }
        let clean: String = b.content.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map_err(|e| RepoError::Invalid(format!("blob {id}: {e}")))?;
        if bytes.len() > max_bytes {
            return Err(RepoError::Invalid(format!(
                "blob {id} is more than the limit of {max_bytes} bytes"
            )));
        }
        Ok(bytes)
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Patch => "PATCH",
        Method::Put => "PUT",
    }
}

/// Turns rate-limit and authorisation answers into errors; passes the
/// rest on.
fn classify_limits(a: Answer) -> Result<Answer, RepoError> {
    let retry_after = a.header("retry-after").map(|s| s.saturating_mul(1000));
    let exhausted = a.header("x-ratelimit-remaining") == Some(0);
    // A secondary limit sometimes comes without headers; GitHub's
    // documentation asks for at least a minute's wait then.
    let secondary = a.status == StatusCode::FORBIDDEN
        && a.message().to_ascii_lowercase().contains("rate limit");
    let until_reset = || {
        let reset = a.header("x-ratelimit-reset")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(reset.saturating_sub(now).saturating_mul(1000).max(1000))
    };
    match a.status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN
            if retry_after.is_some()
                || exhausted
                || secondary
                || a.status == StatusCode::TOO_MANY_REQUESTS =>
        {
            let wait = retry_after
                .or_else(|| exhausted.then(until_reset).flatten())
                // A secondary limit without a hint: GitHub asks for a minute.
                .unwrap_or(60_000)
                .min(MAX_RATE_WAIT_MS);
            Err(RepoError::RateLimited {
                retry_after_ms: wait,
            })
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RepoError::Denied(a.message())),
        _ => Ok(a),
    }
}

pub(crate) fn unexpected(what: &str, status: StatusCode, a: &Answer) -> RepoError {
    if status.is_server_error() {
        RepoError::Unavailable(format!("{what}: {status} {}", a.message()))
    } else if status == StatusCode::NOT_FOUND {
        RepoError::NotFound(format!("{what}: {}", a.message()))
    } else {
        RepoError::Invalid(format!("{what}: {status} {}", a.message()))
    }
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct GitRef {
    object: Sha,
}

#[derive(Deserialize)]
struct GitCommit {
    message: String,
    tree: Sha,
}

#[derive(Deserialize)]
struct ContentsCommit {
    sha: String,
    #[serde(default)]
    tree: Option<Sha>,
}

#[derive(Deserialize)]
struct ContentsAnswer {
    commit: ContentsCommit,
}

#[derive(Deserialize)]
struct ListedCommitBody {
    message: String,
}

#[derive(Deserialize)]
struct ListedCommit {
    sha: String,
    commit: ListedCommitBody,
}

#[derive(Deserialize)]
struct GitTreeEntry {
    path: String,
    mode: String,
    #[serde(rename = "type")]
    kind: String,
    sha: String,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct GitTree {
    tree: Vec<GitTreeEntry>,
    #[serde(default)]
    truncated: bool,
}

#[derive(Deserialize)]
struct GitBlob {
    content: String,
    encoding: String,
    size: u64,
}

impl RepoRemote for GithubRemote {
    fn describe(&self) -> String {
        format!(
            "github:{}/{} ({}) via {}",
            self.cfg.owner, self.cfg.name, self.cfg.branch, self.cfg.api
        )
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        Box::pin(self.head_impl())
    }

    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        Box::pin(self.commit_impl(req))
    }

    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        Box::pin(self.history_impl(from, max))
    }

    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        Box::pin(self.list_impl(commit, prefix, max))
    }

    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        Box::pin(self.read_blob_impl(id, max_bytes))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn write_budget(&self) -> Option<skygit_actors::ports::WriteBudget> {
        let now = Instant::now();
        let w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let within = |d: Duration| w.iter().filter(|t| now.duration_since(**t) < d).count() as u64;
        Some(skygit_actors::ports::WriteBudget {
            writes_last_minute: within(Duration::from_secs(60)),
            writes_last_hour: within(Duration::from_secs(3600)),
            limit_minute: WRITES_PER_MINUTE as u64,
            limit_hour: WRITES_PER_HOUR as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let cfg = GithubConfig {
            api: DEFAULT_API.into(),
            owner: "acme".into(),
            name: "chat".into(),
            branch: "main".into(),
            token: Some("ghp_verysecret".into()),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("verysecret"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn signatures_are_utc_seconds() {
        assert_eq!(
            signature(1_763_800_000)["date"],
            Value::String("2025-11-22T08:26:40Z".into())
        );
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(encode_path("a b/c%"), "a%20b/c%25");
        assert_eq!(
            encode_path(".messages/config.json"),
            ".messages/config.json"
        );
    }
}
