//! Messages, the outbox and conversations.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skygit_actors::consensus::{ProposeFailure, Proposed, Submit};
use skygit_consensus::model::{
    ApplyOutcome, ChatRequest, Command, Conversation, ConversationId, MessageRecord, Rejection,
    MAX_CONTENT_BYTES,
};
use skygit_storage::ChatReader;
use ulid::Ulid;

use super::{blocking, gone, json_body, query, ApiError, RepoQuery, Served, Shared};

/// Messages one read returns by default and at most.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;
/// Conversations one listing returns at most.
const MAX_CONVERSATIONS: usize = 1000;

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> Value {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

/// Which commit holds each message of a page: one lookup serves every
/// message up to the found commit's watermark.
pub struct CommitLookup<'a> {
    reader: &'a ChatReader,
    up_to: u64,
    /// The last lookup: from index `.0`, commit `.2` holds everything up
    /// to `.1`.
    cached: Option<(u64, u64, String)>,
}

impl<'a> CommitLookup<'a> {
    pub fn new(reader: &'a ChatReader) -> Result<Self, skygit_storage::StorageError> {
        Ok(Self {
            reader,
            up_to: reader.synced_up_to()?,
            cached: None,
        })
    }

    /// The commit holding log index `index`, if the repository has it.
    pub fn commit(&mut self, index: u64) -> Result<Option<String>, skygit_storage::StorageError> {
        if index > self.up_to {
            return Ok(None);
        }
        if let Some((lo, hi, sha)) = &self.cached {
            if (*lo..=*hi).contains(&index) {
                return Ok(Some(sha.clone()));
            }
        }
        let found = self.reader.commit_covering(index)?;
        self.cached = found.as_ref().map(|(hi, sha)| (index, *hi, sha.clone()));
        Ok(found.map(|(_, sha)| sha))
    }
}

/// A message as the API shows it.
pub fn message_json(
    room: &Served,
    rec: &MessageRecord,
    git_hash: Option<&str>,
    state: &'static str,
) -> Value {
    let m = &rec.message;
    let created = rfc3339(m.created_at);
    json!({
        "id": m.id.to_string(),
        "index": rec.index,
        "last_change_index": rec.last_change_index,
        "conversation": m.conversation.as_str(),
        "sender": m.sender.as_str(),
        "content": if m.deleted { "" } else { m.content.as_str() },
        "timestamp": created,
        "created_at": created,
        "updated_at": rfc3339(m.edited_at.unwrap_or(m.created_at)),
        "edited": m.edited_at.is_some(),
        "deleted": m.deleted,
        "is_synchronized": git_hash.is_some(),
        "git_hash": git_hash,
        "commit_url": git_hash.and_then(|h| room.commit_url(h)),
        "sync_state": state,
    })
}

/// Messages with their sync state read from the room's storage.
pub fn records_json(
    room: &Served,
    reader: &ChatReader,
    recs: &[MessageRecord],
) -> Result<Vec<Value>, skygit_storage::StorageError> {
    let mut commits = CommitLookup::new(reader)?;
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let hash = commits.commit(r.last_change_index)?;
        let state = if hash.is_some() {
            "synchronized"
        } else {
            "committed"
        };
        out.push(message_json(room, r, hash.as_deref(), state));
    }
    Ok(out)
}

fn conversation_of(name: Option<String>) -> Result<ConversationId, ApiError> {
    match name {
        None => Ok(ConversationId::general()),
        Some(n) => {
            ConversationId::new(n).map_err(|e| ApiError::bad_request(format!("conversation: {e}")))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    repo: Option<String>,
    conversation: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
    after: Option<u64>,
}

pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let conversation = conversation_of(q.conversation)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if let (Some(a), Some(b)) = (q.after, q.before) {
        if a >= b {
            return Err(ApiError::bad_request("after must be below before"));
        }
    }
    let reader = room.handle.storage.reader.clone();
    let r = room.clone();
    let (after, before) = (q.after, q.before);
    let (messages, has_more) = blocking(move || {
        if conversation != ConversationId::general()
            && reader.conversation(&conversation)?.is_none()
        {
            return Ok(None);
        }
        // One more than asked tells whether more follow.
        let mut recs = reader.messages(&conversation, after, before, limit + 1)?;
        let has_more = recs.len() > limit;
        if has_more {
            if after.is_some() {
                recs.truncate(limit);
            } else {
                recs.remove(0);
            }
        }
        Ok(Some((records_json(&r, &reader, &recs)?, has_more)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such conversation"))?;
    Ok(Json(json!({ "messages": messages, "has_more": has_more })))
}

fn parse_id(id: &str) -> Result<Ulid, ApiError> {
    Ulid::from_string(id).map_err(|e| ApiError::bad_request(format!("bad message id {id:?}: {e}")))
}

/// A message this node has applied, or 404.
async fn read_one(room: &Arc<Served>, id: Ulid) -> Result<(MessageRecord, Value), ApiError> {
    let reader = room.handle.storage.reader.clone();
    let r = room.clone();
    blocking(move || {
        let Some(rec) = reader.message(id)? else {
            return Ok(None);
        };
        let json = records_json(&r, &reader, std::slice::from_ref(&rec))?
            .pop()
            .unwrap_or(Value::Null);
        Ok(Some((rec, json)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no message {id}")))
}

pub async fn get_one(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let id = parse_id(&id)?;
    Ok(Json(read_one(&room, id).await?.1))
}

fn rejection_status(r: &Rejection) -> StatusCode {
    match r {
        Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
        Rejection::NoSuchMessage(_) => StatusCode::NOT_FOUND,
        Rejection::NotAuthor(_) => StatusCode::FORBIDDEN,
        Rejection::Deleted(_)
        | Rejection::ConversationExists(_)
        | Rejection::StaleWatermark { .. }
        | Rejection::FutureWatermark { .. } => StatusCode::CONFLICT,
    }
}

/// What a submitted request came to.
pub(super) enum Submitted {
    /// Applied at this index, on this node too (read-your-writes: a
    /// follower hears of the commit from the leader and applies it a
    /// moment later; the answer waits for that, at most [`APPLY_WAIT`]).
    Applied(ChatRequest, u64),
    /// Kept in the outbox (no leader reachable): the outbox's length and why.
    Queued(ChatRequest, usize, String),
}

pub(super) async fn submit(room: &Served, command: Command) -> Result<Submitted, ApiError> {
    let submit = Submit {
        sender: room.handle.user.clone(),
        command,
    };
    match room.handle.consensus.send(submit).await.map_err(gone)? {
        Ok((req, Proposed::Committed(ApplyOutcome::Applied { index }))) => {
            wait_applied(room, index).await;
            Ok(Submitted::Applied(req, index))
        }
        Ok((req, Proposed::Committed(ApplyOutcome::Duplicate { original_index }))) => {
            wait_applied(room, original_index).await;
            Ok(Submitted::Applied(req, original_index))
        }
        Ok((_, Proposed::Committed(ApplyOutcome::Rejected { reason, .. }))) => {
            Err(ApiError::new(rejection_status(&reason), reason.to_string()))
        }
        Ok((req, Proposed::Queued { outbox_len, reason })) => {
            Ok(Submitted::Queued(req, outbox_len, reason))
        }
        Err(ProposeFailure::Invalid(e)) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ ProposeFailure::Refused(_)) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ ProposeFailure::Outbox(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(e @ ProposeFailure::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// The 503 answer of a request kept in the outbox.
pub(super) fn queued(
    req: &ChatRequest,
    outbox_len: usize,
    reason: &str,
    message: Option<Value>,
) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no leader is reachable: the request is kept in this node's outbox and is sent \
         when a leader is reachable",
    )
    .with(json!({
        "status": "queued",
        "message_id": req.id.to_string(),
        "outbox_len": outbox_len,
        "reason": reason,
        "message": message,
    }))
}

fn check_content(content: &str) -> Result<(), ApiError> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the content is {} bytes; the limit is {MAX_CONTENT_BYTES}",
                content.len()
            ),
        ));
    }
    if content.trim().is_empty() {
        return Err(ApiError::bad_request("the content is empty"));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct PostBody {
    content: String,
    #[serde(default)]
    conversation: Option<String>,
}

/// A post as the API shows it before this node has applied it.
fn fresh_post(room: &Served, req: &ChatRequest, index: u64, state: &'static str) -> Value {
    match MessageRecord::posted(req, index) {
        Some(rec) => message_json(room, &rec, None, state),
        None => Value::Null,
    }
}

pub async fn post(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: PostBody = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    check_content(&body.content)?;
    let conversation = conversation_of(body.conversation)?;
    let command = Command::Post {
        conversation,
        content: body.content,
    };
    match submit(&room, command).await? {
        Submitted::Applied(req, index) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "status": "success",
                "message_id": req.id.to_string(),
                "message": fresh_post(&room, &req, index, "committed"),
            })),
        )
            .into_response()),
        Submitted::Queued(req, n, why) => {
            // Not in the log yet: no index.
            let mut pending = fresh_post(&room, &req, 0, "pending");
            if let Some(o) = pending.as_object_mut() {
                o.insert("index".into(), Value::Null);
                o.insert("last_change_index".into(), Value::Null);
            }
            Err(queued(&req, n, &why, Some(pending)))
        }
    }
}

/// Waits until this node has applied the log up to `index`, at most
/// [`APPLY_WAIT`].
async fn wait_applied(room: &Served, index: u64) {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    while room
        .handle
        .replica
        .metrics()
        .last_applied
        .as_ref()
        .is_none_or(|l| l.index < index)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Longest a change's answer waits for this node to apply it.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks that this node's user may change message `id`.
async fn own_message(room: &Arc<Served>, id: Ulid) -> Result<MessageRecord, ApiError> {
    let (rec, _) = read_one(room, id).await?;
    if rec.message.sender != room.handle.user {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "only its author ({}) may change message {id}",
                rec.message.sender
            ),
        ));
    }
    if rec.message.deleted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("message {id} is deleted"),
        ));
    }
    Ok(rec)
}

/// Answers a change with the message as it stands on this node
/// ([`submit`] waited for this node to apply it).
async fn changed(room: &Arc<Served>, id: Ulid) -> Result<Response, ApiError> {
    let (_, json) = read_one(room, id).await?;
    Ok(Json(json!({
        "status": "success",
        "message_id": id.to_string(),
        "message": json,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    content: String,
}

pub async fn edit(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: EditBody = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    let id = parse_id(&id)?;
    check_content(&body.content)?;
    own_message(&room, id).await?;
    let command = Command::Edit {
        message: id,
        content: body.content,
    };
    match submit(&room, command).await? {
        Submitted::Applied(..) => changed(&room, id).await,
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}

pub async fn delete(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let id = parse_id(&id)?;
    own_message(&room, id).await?;
    match submit(&room, Command::Delete { message: id }).await? {
        Submitted::Applied(..) => changed(&room, id).await,
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}

pub async fn outbox(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let ob = room.handle.storage.outbox.clone();
    let pending = blocking(move || ob.list(MAX_PAGE)).await?;
    let pending: Vec<Value> = pending
        .iter()
        .map(|r| {
            let (kind, conversation, content, message) = match &r.command {
                Command::Post {
                    conversation,
                    content,
                } => (
                    "post",
                    Some(conversation.as_str()),
                    Some(content.as_str()),
                    None,
                ),
                Command::Edit { message, content } => (
                    "edit",
                    None,
                    Some(content.as_str()),
                    Some(message.to_string()),
                ),
                Command::Delete { message } => ("delete", None, None, Some(message.to_string())),
                Command::CreateConversation { conversation, .. } => (
                    "create_conversation",
                    Some(conversation.as_str()),
                    None,
                    None,
                ),
                Command::Synced { .. } => ("synced", None, None, None),
                Command::Configure { .. } => ("settings", None, None, None),
            };
            json!({
                "id": r.id.to_string(),
                "kind": kind,
                "conversation": conversation,
                "message": message,
                "sender": r.sender.as_str(),
                "content": content,
                "created_at": rfc3339(r.at),
            })
        })
        .collect();
    Ok(Json(json!({ "pending": pending })))
}

pub fn conversation_json(c: &Conversation, last_index: Option<u64>) -> Value {
    json!({
        "id": c.id.as_str(),
        "title": c.title,
        "created_by": c.created_by.as_str(),
        "created_at": rfc3339(c.created_at),
        "last_index": last_index,
    })
}

pub async fn conversations(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let reader = room.handle.storage.reader.clone();
    let list = blocking(move || {
        let mut convs = reader.conversations()?;
        convs.truncate(MAX_CONVERSATIONS);
        let mut out = Vec::with_capacity(convs.len() + 1);
        let general = ConversationId::general();
        if !convs.iter().any(|c| c.id == general) {
            let last = reader
                .messages(&general, None, None, 1)?
                .first()
                .map(|m| m.index);
            out.push(json!({
                "id": general.as_str(), "title": general.as_str(), "created_by": null,
                "created_at": null, "last_index": last,
            }));
        }
        for c in &convs {
            let last = reader
                .messages(&c.id, None, None, 1)?
                .first()
                .map(|m| m.index);
            out.push(conversation_json(c, last));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({ "conversations": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    id: String,
    #[serde(default)]
    title: Option<String>,
}

pub async fn create_conversation(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: NewConversation = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    let id = ConversationId::new(body.id)
        .map_err(|e| ApiError::bad_request(format!("conversation: {e}")))?;
    let title = body.title.unwrap_or_else(|| id.as_str().to_owned());
    let command = Command::CreateConversation {
        conversation: id.clone(),
        title: title.clone(),
    };
    match submit(&room, command).await? {
        Submitted::Applied(req, index) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "status": "success",
                "conversation": conversation_json(
                    &Conversation {
                        id,
                        title,
                        created_by: req.sender.clone(),
                        created_at: req.at,
                        created_index: index,
                    },
                    None,
                ),
            })),
        )
            .into_response()),
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}
