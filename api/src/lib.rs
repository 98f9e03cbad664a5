//! The node's HTTP API as types: every request body, answer and event the
//! server (`nodes/src/api`) writes and its clients (the `skygit` command
//! line, the test harness, the benchmarks) read. The OpenAPI description
//! the node serves at `GET /openapi.json` is generated from these types
//! and the server's route annotations, so the description, the server and
//! the clients cannot drift apart.
//!
//! Every answer type refuses unknown fields when decoded: a client built
//! from this crate notices at once when the server sends something the
//! contract does not name. Timestamps are RFC 3339 text in UTC with
//! milliseconds; message ids are ULIDs; node ids are raft's `u64`s.
//!
//! - [`messages`]: messages, the outbox and conversations.
//! - [`attachments`]: files uploaded, named in posts and downloaded.
//! - [`calls`]: calls, their signalling and their history lines.
//! - [`rooms`]: repositories, push, flushes and settings.
//! - [`status`]: `GET /status` and `GET /peers`.
//! - [`events`]: the server-sent event stream and its parser.
//! - [`error`]: the body of every refusal.

pub mod attachments;
pub mod calls;
pub mod error;
pub mod events;
mod integral;
pub mod messages;
pub mod rooms;
pub mod status;

pub use attachments::*;
pub use error::{ErrorBody, ErrorStatus};
pub use events::Event;
pub use messages::*;
pub use rooms::*;
pub use status::*;

/// The limits the server enforces, stated once for the schema and the
/// clients (the node checks at compile time that they equal its own).
pub mod limits {
    /// Largest request body, in bytes: room for the longest content with
    /// every character escaped as JSON's `\uXXXX` surrogate pairs.
    pub const MAX_BODY_BYTES: usize = 256 * 1024;
    /// Longest message content, in characters (what a JSON schema's
    /// `maxLength` counts).
    pub const MAX_CONTENT_CHARS: usize = 16 * 1024;
    /// The log's own bound on content: every character in 4 bytes.
    pub const MAX_CONTENT_BYTES: usize = 4 * MAX_CONTENT_CHARS;
    /// Longest conversation name, in bytes (all ASCII).
    pub const MAX_CONVERSATION_BYTES: usize = 64;
    /// Longest conversation title, in characters.
    pub const MAX_TITLE_CHARS: usize = 64;
    /// The log's own bound on titles: every character in 4 bytes.
    pub const MAX_TITLE_BYTES: usize = 4 * MAX_TITLE_CHARS;
    /// Longest repository spec, in bytes.
    pub const MAX_SPEC_BYTES: usize = 1024;
    /// Messages one page holds by default and at most.
    pub const DEFAULT_PAGE: usize = 50;
    pub const MAX_PAGE: usize = 1000;
    /// The commit interval a room may set, in seconds.
    pub const MIN_COMMIT_INTERVAL_SECS: u64 = 1;
    pub const MAX_COMMIT_INTERVAL_SECS: u64 = 7 * 24 * 3600;
    /// The voter counts a room may ask for.
    pub const VOTER_COUNTS: [u8; 3] = [1, 3, 5];
    /// Longest attachment name, in characters.
    pub const MAX_ATTACHMENT_NAME_CHARS: usize = 255;
    /// The log's own bound on attachment names: every character in 4 bytes.
    pub const MAX_ATTACHMENT_NAME_BYTES: usize = 4 * MAX_ATTACHMENT_NAME_CHARS;
    /// Most files one message carries.
    pub const MAX_ATTACHMENTS: usize = 10;
    /// The largest upload a room accepts unless its `config.json` says
    /// otherwise (`media.max_bytes`).
    pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;
}

/// `"success"`: the first field of every answer that changed something.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Success {
    #[default]
    Success,
}

/// Only `?repo=`: the room, when the node serves several (its key or its
/// repository spec; default the node's primary room).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RepoQuery {
    /// The room (its key or repository spec); default the primary room.
    #[param(max_length = 1024)]
    pub repo: Option<String>,
}

/// The fault-injection routes of a node run with `--fault-api` (tests
/// only; not in the OpenAPI description).
pub mod faults {
    /// `POST /faults/drop-link/{peer}`.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dropped {
        pub dropped: u64,
    }

    /// `POST /faults/block/{peer}`: the mesh never links to the peer
    /// again (as if no path between the two existed).
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Blocked {
        pub blocked: u64,
    }

    /// `POST /faults/send/{peer}/{layer}`: bytes sent.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Sent {
        pub sent: u64,
    }
}
