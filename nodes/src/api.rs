//! The node's local HTTP API (a first slice: status, post, read, and a
//! stream of applied messages). The web UI and the rest of the API build
//! on it.
//!
//! - `GET  /api/status`: raft, membership, presence and mesh state.
//! - `POST /api/messages` `{"content": "...", "conversation": "general"}`.
//! - `GET  /api/messages?conversation=general&after=I&limit=N`.
//! - `GET  /api/events`: one JSON line per applied message, as it applies
//!   (`index`, `id`, `sender`, `applied_at_us` on this node's clock).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use skygit_actors::consensus::{GetStatus, Proposed, Submit};
use skygit_actors::membership::GetMembershipStatus;
use skygit_actors::mesh::GetMeshStatus;
use skygit_actors::presence::GetPresenceStatus;
use skygit_actors::room::RoomHandle;
use skygit_consensus::model::{ApplyOutcome, Command, ConversationId, MAX_CONTENT_BYTES};
use tokio::sync::broadcast::error::RecvError;
use tracing::Instrument;

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most messages one read returns.
const MAX_PAGE: usize = 1000;

pub struct ApiState {
    pub room: RoomHandle,
    /// Serve the `/api/faults/...` routes (tests only).
    pub faults: bool,
    /// The WebRTC endpoint, for injecting raw bytes (tests only).
    pub mesh: Option<Arc<skygit_mesh::Mesh>>,
}

type Shared = Arc<ApiState>;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn status(State(s): State<Shared>) -> Response {
    let h = &s.room;
    let consensus = match h.consensus.send(GetStatus).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let presence = h.presence.send(GetPresenceStatus).await.ok();
    let mesh = match &h.mesh {
        Some(m) => m.send(GetMeshStatus).await.ok(),
        None => None,
    };
    let membership = match &h.membership {
        Some(m) => m.send(GetMembershipStatus).await.ok(),
        None => None,
    };
    Json(serde_json::json!({
        "room": h.room.as_str(),
        "node_id": h.node_id,
        "user": h.user.as_str(),
        "consensus": consensus,
        "membership": membership,
        "presence": presence,
        "peers": mesh.as_ref().map(|m| &m.peers),
        "signals": mesh.as_ref().map(|m| serde_json::json!({
            "via_repo": m.signals_via_repo,
            "via_mesh": m.signals_via_mesh,
        })),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct PostBody {
    content: String,
    #[serde(default)]
    conversation: Option<String>,
}

#[derive(Serialize)]
struct Posted {
    id: String,
    index: Option<u64>,
    queued: bool,
    outcome: String,
}

fn conversation(name: Option<String>) -> Result<ConversationId, Box<Response>> {
    match name {
        None => Ok(ConversationId::general()),
        Some(n) => ConversationId::new(n)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string()))),
    }
}

async fn post_message(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY_BYTES} bytes"),
        );
    }
    let body: PostBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    if body.content.len() > MAX_CONTENT_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("content over {MAX_CONTENT_BYTES} bytes"),
        );
    }
    let conversation = match conversation(body.conversation) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let submit = Submit {
        sender: s.room.user.clone(),
        command: Command::Post {
            conversation,
            content: body.content,
        },
    };
    match s.room.consensus.send(submit).await {
        Ok(Ok((req, proposed))) => {
            let (index, queued, outcome) = match proposed {
                Proposed::Committed(ApplyOutcome::Applied { index }) => {
                    (Some(index), false, "applied".to_owned())
                }
                Proposed::Committed(o) => (None, false, format!("{o:?}")),
                Proposed::Queued { .. } => (None, true, "queued".to_owned()),
            };
            let status = if queued {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(Posted {
                    id: req.id.to_string(),
                    index,
                    queued,
                    outcome,
                }),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    conversation: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn read_messages(State(s): State<Shared>, Query(q): Query<ReadQuery>) -> Response {
    let conversation = match conversation(q.conversation) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let reader = s.room.storage.reader.clone();
    let read =
        tokio::task::spawn_blocking(move || reader.messages(&conversation, q.after, None, limit))
            .await;
    match read {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn events(State(s): State<Shared>) -> Response {
    let rx = s.room.storage.state_machine.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let Some(m) = e.message.as_ref() else {
                        continue;
                    };
                    let line = serde_json::json!({
                        "index": e.index,
                        "id": m.message.id.to_string(),
                        "sender": m.message.sender.as_str(),
                        "applied_at_us": now_us(),
                    });
                    let mut bytes = line.to_string().into_bytes();
                    bytes.push(b'\n');
                    return Some((Ok::<_, std::convert::Infallible>(bytes), rx));
                }
                Err(RecvError::Lagged(n)) => {
                    let line = format!("{{\"lagged\":{n}}}\n");
                    return Some((Ok(line.into_bytes()), rx));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn drop_link(
    State(s): State<Shared>,
    axum::extract::Path(peer): axum::extract::Path<u64>,
) -> Response {
    if !s.faults {
        return error(StatusCode::NOT_FOUND, "fault injection is off");
    }
    let Some(mesh) = &s.room.mesh else {
        return error(StatusCode::NOT_FOUND, "this node has no mesh");
    };
    match mesh.send(skygit_actors::mesh::DropLink(peer)).await {
        Ok(true) => Json(serde_json::json!({ "dropped": peer })).into_response(),
        Ok(false) => error(StatusCode::CONFLICT, format!("no open link to {peer}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Sends `body` to a peer as it is: `wire` as one raw data-channel message
/// (below the mesh's framing), `frame` as one frame (below the envelope
/// codec). Tests use it to play a peer that sends garbage.
async fn send_raw(
    State(s): State<Shared>,
    axum::extract::Path((peer, layer)): axum::extract::Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Response {
    if !s.faults {
        return error(StatusCode::NOT_FOUND, "fault injection is off");
    }
    let Some(mesh) = &s.mesh else {
        return error(StatusCode::NOT_FOUND, "this node has no mesh");
    };
    let sent = match layer.as_str() {
        "wire" => mesh.send_raw(peer, &body).await.map_err(|e| e.to_string()),
        "frame" => {
            use skygit_consensus::ports::PeerLink;
            mesh.send(peer, body.to_vec())
                .await
                .map_err(|e| e.to_string())
        }
        other => return error(StatusCode::BAD_REQUEST, format!("unknown layer {other:?}")),
    };
    match sent {
        Ok(()) => Json(serde_json::json!({ "sent": body.len() })).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

/// Serves the API on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, state: ApiState) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/api/status", get(status))
        .route("/api/messages", get(read_messages).post(post_message))
        .route("/api/events", get(events))
        .route(
            "/api/faults/send/{peer}/{layer}",
            axum::routing::post(send_raw),
        )
        .route(
            "/api/faults/drop-link/{peer}",
            axum::routing::post(drop_link),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
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
