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
use skygit_actors::committer::{
    CommitterError, CommitterInfo, Flush, FlushReason, FlushRecord, GetCommitterInfo, GetFlushes,
};
use skygit_actors::consensus::{ConsensusStatus, GetStatus};
use skygit_actors::membership::{GetMembershipStatus, MembershipStatus};
use skygit_actors::mesh::{GetMeshStatus, MeshStatus};
use skygit_actors::ports::RepoError;
use skygit_actors::presence::{GetPresenceStatus, PresenceStatus};
use skygit_api::{
    CatchUp, Committer, Consensus, ErrorBody, FlushInfo, FlushList, Gathered, Ice, Identity,
    LinkPath, Membership, NewRepository, NewSettings, NodeOverrides, Peer, PeerList, PeerState,
    Presence, Pushed, Reformation, RefusedPeer, Replication, RepoApi, Repository, RepositoryAdded,
    RepositoryList, Role, RoomSettings, Settings, Signals, Status, Success,
};
use skygit_consensus::model::Command;
use skygit_consensus::replica::{FlushRequestError, FlushSummary};
use skygit_consensus::NodeId;

use super::messages::{queued, rfc3339, submit, Submitted};
use super::{gone, json_body, query, ApiError, RepoQuery, Served, Shared, MAX_ROOMS};

fn repository_view(r: &Served, primary: bool) -> Repository {
    Repository {
        key: r.key.clone(),
        spec: r.spec.clone(),
        primary,
        node_id: r.handle.node_id,
        web_url: r.web_url.clone(),
        commit_url_prefix: r.web_url.as_ref().map(|w| format!("{w}/commit/")),
    }
}

#[utoipa::path(get, path = "/repositories", tag = "rooms",
    responses((status = 200, body = RepositoryList)))]
/// The rooms this node serves, the primary one first.
pub async fn repositories(State(s): State<Shared>) -> Json<RepositoryList> {
    let rooms = s.rooms.read().await;
    let repositories = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| repository_view(r, i == 0))
        .collect();
    Json(RepositoryList { repositories })
}

#[utoipa::path(post, path = "/repositories", tag = "rooms", request_body = NewRepository,
    responses((status = 201, body = RepositoryAdded), (status = 400, body = ErrorBody),
              (status = 409, description = "served already, or the node serves its limit of rooms", body = ErrorBody),
              (status = 501, description = "this node cannot open more rooms", body = ErrorBody),
              (status = 502, description = "the repository could not be opened", body = ErrorBody)))]
/// Opens another room on this node.
pub async fn add_repository(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: NewRepository = json_body(body).map_err(|e| match e.status {
        StatusCode::BAD_REQUEST => ApiError::bad_request(format!(
            "give either {{\"owner\", \"name\"}} (a GitHub repository) or {{\"url\"}}: {}",
            e.body.error
        )),
        _ => e,
    })?;
    let spec = match body {
        NewRepository::GitHub(g) => format!("github:{}/{}", g.owner, g.name),
        NewRepository::Url(u) => u.url,
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
    let repository = repository_view(&served, rooms.is_empty());
    rooms.push(Arc::new(served));
    Ok((
        StatusCode::CREATED,
        Json(RepositoryAdded {
            status: Success::Success,
            repository,
        }),
    )
        .into_response())
}

/// The answer to a push that flushed (here, or on `leader`).
fn pushed(
    room: &Served,
    leader: Option<NodeId>,
    r: &FlushSummary,
    started: std::time::Instant,
) -> Json<Pushed> {
    Json(Pushed {
        status: Success::Success,
        leader,
        up_to_index: r.up_to_index,
        head: r.head.clone(),
        commit_url: r.head.as_deref().and_then(|h| room.commit_url(h)),
        commits: r.commits,
        changes: r.changes,
        remote_calls: r.remote_calls,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

#[utoipa::path(post, path = "/push", tag = "rooms", params(RepoQuery),
    responses((status = 200, description = "flushed, here or on the leader", body = Pushed),
              (status = 404, body = ErrorBody), (status = 409, description = "the room has no repository", body = ErrorBody),
              (status = 502, description = "the flush failed", body = ErrorBody),
              (status = 503, description = "no leader is reachable, or the host's rate limit is reached", body = ErrorBody)))]
/// Writes everything committed into the repository now.
pub async fn push(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Pushed>, ApiError> {
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
                    let mut body = ErrorBody::new(e.to_string());
                    body.leader = Some(leader);
                    Err(ApiError::body(StatusCode::BAD_GATEWAY, body))
                }
            }
        }
        Err(e @ CommitterError::NoRepository) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(CommitterError::Repo(RepoError::RateLimited { retry_after_ms })) => {
            let mut body = ErrorBody::new(
                "the repository host's rate limit is reached; the committer retries after the wait",
            );
            body.retry_after_ms = Some(retry_after_ms);
            Err(ApiError::body(StatusCode::SERVICE_UNAVAILABLE, body))
        }
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

pub fn flush_view(f: &FlushRecord, room: &Served) -> FlushInfo {
    FlushInfo {
        at: rfc3339(f.at_ms),
        reason: f.reason.clone(),
        ok: f.ok,
        changes: f.changes as u64,
        commits: f.commits as u64,
        head: f.head.clone(),
        commit_url: f.head.as_deref().and_then(|h| room.commit_url(h)),
        up_to_index: f.up_to_index,
        duration_ms: f.duration_ms,
        remote_calls: f.remote_calls,
        error: f.error.clone(),
    }
}

#[utoipa::path(get, path = "/flushes", tag = "rooms", params(RepoQuery),
    responses((status = 200, body = FlushList), (status = 404, body = ErrorBody)))]
/// This node's recent flushes, oldest first.
pub async fn flushes(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<FlushList>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let list = room.handle.committer.send(GetFlushes).await.map_err(gone)?;
    let flushes = list.iter().map(|f| flush_view(f, &room)).collect();
    Ok(Json(FlushList { flushes }))
}

async fn membership(room: &Served) -> Option<MembershipStatus> {
    room.handle.membership.send(GetMembershipStatus).await.ok()
}

/// The room's settings and what applies on this node: this node's own
/// values (its command line) win over the room's, which win over the
/// repository's `config.json`.
async fn settings_view(room: &Served) -> Result<Settings, ApiError> {
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
        (false, Some(v)) => u64::from(v),
        _ => m.target_voters as u64,
    });
    let pinned = m
        .as_ref()
        .filter(|m| m.voters_pinned)
        .map(|m| m.target_voters as u64);
    Ok(Settings {
        commit_interval_secs: interval,
        voters,
        room: RoomSettings {
            commit_interval_secs: s.commit_interval_secs,
            voters: s.voters,
            changed_index: s.changed_index,
            changed_at: (s.changed_index > 0)
                .then(|| rfc3339(s.changed_at))
                .flatten(),
        },
        node_overrides: NodeOverrides {
            commit_interval_secs: c.interval_override_secs,
            voters: pinned,
        },
    })
}

#[utoipa::path(get, path = "/settings", tag = "rooms", params(RepoQuery),
    responses((status = 200, body = Settings), (status = 404, body = ErrorBody)))]
/// The room's settings and what applies on this node.
pub async fn settings(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Settings>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    Ok(Json(settings_view(&room).await?))
}

/// How long a follower waits for the leader's flush.
const FORWARDED_FLUSH_TIMEOUT: Duration = Duration::from_secs(180);

/// Changes the room's settings: a `Configure` request through raft (to the
/// leader, or into the outbox while none is reachable). Every node applies
/// it; the leader writes it into `config.json` at once.
#[utoipa::path(put, path = "/settings", tag = "rooms", params(RepoQuery), request_body = NewSettings,
    responses((status = 200, description = "committed and applied here (an empty change answers the settings as they are)", body = Settings),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// Changes the room's settings for every node.
pub async fn put_settings(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Settings>, ApiError> {
    let q = query(q)?;
    let body: NewSettings = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    if body == NewSettings::default() {
        // Nothing to change.
        return Ok(Json(settings_view(&room).await?));
    }
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
        Submitted::Applied(..) => Ok(Json(settings_view(&room).await?)),
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}

/// A peer's connection state in the UI's words.
fn peer_state(phase: &str, open: bool) -> PeerState {
    match phase {
        "open" if open => PeerState::Connected,
        "open" | "offering" | "answering" => PeerState::Connecting,
        "backoff" => PeerState::Backoff,
        _ => PeerState::Offline,
    }
}

/// Per-follower lag as the leader sees it.
fn replication(room: &Served, c: &ConsensusStatus) -> Option<Vec<Replication>> {
    let m = room.handle.replica.metrics();
    let last = c.last_log_index.unwrap_or(0);
    m.replication.as_ref().map(|r| {
        r.iter()
            .filter(|(id, _)| **id != room.handle.node_id)
            .map(|(id, matched)| {
                let idx = matched.as_ref().map(|l| l.index);
                Replication {
                    node_id: *id,
                    matched_index: idx,
                    lag: last.saturating_sub(idx.unwrap_or(0)),
                }
            })
            .collect()
    })
}

/// The mesh actor's view, when it answers.
async fn mesh_status(room: &Served) -> Option<MeshStatus> {
    room.handle.mesh.send(GetMeshStatus).await.ok()
}

/// Peers with their role (from `members`) and lag (from `lags`).
fn peers_view(
    mesh: Option<&MeshStatus>,
    members: Option<&MembershipStatus>,
    lags: &[Replication],
) -> Vec<Peer> {
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
                    Some(Role::Voter)
                } else if m.learners.contains(&p.node_id) {
                    Some(Role::Learner)
                } else {
                    None
                }
            });
            Peer {
                node_id: p.node_id,
                user: p.user.clone(),
                state: peer_state(p.phase, open),
                phase: p.phase.to_owned(),
                rtt_ms: p
                    .link
                    .as_ref()
                    .and_then(|l| l.rtt_us)
                    .map(|us| us as f64 / 1e3),
                path: p.link.as_ref().and_then(|l| match l.path? {
                    "host" => Some(LinkPath::Host),
                    "srflx" => Some(LinkPath::Srflx),
                    "relay" => Some(LinkPath::Relay),
                    _ => None,
                }),
                role,
                lag: lags.iter().find(|l| l.node_id == p.node_id).map(|l| l.lag),
                failures: p.failures,
                attempt: p.attempt,
            }
        })
        .collect()
}

#[utoipa::path(get, path = "/peers", tag = "status", params(RepoQuery),
    responses((status = 200, body = PeerList), (status = 404, body = ErrorBody)))]
/// The room's other nodes as this node's mesh sees them.
pub async fn peers(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<PeerList>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let c = room.handle.consensus.send(GetStatus).await.map_err(gone)?;
    let (mesh, members) = (mesh_status(&room).await, membership(&room).await);
    let lags = replication(&room, &c).unwrap_or_default();
    Ok(Json(PeerList {
        peers: peers_view(mesh.as_ref(), members.as_ref(), &lags),
    }))
}

fn consensus_view(c: &ConsensusStatus) -> Consensus {
    Consensus {
        node_id: c.node_id,
        leader: c.leader,
        term: c.term,
        state: c.state.clone(),
        last_log_index: c.last_log_index,
        committed_index: c.committed_index,
        applied_index: c.applied_index,
        outbox_len: c.outbox_len as u64,
    }
}

fn membership_view(m: MembershipStatus) -> Membership {
    Membership {
        target_voters: m.target_voters as u64,
        voters_pinned: m.voters_pinned,
        voters: m.voters,
        joint: m.joint,
        learners: m.learners,
        online: m.online,
        leaving: m.leaving,
        last_step: m.last_step,
        waiting: m.waiting,
        epoch: m.epoch,
        base: m.base,
        reform_waiting: m.reform_waiting,
        reformed: m.reformed.map(|r| Reformation {
            at_ms: r.at_ms,
            epoch: r.moved.group.epoch,
            base: r.moved.group.base,
            founder: r.moved.founder,
            founded: r.moved.founded,
            reason: r.reason,
            carried: r.moved.carried as u64,
        }),
    }
}

fn presence_view(p: PresenceStatus) -> Presence {
    Presence {
        session_id: p.session_id,
        fingerprint: p.fingerprint,
        in_group: p.in_group,
        fast_poll: p.fast_poll,
        online: p.online,
        publishes: p.publishes,
        polls: p.polls,
        errors: p.errors,
        throttled_ms: p.throttled_ms,
        last_error: p.last_error,
    }
}

#[utoipa::path(get, path = "/status", tag = "status", params(RepoQuery),
    responses((status = 200, body = Status), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// How this node and its room stand.
pub async fn status(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Status>, ApiError> {
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
    let replication = replication(&room, &c);
    let peers = peers_view(
        mesh.as_ref(),
        members.as_ref(),
        replication.as_deref().unwrap_or_default(),
    );
    // raft keeps naming a leader it cannot reach until an election (with
    // pre-vote, a lone follower never starts one): say whether it can.
    let leader_reachable = match c.leader {
        Some(l) if l == h.node_id => c.state == "Leader",
        Some(l) => peers
            .iter()
            .any(|p| p.node_id == l && p.state == PeerState::Connected),
        None => false,
    };
    let applied = c.applied_index.unwrap_or(0);
    let target = c.committed_index.unwrap_or(0).max(applied);
    let repo_api = room.remote.as_ref().map(|r| {
        let b = r.write_budget();
        RepoApi {
            calls: r.calls(),
            writes_last_minute: b.map(|b| b.writes_last_minute),
            writes_last_hour: b.map(|b| b.writes_last_hour),
            write_limit_minute: b.map(|b| b.limit_minute),
            write_limit_hour: b.map(|b| b.limit_hour),
        }
    });
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        room: h.room.as_str().to_owned(),
        node_id: h.node_id,
        user: h.user.as_str().to_owned(),
        repository: repository_view(&room, primary),
        consensus: consensus_view(&c),
        leader_reachable,
        catch_up: CatchUp {
            applied_index: applied,
            target_index: target,
            done: applied >= target,
        },
        membership: members.map(membership_view),
        presence: presence.map(presence_view),
        peers,
        ice: room.mesh.as_ref().map(|m| {
            let s = m.ice_status();
            Ice {
                servers: s.servers,
                last_gathered: s.last_gathered.map(|g| Gathered {
                    host: g.host,
                    srflx: g.srflx,
                    relay: g.relay,
                }),
                problem: s.problem,
            }
        }),
        signals: mesh.as_ref().map(|st| Signals {
            via_repo: st.signals_via_repo,
            via_mesh: st.signals_via_mesh,
        }),
        identity: mesh.as_ref().and_then(|st| {
            Some(Identity {
                verified_by: st.verified_by?.to_owned(),
                refused: st
                    .refused
                    .iter()
                    .map(|r| RefusedPeer {
                        node_id: r.node_id,
                        user: r.user.clone(),
                        reason: r.reason.clone(),
                    })
                    .collect(),
            })
        }),
        replication,
        committer: committer.map(|ci| Committer {
            leader: ci.leader,
            synced_up_to: synced,
            interval_secs: ci.interval_secs,
            last_flush: ci.last_flush.as_ref().map(|f| flush_view(f, &room)),
        }),
        repo_api,
        messages_applied_total: h.storage.state_machine.messages_applied(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_states_read_as_the_ui_says() {
        assert_eq!(peer_state("open", true), PeerState::Connected);
        assert_eq!(peer_state("open", false), PeerState::Connecting);
        assert_eq!(peer_state("offering", false), PeerState::Connecting);
        assert_eq!(peer_state("backoff", false), PeerState::Backoff);
        assert_eq!(peer_state("idle", false), PeerState::Offline);
    }
}
