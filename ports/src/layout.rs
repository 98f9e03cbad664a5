//! The room's repository layout: what the committer writes and what
//! read-back accepts.
//!
//! ```text
//! .messages/config.json                                   room settings
//! .messages/<conversation>/<yyyy>/<mm>/<dd>/<first>-<last>.jsonl
//! ```
//!
//! A batch file holds one JSON line per [`Change`] of one conversation on
//! one UTC day (of the change's timestamp), in raft-index order, and is
//! never rewritten: every index lies in exactly one file. Rendering is a
//! pure function of the changes, so two leaders given the same committed
//! prefix write byte-identical files, the same commit message and the same
//! commit metadata, hence the same commit.
//!
//! Commit messages end in trailers (`Raft-Last-Index`, `Raft-Term`, ...)
//! from which any node reads the watermark back off the head commit.
//!
//! Everything parsed here comes from the repository and is untrusted:
//! sizes are bounded and every field is checked.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use skygit_consensus::model::{
    Attachment, CallEntry, Change, ChangeKind, ConversationId, UserId, ValidationError,
    MAX_CONTENT_BYTES, MAX_TITLE_BYTES,
};
use ulid::Ulid;

/// The folder the room owns in the repository.
pub const MESSAGES_DIR: &str = ".messages";
/// The room's settings file.
pub const CONFIG_PATH: &str = ".messages/config.json";
/// Largest accepted `config.json`.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Most lines the committer writes into one batch file.
pub const MAX_BATCH_LINES: usize = 10_000;
/// Size at which the committer starts a new batch file.
pub const BATCH_SPLIT_BYTES: usize = 4 * 1024 * 1024;
/// Largest batch file read-back accepts: the split size plus one line of
/// the largest message (escaping can grow text up to six times).
pub const MAX_BATCH_FILE_BYTES: usize = BATCH_SPLIT_BYTES + 6 * MAX_CONTENT_BYTES + 4096;
/// Largest commit message read for trailers.
pub const MAX_COMMIT_MESSAGE_BYTES: usize = 64 * 1024;
/// Name and e-mail of every commit the committer makes.
pub const COMMITTER_NAME: &str = "skygit";
pub const COMMITTER_EMAIL: &str = "skygit@users.noreply.github.com";

/// A problem with something read from the repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {size} bytes is more than the limit of {max}")]
    TooLarge {
        path: String,
        size: usize,
        max: usize,
    },
    #[error("{path}: not a skygit batch file path ({reason})")]
    BadPath { path: String, reason: String },
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },
    #[error("{CONFIG_PATH}: {0}")]
    BadConfig(String),
}

/// Where a room keeps its attachments' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MediaStorage {
    /// Ordinary blobs in the commit, under `.messages/attachments/`.
    Git,
    /// Git LFS: a pointer file in the tree, the object on the LFS server
    /// (the batch API; git-lfs's standalone layout for a local path).
    #[default]
    GitLfs,
    /// An S3-compatible store (`media.s3`).
    External,
    /// No attachments: uploads are refused.
    Disabled,
}

/// Where in an S3-compatible store a room keeps its files. Credentials
/// never come from the repository: only from the node's environment or
/// config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    /// The service's URL (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`).
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix; objects are `<prefix><sha256>`.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Default of `media.small_max_bytes`: 1 MiB.
pub const DEFAULT_SMALL_MAX_BYTES: u64 = 1024 * 1024;
/// Default of `media.max_bytes`: 100 MiB.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;

/// `config.json`'s `media`: where attachments go, by size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where files larger than `small_max_bytes` go.
    pub storage: MediaStorage,
    /// Where files up to `small_max_bytes` go (absent: `storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_storage: Option<MediaStorage>,
    #[serde(default = "default_small_max")]
    pub small_max_bytes: u64,
    /// The largest upload the room accepts.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// The S3-compatible store, for `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
    /// The Git LFS endpoint (absent: derived from the remote's URL, as
    /// git-lfs does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs_url: Option<String>,
}

fn default_small_max() -> u64 {
    DEFAULT_SMALL_MAX_BYTES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_ATTACHMENT_BYTES
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            storage: MediaStorage::default(),
            small_storage: None,
            small_max_bytes: DEFAULT_SMALL_MAX_BYTES,
            max_bytes: DEFAULT_MAX_ATTACHMENT_BYTES,
            s3: None,
            lfs_url: None,
        }
    }
}

impl MediaConfig {
    /// Where a file of `size` bytes goes.
    pub fn storage_for(&self, size: u64) -> MediaStorage {
        if size <= self.small_max_bytes {
            self.small_storage.unwrap_or(self.storage)
        } else {
            self.storage
        }
    }

    /// Whether the room takes attachments at all.
    pub fn enabled(&self) -> bool {
        self.storage != MediaStorage::Disabled
    }

    /// Checks the values are ones this build can honour.
    pub fn validate(&self) -> Result<(), String> {
        let max = skygit_consensus::attachment::MAX_ATTACHMENT_SIZE;
        if self.max_bytes == 0 || self.max_bytes > max {
            return Err(format!("media.max_bytes must be 1 to {max}"));
        }
        if self.small_max_bytes > self.max_bytes {
            return Err("media.small_max_bytes must not exceed media.max_bytes".into());
        }
        let uses = |k| self.storage == k || self.small_storage == Some(k);
        if self.small_storage == Some(MediaStorage::Disabled) && self.enabled() {
            return Err("media.small_storage cannot be disabled alone".into());
        }
        if uses(MediaStorage::External) && self.s3.is_none() {
            return Err("media storage \"external\" needs media.s3".into());
        }
        if let Some(s3) = &self.s3 {
            s3.validate()?;
        }
        if let Some(url) = &self.lfs_url {
            if url.len() > 1024 || !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err("media.lfs_url must be an http(s) URL of at most 1024 bytes".into());
            }
        }
        Ok(())
    }
}

impl S3Location {
    fn validate(&self) -> Result<(), String> {
        let e = &self.endpoint;
        if e.len() > 1024 || !(e.starts_with("https://") || e.starts_with("http://")) {
            return Err("media.s3.endpoint must be an http(s) URL of at most 1024 bytes".into());
        }
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
            && !b.starts_with(['-', '.'])
            && !b.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!("media.s3.bucket {b:?} is not a valid bucket name"));
        }
        let p = &self.prefix;
        if p.len() > 512
            || p.starts_with('/')
            || p.split('/').any(|seg| seg == ".." || seg == ".")
            || p.chars().any(|c| c.is_control() || c == '\\')
        {
            return Err(format!("media.s3.prefix {p:?} is not a safe key prefix"));
        }
        let r = &self.region;
        if r.is_empty() || r.len() > 64 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("media.s3.region {r:?} is not a region name"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EncryptionConfig {
    pub enabled: bool,
}

/// `.messages/config.json`: the room's settings, shared by every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    /// Layout version; this build reads and writes 1.
    pub version: u32,
    /// How often the leader commits the log, in seconds.
    pub commit_interval_secs: u64,
    /// How many nodes vote in the raft group (1, 3 or 5).
    pub voters: u8,
    pub media: MediaConfig,
    pub encryption: EncryptionConfig,
    /// The STUN and TURN servers every node of the room uses (a node's
    /// own flags win). Absent: the public STUN servers
    /// ([`crate::ice::DEFAULT_STUN`]); `[]`: none (host candidates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<crate::ice::IceServer>>,
    /// Raft index of the settings change the values above come from (0:
    /// none; `skygit init` wrote them). A committer never replaces the
    /// file with settings older than these.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settings_index: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The layout version this build writes.
pub const LAYOUT_VERSION: u32 = 1;
/// The default commit interval: ten minutes.
pub const DEFAULT_COMMIT_INTERVAL_SECS: u64 = 600;
/// Bounds on the commit interval a room may set.
pub use skygit_consensus::model::{MAX_COMMIT_INTERVAL_SECS, MIN_COMMIT_INTERVAL_SECS};

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            version: LAYOUT_VERSION,
            commit_interval_secs: DEFAULT_COMMIT_INTERVAL_SECS,
            voters: 3,
            media: MediaConfig::default(),
            encryption: EncryptionConfig::default(),
            ice_servers: None,
            settings_index: 0,
        }
    }
}

impl RoomConfig {
    /// The file's bytes: pretty JSON with a final newline, fields in a
    /// fixed order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// This config with the values the room's log has set.
    pub fn with_settings(&self, s: &skygit_consensus::model::RoomSettings) -> Self {
        let mut c = self.clone();
        if let Some(i) = s.commit_interval_secs {
            c.commit_interval_secs = i;
        }
        if let Some(v) = s.voters {
            c.voters = v;
        }
        if s.changed_index > 0 {
            c.settings_index = s.changed_index;
        }
        c
    }

    /// Parses and checks `config.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LayoutError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(LayoutError::TooLarge {
                path: CONFIG_PATH.into(),
                size: bytes.len(),
                max: MAX_CONFIG_BYTES,
            });
        }
        let c: RoomConfig =
            serde_json::from_slice(bytes).map_err(|e| LayoutError::BadConfig(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values are ones this build can honour.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.version != LAYOUT_VERSION {
            return Err(LayoutError::BadConfig(format!(
                "layout version {} is not supported (this build reads {LAYOUT_VERSION})",
                self.version
            )));
        }
        if !(MIN_COMMIT_INTERVAL_SECS..=MAX_COMMIT_INTERVAL_SECS)
            .contains(&self.commit_interval_secs)
        {
            return Err(LayoutError::BadConfig(format!(
                "commit_interval_secs {} is outside {MIN_COMMIT_INTERVAL_SECS}..={MAX_COMMIT_INTERVAL_SECS}",
                self.commit_interval_secs
            )));
        }
        if let Some(servers) = &self.ice_servers {
            crate::ice::validate(servers)
                .map_err(|e| LayoutError::BadConfig(format!("ice_servers: {e}")))?;
        }
        self.media.validate().map_err(LayoutError::BadConfig)?;
        if !skygit_consensus::model::VOTER_COUNTS.contains(&self.voters) {
            return Err(LayoutError::BadConfig(format!(
                "voters {} must be 1, 3 or 5",
                self.voters
            )));
        }
        Ok(())
    }
}

/// One line of a batch file, as JSON. Field order is the byte order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    index: u64,
    term: u64,
    kind: LineKind,
    conversation: ConversationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<Ulid>,
    request: Ulid,
    sender: UserId,
    at: i64,
    /// `at` for people; ignored when read back.
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    /// A post's files (metadata; the bytes are in the room's attachment
    /// storage, named by their SHA-256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment>,
    /// A call entry: started, joined, left or how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call: Option<CallEntry>,
    /// The author's SSH signature of the change (base64, one line): see
    /// [`crate::identity::change_statement`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LineKind {
    Post,
    Edit,
    Delete,
    Conversation,
    Call,
}

fn to_line(c: &Change) -> Line {
    let mut attachments = Vec::new();
    let mut call = None;
    let (kind, message, content, title) = match &c.kind {
        ChangeKind::Post {
            message,
            content,
            attachments: files,
        } => {
            attachments = files.clone();
            (LineKind::Post, Some(*message), Some(content.clone()), None)
        }
        ChangeKind::Edit { message, content } => {
            (LineKind::Edit, Some(*message), Some(content.clone()), None)
        }
        ChangeKind::Delete { message } => (LineKind::Delete, Some(*message), None, None),
        ChangeKind::CreateConversation { title } => {
            (LineKind::Conversation, None, None, Some(title.clone()))
        }
        ChangeKind::Call { message, entry } => {
            call = Some(entry.clone());
            (LineKind::Call, Some(*message), None, None)
        }
    };
    Line {
        index: c.index,
        term: c.term,
        kind,
        conversation: c.conversation.clone(),
        message,
        request: c.request,
        sender: c.sender.clone(),
        at: c.at,
        time: utc(c.at).to_rfc3339_opts(SecondsFormat::Millis, true),
        content,
        title,
        attachments,
        call,
        signature: c.signature.clone(),
    }
}

fn from_line(l: Line) -> Result<Change, String> {
    let need_message = || {
        l.message
            .ok_or_else(|| format!("a {:?} line needs \"message\"", l.kind))
    };
    let need_content = || {
        let c = l
            .content
            .clone()
            .ok_or_else(|| format!("a {:?} line needs \"content\"", l.kind))?;
        if c.len() > MAX_CONTENT_BYTES {
            return Err(format!(
                "content is {} bytes, more than {MAX_CONTENT_BYTES}",
                c.len()
            ));
        }
        Ok(c)
    };
    let kind = match l.kind {
        LineKind::Post => {
            let message = need_message()?;
            if message != l.request {
                return Err("a post's message id must be its request id".into());
            }
            skygit_consensus::attachment::validate_all(&l.attachments)
                .map_err(|e| e.to_string())?;
            ChangeKind::Post {
                message,
                content: need_content()?,
                attachments: l.attachments.clone(),
            }
        }
        LineKind::Edit => ChangeKind::Edit {
            message: need_message()?,
            content: need_content()?,
        },
        LineKind::Delete => ChangeKind::Delete {
            message: need_message()?,
        },
        LineKind::Conversation => {
            let title = l
                .title
                .clone()
                .ok_or("a conversation line needs \"title\"")?;
            if title.len() > MAX_TITLE_BYTES {
                return Err(format!("title is more than {MAX_TITLE_BYTES} bytes"));
            }
            ChangeKind::CreateConversation { title }
        }
        LineKind::Call => {
            let message = need_message()?;
            if message != l.request {
                return Err("a call line's message id must be its request id".into());
            }
            let entry = l.call.clone().ok_or("a call line needs \"call\"")?;
            entry.validate().map_err(|e| e.to_string())?;
            ChangeKind::Call { message, entry }
        }
    };
    if l.call.is_some() && l.kind != LineKind::Call {
        return Err(format!("a {:?} line has no \"call\"", l.kind));
    }
    if let Some(sig) = &l.signature {
        skygit_consensus::model::check_signature(sig).map_err(|e| e.to_string())?;
    }
    Ok(Change {
        index: l.index,
        term: l.term,
        request: l.request,
        sender: l.sender,
        at: l.at,
        conversation: l.conversation,
        kind,
        signature: l.signature,
    })
}

/// The UTC time of a millisecond timestamp; out-of-range stamps clamp to
/// the epoch so rendering never fails.
fn utc(at_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at_ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// One commit's worth of rendered changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Files to add, sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
    pub first_index: u64,
    pub last_index: u64,
    /// Term of the last change.
    pub last_term: u64,
    pub changes: usize,
    pub message: String,
    /// Commit time: the last change's timestamp, in seconds.
    pub time_secs: i64,
}

/// A UTC calendar day: year, month, day.
type Day = (i32, u32, u32);

/// The path of the batch file holding `changes` (one conversation, one
/// day, ascending indexes).
fn batch_path(
    conversation: &ConversationId,
    day: (i32, u32, u32),
    first: u64,
    last: u64,
) -> String {
    let (y, m, d) = day;
    format!("{MESSAGES_DIR}/{conversation}/{y:04}/{m:02}/{d:02}/{first:012}-{last:012}.jsonl")
}

/// Renders `changes` (ascending, distinct indexes) into one commit's files
/// and message, or `None` when there is nothing to write.
pub fn render(changes: &[Change]) -> Option<Batch> {
    let first = changes.first()?;
    let last = changes.last()?;
    let mut groups: BTreeMap<(&ConversationId, Day), Vec<&Change>> = BTreeMap::new();
    let mut senders: BTreeMap<&UserId, usize> = BTreeMap::new();
    for c in changes {
        let t = utc(c.at);
        groups
            .entry((&c.conversation, (t.year(), t.month(), t.day())))
            .or_default()
            .push(c);
        *senders.entry(&c.sender).or_default() += 1;
    }
    let mut files = Vec::new();
    for ((conversation, day), group) in groups {
        let mut body = Vec::new();
        let mut lines = 0usize;
        let mut start = group[0].index;
        let mut end = start;
        for c in group {
            if lines > 0 && (lines >= MAX_BATCH_LINES || body.len() >= BATCH_SPLIT_BYTES) {
                files.push((
                    batch_path(conversation, day, start, end),
                    std::mem::take(&mut body),
                ));
                lines = 0;
                start = c.index;
            }
            // A line of checked names, numbers and strings always serialises.
            if serde_json::to_writer(&mut body, &to_line(c)).is_err() {
                continue;
            }
            body.push(b'\n');
            lines += 1;
            end = c.index;
        }
        if lines > 0 {
            files.push((batch_path(conversation, day, start, end), body));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut by_count: Vec<(&UserId, usize)> = senders.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    const SHOWN: usize = 20;
    let mut summary: Vec<String> = by_count
        .iter()
        .take(SHOWN)
        .map(|(u, n)| format!("{u}={n}"))
        .collect();
    if by_count.len() > SHOWN {
        summary.push(format!("+{} more", by_count.len() - SHOWN));
    }
    let n = changes.len();
    let message = format!(
        "skygit: {n} change{} at raft index {}..={}\n\n\
         Raft-First-Index: {}\n\
         Raft-Last-Index: {}\n\
         Raft-Term: {}\n\
         Skygit-Changes: {n}\n\
         Skygit-Senders: {}\n",
        if n == 1 { "" } else { "s" },
        first.index,
        last.index,
        first.index,
        last.index,
        last.term,
        summary.join(", "),
    );
    Some(Batch {
        files,
        first_index: first.index,
        last_index: last.index,
        last_term: last.term,
        changes: n,
        message,
        time_secs: last.at.div_euclid(1000).max(0),
    })
}

/// The message of a commit that writes only the room's settings (set at
/// raft index `settings_index`) into `config.json`; the log's watermark
/// stays where the parent commit left it.
pub fn settings_message(config: &RoomConfig, watermark: u64, settings_index: u64) -> String {
    format!(
        "skygit: room settings: commit interval {} s, {} voters\n\n\
         Raft-Last-Index: {watermark}\n\
         Skygit-Settings-Index: {settings_index}\n",
        config.commit_interval_secs, config.voters
    )
}

/// The message of the commit that writes a room's first `config.json`.
pub fn init_message() -> String {
    "skygit: create the room\n\nRaft-Last-Index: 0\n".to_owned()
}

/// The message of the commit by which node `id` claims the founding of
/// the room's raft group of `epoch` (it changes no file), on a branch
/// whose log reaches `watermark` (kept, so watermarks never fall). A
/// later epoch's founding also names the group's `base`: its entries are
/// numbered from `base + 1` in the room's sequence.
pub fn founding_message(id: u64, epoch: u64, base: u64, watermark: u64) -> String {
    let mut message = with_epoch(
        format!(
            "skygit: node {id} starts the room's raft group\n\n\
             Raft-Last-Index: {watermark}\nGroup-Founder: {id}\n"
        ),
        epoch,
    );
    if epoch > 0 {
        message.push_str(&format!("Group-Base: {base}\n"));
    }
    message
}

/// The base a founding commit names (0 for the first group's, or when it
/// names none).
pub fn group_base(message: &str) -> u64 {
    trailer(message, "Group-Base")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The founding message of a room that verifies identities: also names
/// the founder's user and carries its SSH signature of
/// [`crate::identity::founding_claim`] (the armor's base64, one line).
pub fn signed_founding_message(
    id: u64,
    epoch: u64,
    base: u64,
    watermark: u64,
    user: &str,
    signature: &str,
) -> String {
    format!(
        "{}Group-Founder-User: {user}\nGroup-Founder-Signature: {}\n",
        founding_message(id, epoch, base, watermark),
        crate::identity::unarmor(signature)
    )
}

/// The epoch of the raft group that made a commit (its `Group-Epoch`
/// trailer). Every commit on the branch carries the epoch of the group
/// whose founding precedes it; the first group's (epoch 0) carry none, so
/// a commit without the trailer, or with one that is not a number, is of
/// epoch 0.
pub fn group_epoch(message: &str) -> u64 {
    trailer(message, "Group-Epoch")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `message` (whose last paragraph holds its trailers) marked as made by
/// the group of `epoch`; epoch 0 leaves it as it is.
pub fn with_epoch(mut message: String, epoch: u64) -> String {
    if epoch > 0 {
        if !message.ends_with('\n') {
            message.push('\n');
        }
        message.push_str(&format!("Group-Epoch: {epoch}\n"));
    }
    message
}

/// The node a founding commit names, if `message` is one.
pub fn founder(message: &str) -> Option<u64> {
    trailer(message, "Group-Founder")?.parse().ok()
}

/// A founding commit's signed claim: its user and armored signature.
pub fn founder_signature(message: &str) -> Option<(&str, String)> {
    let user = trailer(message, "Group-Founder-User")?;
    let sig = trailer(message, "Group-Founder-Signature")?;
    Some((user, crate::identity::armor(sig)))
}

/// The raft watermark a commit message records: `Raft-Last-Index`, or
/// `None` when the message has no such trailer (a commit not made by the
/// committer).
pub fn watermark(message: &str) -> Option<u64> {
    trailer(message, "Raft-Last-Index")?.parse().ok()
}

/// The value of trailer `key` in the last paragraph of `message`.
pub fn trailer<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    let end = floor_char_boundary(message, MAX_COMMIT_MESSAGE_BYTES);
    let message = message[..end].trim_end();
    let last_paragraph = message.rsplit("\n\n").next()?;
    last_paragraph.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What a batch file's path says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPath {
    pub conversation: ConversationId,
    pub first: u64,
    pub last: u64,
}

/// Parses `.messages/<conversation>/<yyyy>/<mm>/<dd>/<first>-<last>.jsonl`.
pub fn parse_batch_path(path: &str) -> Result<BatchPath, LayoutError> {
    let bad = |reason: &str| LayoutError::BadPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = path
        .strip_prefix(MESSAGES_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| bad("outside .messages/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(bad("empty, '.' or '..' component"));
    }
    let [conv, y, m, d, file] = parts.as_slice() else {
        return Err(bad(
            "expected <conversation>/<yyyy>/<mm>/<dd>/<first>-<last>.jsonl",
        ));
    };
    let conversation = ConversationId::new(*conv)
        .map_err(|e: ValidationError| bad(&format!("conversation: {e}")))?;
    let num = |s: &str, len: usize, what: &str| -> Result<u32, LayoutError> {
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{what} must be {len} digits")));
        }
        s.parse().map_err(|_| bad(what))
    };
    num(y, 4, "year")?;
    let month = num(m, 2, "month")?;
    let day = num(d, 2, "day")?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad("no such date"));
    }
    let stem = file
        .strip_suffix(".jsonl")
        .ok_or_else(|| bad("not a .jsonl file"))?;
    let (a, b) = stem
        .split_once('-')
        .ok_or_else(|| bad("file name must be <first>-<last>.jsonl"))?;
    let index = |s: &str| -> Result<u64, LayoutError> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("indexes must be decimal numbers"));
        }
        s.parse().map_err(|_| bad("index out of range"))
    };
    let (first, last) = (index(a)?, index(b)?);
    if first == 0 || first > last {
        return Err(bad("first index must be positive and not above the last"));
    }
    Ok(BatchPath {
        conversation,
        first,
        last,
    })
}

/// Parses and checks one batch file: every line a valid change of the
/// file's conversation, indexes strictly ascending from the file name's
/// first to its last.
pub fn parse_batch(path: &str, bytes: &[u8]) -> Result<Vec<Change>, LayoutError> {
    let meta = parse_batch_path(path)?;
    if bytes.len() > MAX_BATCH_FILE_BYTES {
        return Err(LayoutError::TooLarge {
            path: path.to_owned(),
            size: bytes.len(),
            max: MAX_BATCH_FILE_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| LayoutError::BadFile {
        path: path.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let mut out: Vec<Change> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let bad = |reason: String| LayoutError::BadLine {
            path: path.to_owned(),
            line: n + 1,
            reason,
        };
        if out.len() >= MAX_BATCH_LINES {
            return Err(bad(format!("more than {MAX_BATCH_LINES} lines")));
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let change = from_line(line).map_err(bad)?;
        if change.conversation != meta.conversation {
            return Err(bad(format!(
                "conversation {} in the folder of {}",
                change.conversation, meta.conversation
            )));
        }
        if change.index < meta.first || change.index > meta.last {
            return Err(bad(format!(
                "index {} outside the file's range {}..={}",
                change.index, meta.first, meta.last
            )));
        }
        if let Some(prev) = out.last() {
            if change.index <= prev.index {
                return Err(bad(format!(
                    "index {} does not follow {}",
                    change.index, prev.index
                )));
            }
        } else if change.index != meta.first {
            return Err(bad(format!(
                "the first line has index {}, the file name says {}",
                change.index, meta.first
            )));
        }
        out.push(change);
    }
    match out.last() {
        None => Err(LayoutError::BadFile {
            path: path.to_owned(),
            reason: "empty batch file".into(),
        }),
        Some(l) if l.index != meta.last => Err(LayoutError::BadFile {
            path: path.to_owned(),
            reason: format!(
                "the last line has index {}, the file name says {}",
                l.index, meta.last
            ),
        }),
        Some(_) => Ok(out),
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
