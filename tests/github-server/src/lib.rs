//! A stateful GitHub-compatible REST API test server backed by a real bare
//! git repository.
//!
//! [`GithubServer::start`] serves one repository `owner/name` on
//! `127.0.0.1:<random port>`. It implements the parts of GitHub's REST API v3
//! that a client committing through the Git Data API needs (refs, commits,
//! trees, blobs, the contents API and the commit list), writes every object
//! into the bare repository with libgit2, so results can be checked
//! afterwards with the real `git` command, and records every request it
//! receives. Faults (rate limits, server errors, …) can be queued with
//! [`GithubServer::inject`].
//!
//! The server runs on its own thread with its own multi-thread tokio runtime,
//! so it can be used from synchronous code, from current-thread runtimes
//! (actix) and from other tokio runtimes alike. Dropping the
//! [`GithubServer`] shuts it down.
//!
//! Git LFS is served as GitHub serves it (the batch API, transfers on
//! another host name with their own credentials).
//!
//! [`git_daemon::GitDaemon`] is the plain-git counterpart: a real `git
//! daemon` on loopback.

mod api;
pub mod git_daemon;
mod lfs;
mod oauth;
mod server;
mod util;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use oauth::{DevicePoll, TEST_CLIENT_ID, USER_CODE};
use server::Shared;

/// Upper bound on a request body (benchmarks send trees of ~30 MB).
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Request bodies larger than this are recorded in the log as
/// `{"omitted_body_bytes": N}` instead of the parsed JSON, so that long
/// benchmarks do not keep every multi-megabyte tree in memory.
pub const MAX_RECORDED_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A queued fault: the next request whose method matches and whose path
/// (including the query string) contains `path_contains` is answered with
/// `status`, `headers` and the body `{"message": message}` instead of being
/// served. Faults are matched in the order they were injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP method to match (case-insensitive); `None` matches any method.
    pub method: Option<String>,
    /// Substring the request path (with query) must contain; "" matches all.
    pub path_contains: String,
    /// Status code of the answer (an invalid code is answered as 500).
    pub status: u16,
    /// Extra response headers; they override the default ones (e.g.
    /// `x-ratelimit-remaining`).
    pub headers: Vec<(String, String)>,
    /// The `message` of the JSON body.
    pub message: String,
}

impl Fault {
    /// A fault answering any method on paths containing `path_contains`
    /// with `status` and no extra headers.
    pub fn new(path_contains: &str, status: u16, message: &str) -> Fault {
        Fault {
            method: None,
            path_contains: path_contains.to_owned(),
            status,
            headers: Vec::new(),
            message: message.to_owned(),
        }
    }

    /// Restricts the fault to one HTTP method.
    pub fn with_method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_owned());
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Fault {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// HTTP method, e.g. "GET".
    pub method: String,
    /// Path with query string, as sent (not percent-decoded).
    pub path: String,
    /// Status code of the answer.
    pub status: u16,
    /// The request body parsed as JSON; `Null` when there was none, a JSON
    /// string holding the (lossy UTF-8) text when it was not JSON, and
    /// `{"omitted_body_bytes": N}` when it was larger than
    /// [`MAX_RECORDED_BODY_BYTES`].
    pub body: serde_json::Value,
}

/// A running test server; dropping it shuts the server down.
pub struct GithubServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GithubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubServer")
            .field("addr", &self.addr)
            .field("repo_path", &self.shared.repo_path)
            .finish_non_exhaustive()
    }
}

impl GithubServer {
    /// Starts on 127.0.0.1:0 serving repository `owner/name`, backed by a
    /// bare repository at `repo_path` (created, with `HEAD` on `main`, if
    /// missing; it may be empty = no commits). Only requests with header
    /// `Authorization: Bearer <token>` or `Authorization: token <token>` are
    /// accepted, others get 401 `{"message":"Bad credentials"}`.
    pub fn start(
        repo_path: &Path,
        owner: &str,
        name: &str,
        token: &str,
    ) -> std::io::Result<GithubServer> {
        let repo = util::open_or_init(repo_path).map_err(std::io::Error::other)?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(
            repo,
            repo_path.to_path_buf(),
            owner,
            name,
            token,
            format!("http://{addr}"),
        ));

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("github-server-{}", addr.port()))
            .spawn(move || server::run(thread_shared, listener, stop_rx, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(std::io::Error::other("github server thread died"));
            }
        }
        Ok(GithubServer {
            shared,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// API base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the bare repository.
    pub fn repo_path(&self) -> PathBuf {
        self.shared.repo_path.clone()
    }

    /// The Git LFS object `oid`, when uploaded.
    pub fn lfs_object(&self, oid: &str) -> Option<Vec<u8>> {
        util::lock(&self.shared.lfs).get(oid).cloned()
    }

    /// Number of requests received (all, including 304 and errors).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        util::lock(&self.shared.log).clone()
    }

    /// Clears the counters (calls, rate-limit usage) and the log.
    pub fn reset_log(&self) {
        let mut log = util::lock(&self.shared.log);
        log.clear();
        self.shared.calls.store(0, Ordering::SeqCst);
        self.shared.used.store(0, Ordering::SeqCst);
    }

    /// Accepts `token` too, as GitHub user `login` (with write access, like
    /// the owner's): `GET /user` names it.
    pub fn add_user(&self, login: &str, token: &str) {
        util::lock(&self.shared.users).insert(token.to_owned(), login.to_owned());
    }

    /// Lists `openssh` (`ssh-ed25519 AAAA...`) among `login`'s public SSH
    /// keys, as GitHub's `/users/{login}/keys` does.
    pub fn add_ssh_key(&self, login: &str, openssh: &str) {
        util::lock(&self.shared.ssh_keys)
            .entry(login.to_owned())
            .or_default()
            .push(openssh.trim().to_owned());
    }

    /// Sets `login`'s permission on the repository (`admin`, `write`,
    /// `read`, `none`), as its collaborators' permission endpoint answers.
    pub fn set_permission(&self, login: &str, permission: &str) {
        util::lock(&self.shared.permissions).insert(login.to_owned(), permission.to_owned());
    }

    /// Scripts the OAuth device flow: each poll of the token endpoint
    /// answers the next step (`authorization_pending` once they run out),
    /// and the device code asks for polls every `interval` seconds.
    pub fn script_device_flow(&self, interval: u64, steps: &[DevicePoll]) {
        let mut flow = util::lock(&self.shared.device);
        flow.interval = interval;
        flow.script = steps.iter().copied().collect();
    }

    /// Queues a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        util::lock(&self.shared.faults).push_back(fault);
    }
}

impl Drop for GithubServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a shutdown waits for in-flight requests.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
