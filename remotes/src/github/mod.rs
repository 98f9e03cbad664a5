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

mod git_data;
pub mod keys;
pub mod oauth;

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
use skygit_ports::layout::{COMMITTER_EMAIL, COMMITTER_NAME};
use skygit_ports::{
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

#[cfg(test)]
mod tests;
