//! Messages, the outbox and conversations.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::Success;

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Kept in this node's outbox: no leader was reachable (no index yet).
    Pending,
    /// Committed by the room's raft group, not in the repository yet.
    Committed,
    /// In the repository: `git_hash` names the commit that holds it.
    Synchronized,
}

/// A message as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The message's id (a ULID).
    pub id: String,
    /// The log index that posted it (none while pending).
    pub index: Option<u64>,
    /// The log index of its last change (post, edit or delete).
    pub last_change_index: Option<u64>,
    pub conversation: String,
    pub sender: String,
    /// Empty once deleted.
    pub content: String,
    /// When it was posted (RFC 3339, the sender's clock).
    pub created_at: String,
    /// When it last changed (RFC 3339); `created_at` if never edited.
    pub updated_at: String,
    pub edited: bool,
    pub deleted: bool,
    /// The current text carries its author's SSH signature, which the
    /// leader checked against the author's keys before it entered the
    /// log (only on a room that verifies identities; `false` elsewhere and
    /// while the message waits in the outbox).
    pub verified: bool,
    pub sync_state: SyncState,
    /// The commit that holds its last change, once synchronized.
    pub git_hash: Option<String>,
    /// That commit's web page, where the host has one.
    pub commit_url: Option<String>,
    /// Its files (none: the field is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::attachments::AttachmentView>,
    /// Set on a call entry (whose `content` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<crate::calls::CallLine>,
    /// Only in the `message` event: when this node applied it
    /// (microseconds since the Unix epoch, this node's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_us: Option<u64>,
}

/// `GET /messages`: a page of one conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// More messages lie beyond this page (before it, or after it with
    /// `after`).
    pub has_more: bool,
}

/// `GET /messages`'s query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The room (its key or repository spec); default the primary room.
    #[param(max_length = 1024)]
    pub repo: Option<String>,
    /// The conversation (default `general`).
    #[param(pattern = r"^[a-z0-9_-][a-z0-9._-]{0,63}$")]
    pub conversation: Option<String>,
    /// Messages to return (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only messages posted at a log index below this one (the newest of
    /// them). An empty range (`after` at or above `before`) is an empty page.
    pub before: Option<u64>,
    /// Only messages posted at a log index above this one (the oldest of
    /// them).
    pub after: Option<u64>,
}

/// `POST /messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The text: at most 16384 characters, not only white space.
    #[schema(
        min_length = 1,
        max_length = 16384,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub content: String,
    /// The conversation (default `general`); posting creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[a-z0-9_-][a-z0-9._-]{0,63}$")]
    pub conversation: Option<String>,
    /// Files uploaded to this node with `POST /attachments`, as it
    /// answered them (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 10)]
    pub attachments: Vec<crate::attachments::Attachment>,
}

/// `PATCH /messages/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The new text: at most 16384 characters, not only white space.
    #[schema(
        min_length = 1,
        max_length = 16384,
        pattern = r"[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub content: String,
}

/// The answer to a post, an edit or a delete: the message as it stands
/// on this node, which has applied the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageChanged {
    pub status: Success,
    pub message_id: String,
    pub message: Message,
}

/// What a request waiting in the outbox does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Post,
    Edit,
    Delete,
    CreateConversation,
    Synced,
    Settings,
    Call,
}

/// A request this node keeps until a leader is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingRequest {
    /// The request's id (a ULID; a post's is its message's id).
    pub id: String,
    pub kind: RequestKind,
    /// The conversation (posts and new conversations).
    pub conversation: Option<String>,
    /// The message it changes (edits and deletes).
    pub message: Option<String>,
    pub sender: String,
    /// The text (posts and edits).
    pub content: Option<String>,
    pub created_at: String,
}

/// `GET /outbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    pub pending: Vec<PendingRequest>,
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationInfo {
    pub id: String,
    pub title: String,
    /// Who created it (none for `general` until someone creates it: every
    /// room has it).
    pub created_by: Option<String>,
    pub created_at: Option<String>,
    /// The log index of its newest message (listings only).
    pub last_index: Option<u64>,
}

/// `GET /conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationList {
    pub conversations: Vec<ConversationInfo>,
}

/// `POST /conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    /// Its name: lower-case letters, digits, `-`, `_` and `.`, not
    /// starting with `.`; at most 64.
    #[schema(pattern = r"^[a-z0-9_-][a-z0-9._-]{0,63}$")]
    pub id: String,
    /// Its title (default its name), at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub title: Option<String>,
}

/// The answer to `POST /conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationCreated {
    pub status: Success,
    pub conversation: ConversationInfo,
}
