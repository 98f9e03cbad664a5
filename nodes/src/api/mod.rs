//! The node's local HTTP API, the web UI and the dashboard (see
//! `docs/api.md`; `GET /openapi.json` describes every endpoint).
//!
//! Everything is served on one loopback listener. The pages and their
//! assets are public (they hold no data); every API call must carry the
//! node's secret (`Authorization: Bearer ...`). Every answer, page or API,
//! passes [`guard`]: the `Host` must be a loopback name (a DNS-rebinding
//! page cannot reach the node), a cross-origin `Origin` is refused (CORS
//! stays closed), and security headers are set.
//!
//! - `messages`: messages, the outbox and conversations.
//! - `attachments`: files uploaded into the node's store and read back.
//! - `rooms`: repositories, push, flushes, settings, status and peers.
//! - `events`: the server-sent event stream.
//! - `secret`: the per-node secret and the endpoint file the CLI reads.
//! - `ui`: the embedded web pages.

pub mod attachments;
pub mod calls;
mod events;
mod faults;
pub mod messages;
pub mod openapi;
mod rooms;
pub mod secret;
mod ui;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use skygit_actors::ports::RepoRemote;
use skygit_actors::room::RoomHandle;
use tracing::Instrument;

pub use skygit_api::limits::MAX_BODY_BYTES;
use skygit_api::ErrorBody;
pub use skygit_api::RepoQuery;

// The contract's limits are the node's own.
const _: () = {
    use skygit_api::limits as api;
    use skygit_consensus::model as m;
    assert!(api::MAX_CONTENT_BYTES == m::MAX_CONTENT_BYTES);
    assert!(api::MAX_CONVERSATION_BYTES == m::MAX_CONVERSATION_BYTES);
    assert!(api::MAX_TITLE_BYTES == m::MAX_TITLE_BYTES);
    assert!(api::MAX_ATTACHMENTS == skygit_consensus::attachment::MAX_ATTACHMENTS);
    assert!(
        api::MAX_ATTACHMENT_NAME_BYTES == skygit_consensus::attachment::MAX_ATTACHMENT_NAME_BYTES
    );
    assert!(
        api::DEFAULT_MAX_ATTACHMENT_BYTES == skygit_actors::layout::DEFAULT_MAX_ATTACHMENT_BYTES
    );
    assert!(api::MIN_COMMIT_INTERVAL_SECS == m::MIN_COMMIT_INTERVAL_SECS);
    assert!(api::MAX_COMMIT_INTERVAL_SECS == m::MAX_COMMIT_INTERVAL_SECS);
    assert!(api::VOTER_COUNTS.len() == m::VOTER_COUNTS.len());
    let mut i = 0;
    while i < api::VOTER_COUNTS.len() {
        assert!(api::VOTER_COUNTS[i] == m::VOTER_COUNTS[i]);
        i += 1;
    }
};

/// The content security policy of every answer: scripts, styles and
/// connections only from the node itself, nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// One room this node serves.
pub struct Served {
    /// The room's key in URLs (`?repo=`): its storage key.
    pub key: String,
    /// The repository as given (`github:owner/name`, a URL or a path).
    pub spec: String,
    pub handle: RoomHandle,
    /// The WebRTC endpoint (fault routes only).
    pub mesh: Option<Arc<skygit_mesh::Mesh>>,
    /// The room's repository, for its call counts and write budget.
    pub remote: Option<Arc<dyn RepoRemote>>,
    /// The repository's web page (GitHub rooms), for commit and issue links.
    pub web_url: Option<String>,
    /// The room's attachment settings (`config.json`'s `media`).
    pub media: skygit_actors::layout::MediaConfig,
    /// The STUN and TURN servers browsers use for calls (the mesh's).
    pub ice: calls::BrowserIce,
}

impl Served {
    pub fn new(
        handle: RoomHandle,
        mesh: Option<Arc<skygit_mesh::Mesh>>,
        remote: Option<Arc<dyn RepoRemote>>,
    ) -> Self {
        let spec = handle.room.as_str().to_owned();
        let web_url = web_url_of(&spec);
        Self {
            key: handle.room.storage_key(),
            spec,
            handle,
            mesh,
            remote,
            web_url,
            media: Default::default(),
            ice: Default::default(),
        }
    }

    /// With the room's attachment settings.
    /// The ICE servers browsers use for calls.
    pub fn with_ice(mut self, ice: calls::BrowserIce) -> Self {
        self.ice = ice;
        self
    }

    pub fn with_media(mut self, media: skygit_actors::layout::MediaConfig) -> Self {
        if let Some(t) = &self.handle.attachments {
            t.set_max_bytes(media.max_bytes);
        }
        self.media = media;
        self
    }

    /// The web address of a commit, when the host has web pages.
    pub fn commit_url(&self, sha: &str) -> Option<String> {
        self.web_url.as_ref().map(|w| format!("{w}/commit/{sha}"))
    }
}

/// The repository's web page, when its host has one (GitHub rooms).
pub fn web_url_of(spec: &str) -> Option<String> {
    match skygit_remotes::parse_github_spec(spec) {
        Some(Ok((owner, name))) => Some(format!("https://github.com/{owner}/{name}")),
        _ => None,
    }
}

/// Opens one more room on this node from a repository spec.
pub type Opener = Arc<dyn Fn(String) -> BoxFuture<'static, anyhow::Result<Served>> + Send + Sync>;

/// Rooms one node serves at most.
pub const MAX_ROOMS: usize = 16;

pub struct ApiState {
    /// Every API request must carry it.
    pub secret: String,
    /// The rooms, the primary (default) one first.
    pub rooms: tokio::sync::RwLock<Vec<Arc<Served>>>,
    /// How to open another room (`POST /repositories`); `None` where the
    /// node cannot (benchmarks).
    pub opener: Option<Opener>,
    /// Serve the `/faults/...` routes (tests only).
    pub faults: bool,
    /// The Prometheus renderer (`GET /metrics`).
    pub metrics: Option<PrometheusHandle>,
    /// Host names a request may address besides the loopback names
    /// (`*`: any, for a node that listens beyond loopback on purpose).
    pub extra_hosts: Vec<String>,
    /// Event streams open now (at most [`MAX_EVENT_STREAMS`]).
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Event streams one node serves at once.
pub const MAX_EVENT_STREAMS: usize = 64;

impl ApiState {
    pub fn new(secret: String, primary: Served) -> Self {
        Self {
            secret,
            rooms: tokio::sync::RwLock::new(vec![Arc::new(primary)]),
            opener: None,
            faults: false,
            metrics: None,
            extra_hosts: Vec::new(),
            streams: Arc::default(),
        }
    }

    /// The room `key` names, or the primary room.
    pub async fn room(&self, key: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let rooms = self.rooms.read().await;
        match key {
            None => rooms.first().cloned(),
            Some(k) => rooms.iter().find(|r| r.key == k || r.spec == k).cloned(),
        }
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("this node serves no repository {:?}", key.unwrap_or("")),
            )
        })
    }
}

pub type Shared = Arc<ApiState>;

/// An error answer: an [`ErrorBody`] (`{"status": "error", "error": "..."}`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: a queued post's answer carries the whole message.
    pub body: Box<ErrorBody>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::body(status, ErrorBody::new(message))
    }

    pub fn body(status: StatusCode, body: ErrorBody) -> Self {
        Self {
            status,
            body: Box::new(body),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(*self.body)).into_response()
    }
}

/// An actor that did not answer (it stopped with its room).
pub fn gone(e: actix::MailboxError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the room is not running: {e}"),
    )
}

/// A storage read off the runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, skygit_storage::StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage: {e}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage read failed: {e}"),
        )),
    }
}

/// Parses a JSON body, mapping a too-large or malformed one to 413/400.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        ));
    }
    // serde reads a struct from an array too; the contract says object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// Parses a query string, mapping a bad one to 400.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Every API route: the request must carry the node's secret.
async fn require_secret(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), s.secret.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request needs the node's secret: send `Authorization: Bearer <secret>` \
                 (printed at start and kept in <data-dir>/api-secret)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// The host part of a `Host` header value.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn host_allowed(s: &ApiState, host: &str) -> bool {
    let name = host_name(host);
    if name.eq_ignore_ascii_case("localhost") || s.extra_hosts.iter().any(|h| h == name || h == "*")
    {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Host and origin checks, security headers, a span and metrics for every
/// request.
async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let span = tracing::info_span!("request", %method, %route);
    let mut resp = if !host_allowed(&s, &host) {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not this node's loopback address"),
        )
        .into_response()
    } else if origin
        .as_deref()
        .is_some_and(|o| o != format!("http://{host}"))
    {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused (CORS is closed)",
        )
        .into_response()
    } else {
        next.run(req).instrument(span.clone()).await
    };
    let status = resp.status();
    let h = resp.headers_mut();
    // A handler's own, stricter policy stays (a file's bytes: sandboxed).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let took = started.elapsed();
    metrics::counter!("skygit_api_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!("skygit_api_request_duration_seconds", "method" => method, "route" => route)
        .record(took.as_secs_f64());
    span.in_scope(|| tracing::debug!(status = status.as_u16(), ?took, "answered"));
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (see /openapi.json)",
    )
}

#[utoipa::path(get, path = "/metrics", tag = "node",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
              (status = 404, description = "metrics are off on this node", body = ErrorBody)))]
/// The node's metrics.
async fn prometheus(State(s): State<Shared>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::render(h),
        )
            .into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "metrics are off on this node").into_response()
        }
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "node",
    responses((status = 200, description = "this description (OpenAPI 3.1)", content_type = "application/json")))]
/// The OpenAPI description of this API, generated from `skygit-api`.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::json(),
    )
        .into_response()
}

/// The whole HTTP surface.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/status", get(rooms::status))
        .route("/peers", get(rooms::peers))
        .route("/messages", get(messages::list).post(messages::post))
        .route(
            "/messages/{id}",
            get(messages::get_one)
                .patch(messages::edit)
                .delete(messages::delete),
        )
        .route("/outbox", get(messages::outbox))
        .route("/attachments", post(attachments::upload))
        .route("/attachments/{sha256}", get(attachments::download))
        .route(
            "/conversations",
            get(messages::conversations).post(messages::create_conversation),
        )
        .route(
            "/repositories",
            get(rooms::repositories).post(rooms::add_repository),
        )
        .route("/push", post(rooms::push))
        .route("/flushes", get(rooms::flushes))
        .route("/settings", get(rooms::settings).put(rooms::put_settings))
        .route("/events", get(events::events))
        .route("/calls", get(calls::list).post(calls::start))
        .route("/calls/ice", get(calls::ice))
        .route("/calls/{id}/accept", post(calls::accept))
        .route("/calls/{id}/decline", post(calls::decline))
        .route("/calls/{id}/hangup", post(calls::hangup))
        .route("/calls/{id}/recording", post(calls::recording))
        .route("/calls/{id}/alive", post(calls::alive))
        .route("/calls/{id}/signal", post(calls::signal))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi))
        .route("/faults/send/{peer}/{layer}", post(faults::send_raw))
        .route("/faults/drop-link/{peer}", post(faults::drop_link))
        .route("/faults/block/{peer}", post(faults::block))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    Router::new()
        .route("/", get(ui::index))
        .route("/dashboard", get(ui::dashboard))
        .route("/ui/{file}", get(ui::asset))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the API on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, state: ApiState) -> anyhow::Result<SocketAddr> {
    serve_shared(addr, Arc::new(state)).await
}

/// Serves the API on `addr` with state the caller keeps too.
pub async fn serve_shared(addr: SocketAddr, state: Shared) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the API listens beyond loopback; only the secret protects it");
    }
    let app = router(state);
    tokio::spawn(
        async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        }
        .instrument(tracing::info_span!("api", %bound)),
    );
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_split_from_ports() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:80"), "evil.example");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
