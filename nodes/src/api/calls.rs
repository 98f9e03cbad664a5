//! Calls: `POST /calls` and the requests of one call, `GET /calls/ice`,
//! and how calls look in the API (the event stream's `call` and
//! `call_signal`, a message's `call` line).
//!
//! The node keeps the call's state and relays the browsers' signalling
//! over the mesh (`skygit_actors::media::calls`); media flows browser to
//! browser.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skygit_actors::media::calls::{Input, PState, WireSignal};
use skygit_actors::media::{Call, CallError, CallNotice, CallRequest, ListCalls};
use skygit_api::calls::{
    CallLine, CallLineEvent, CallOutcome, CallParticipant, CallSignal, CallState, CallView, Calls,
    IceConfig, IceServer, ParticipantState, Recording, SendSignal, Signal, StartCall,
};
use skygit_api::ErrorBody;
use skygit_consensus::call::{CallEntry, CallEvent};
use skygit_consensus::model::{ConversationId, UserId};
use ulid::Ulid;

use super::messages::rfc3339;
use super::{gone, json_body, query, ApiError, RepoQuery, Served, Shared};

/// The view of a call the API shows.
pub fn call_view(c: &Call, me: u64) -> CallView {
    let state = match (c.outcome, c.joined()) {
        (Some(_), _) => CallState::Ended,
        (None, n) if n >= 2 => CallState::Active,
        (None, _) => CallState::Ringing,
    };
    CallView {
        id: c.id.to_string(),
        conversation: c.conversation.as_str().to_owned(),
        initiator: c.initiator,
        video: c.video,
        state,
        outcome: c.outcome.map(|o| match o {
            CallEvent::Declined => CallOutcome::Declined,
            CallEvent::Missed => CallOutcome::Missed,
            CallEvent::Cancelled => CallOutcome::Cancelled,
            _ => CallOutcome::Ended,
        }),
        started_at: rfc3339(c.started_at).unwrap_or_default(),
        ended_at: c.ended_at.and_then(rfc3339),
        me,
        participants: c
            .participants
            .iter()
            .map(|p| CallParticipant {
                node_id: p.node,
                user: p.user.as_str().to_owned(),
                state: match p.state {
                    PState::Invited => ParticipantState::Invited,
                    PState::Ringing => ParticipantState::Ringing,
                    PState::Joined => ParticipantState::Joined,
                    PState::Left => ParticipantState::Left,
                    PState::Declined => ParticipantState::Declined,
                    PState::Missed => ParticipantState::Missed,
                },
                recording: p.recording,
            })
            .collect(),
    }
}

/// A message's call line.
pub fn call_line(e: &CallEntry) -> CallLine {
    CallLine {
        call: e.call.to_string(),
        event: match e.event {
            CallEvent::Started => CallLineEvent::Started,
            CallEvent::Joined => CallLineEvent::Joined,
            CallEvent::Left => CallLineEvent::Left,
            CallEvent::Ended => CallLineEvent::Ended,
            CallEvent::Declined => CallLineEvent::Declined,
            CallEvent::Missed => CallLineEvent::Missed,
            CallEvent::Cancelled => CallLineEvent::Cancelled,
        },
        participants: e
            .participants
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect(),
        duration_ms: e.duration_ms,
    }
}

/// A signal as the browser wrote it, for the wire; and back.
pub fn to_wire(s: Signal) -> WireSignal {
    match s {
        Signal::Offer { sdp } => WireSignal::Offer(sdp),
        Signal::Answer { sdp } => WireSignal::Answer(sdp),
        Signal::Ice {
            candidate,
            sdp_mid,
            sdp_mline_index,
        } => WireSignal::Ice {
            candidate,
            sdp_mid,
            sdp_mline_index,
        },
        Signal::Hello => WireSignal::Hello,
    }
}

fn from_wire(s: WireSignal) -> Signal {
    match s {
        WireSignal::Offer(sdp) => Signal::Offer { sdp },
        WireSignal::Answer(sdp) => Signal::Answer { sdp },
        WireSignal::Ice {
            candidate,
            sdp_mid,
            sdp_mline_index,
        } => Signal::Ice {
            candidate,
            sdp_mid,
            sdp_mline_index,
        },
        WireSignal::Hello => Signal::Hello,
    }
}

/// The event a call notice makes on the stream.
pub fn notice_event(n: CallNotice, me: u64) -> skygit_api::Event {
    match n {
        CallNotice::Changed(c) => skygit_api::Event::Call(Box::new(call_view(&c, me))),
        CallNotice::Signal { call, from, signal } => {
            skygit_api::Event::CallSignal(Box::new(CallSignal {
                call: call.to_string(),
                from,
                signal: from_wire(signal),
            }))
        }
    }
}

fn refused(e: CallError) -> ApiError {
    let status = match &e {
        CallError::Unknown(_) => StatusCode::NOT_FOUND,
        e if e.is_bad_request() => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    ApiError::new(status, e.to_string())
}

fn call_id(id: &str) -> Result<Ulid, ApiError> {
    Ulid::from_string(id).map_err(|e| ApiError::bad_request(format!("call id {id:?}: {e}")))
}

async fn ask(room: &Served, input: Input) -> Result<Json<CallView>, ApiError> {
    let c = room
        .handle
        .media
        .send(CallRequest(input))
        .await
        .map_err(gone)?
        .map_err(refused)?;
    Ok(Json(call_view(&c, room.handle.node_id)))
}

#[utoipa::path(get, path = "/calls", tag = "calls", params(RepoQuery),
    responses((status = 200, body = Calls), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// The live calls this node knows, and those ended in the last ten minutes.
pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Calls>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let calls = room.handle.media.send(ListCalls).await.map_err(gone)?;
    Ok(Json(Calls {
        calls: calls
            .iter()
            .map(|c| call_view(c, room.handle.node_id))
            .collect(),
    }))
}

#[utoipa::path(post, path = "/calls", tag = "calls", params(RepoQuery), request_body = StartCall,
    responses((status = 201, body = CallView),
              (status = 400, description = "a bad body: no peers, more than 3, a bad conversation name", body = ErrorBody),
              (status = 404, description = "a peer that is not a node of the room (this node included)", body = ErrorBody),
              (status = 409, description = "this node's user is already in a call", body = ErrorBody)))]
/// Calls peers: their nodes ring, and their browsers show the invite.
pub async fn start(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: StartCall = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    let conversation = ConversationId::new(body.conversation)
        .map_err(|e| ApiError::bad_request(format!("conversation: {e}")))?;
    // Each peer once, in the order given.
    let mut asked = Vec::with_capacity(body.peers.len());
    for p in body.peers {
        if !asked.contains(&p) {
            asked.push(p);
        }
    }
    if asked.is_empty() || asked.len() >= skygit_api::calls::MAX_PARTICIPANTS {
        return Err(refused(CallError::BadPeers));
    }
    // The peers' users, as the room's presence names them.
    let mesh = room
        .handle
        .mesh
        .send(skygit_actors::mesh::GetMeshStatus)
        .await
        .map_err(gone)?;
    let mut peers = Vec::with_capacity(asked.len());
    for id in &asked {
        let user = mesh
            .peers
            .iter()
            .find(|p| p.node_id == *id)
            .and_then(|p| UserId::new(p.user.clone()).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("node {id} is not a peer of the room"),
                )
            })?;
        peers.push((*id, user));
    }
    let view = ask(
        &room,
        Input::Start {
            call: Ulid::new(),
            conversation,
            video: body.video,
            me: room.handle.user.clone(),
            peers,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, view).into_response())
}

#[utoipa::path(post, path = "/calls/{id}/accept", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 200, body = CallView), (status = 400, description = "a bad call id or body", body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "the call is not ringing here", body = ErrorBody)))]
/// Answers a call ringing on this node.
pub async fn accept(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<CallView>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    ask(&room, Input::Accept(call_id(&id)?)).await
}

#[utoipa::path(post, path = "/calls/{id}/decline", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 200, body = CallView), (status = 400, description = "a bad call id or body", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// Declines a call ringing on this node.
pub async fn decline(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<CallView>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    ask(&room, Input::Decline(call_id(&id)?)).await
}

#[utoipa::path(post, path = "/calls/{id}/hangup", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 200, body = CallView), (status = 400, description = "a bad call id or body", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// Leaves a call (or declines one still ringing).
pub async fn hangup(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<CallView>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    ask(&room, Input::Hangup(call_id(&id)?)).await
}

#[utoipa::path(post, path = "/calls/{id}/recording", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    request_body = Recording,
    responses((status = 200, body = CallView), (status = 400, description = "a bad call id or body", body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "this node's user is not in the call", body = ErrorBody)))]
/// Says whether this node's browser is recording (every participant sees it).
pub async fn recording(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallView>, ApiError> {
    let q = query(q)?;
    let body: Recording = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    ask(&room, Input::Recording(call_id(&id)?, body.on)).await
}

#[utoipa::path(post, path = "/calls/{id}/alive", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 204, description = "noted"), (status = 400, description = "a bad call id or body", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// The browser is still there (every 5 s; after 30 s without, the node
/// takes its user out of the call).
pub async fn alive(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let _view = ask(&room, Input::Alive(call_id(&id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/calls/{id}/signal", tag = "calls", params(("id" = String, Path, description = "The call's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    request_body = SendSignal,
    responses((status = 202, description = "sent towards the participant's node"),
              (status = 400, description = "over its size limit", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "this node or `to` is not in the call", body = ErrorBody)))]
/// Sends SDP or an ICE candidate to a participant's browser, over the mesh
/// (through a neighbour when there is no direct link).
pub async fn signal(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let body: SendSignal = json_body(body)?;
    body.signal.check().map_err(ApiError::bad_request)?;
    let room = s.room(q.repo.as_deref()).await?;
    let _view = ask(
        &room,
        Input::Signal {
            call: call_id(&id)?,
            to: body.to,
            signal: to_wire(body.signal),
        },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(get, path = "/calls/ice", tag = "calls", params(RepoQuery),
    responses((status = 200, body = IceConfig), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// The STUN and TURN servers of the room's mesh, for the browsers'
/// connections; TURN with its configured credentials or fresh ones made
/// from the node's TURN REST secret.
pub async fn ice(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<IceConfig>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    Ok(Json(room.ice.for_browsers()))
}

/// The ICE servers the room's mesh uses, for the browsers.
#[derive(Default, Clone)]
pub struct BrowserIce {
    pub servers: Vec<skygit_actors::ice::IceServer>,
    pub rest: Option<skygit_mesh::ice::TurnRest>,
}

impl BrowserIce {
    /// The list a browser's `RTCPeerConnection` takes: STUN as it is,
    /// TURN with its configured credentials or fresh REST ones; a TURN
    /// server with neither is left out (it could not be used).
    pub fn for_browsers(&self) -> IceConfig {
        use skygit_actors::ice::IceKind;
        let mut ice_servers = Vec::new();
        for server in &self.servers {
            let turn = server.kind() == IceKind::Turn;
            let creds = match (&server.username, &server.credential, &self.rest) {
                (Some(u), Some(c), _) => Some((u.clone(), c.clone())),
                (_, _, Some(r)) if turn => Some(r.credentials()),
                _ => None,
            };
            if turn && creds.is_none() {
                continue;
            }
            let (username, credential) = creds.unzip();
            ice_servers.push(IceServer {
                urls: server.urls.clone(),
                username,
                credential,
            });
        }
        IceConfig { ice_servers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skygit_actors::ice::IceServer as Configured;

    #[test]
    fn browsers_get_the_mesh_servers_with_usable_turn_credentials() {
        let turn_static = Configured {
            urls: vec!["turn:turn.example:3478".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
        };
        let servers = vec![
            Configured::url("stun:stun.example:3478"),
            turn_static,
            Configured::url("turn:other.example:3478"),
        ];
        let without = BrowserIce {
            servers: servers.clone(),
            rest: None,
        }
        .for_browsers();
        let urls: Vec<&str> = without
            .ice_servers
            .iter()
            .map(|s| s.urls[0].as_str())
            .collect();
        assert_eq!(urls, ["stun:stun.example:3478", "turn:turn.example:3478"]);
        assert_eq!(without.ice_servers[0].username, None);
        assert_eq!(without.ice_servers[1].credential.as_deref(), Some("p"));
        let with = BrowserIce {
            servers,
            rest: Some(skygit_mesh::ice::TurnRest::new(
                "s3cret".into(),
                "ana".into(),
                std::time::Duration::from_secs(3600),
            )),
        }
        .for_browsers();
        assert_eq!(with.ice_servers.len(), 3);
        let rest = &with.ice_servers[2];
        let user = rest.username.as_deref().expect("a REST user name");
        assert!(user.ends_with(":ana"), "{user}");
        assert!(rest.credential.as_deref().is_some_and(|c| c.len() >= 20));
        // Static credentials win over REST ones.
        assert_eq!(with.ice_servers[1].username.as_deref(), Some("u"));
    }
}
