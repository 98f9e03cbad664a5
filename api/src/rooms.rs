//! The rooms a node serves: repositories, push, flushes and settings.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Success;

/// A room (a repository) this node serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// The room's key in URLs (`?repo=`).
    pub key: String,
    /// The repository as given (`github:owner/name`, a URL or a path).
    pub spec: String,
    /// The room requests without `?repo=` address.
    pub primary: bool,
    /// This node's raft id in the room.
    pub node_id: u64,
    /// The repository's web page (GitHub rooms).
    pub web_url: Option<String>,
    /// A commit's web page is this prefix and its hash.
    pub commit_url_prefix: Option<String>,
}

/// `GET /repositories`: the primary room first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryList {
    pub repositories: Vec<Repository>,
}

/// `POST /repositories`: a GitHub repository, or any repository by URL or
/// path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NewRepository {
    GitHub(GitHubRepository),
    Url(RepositoryUrl),
}

/// A GitHub repository by owner and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitHubRepository {
    #[schema(pattern = r"^[A-Za-z0-9-]{1,39}$")]
    pub owner: String,
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,100}$")]
    pub name: String,
}

/// A repository by URL or path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryUrl {
    /// A git URL, a local path, or `github:owner/name`; no control
    /// characters, at most 1024 bytes.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub url: String,
}

/// The answer to `POST /repositories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryAdded {
    pub status: Success,
    pub repository: Repository,
}

/// The answer to `POST /push`: the flush it ran (here, or on the leader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pushed {
    pub status: Success,
    /// The leader that flushed, when this node is not it.
    pub leader: Option<u64>,
    /// Everything up to this log index is in the repository.
    pub up_to_index: u64,
    /// The log branch's head after the flush.
    pub head: Option<String>,
    pub commit_url: Option<String>,
    pub commits: u64,
    pub changes: u64,
    pub remote_calls: u64,
    pub duration_ms: f64,
}

/// One flush of the committer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlushInfo {
    /// When it began (this node's clock).
    pub at: Option<String>,
    /// What started it (`interval`, `on_demand`, ...).
    pub reason: String,
    pub ok: bool,
    pub changes: u64,
    pub commits: u64,
    pub head: Option<String>,
    pub commit_url: Option<String>,
    pub up_to_index: u64,
    pub duration_ms: f64,
    pub remote_calls: u64,
    pub error: Option<String>,
}

/// `GET /flushes`: this node's recent flushes, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlushList {
    pub flushes: Vec<FlushInfo>,
}

/// `GET /settings`: what applies on this node, and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The commit interval this node flushes at when it leads.
    pub commit_interval_secs: u64,
    /// The voters the membership controller aims for.
    pub voters: Option<u64>,
    /// What the room set through its log.
    pub room: RoomSettings,
    /// This node's own values (its command line), which win.
    pub node_overrides: NodeOverrides,
}

/// The settings the room's log set (none: the repository's `config.json`
/// or the default applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomSettings {
    pub commit_interval_secs: Option<u64>,
    pub voters: Option<u8>,
    /// The log index of the last change (0: never changed).
    pub changed_index: u64,
    pub changed_at: Option<String>,
}

/// This node's own values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeOverrides {
    pub commit_interval_secs: Option<u64>,
    pub voters: Option<u64>,
}

/// `PUT /settings`: a change of the room's settings, through the log.
/// Fields left out keep their value; an empty change answers the
/// settings as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSettings {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integral::option"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    pub commit_interval_secs: Option<u64>,
    /// 1, 3 or 5.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integral::option"
    )]
    #[schema(schema_with = voter_count)]
    pub voters: Option<u8>,
}

fn voter_count() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Integer,
            Type::Null,
        ]))
        .enum_values(Some([
            serde_json::json!(1),
            serde_json::json!(3),
            serde_json::json!(5),
            serde_json::Value::Null,
        ]))
        .description(Some(
            "How many voters the room's group aims for: 1, 3 or 5.",
        ))
        .build()
}
