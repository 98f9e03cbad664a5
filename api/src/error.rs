//! The body of every refusal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::messages::Message;

/// What kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorStatus {
    /// Refused: `error` says why.
    Error,
    /// Not refused but not done either (503): no leader is reachable and
    /// the request waits in this node's outbox; it is sent when a leader
    /// is reachable. `message_id`, `outbox_len` and `reason` are set.
    Queued,
}

/// Every answer that is not a success: `{"status": "error", "error": ...}`,
/// with the fields below where they apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub status: ErrorStatus,
    /// What went wrong, for a person.
    pub error: String,
    /// Queued: the id of the request (a post's message id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Queued: requests in the outbox now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_len: Option<u64>,
    /// Queued: why no leader took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Queued post: the message as it will show once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// A push the leader failed: which node leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// The host's rate limit: when the committer tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// A plain refusal.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            status: ErrorStatus::Error,
            error: error.into(),
            message_id: None,
            outbox_len: None,
            reason: None,
            message: None,
            leader: None,
            retry_after_ms: None,
        }
    }
}
