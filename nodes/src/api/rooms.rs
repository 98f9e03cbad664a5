//! The rooms this node serves and their state: repositories, push,
//! flushes, settings, status and peers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skygit_actors::committer::{
    CommitterError, CommitterInfo, Flush, FlushReason, FlushRecord, GetCommitterInfo, GetFlushes,
};
use skygit_actors::consensus::{ConsensusStatus, GetStatus};
use skygit_actors::membership::{GetMembershipStatus, MembershipStatus};
use skygit_actors::mesh::{GetMeshStatus, MeshStatus};
use skygit_actors::ports::RepoError;
use skygit_actors::presence::GetPresenceStatus;
use skygit_consensus::model::Command;
use skygit_consensus::replica::{FlushRequestError, FlushSummary};
use skygit_consensus::NodeId;

use super::messages::{queued, rfc3339, submit, Submitted};
use super::{gone, json_body, query, ApiError, RepoQuery, Served, Shared, MAX_ROOMS};

fn repository_json(r: &Served, primary: bool) -> Value {
    json!({
        "key": r.key,
        "spec": r.spec,
        "primary": primary,
        "node_id": r.handle.node_id,
        "web_url": r.web_url,
        "commit_url_prefix": r.web_url.as_ref().map(|w| format!("{w}/commit/")),
    })
}

pub async fn repositories(State(s): State<Shared>) -> Json<Value> {
    let rooms = s.rooms.read().await;
    let list: Vec<Value> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| repository_json(r, i == 0))
        .collect();
    Json(json!({ "repositories": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    owner: Option<String>,
    name: Option<String>,
    url: Option<String>,
}

pub async fn add_repository(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: NewRepository = json_body(body)?;
    let spec = match (body.owner, body.name, body.url) {
        (Some(o), Some(n), None) => format!("github:{o}/{n}"),
        (None, None, Some(u)) => u,
        _ => {
            return Err(ApiError::bad_request(
                "give either {\"owner\", \"name\"} (a GitHub repository) or {\"url\"}",
            ))
        }
    };
    if let Some(Err(e)) = skygit_remotes::parse_github_spec(&spec) {
        return Err(ApiError::bad_request(format!("repository {spec}: {e}")));
    }
    let room = skygit_consensus::model::RoomId::new(spec.clone())
        .map_err(|e| ApiError::bad_request(format!("repository: {e}")))?;
    let Some(opener) = s.opener.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this node cannot open more repositories",
        ));
    };
    {
        let rooms = s.rooms.read().await;
        if rooms.iter().any(|r| r.key == room.storage_key()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("this node already serves {spec}"),
            ));
        }
        if rooms.len() >= MAX_ROOMS {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("this node serves {MAX_ROOMS} repositories, its limit"),
            ));
        }
    }
    let served = opener(spec.clone()).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot open {spec}: {e:#}"),
        )
    })?;
    let mut rooms = s.rooms.write().await;
    if rooms.iter().any(|r| r.key == served.key) {
        // Opened twice at once: keep the first.
        served.handle.clone().shutdown().await;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("this node already serves {spec}"),
        ));
    }
    let json = repository_json(&served, rooms.is_empty());
    rooms.push(Arc::new(served));
    Ok((
        StatusCode::CREATED,
        Json(json!({ "status": "success", "repository": json })),
    )
        .into_response())
}

/// The answer to a push that flushed (here, or on `leader`).
fn pushed(
    room: &Served,
    leader: Option<NodeId>,
    r: &FlushSummary,
    started: std::time::Instant,
) -> Json<Value> {
    Json(json!({
        "status": "success",
        "leader": leader,
        "up_to_index": r.up_to_index,
        "head": r.head,
        "commit_url": r.head.as_deref().and_then(|h| room.commit_url(h)),
        "commits": r.commits,
        "changes": r.changes,
        "remote_calls": r.remote_calls,
        "duration_ms": started.elapsed().as_secs_f64() * 1e3,
    }))
}

pub async fn push(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let started = std::time::Instant::now();
    let flushed = room
        .handle
        .committer
        .send(Flush(FlushReason::OnDemand))
        .await
        .map_err(gone)?;
    match flushed {
        Ok(r) => Ok(pushed(&room, None, &r.into(), started)),
        Err(CommitterError::NotLeader) => {
            // The leader's committer writes the repository: ask it.
            match room
                .handle
                .replica
                .request_flush(FORWARDED_FLUSH_TIMEOUT)
                .await
            {
                Ok((leader, r)) => Ok(pushed(&room, Some(leader), &r, started)),
                Err(e @ FlushRequestError::NoLeader) => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                )),
                Err(e @ FlushRequestError::Failed { leader, .. }) => {
                    Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
                        .with(json!({ "leader": leader })))
                }
            }
        }
        Err(e @ CommitterError::NoRepository) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(CommitterError::Repo(RepoError::RateLimited { retry_after_ms })) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the repository host's rate limit is reached; the committer retries after the wait",
        )
        .with(json!({ "retry_after_ms": retry_after_ms }))),
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

pub fn flush_json(f: &FlushRecord, room: &Served) -> Value {
    json!({
        "at": rfc3339(f.at_ms),
        "reason": f.reason,
        "ok": f.ok,
        "changes": f.changes,
        "commits": f.commits,
        "head": f.head,
        "commit_url": f.head.as_deref().and_then(|h| room.commit_url(h)),
        "up_to_index": f.up_to_index,
        "duration_ms": f.duration_ms,
        "remote_calls": f.remote_calls,
        "error": f.error,
    })
}

pub async fn flushes(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let list = room.handle.committer.send(GetFlushes).await.map_err(gone)?;
    let list: Vec<Value> = list.iter().map(|f| flush_json(f, &room)).collect();
    Ok(Json(json!({ "flushes": list })))
}

async fn membership(room: &Served) -> Option<MembershipStatus> {
    room.handle.membership.send(GetMembershipStatus).await.ok()
}

/// The room's settings and what applies on this node: this node's own
/// values (its command line) win over the room's, which win over the
/// repository's `config.json`.
async fn settings_json(room: &Served) -> Result<Value, ApiError> {
    let c: CommitterInfo = room
        .handle
        .committer
        .send(GetCommitterInfo)
        .await
        .map_err(gone)?;
    let m = membership(room).await;
    let s = room
        .handle
        .storage
        .state_machine
        .watch_settings()
        .borrow()
        .to_owned();
    let interval = c
        .interval_override_secs
        .or(s.commit_interval_secs)
        .unwrap_or(c.config_interval_secs);
    let voters = m.as_ref().map(|m| match (m.voters_pinned, s.voters) {
        (false, Some(v)) => usize::from(v),
        _ => m.target_voters,
    });
    let pinned = m
        .as_ref()
        .filter(|m| m.voters_pinned)
        .map(|m| m.target_voters);
    Ok(json!({
        "commit_interval_secs": interval,
        "voters": voters,
        "room": {
            "commit_interval_secs": s.commit_interval_secs,
            "voters": s.voters,
            "changed_index": s.changed_index,
            "changed_at": (s.changed_index > 0).then(|| rfc3339(s.changed_at)),
        },
        "node_overrides": {
            "commit_interval_secs": c.interval_override_secs,
            "voters": pinned,
        },
    }))
}

pub async fn settings(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    Ok(Json(settings_json(&room).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSettings {
    commit_interval_secs: Option<u64>,
    voters: Option<u8>,
}

/// How long a follower waits for the leader's flush.
const FORWARDED_FLUSH_TIMEOUT: Duration = Duration::from_secs(180);

/// Changes the room's settings: a `Configure` request through raft (to the
/// leader, or into the outbox while none is reachable). Every node applies
/// it; the leader writes it into `config.json` at once.
pub async fn put_settings(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let body: NewSettings = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    let command = Command::Configure {
        commit_interval_secs: body.commit_interval_secs,
        voters: body.voters,
    };
    // The state machine's own checks, answered here as 400.
    command
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    match submit(&room, command).await? {
        // Committed and applied here too (`submit` waited for it).
        Submitted::Applied(..) => Ok(Json(settings_json(&room).await?)),
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}

/// A peer's connection state in the UI's words.
fn peer_state(phase: &str, open: bool) -> &'static str {
    match phase {
        "open" if open => "connected",
        "open" | "offering" | "answering" => "connecting",
        "backoff" => "backoff",
        _ => "offline",
    }
}

/// Per-follower lag as the leader sees it.
fn replication(room: &Served, c: &ConsensusStatus) -> Option<Vec<(NodeId, Option<u64>, u64)>> {
    let m = room.handle.replica.metrics();
    let last = c.last_log_index.unwrap_or(0);
    m.replication.as_ref().map(|r| {
        r.iter()
            .filter(|(id, _)| **id != room.handle.node_id)
            .map(|(id, matched)| {
                let idx = matched.as_ref().map(|l| l.index);
                (*id, idx, last.saturating_sub(idx.unwrap_or(0)))
            })
            .collect()
    })
}

/// The mesh actor's view, when it answers.
async fn mesh_status(room: &Served) -> Option<MeshStatus> {
    room.handle.mesh.send(GetMeshStatus).await.ok()
}

/// Peers with their role (from `members`) and lag (from `lags`).
fn peers_json(
    mesh: Option<&MeshStatus>,
    members: Option<&MembershipStatus>,
    lags: &[(NodeId, Option<u64>, u64)],
) -> Vec<Value> {
    let Some(status) = mesh else {
        return Vec::new();
    };
    status
        .peers
        .iter()
        .map(|p| {
            let open = p.link.as_ref().is_some_and(|l| l.open);
            let role = members.and_then(|m| {
                if m.voters.contains(&p.node_id) {
                    Some("voter")
                } else if m.learners.contains(&p.node_id) {
                    Some("learner")
                } else {
                    None
                }
            });
            let lag = lags.iter().find(|l| l.0 == p.node_id).map(|l| l.2);
            json!({
                "node_id": p.node_id,
                "user": p.user,
                "state": peer_state(p.phase, open),
                "phase": p.phase,
                "rtt_ms": p.link.as_ref().and_then(|l| l.rtt_us).map(|us| us as f64 / 1e3),
                "role": role,
                "lag": lag,
                "failures": p.failures,
                "attempt": p.attempt,
            })
        })
        .collect()
}

/// Signals sent through the repository and over the mesh.
fn signals_json(mesh: Option<&MeshStatus>) -> Value {
    mesh.map_or(
        Value::Null,
        |st| json!({ "via_repo": st.signals_via_repo, "via_mesh": st.signals_via_mesh }),
    )
}

pub async fn peers(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let c = room.handle.consensus.send(GetStatus).await.map_err(gone)?;
    let (mesh, members) = (mesh_status(&room).await, membership(&room).await);
    let lags = replication(&room, &c).unwrap_or_default();
    Ok(Json(
        json!({ "peers": peers_json(mesh.as_ref(), members.as_ref(), &lags) }),
    ))
}

pub async fn status(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let primary = s
        .rooms
        .read()
        .await
        .first()
        .is_some_and(|r| Arc::ptr_eq(r, &room));
    let h = &room.handle;
    let c = h.consensus.send(GetStatus).await.map_err(gone)?;
    let presence = h.presence.send(GetPresenceStatus).await.ok();
    let members = membership(&room).await;
    let committer = h.committer.send(GetCommitterInfo).await.ok();
    let reader = h.storage.reader.clone();
    let synced = super::blocking(move || reader.synced_up_to()).await?;
    let mesh = mesh_status(&room).await;
    let lags = replication(&room, &c);
    let peers = peers_json(
        mesh.as_ref(),
        members.as_ref(),
        lags.as_deref().unwrap_or_default(),
    );
    let replication = lags.map(|r| {
        r.iter()
            .map(|(id, m, lag)| json!({ "node_id": id, "matched_index": m, "lag": lag }))
            .collect::<Vec<_>>()
    });
    // raft keeps naming a leader it cannot reach until an election (with
    // pre-vote, a lone follower never starts one): say whether it can.
    let leader_reachable = match c.leader {
        Some(l) if l == h.node_id => c.state == "Leader",
        Some(l) => peers
            .iter()
            .any(|p| p["node_id"] == l && p["state"] == "connected"),
        None => false,
    };
    let applied = c.applied_index.unwrap_or(0);
    let target = c.committed_index.unwrap_or(0).max(applied);
    let repo_api = room.remote.as_ref().map(|r| {
        let b = r.write_budget();
        json!({
            "calls": r.calls(),
            "writes_last_minute": b.map(|b| b.writes_last_minute),
            "writes_last_hour": b.map(|b| b.writes_last_hour),
            "write_limit_minute": b.map(|b| b.limit_minute),
            "write_limit_hour": b.map(|b| b.limit_hour),
        })
    });
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "room": h.room.as_str(),
        "node_id": h.node_id,
        "user": h.user.as_str(),
        "repository": repository_json(&room, primary),
        "consensus": c,
        "leader_reachable": leader_reachable,
        "catch_up": { "applied_index": applied, "target_index": target, "done": applied >= target },
        "membership": members,
        "presence": presence,
        "peers": peers,
        "signals": signals_json(mesh.as_ref()),
        "replication": replication,
        "committer": committer.map(|ci| json!({
            "leader": ci.leader,
            "synced_up_to": synced,
            "interval_secs": ci.interval_secs,
            "last_flush": ci.last_flush.as_ref().map(|f| flush_json(f, &room)),
        })),
        "repo_api": repo_api,
        "messages_applied_total": h.storage.state_machine.messages_applied(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_states_read_as_the_ui_says() {
        assert_eq!(peer_state("open", true), "connected");
        assert_eq!(peer_state("open", false), "connecting");
        assert_eq!(peer_state("offering", false), "connecting");
        assert_eq!(peer_state("backoff", false), "backoff");
        assert_eq!(peer_state("idle", false), "offline");
    }
}
