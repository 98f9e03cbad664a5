//! Messages, the outbox and conversations.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use skygit_actors::consensus::{ProposeFailure, Proposed, Submit};
use skygit_api::limits::{DEFAULT_PAGE, MAX_CONTENT_CHARS, MAX_PAGE, MAX_TITLE_CHARS};
use skygit_api::{
    ConversationCreated, ConversationInfo, ConversationList, EditMessage, ErrorBody, ErrorStatus,
    ListQuery, Message, MessageChanged, MessagePage, NewConversation, NewMessage, Outbox,
    PendingRequest, RequestKind, Success, SyncState,
};
use skygit_consensus::model::{
    ApplyOutcome, ChatRequest, Command, Conversation, ConversationId, MessageRecord, Rejection,
};
use skygit_storage::ChatReader;
use ulid::Ulid;

use super::{blocking, gone, json_body, query, ApiError, RepoQuery, Served, Shared};

/// Conversations one listing returns at most.
const MAX_CONVERSATIONS: usize = 1000;

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
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

/// A message as the API shows it: `Synchronized` when `git_hash` names
/// the commit holding its last change, else `unsynced` (committed, or
/// pending in the outbox).
pub fn message_view(
    room: &Served,
    rec: &MessageRecord,
    git_hash: Option<String>,
    unsynced: SyncState,
) -> Message {
    message_of(
        rec,
        git_hash,
        unsynced,
        |h| room.commit_url(h),
        |a| super::attachments::is_local(room, a),
    )
}

/// [`message_view`] with the commit's web page from `commit_url`.
pub fn message_of(
    rec: &MessageRecord,
    git_hash: Option<String>,
    unsynced: SyncState,
    commit_url: impl Fn(&str) -> Option<String>,
    local: impl Fn(&skygit_consensus::model::Attachment) -> bool,
) -> Message {
    let m = &rec.message;
    let created = rfc3339(m.created_at).unwrap_or_default();
    let pending = unsynced == SyncState::Pending;
    Message {
        id: m.id.to_string(),
        index: (!pending).then_some(rec.index),
        last_change_index: (!pending).then_some(rec.last_change_index),
        conversation: m.conversation.as_str().to_owned(),
        sender: m.sender.as_str().to_owned(),
        content: if m.deleted {
            String::new()
        } else {
            m.content.clone()
        },
        updated_at: rfc3339(m.edited_at.unwrap_or(m.created_at)).unwrap_or_else(|| created.clone()),
        created_at: created,
        edited: m.edited_at.is_some(),
        deleted: m.deleted,
        verified: m.signed && !pending,
        sync_state: if git_hash.is_some() {
            SyncState::Synchronized
        } else {
            unsynced
        },
        commit_url: git_hash.as_deref().and_then(commit_url),
        call: m.call.as_ref().map(super::calls::call_line),
        attachments: if m.deleted {
            Vec::new()
        } else {
            m.attachments
                .iter()
                .map(|a| skygit_api::AttachmentView {
                    sha256: a.sha256.to_string(),
                    size: a.size,
                    name: a.name.clone(),
                    media_type: a.media_type.clone(),
                    url: format!("/attachments/{}?size={}", a.sha256, a.size),
                    local: local(a),
                    stored: git_hash.is_some(),
                })
                .collect()
        },
        git_hash,
        applied_at_us: None,
    }
}

/// Messages with their sync state read from the room's storage.
pub fn records_view(
    room: &Served,
    reader: &ChatReader,
    recs: &[MessageRecord],
) -> Result<Vec<Message>, skygit_storage::StorageError> {
    let mut commits = CommitLookup::new(reader)?;
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let hash = commits.commit(r.last_change_index)?;
        out.push(message_view(room, r, hash, SyncState::Committed));
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

#[utoipa::path(get, path = "/messages", tag = "messages", params(ListQuery),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorBody),
              (status = 404, description = "no such room or conversation", body = ErrorBody)))]
/// A page of one conversation's messages, oldest first.
pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<MessagePage>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let conversation = conversation_of(q.conversation)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    // An empty range (`after` at or above `before`) is an empty page.
    let empty = matches!((q.after, q.before), (Some(a), Some(b)) if a.saturating_add(1) >= b);
    let reader = room.handle.storage.reader.clone();
    let r = room.clone();
    let (after, before) = (q.after, q.before);
    let (messages, has_more) = blocking(move || {
        if conversation != ConversationId::general()
            && reader.conversation(&conversation)?.is_none()
        {
            return Ok(None);
        }
        if empty {
            return Ok(Some((Vec::new(), false)));
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
        Ok(Some((records_view(&r, &reader, &recs)?, has_more)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such conversation"))?;
    Ok(Json(MessagePage { messages, has_more }))
}

fn parse_id(id: &str) -> Result<Ulid, ApiError> {
    Ulid::from_string(id).map_err(|e| ApiError::bad_request(format!("bad message id {id:?}: {e}")))
}

/// A message this node has applied, or 404.
async fn read_one(room: &Arc<Served>, id: Ulid) -> Result<(MessageRecord, Message), ApiError> {
    let reader = room.handle.storage.reader.clone();
    let r = room.clone();
    blocking(move || {
        let Some(rec) = reader.message(id)? else {
            return Ok(None);
        };
        let hash = CommitLookup::new(&reader)?.commit(rec.last_change_index)?;
        let view = message_view(&r, &rec, hash, SyncState::Committed);
        Ok(Some((rec, view)))
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no message {id}")))
}

#[utoipa::path(get, path = "/messages/{id}", tag = "messages", params(("id" = String, Path, description = "The message's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// One message as this node has applied it.
pub async fn get_one(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Message>, ApiError> {
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
        | Rejection::CallEntry(_)
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
        id: None,
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
        Err(e @ (ProposeFailure::Outbox(_) | ProposeFailure::Unsigned(_))) => Err(ApiError::new(
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
    message: Option<Message>,
) -> ApiError {
    let mut body = ErrorBody::new(
        "no leader is reachable: the request is kept in this node's outbox and is sent \
         when a leader is reachable",
    );
    body.status = ErrorStatus::Queued;
    body.message_id = Some(req.id.to_string());
    body.outbox_len = Some(outbox_len as u64);
    body.reason = Some(reason.to_owned());
    body.message = message;
    ApiError::body(StatusCode::SERVICE_UNAVAILABLE, body)
}

pub(super) fn check_content(content: &str) -> Result<(), ApiError> {
    let chars = content.chars().count();
    if chars > MAX_CONTENT_CHARS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the content is {chars} characters; the limit is {MAX_CONTENT_CHARS}"),
        ));
    }
    if content.trim().is_empty() {
        return Err(ApiError::bad_request("the content is empty"));
    }
    Ok(())
}

/// A post as the API shows it before this node has read it back.
fn fresh_post(room: &Served, req: &ChatRequest, index: u64, state: SyncState) -> Option<Message> {
    MessageRecord::posted(req, index).map(|rec| message_view(room, &rec, None, state))
}

#[utoipa::path(post, path = "/messages", tag = "messages", params(RepoQuery), request_body = NewMessage,
    responses((status = 201, description = "committed, and applied on this node", body = MessageChanged),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "a file it names was not uploaded to this node", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 503, description = "queued in the outbox (`status: queued`), or the room is stopping", body = ErrorBody)))]
/// Posts a message.
pub async fn post(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: NewMessage = json_body(body)?;
    let room = s.room(q.repo.as_deref()).await?;
    check_content(&body.content)?;
    let conversation = conversation_of(body.conversation)?;
    let attachments = super::attachments::posted(&room, body.attachments).await?;
    let command = Command::Post {
        conversation,
        content: body.content,
        attachments,
    };
    match submit(&room, command).await? {
        Submitted::Applied(req, index) => {
            let message = match fresh_post(&room, &req, index, SyncState::Committed) {
                Some(m) => m,
                None => read_one(&room, req.id).await?.1,
            };
            Ok((
                StatusCode::CREATED,
                Json(MessageChanged {
                    status: Success::Success,
                    message_id: req.id.to_string(),
                    message,
                }),
            )
                .into_response())
        }
        // Not in the log yet: no index.
        Submitted::Queued(req, n, why) => Err(queued(
            &req,
            n,
            &why,
            fresh_post(&room, &req, 0, SyncState::Pending),
        )),
    }
}

/// Waits until this node has applied the log up to `index`, at most
/// [`APPLY_WAIT`].
async fn wait_applied(room: &Served, index: u64) {
    room.handle.replica.wait_applied(index, APPLY_WAIT).await;
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
    let (_, message) = read_one(room, id).await?;
    Ok(Json(MessageChanged {
        status: Success::Success,
        message_id: id.to_string(),
        message,
    })
    .into_response())
}

#[utoipa::path(patch, path = "/messages/{id}", tag = "messages", params(("id" = String, Path, description = "The message's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    request_body = EditMessage,
    responses((status = 200, body = MessageChanged), (status = 400, body = ErrorBody),
              (status = 403, description = "not this node's user's message", body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "deleted", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// Edits one of this node's user's messages.
pub async fn edit(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let body: EditMessage = json_body(body)?;
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

#[utoipa::path(delete, path = "/messages/{id}", tag = "messages", params(("id" = String, Path, description = "The message's id (a ULID)", pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"), RepoQuery),
    responses((status = 200, body = MessageChanged), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// Deletes one of this node's user's messages (its content is cleared).
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

#[utoipa::path(get, path = "/outbox", tag = "messages", params(RepoQuery),
    responses((status = 200, body = Outbox), (status = 404, body = ErrorBody)))]
/// The requests this node keeps until a leader is reachable.
pub async fn outbox(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<Outbox>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let ob = room.handle.storage.outbox.clone();
    let pending = blocking(move || ob.list(MAX_PAGE)).await?;
    let pending = pending
        .iter()
        .map(|r| {
            let (kind, conversation, content, message) = match &r.command {
                Command::Post {
                    conversation,
                    content,
                    ..
                } => (RequestKind::Post, Some(conversation), Some(content), None),
                Command::Edit { message, content } => {
                    (RequestKind::Edit, None, Some(content), Some(message))
                }
                Command::Delete { message } => (RequestKind::Delete, None, None, Some(message)),
                Command::CreateConversation { conversation, .. } => (
                    RequestKind::CreateConversation,
                    Some(conversation),
                    None,
                    None,
                ),
                Command::Call { conversation, .. } => {
                    (RequestKind::Call, Some(conversation), None, None)
                }
                Command::Synced { .. } => (RequestKind::Synced, None, None, None),
                Command::Configure { .. } => (RequestKind::Settings, None, None, None),
            };
            PendingRequest {
                id: r.id.to_string(),
                kind,
                conversation: conversation.map(|c| c.as_str().to_owned()),
                message: message.map(Ulid::to_string),
                sender: r.sender.as_str().to_owned(),
                content: content.cloned(),
                created_at: rfc3339(r.at).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Json(Outbox { pending }))
}

pub fn conversation_view(c: &Conversation, last_index: Option<u64>) -> ConversationInfo {
    ConversationInfo {
        id: c.id.as_str().to_owned(),
        title: c.title.clone(),
        created_by: Some(c.created_by.as_str().to_owned()),
        created_at: rfc3339(c.created_at),
        last_index,
    }
}

#[utoipa::path(get, path = "/conversations", tag = "messages", params(RepoQuery),
    responses((status = 200, body = ConversationList), (status = 404, body = ErrorBody)))]
/// The room's conversations (`general` first when nobody created it).
pub async fn conversations(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Json<ConversationList>, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let reader = room.handle.storage.reader.clone();
    let conversations = blocking(move || {
        let mut convs = reader.conversations()?;
        convs.truncate(MAX_CONVERSATIONS);
        let mut out = Vec::with_capacity(convs.len() + 1);
        let general = ConversationId::general();
        if !convs.iter().any(|c| c.id == general) {
            let last = reader
                .messages(&general, None, None, 1)?
                .first()
                .map(|m| m.index);
            out.push(ConversationInfo {
                id: general.as_str().to_owned(),
                title: general.as_str().to_owned(),
                created_by: None,
                created_at: None,
                last_index: last,
            });
        }
        for c in &convs {
            let last = reader
                .messages(&c.id, None, None, 1)?
                .first()
                .map(|m| m.index);
            out.push(conversation_view(c, last));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(ConversationList { conversations }))
}

#[utoipa::path(post, path = "/conversations", tag = "messages", params(RepoQuery), request_body = NewConversation,
    responses((status = 201, body = ConversationCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "it exists already", body = ErrorBody), (status = 503, body = ErrorBody)))]
/// Creates a conversation.
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
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(format!(
            "the title is {chars} characters; the limit is {MAX_TITLE_CHARS}"
        )));
    }
    let command = Command::CreateConversation {
        conversation: id.clone(),
        title: title.clone(),
    };
    match submit(&room, command).await? {
        Submitted::Applied(req, index) => Ok((
            StatusCode::CREATED,
            Json(ConversationCreated {
                status: Success::Success,
                conversation: conversation_view(
                    &Conversation {
                        id,
                        title,
                        created_by: req.sender.clone(),
                        created_at: req.at,
                        created_index: index,
                    },
                    None,
                ),
            }),
        )
            .into_response()),
        Submitted::Queued(req, n, why) => Err(queued(&req, n, &why, None)),
    }
}
