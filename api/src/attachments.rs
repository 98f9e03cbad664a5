//! Attachments: uploading a file, naming it in a post, and how a message
//! shows its files.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A stored file, as `POST /attachments` answers it and as `POST
/// /messages` names it in `attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// SHA-256 of the bytes, 64 lower-case hex digits.
    #[schema(pattern = r"^[0-9a-f]{64}$")]
    pub sha256: String,
    /// Size in bytes.
    #[schema(minimum = 1, maximum = 4294967296_u64)]
    #[serde(deserialize_with = "crate::integral::whole")]
    pub size: u64,
    /// The file's name, shown to people (never a path): at most 255
    /// characters, no control characters, not only white space.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Its media type, like `image/png`.
    #[schema(
        max_length = 127,
        pattern = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$"
    )]
    pub media_type: String,
}

/// A file of a message, with where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentView {
    pub sha256: String,
    pub size: u64,
    pub name: String,
    pub media_type: String,
    /// Where to read it: `GET` this path on the node (it fetches the bytes
    /// from a peer or the room's storage when it has not got them):
    /// `/attachments/{sha256}?size={size}`.
    pub url: String,
    /// This node has the bytes.
    pub local: bool,
    /// The room's attachment storage has them (the message is in the
    /// repository, and the committer stores every file of a batch before
    /// it commits the batch).
    pub stored: bool,
}

/// `POST /attachments`'s query; the body is the file's bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The room (its key or repository spec); default the primary room.
    #[param(max_length = 1024)]
    pub repo: Option<String>,
    /// The file's name (default `file`): at most 255 characters, no
    /// control characters, not only white space.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
}

/// `GET /attachments/{sha256}`'s query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// The room (its key or repository spec); default the primary room.
    #[param(max_length = 1024)]
    pub repo: Option<String>,
    /// The file's size, as the message names it: a node that has to fetch
    /// the file asks for exactly this many bytes.
    #[param(minimum = 1, maximum = 4294967296_u64)]
    pub size: Option<u64>,
}
