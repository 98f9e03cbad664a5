//! The HTTP side: the server thread and runtime, and the one axum handler
//! that records each request, answers injected faults, checks the token,
//! runs the API on a blocking thread and adds the common headers (rate
//! limit, content type, ETag / 304).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use crate::util::{self, lock};
use crate::{Fault, Recorded, MAX_BODY_BYTES, MAX_RECORDED_BODY_BYTES, SHUTDOWN_GRACE};

/// The rate limit every response advertises.
const RATE_LIMIT: u64 = 5000;

/// State shared by the handle and the server thread.
pub(crate) struct Shared {
    /// All git work happens while holding this lock (one writer at a time).
    pub repo: Mutex<git2::Repository>,
    pub repo_path: PathBuf,
    pub owner: String,
    pub name: String,
    pub token: String,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    pub calls: AtomicU64,
    /// Requests counted against the rate limit (all but 304s).
    pub used: AtomicU64,
    pub log: Mutex<Vec<Recorded>>,
    pub faults: Mutex<VecDeque<Fault>>,
    /// Every accepted token and the login it belongs to (the server's own
    /// token is the owner's).
    pub users: Mutex<std::collections::BTreeMap<String, String>>,
    /// The scripted OAuth device flow.
    pub device: Mutex<crate::oauth::DeviceFlow>,
    /// Each user's public SSH keys (`GET /users/{user}/keys`).
    pub ssh_keys: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
    /// Repository permissions set by the test (`admin`, `write`, `read`,
    /// `none`); otherwise the owner is `admin` and a user with a token
    /// `write` (`GET /repos/{o}/{r}/collaborators/{user}/permission`).
    pub permissions: Mutex<std::collections::BTreeMap<String, String>>,
    /// Git LFS objects by oid.
    pub lfs: Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
}

impl Shared {
    pub fn new(
        repo: git2::Repository,
        repo_path: PathBuf,
        owner: &str,
        name: &str,
        token: &str,
        base_url: String,
    ) -> Shared {
        Shared {
            repo: Mutex::new(repo),
            repo_path,
            owner: owner.to_owned(),
            name: name.to_owned(),
            token: token.to_owned(),
            base_url,
            calls: AtomicU64::new(0),
            used: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            users: Mutex::new([(token.to_owned(), owner.to_owned())].into()),
            device: Mutex::new(Default::default()),
            ssh_keys: Mutex::new(Default::default()),
            permissions: Mutex::new(Default::default()),
            lfs: Mutex::new(Default::default()),
        }
    }
}

/// An answer before the common headers are added.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    /// JSON body; `None` for an empty body (e.g. 204).
    pub body: Option<Value>,
    /// Extra headers; they override the common ones.
    pub headers: Vec<(String, String)>,
    /// Whether the answer gets an ETag and honours `If-None-Match`.
    pub etag: bool,
    /// Raw bytes instead of a JSON body (LFS downloads).
    pub raw: Option<Vec<u8>>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
            etag: false,
            raw: None,
        }
    }

    /// Raw bytes of `content_type`.
    pub fn raw(status: u16, bytes: Vec<u8>, content_type: &str) -> Reply {
        Reply {
            raw: Some(bytes),
            ..Reply::json(status, Value::Null)
        }
        .with_header("content-type", content_type.to_owned())
    }

    pub fn message(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({ "message": message }))
    }

    /// A cacheable 200 answer (ETag + 304 support).
    pub fn cacheable(body: Value) -> Reply {
        Reply {
            etag: true,
            ..Reply::json(200, body)
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Reply {
        self.headers.push((name.to_owned(), value));
        self
    }
}

/// Body of the server thread: builds the runtime, serves until `stop`
/// fires (or its sender is dropped), then shuts down.
pub(crate) fn run(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("github-server-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let listener = match rt.block_on(async { tokio::net::TcpListener::from_std(listener) }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let app = Router::new()
        .fallback(handle)
        .with_state(shared)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let _ = ready.send(Ok(()));
    rt.block_on(async move {
        let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = grace_rx.await;
        });
        let mut serve = std::pin::pin!(std::future::IntoFuture::into_future(serve));
        tokio::select! {
            res = &mut serve => {
                if let Err(e) = res {
                    tracing::warn!("github test server stopped: {e}");
                }
            }
            _ = stop => {
                let _ = grace_tx.send(());
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, serve).await;
            }
        }
    });
    rt.shutdown_timeout(SHUTDOWN_GRACE);
}

/// The single handler behind every route.
async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());

    let (reply, recorded_body) = match to_bytes(body, MAX_BODY_BYTES).await {
        Err(_) => (
            Reply::message(413, "Request body too large or unreadable"),
            Value::Null,
        ),
        Ok(bytes) => serve(&shared, &method, &path, &parts.headers, bytes).await,
    };

    let response = finish(&shared, reply, &parts.headers);
    let status = response.status().as_u16();
    tracing::debug!(%method, %path, status, "github test server");
    lock(&shared.log).push(Recorded {
        method,
        path,
        status,
        body: recorded_body,
    });
    response
}

/// The first queued fault this request matches, as its answer.
pub(crate) fn take_fault(shared: &Shared, method: &str, path: &str) -> Option<Reply> {
    let mut faults = lock(&shared.faults);
    let hit = faults.iter().position(|f| {
        f.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path.contains(&f.path_contains)
    });
    hit.and_then(|i| faults.remove(i)).map(|fault| Reply {
        status: fault.status,
        body: Some(json!({ "message": fault.message })),
        headers: fault.headers,
        etag: false,
        raw: None,
    })
}

/// Injected faults and authentication; `Some` answers the request.
fn pre_checks(shared: &Shared, method: &str, path: &str, headers: &HeaderMap) -> Option<Reply> {
    if let Some(f) = take_fault(shared, method, path) {
        return Some(f);
    }
    if !authorized(shared, headers) {
        return Some(Reply::message(401, "Bad credentials"));
    }
    None
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    login_of(shared, headers).is_some()
}

/// The login the request's token belongs to.
fn login_of(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) {
        return None;
    }
    lock(&shared.users).get(token.trim()).cloned()
}

/// Answers a request (faults and credentials first, then the API) on a
/// blocking thread, where the body is parsed; returns the reply and the body
/// to record.
async fn serve(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    bytes: Bytes,
) -> (Reply, Value) {
    // The login host's endpoints take no token.
    if let Some(reply) = crate::oauth::answer(shared, method, path, &bytes) {
        return (reply, Value::Null);
    }
    // Git LFS authenticates its own way.
    if let Some(answered) = crate::lfs::answer(shared, method, path, headers, &bytes) {
        return answered;
    }
    let pre = pre_checks(shared, method, path, headers);
    let login = login_of(shared, headers);
    let shared = shared.clone();
    let method = method.to_owned();
    let path = path.to_owned();
    let keys_of = user_keys_path(&path).map(str::to_owned);
    let work = tokio::task::spawn_blocking(move || {
        let parsed = if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(&bytes)
        };
        let reply = match (pre, &parsed) {
            (Some(reply), _) => reply,
            (None, Err(_)) => Reply::message(400, "Problems parsing JSON"),
            (None, Ok(_)) if method == "GET" && path.split('?').next() == Some("/user") => {
                // The token's user (pre_checks let only known tokens through).
                Reply::json(
                    200,
                    json!({ "login": login.unwrap_or_default(), "type": "User" }),
                )
            }
            (None, Ok(_)) if method == "GET" && keys_of.is_some() => {
                user_keys(&shared, keys_of.as_deref().unwrap_or_default())
            }
            (None, Ok(body)) => crate::api::dispatch(&shared, &method, &path, body),
        };
        let recorded = if bytes.len() > MAX_RECORDED_BODY_BYTES {
            json!({ "omitted_body_bytes": bytes.len() })
        } else {
            match parsed {
                Ok(body) => body,
                Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            }
        };
        (reply, recorded)
    });
    match work.await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!("github test server handler failed: {e}");
            (
                Reply::message(500, "Internal test server error"),
                Value::Null,
            )
        }
    }
}

/// The user of `/users/{user}/keys`.
fn user_keys_path(path: &str) -> Option<&str> {
    let rest = path.split('?').next()?.strip_prefix("/users/")?;
    let user = rest.strip_suffix("/keys")?;
    (!user.is_empty() && !user.contains('/')).then_some(user)
}

/// `GET /users/{user}/keys`: the keys in the order they were added, a 404
/// for a user the server does not know.
fn user_keys(shared: &Shared, user: &str) -> Reply {
    let known = lock(&shared.users).values().any(|u| u == user);
    match lock(&shared.ssh_keys).get(user) {
        Some(keys) => Reply::cacheable(Value::Array(
            keys.iter()
                .enumerate()
                .map(|(i, k)| json!({ "id": i + 1, "key": k }))
                .collect(),
        )),
        None if known => Reply::cacheable(json!([])),
        None => Reply::message(404, "Not Found"),
    }
}

/// Serializes the reply, applies ETag / If-None-Match and adds the common
/// headers.
fn finish(shared: &Shared, reply: Reply, request_headers: &HeaderMap) -> Response {
    let mut status =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = match (&reply.raw, &reply.body) {
        (Some(raw), _) => raw.clone(),
        (None, Some(v)) => serde_json::to_vec(v).unwrap_or_default(),
        (None, None) => Vec::new(),
    };
    let mut headers = HeaderMap::new();
    if reply.etag && status == StatusCode::OK {
        let etag = format!("\"{}\"", util::etag_of(&body));
        if let Some(inm) = request_headers
            .get(axum::http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            if util::etag_matches(inm, &etag) {
                status = StatusCode::NOT_MODIFIED;
                body = Vec::new();
            }
        }
        set(&mut headers, "etag", &etag);
    }
    let used = if status == StatusCode::NOT_MODIFIED {
        shared.used.load(Ordering::SeqCst)
    } else {
        shared.used.fetch_add(1, Ordering::SeqCst) + 1
    };
    set(
        &mut headers,
        "content-type",
        "application/json; charset=utf-8",
    );
    set(&mut headers, "x-ratelimit-limit", &RATE_LIMIT.to_string());
    set(
        &mut headers,
        "x-ratelimit-remaining",
        &RATE_LIMIT.saturating_sub(used).to_string(),
    );
    set(
        &mut headers,
        "x-ratelimit-reset",
        &(util::unix_now() + 3600).to_string(),
    );
    set(&mut headers, "x-ratelimit-used", &used.to_string());
    set(&mut headers, "x-ratelimit-resource", "core");
    for (name, value) in &reply.headers {
        set(&mut headers, name, value);
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Sets a header, silently skipping invalid names or values.
fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}
