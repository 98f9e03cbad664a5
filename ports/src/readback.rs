//! Read-back: a room's history loaded from its repository alone, for a node
//! with an empty disk (offline reading, and later the seed of a re-formed
//! group).
//!
//! The branch's first-parent history gives each commit's watermark (its
//! `Raft-Last-Index` trailer); the batch files under `.messages/` give the
//! changes; a change's git hash is the first commit whose watermark covers
//! its index. The changes are replayed through the same chat logic the
//! state machine runs, so the messages come out exactly as a node that
//! lived through them holds them.
//!
//! Everything is checked before anything is returned: one bad file (broken
//! JSON, too large, wrong indexes, a path or entry that does not belong)
//! fails the whole load with an error naming the file and line, so a
//! hostile repository can never half-load into local state.

use std::collections::BTreeMap;

use skygit_consensus::chat::MemChat;
use skygit_consensus::model::{ApplyOutcome, Change, ChatRequest, Conversation, MessageRecord};

use crate::layout::{self, LayoutError, RoomConfig};
use crate::{EntryKind, RepoError, RepoHead, RepoRemote};

/// Bounds on what one load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadbackLimits {
    pub max_commits: usize,
    pub max_files: usize,
}

impl Default for ReadbackLimits {
    fn default() -> Self {
        Self {
            max_commits: 100_000,
            max_files: 100_000,
        }
    }
}

/// Problems reported per load before giving up on listing more.
const MAX_REPORTED: usize = 20;

/// Why a room's history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error("repository: {0}")]
    Repo(#[from] RepoError),
    #[error("the repository holds {} bad file(s): {}", .0.len(), join(.0))]
    Layout(Vec<LayoutError>),
    #[error("the repository's history is inconsistent: {0}")]
    Inconsistent(String),
}

fn join(errors: &[LayoutError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A message as the repository records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub record: MessageRecord,
    /// The commit holding the message's latest change.
    pub git_hash: String,
}

/// A room's history as read from its repository.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub head: Option<String>,
    /// `config.json`, when the repository has one.
    pub config: Option<RoomConfig>,
    /// The head's watermark: every change up to it is in the files.
    pub watermark: u64,
    /// Every change, by index, with the commit that wrote it.
    pub changes: Vec<(Change, String)>,
    /// Where each change is: its batch file and line (1-based), by index.
    pub lines: BTreeMap<u64, (String, usize)>,
    /// Messages in log order.
    pub messages: Vec<ArchivedMessage>,
    pub conversations: Vec<Conversation>,
}

fn request_of(c: &Change) -> ChatRequest {
    c.request()
}

/// Loads the history of the room whose repository is `remote`.
pub async fn load(
    remote: &dyn RepoRemote,
    limits: ReadbackLimits,
) -> Result<History, ReadbackError> {
    let Some(head) = remote.head().await? else {
        return Ok(History::default());
    };
    // Watermarks along first parents, oldest first.
    let commits = remote.history(&head.commit_sha, limits.max_commits).await?;
    let mut marks: Vec<(u64, String)> = Vec::new();
    for c in commits.iter().rev() {
        if let Some(w) = layout::watermark(&c.message) {
            if marks.last().is_some_and(|(prev, _)| w < *prev) {
                return Err(ReadbackError::Inconsistent(format!(
                    "commit {} lowers the watermark to {w}",
                    c.sha
                )));
            }
            marks.push((w, c.sha.clone()));
        }
    }
    let watermark = marks.last().map(|m| m.0).unwrap_or(0);

    let entries = remote
        .list(&head.commit_sha, layout::MESSAGES_DIR, limits.max_files)
        .await?;
    let mut problems = Vec::new();
    let mut config = None;
    let mut by_index: BTreeMap<u64, Change> = BTreeMap::new();
    let mut lines: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    let mut pointers: BTreeMap<skygit_consensus::model::ContentHash, (u64, String)> =
        BTreeMap::new();
    for e in entries {
        if problems.len() >= MAX_REPORTED {
            break;
        }
        let bad_file = |reason: &str| LayoutError::BadFile {
            path: e.path.clone(),
            reason: reason.to_owned(),
        };
        if e.kind != EntryKind::File {
            problems.push(bad_file("not a regular file (a link or submodule)"));
            continue;
        }
        if e.path == layout::CONFIG_PATH {
            let bytes = read_bounded(remote, &e.id, &e.path, layout::MAX_CONFIG_BYTES).await?;
            match bytes.map(|b| RoomConfig::from_bytes(&b)) {
                Ok(Ok(c)) => config = Some(c),
                Ok(Err(err)) | Err(err) => problems.push(err),
            }
            continue;
        }
        if e.path == crate::members::ALLOWED_SIGNERS_PATH {
            // The members file is read where members are checked; here it
            // only has to be sound.
            let bytes = read_bounded(
                remote,
                &e.id,
                &e.path,
                crate::members::MAX_ALLOWED_SIGNERS_BYTES,
            )
            .await?;
            match bytes {
                Ok(b) => {
                    if let Err(err) = crate::members::AllowedSigners::parse(&b) {
                        problems.push(bad_file(&err.to_string()));
                    }
                }
                Err(err) => problems.push(err),
            }
            continue;
        }
        match crate::media::classify(&e.path) {
            None => {}
            Some(Err(err)) => {
                problems.push(bad_file(&err.to_string()));
                continue;
            }
            Some(Ok(crate::media::MediaPath::Pointer(oid))) => {
                // A pointer must name the object its path names; the
                // sizes are checked against the lines below.
                let bytes =
                    read_bounded(remote, &e.id, &e.path, crate::media::MAX_POINTER_BYTES).await?;
                match bytes.map(|b| crate::media::parse_lfs_pointer(&b)) {
                    Ok(Ok((named, size))) if named == oid => {
                        pointers.insert(oid, (size, e.path.clone()));
                    }
                    Ok(Ok((named, _))) => problems.push(bad_file(&format!(
                        "the pointer names object {named}, not {oid}"
                    ))),
                    Ok(Err(err)) => problems.push(bad_file(&err.to_string())),
                    Err(err) => problems.push(err),
                }
                continue;
            }
            Some(Ok(_)) => continue,
        }
        if let Err(err) = layout::parse_batch_path(&e.path) {
            problems.push(err);
            continue;
        }
        let bytes = match read_bounded(remote, &e.id, &e.path, layout::MAX_BATCH_FILE_BYTES).await?
        {
            Ok(b) => b,
            Err(err) => {
                problems.push(err);
                continue;
            }
        };
        match layout::parse_batch(&e.path, &bytes) {
            Ok(changes) => {
                for (i, c) in changes.into_iter().enumerate() {
                    if c.index > watermark {
                        problems.push(bad_file(&format!(
                            "index {} is above the head's watermark {watermark}",
                            c.index
                        )));
                        break;
                    }
                    if by_index.contains_key(&c.index) {
                        problems.push(bad_file(&format!(
                            "index {} appears in another file too",
                            c.index
                        )));
                        break;
                    }
                    lines.insert(c.index, (e.path.clone(), i + 1));
                    by_index.insert(c.index, c);
                }
            }
            Err(err) => problems.push(err),
        }
    }
    // A pointer's size is the one its post names.
    for c in by_index.values() {
        if let skygit_consensus::model::ChangeKind::Post { attachments, .. } = &c.kind {
            for a in attachments {
                if let Some((size, path)) = pointers.get(&a.sha256) {
                    if *size != a.size {
                        problems.push(LayoutError::BadFile {
                            path: path.clone(),
                            reason: format!(
                                "the pointer says {size} bytes; message {} names {} bytes",
                                c.request, a.size
                            ),
                        });
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ReadbackError::Layout(problems));
    }

    let mut chat = MemChat::default();
    let mut changes = Vec::with_capacity(by_index.len());
    for (index, change) in by_index {
        let sha = match marks.iter().find(|(w, _)| *w >= index) {
            Some((_, sha)) => sha.clone(),
            None => {
                return Err(ReadbackError::Inconsistent(format!(
                    "no commit's watermark covers index {index}"
                )))
            }
        };
        match chat.apply(index, &request_of(&change)) {
            ApplyOutcome::Applied { .. } => {}
            other => {
                return Err(ReadbackError::Inconsistent(format!(
                    "the change at index {index} does not replay: {other:?}"
                )))
            }
        }
        changes.push((change, sha));
    }
    let hash_of = |index: u64| {
        changes
            .binary_search_by_key(&index, |(c, _)| c.index)
            .ok()
            .map(|i| changes[i].1.clone())
            .unwrap_or_default()
    };
    let mut messages: Vec<ArchivedMessage> = chat
        .messages
        .into_values()
        .map(|record| ArchivedMessage {
            git_hash: hash_of(record.last_change_index),
            record,
        })
        .collect();
    messages.sort_by_key(|m| m.record.index);
    Ok(History {
        head: Some(head.commit_sha),
        config,
        watermark,
        changes,
        lines,
        messages,
        conversations: chat.conversations.into_values().collect(),
    })
}

/// The changes with index in `(after, upto]` in the batch files at
/// `head`, in index order: what a node that applied up to `after` is
/// missing of the repository's log up to its watermark `upto`. Only files
/// whose index range reaches above `after` are read; each is bounded and
/// checked as [`load`] checks it, and an index twice is an error.
pub async fn changes_between(
    remote: &dyn RepoRemote,
    head: &RepoHead,
    after: u64,
    upto: u64,
    limits: ReadbackLimits,
) -> Result<Vec<Change>, ReadbackError> {
    let mut by_index: BTreeMap<u64, Change> = BTreeMap::new();
    if upto <= after {
        return Ok(Vec::new());
    }
    let entries = remote
        .list(&head.commit_sha, layout::MESSAGES_DIR, limits.max_files)
        .await?;
    for e in entries {
        let Ok(range) = layout::parse_batch_path(&e.path) else {
            continue;
        };
        if range.last <= after || range.first > upto {
            continue;
        }
        if e.kind != EntryKind::File {
            return Err(ReadbackError::Layout(vec![LayoutError::BadFile {
                path: e.path.clone(),
                reason: "not a regular file (a link or submodule)".into(),
            }]));
        }
        let bytes = read_bounded(remote, &e.id, &e.path, layout::MAX_BATCH_FILE_BYTES)
            .await?
            .map_err(|err| ReadbackError::Layout(vec![err]))?;
        let changes =
            layout::parse_batch(&e.path, &bytes).map_err(|err| ReadbackError::Layout(vec![err]))?;
        for c in changes {
            if c.index <= after || c.index > upto {
                continue;
            }
            if by_index.contains_key(&c.index) {
                return Err(ReadbackError::Inconsistent(format!(
                    "index {} appears in two files",
                    c.index
                )));
            }
            by_index.insert(c.index, c);
        }
    }
    Ok(by_index.into_values().collect())
}

/// Commits searched for a watermark when the head was not made by skygit.
pub const MAX_WATERMARK_SEARCH: usize = 1000;

/// The watermark of `head`: its own trailer, or the newest trailer in its
/// history (a commit not made by skygit on the branch), 0 when none.
pub async fn watermark_of(remote: &dyn RepoRemote, head: &RepoHead) -> Result<u64, RepoError> {
    if let Some(w) = layout::watermark(&head.message) {
        return Ok(w);
    }
    let history = remote
        .history(&head.commit_sha, MAX_WATERMARK_SEARCH)
        .await?;
    Ok(history
        .iter()
        .find_map(|c| layout::watermark(&c.message))
        .unwrap_or(0))
}

/// The file at `path` (under `.messages/`) at `commit`, at most `max`
/// bytes: `None` when there is none, an inner error when it is there but
/// not a regular file or too large.
async fn file_at(
    remote: &dyn RepoRemote,
    commit: &str,
    path: &str,
    max: usize,
) -> Result<Option<Result<Vec<u8>, LayoutError>>, RepoError> {
    let entries = remote
        .list(
            commit,
            layout::MESSAGES_DIR,
            ReadbackLimits::default().max_files,
        )
        .await?;
    let Some(entry) = entries.iter().find(|e| e.path == path) else {
        return Ok(None);
    };
    if entry.kind != EntryKind::File {
        return Ok(Some(Err(LayoutError::BadFile {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        })));
    }
    Ok(Some(
        read_bounded(remote, &entry.id, &entry.path, max).await?,
    ))
}

/// The room's `config.json` at `commit`: `None` when there is none, an
/// inner error when it is there but unacceptable.
pub async fn config_at(
    remote: &dyn RepoRemote,
    commit: &str,
) -> Result<Option<Result<RoomConfig, LayoutError>>, RepoError> {
    Ok(file_at(
        remote,
        commit,
        layout::CONFIG_PATH,
        layout::MAX_CONFIG_BYTES,
    )
    .await?
    .map(|b| b.and_then(|b| RoomConfig::from_bytes(&b))))
}

/// A blob's bytes, or a layout problem when it is too large.
async fn read_bounded(
    remote: &dyn RepoRemote,
    id: &str,
    path: &str,
    max: usize,
) -> Result<Result<Vec<u8>, LayoutError>, RepoError> {
    match remote.read_blob(id, max).await {
        Ok(b) => Ok(Ok(b)),
        Err(RepoError::Invalid(reason)) => Ok(Err(LayoutError::BadFile {
            path: path.to_owned(),
            reason,
        })),
        Err(e) => Err(e),
    }
}

/// The room's members file at `commit`: `None` when there is none, an
/// inner error when it is there but unacceptable.
pub async fn members_at(
    remote: &dyn RepoRemote,
    commit: &str,
) -> Result<Option<Result<crate::members::AllowedSigners, String>>, RepoError> {
    use crate::members::{AllowedSigners, ALLOWED_SIGNERS_PATH, MAX_ALLOWED_SIGNERS_BYTES};
    Ok(file_at(
        remote,
        commit,
        ALLOWED_SIGNERS_PATH,
        MAX_ALLOWED_SIGNERS_BYTES,
    )
    .await?
    .map(|b| {
        b.map_err(|e| e.to_string())
            .and_then(|b| AllowedSigners::parse(&b).map_err(|e| e.to_string()))
    }))
}
