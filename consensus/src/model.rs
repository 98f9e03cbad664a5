//! The chat domain: rooms, conversations, messages and the commands that
//! change them.
//!
//! A [`ChatRequest`] is what a node proposes to the room's raft group; it is
//! the openraft application data (`D`). Every request has a globally unique
//! id (a ULID): for a post it is the message id, and the state machine applies
//! an id at most once, so a proposal retried after a leader change, or merged
//! in from a re-formed group, never duplicates a message.
//!
//! Everything here can arrive from the network, so every field is bounded and
//! [`ChatRequest::validate`] says why a request is unacceptable instead of
//! panicking.

use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use crate::attachment::{Attachment, ContentHash};
pub use crate::call::{CallEntry, CallEvent};

/// Largest message text, in bytes of UTF-8: room for the API's 16384
/// characters of at most 4 bytes each.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Longest conversation name, in bytes.
pub const MAX_CONVERSATION_BYTES: usize = 64;
/// Longest user name, in bytes (GitHub logins are at most 39).
pub const MAX_USER_BYTES: usize = 64;
/// Longest conversation title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Longest git commit id carried by a `synced` record (hex SHA-256).
pub const MAX_COMMIT_SHA_BYTES: usize = 64;
/// The conversation every room has.
pub const DEFAULT_CONVERSATION: &str = "general";
/// Bounds on a room's commit interval, in seconds.
pub const MIN_COMMIT_INTERVAL_SECS: u64 = 1;
pub const MAX_COMMIT_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// Voter counts a room may ask for (odd, so a majority is well defined).
pub const VOTER_COUNTS: [u8; 3] = [1, 3, 5];

/// Why a name or request is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a character that is not allowed: {ch:?}")]
    BadChar { field: &'static str, ch: char },
    #[error("{field} may not start with '.' (it names a directory in the repository)")]
    LeadingDot { field: &'static str },
    #[error("{field} must be {allowed}")]
    OutOfRange {
        field: &'static str,
        allowed: String,
    },
}

fn check_name(
    field: &'static str,
    s: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if s.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    if let Some(ch) = s.chars().find(|c| !allowed(*c)) {
        return Err(ValidationError::BadChar { field, ch });
    }
    // `.`, `..` and `.git` are not directory names a tree may hold.
    if s.starts_with('.') {
        return Err(ValidationError::LeadingDot { field });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
                let s = s.into();
                check_name($field, &s, $max, $allowed)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A conversation (channel) name: lower-case letters, digits, `-`, `_`
    /// and `.`; it is also a directory name in the repository layout.
    ConversationId,
    "conversation",
    MAX_CONVERSATION_BYTES,
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
);

name_type!(
    /// A user name as the repository host authenticates it (a GitHub login,
    /// or the local user for plain git remotes).
    UserId,
    "user",
    MAX_USER_BYTES,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
);

impl ConversationId {
    /// The conversation every room has.
    pub fn general() -> Self {
        Self(DEFAULT_CONVERSATION.to_owned())
    }
}

/// A room is one repository, served by one raft group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoomId(String);

impl RoomId {
    /// A room named by its repository spec (`github:owner/name`, a URL or a
    /// path). The spec is kept verbatim; [`RoomId::storage_key`] gives a
    /// file-system-safe name for its storage namespace.
    pub fn new(spec: impl Into<String>) -> Result<Self, ValidationError> {
        let s = spec.into();
        if s.is_empty() {
            return Err(ValidationError::Empty { field: "room" });
        }
        if s.len() > 1024 {
            return Err(ValidationError::TooLong {
                field: "room",
                len: s.len(),
                max: 1024,
            });
        }
        if let Some(ch) = s.chars().find(|c| c.is_control()) {
            return Err(ValidationError::BadChar { field: "room", ch });
        }
        Ok(Self(s))
    }

    /// The repository spec.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A directory name unique to this room: the spec with every character
    /// outside `[A-Za-z0-9._-]` replaced, plus a hash so that two specs that
    /// map to the same text stay apart.
    pub fn storage_key(&self) -> String {
        let safe: String = self
            .0
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{safe}-{h:016x}")
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chat message as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: Ulid,
    pub conversation: ConversationId,
    pub sender: UserId,
    pub content: String,
    /// Milliseconds since the Unix epoch, from the sender's clock.
    pub created_at: i64,
    /// When the text was last edited (sender's clock), if ever.
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// The current text (the post's, or the last edit's) carries its
    /// author's signature: on a room that verifies identities the leader
    /// checked it against the author's keys before it entered the log.
    pub signed: bool,
    /// The files posted with it (metadata only; the bytes move over the
    /// mesh and into the room's attachment storage).
    pub attachments: Vec<Attachment>,
    /// Set on a call entry (its content is empty).
    pub call: Option<CallEntry>,
}

/// A message with its place in the room's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub message: Message,
    /// Room index of the entry that posted it: the message's position.
    pub index: u64,
    /// Room index of the last entry that changed it (edit or delete).
    pub last_change_index: u64,
}

impl MessageRecord {
    /// The message a post request makes when it applies at `index`
    /// (`None` for other commands).
    pub fn posted(req: &ChatRequest, index: u64) -> Option<Self> {
        let Command::Post {
            conversation,
            content,
            attachments,
        } = &req.command
        else {
            return None;
        };
        Some(Self {
            message: Message {
                id: req.id,
                conversation: conversation.clone(),
                sender: req.sender.clone(),
                content: content.clone(),
                created_at: req.at,
                edited_at: None,
                deleted: false,
                signed: req.signature.is_some(),
                attachments: attachments.clone(),
                call: None,
            },
            index,
            last_change_index: index,
        })
    }
}

/// A conversation's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: ConversationId,
    pub title: String,
    pub created_by: UserId,
    pub created_at: i64,
    /// Room index of the entry that created it.
    pub created_index: u64,
}

/// One change to the room as the repository records it: a line of a batch
/// file. The state machine keeps every change not yet in the repository
/// (the journal), so any leader can render what its predecessors had not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Room index of the entry that made the change ([`GroupStart`]).
    pub index: u64,
    /// Raft term of that entry.
    pub term: u64,
    /// The request that made it.
    pub request: Ulid,
    pub sender: UserId,
    /// Milliseconds since the Unix epoch, from the proposer's clock.
    pub at: i64,
    pub conversation: ConversationId,
    pub kind: ChangeKind,
    /// The author's signature, carried from the request.
    pub signature: Option<String>,
}

impl Change {
    /// The request that made this change (same id, sender, time and
    /// signature): proposing it again is deduplicated by id.
    pub fn request(&self) -> ChatRequest {
        let command = match &self.kind {
            ChangeKind::Post {
                content,
                attachments,
                ..
            } => Command::Post {
                conversation: self.conversation.clone(),
                content: content.clone(),
                attachments: attachments.clone(),
            },
            ChangeKind::Edit { message, content } => Command::Edit {
                message: *message,
                content: content.clone(),
            },
            ChangeKind::Call { entry, .. } => Command::Call {
                conversation: self.conversation.clone(),
                entry: entry.clone(),
            },
            ChangeKind::Delete { message } => Command::Delete { message: *message },
            ChangeKind::CreateConversation { title } => Command::CreateConversation {
                conversation: self.conversation.clone(),
                title: title.clone(),
            },
        };
        ChatRequest {
            id: self.request,
            sender: self.sender.clone(),
            at: self.at,
            command,
            signature: self.signature.clone(),
        }
    }
}

/// What a [`Change`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A new message (its id is the request id).
    Post {
        message: Ulid,
        content: String,
        attachments: Vec<Attachment>,
    },
    /// New text for a message.
    Edit { message: Ulid, content: String },
    /// A message marked deleted.
    Delete { message: Ulid },
    /// A conversation created explicitly.
    CreateConversation { title: String },
    /// A call entry (its id is the request id).
    Call { message: Ulid, entry: CallEntry },
}

/// What a request asks the room to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Post a new message; its id is the request id. Posting into a
    /// conversation that does not exist yet creates it.
    Post {
        conversation: ConversationId,
        content: String,
        /// Files posted with it: their metadata only.
        attachments: Vec<Attachment>,
    },
    /// Replace the text of a message (author only).
    Edit { message: Ulid, content: String },
    /// Mark a message deleted (author only). The entry stays in the log.
    Delete { message: Ulid },
    /// Create a conversation.
    CreateConversation {
        conversation: ConversationId,
        title: String,
    },
    /// The committer wrote the log up to `up_to_index` into the repository
    /// as commit `commit_sha`.
    Synced {
        up_to_index: u64,
        commit_sha: String,
    },
    /// Change the room's settings (`None` keeps a value). Every node applies
    /// them; the leader's committer writes them into `config.json`.
    Configure {
        commit_interval_secs: Option<u64>,
        voters: Option<u8>,
    },
    /// A call started, was joined or left, or ended: an entry of the
    /// conversation whose id is the request id. Deduplicated by that id,
    /// so an end every participant's node proposes (with
    /// [`CallEntry::end_request_id`]) applies once.
    Call {
        conversation: ConversationId,
        entry: CallEntry,
    },
}

/// The room's settings as the log has set them. A value never set through
/// the log is `None`: the repository's `config.json` (or the default)
/// applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    pub commit_interval_secs: Option<u64>,
    pub voters: Option<u8>,
    /// Log index of the last change (0: never changed).
    pub changed_index: u64,
    /// When it was asked for: milliseconds since the Unix epoch, from the
    /// proposer's clock.
    pub changed_at: i64,
}

/// One proposal to the room's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Globally unique; the state machine applies an id at most once.
    pub id: Ulid,
    pub sender: UserId,
    /// Milliseconds since the Unix epoch, from the proposer's clock.
    pub at: i64,
    pub command: Command,
    /// The author's SSH signature of the change (the base64 of an SSH
    /// signature, one line; see `skygit_ports::identity::statement`), on a
    /// room that verifies identities.
    pub signature: Option<String>,
}

impl fmt::Display for ChatRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.command {
            Command::Post { conversation, .. } => format!("post to {conversation}"),
            Command::Edit { message, .. } => format!("edit {message}"),
            Command::Delete { message } => format!("delete {message}"),
            Command::CreateConversation { conversation, .. } => {
                format!("create {conversation}")
            }
            Command::Call {
                conversation,
                entry,
            } => format!("call {} {:?} in {conversation}", entry.call, entry.event),
            Command::Synced { up_to_index, .. } => format!("synced up to {up_to_index}"),
            Command::Configure {
                commit_interval_secs,
                voters,
            } => format!("configure interval {commit_interval_secs:?} voters {voters:?}"),
        };
        write!(f, "{} by {}: {}", self.id, self.sender, what)
    }
}

fn check_content(content: &str) -> Result<(), ValidationError> {
    if content.trim().is_empty() {
        return Err(ValidationError::Empty { field: "content" });
    }
    check_len("content", content, MAX_CONTENT_BYTES)
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

impl ChatRequest {
    /// Checks every size bound. Names are checked when they are decoded;
    /// this covers the free-text fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(sig) = &self.signature {
            check_signature(sig)?;
        }
        self.command.validate()
    }
}

/// Largest signature a request carries (an RSA-4096 SSH signature is
/// about 900 base64 characters).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// A signature is one line of base64, bounded.
pub fn check_signature(sig: &str) -> Result<(), ValidationError> {
    if sig.is_empty() {
        return Err(ValidationError::Empty { field: "signature" });
    }
    check_len("signature", sig, MAX_SIGNATURE_BYTES)?;
    match sig
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        Some(ch) => Err(ValidationError::BadChar {
            field: "signature",
            ch,
        }),
        None => Ok(()),
    }
}

impl Command {
    /// Checks every size bound and range (see [`ChatRequest::validate`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Command::Post {
                content,
                attachments,
                ..
            } => {
                crate::attachment::validate_all(attachments)?;
                check_content(content)
            }
            Command::Edit { content, .. } => check_content(content),
            Command::Delete { .. } => Ok(()),
            Command::Call { entry, .. } => entry.validate(),
            Command::CreateConversation { title, .. } => check_len("title", title, MAX_TITLE_BYTES),
            Command::Synced { commit_sha, .. } => {
                if commit_sha.is_empty() {
                    return Err(ValidationError::Empty {
                        field: "commit_sha",
                    });
                }
                check_len("commit_sha", commit_sha, MAX_COMMIT_SHA_BYTES)?;
                match commit_sha.chars().find(|c| !c.is_ascii_hexdigit()) {
                    Some(ch) => Err(ValidationError::BadChar {
                        field: "commit_sha",
                        ch,
                    }),
                    None => Ok(()),
                }
            }
            Command::Configure {
                commit_interval_secs,
                voters,
            } => {
                if commit_interval_secs.is_none() && voters.is_none() {
                    return Err(ValidationError::Empty {
                        field: "the settings change (commit_interval_secs or voters)",
                    });
                }
                if let Some(i) = commit_interval_secs {
                    if !(MIN_COMMIT_INTERVAL_SECS..=MAX_COMMIT_INTERVAL_SECS).contains(i) {
                        return Err(ValidationError::OutOfRange {
                            field: "commit_interval_secs",
                            allowed: format!(
                                "{MIN_COMMIT_INTERVAL_SECS} to {MAX_COMMIT_INTERVAL_SECS}"
                            ),
                        });
                    }
                }
                if let Some(v) = voters {
                    if !VOTER_COUNTS.contains(v) {
                        return Err(ValidationError::OutOfRange {
                            field: "voters",
                            allowed: "1, 3 or 5".into(),
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// Why the state machine refused a request. Refusals are deterministic:
/// every node refuses the same request at the same index for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no message with id {0}")]
    NoSuchMessage(Ulid),
    #[error("only the author may change message {0}")]
    NotAuthor(Ulid),
    #[error("message {0} is deleted")]
    Deleted(Ulid),
    #[error("message {0} is a call entry: it is not edited or deleted")]
    CallEntry(Ulid),
    #[error("conversation {0} already exists")]
    ConversationExists(ConversationId),
    #[error("synced watermark {requested} is behind the current one ({current})")]
    StaleWatermark { requested: u64, current: u64 },
    #[error("synced watermark {requested} is not before its own entry ({index})")]
    FutureWatermark { requested: u64, index: u64 },
}

/// Which raft group of the room a node's state belongs to, and where its
/// log sits in the room's sequence.
///
/// A room's history is one sequence of *room indices* across every group
/// it has had: the group of epoch `e` numbers its entries from `base + 1`,
/// where `base` is the highest room index its founder held. Messages, the
/// journal, `synced`, batch file names and the `Raft-Last-Index` trailer
/// all use room indices; raft's own log, votes and metrics use raft
/// indices. Epoch 0 has base 0, so there the two are the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStart {
    pub epoch: u64,
    pub base: u64,
}

impl GroupStart {
    /// The room index of the group's raft index `raft_index` (`None` past
    /// `u64::MAX`, which no log reaches).
    pub fn room_index(&self, raft_index: u64) -> Option<u64> {
        self.base.checked_add(raft_index)
    }

    /// The group's raft index of room index `room_index`: `None` when the
    /// index belongs to an earlier group (it is at or below the base).
    pub fn raft_index(&self, room_index: u64) -> Option<u64> {
        room_index.checked_sub(self.base).filter(|i| *i > 0)
    }
}

/// The result of applying one request: the openraft response type (`R`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Applied at this room index.
    Applied { index: u64 },
    /// The id was applied before, at `original_index`; nothing changed.
    Duplicate { original_index: u64 },
    /// Refused; nothing changed.
    Rejected { index: u64, reason: Rejection },
}

impl ApplyOutcome {
    /// True when the request is in the log's effect (now or earlier).
    pub fn is_settled(&self) -> bool {
        !matches!(self, ApplyOutcome::Rejected { .. })
    }

    /// The index at which the request took effect.
    pub fn effective_index(&self) -> Option<u64> {
        match self {
            ApplyOutcome::Applied { index } => Some(*index),
            ApplyOutcome::Duplicate { original_index } => Some(*original_index),
            ApplyOutcome::Rejected { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_names_are_checked() {
        assert!(ConversationId::new("general").is_ok());
        assert!(ConversationId::new("release-2.1_notes").is_ok());
        assert!(matches!(
            ConversationId::new(""),
            Err(ValidationError::Empty { .. })
        ));
        assert!(matches!(
            ConversationId::new("../etc"),
            Err(ValidationError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            ConversationId::new("A"),
            Err(ValidationError::BadChar { ch: 'A', .. })
        ));
        assert!(matches!(
            ConversationId::new("x".repeat(65)),
            Err(ValidationError::TooLong { len: 65, .. })
        ));
        // A git tree cannot hold `.`, `..` or `.git`: a room with such a
        // conversation could never commit again.
        for name in [".", "..", ".git", ".hidden"] {
            assert!(
                matches!(
                    ConversationId::new(name),
                    Err(ValidationError::LeadingDot { .. })
                ),
                "{name}"
            );
        }
        assert!(ConversationId::new("v1.2.").is_ok());
    }

    #[test]
    fn decoding_checks_names() {
        let bad: Result<ConversationId, _> = serde_json_like("\"a/b\"");
        assert!(bad.is_err());
    }

    fn serde_json_like(s: &str) -> Result<ConversationId, ()> {
        // Round-trip through the real codec's serde path: a String that
        // fails `try_from` must fail to decode.
        let raw: String = s.trim_matches('"').to_owned();
        let bytes =
            bincode::serde::encode_to_vec(&raw, bincode::config::standard()).map_err(|_| ())?;
        bincode::serde::decode_from_slice::<ConversationId, _>(&bytes, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|_| ())
    }

    #[test]
    fn content_bounds() {
        let mk = |content: String| ChatRequest {
            id: Ulid::from_parts(1, 1),
            sender: UserId::new("ana").unwrap(),
            at: 0,
            command: Command::Post {
                conversation: ConversationId::general(),
                content,
                attachments: Vec::new(),
            },
            signature: None,
        };
        assert!(mk("hi".into()).validate().is_ok());
        assert!(mk("   ".into()).validate().is_err());
        assert!(mk("x".repeat(MAX_CONTENT_BYTES)).validate().is_ok());
        assert!(mk("x".repeat(MAX_CONTENT_BYTES + 1)).validate().is_err());
    }

    #[test]
    fn room_storage_keys_are_safe_and_distinct() {
        let a = RoomId::new("github:acme/team-chat").unwrap().storage_key();
        let b = RoomId::new("github:acme_team-chat").unwrap().storage_key();
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        assert_ne!(a, b);
    }
}
