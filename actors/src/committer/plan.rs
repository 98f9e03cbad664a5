//! The committer's decisions as pure functions: whether a head can be
//! written on ([`check_head`]), what one round of a flush writes
//! ([`plan_round`]) and whether a failed commit is read again
//! ([`rereads`]).
//! The [`Flusher`](super::Flusher) reads the head, the journal and the
//! settings, asks these, and carries the answer out; the unit tests below
//! check each rule on its own.
//!
//! The rules:
//!
//! - A repository whose watermark is behind what the room recorded as
//!   synced was rewound: with a head this committer remembered, another
//!   leader wrote since (read the branch again); with a head just read,
//!   refuse (writing would leave a gap).
//! - The journal above the watermark is one commit (at most
//!   [`MAX_CHANGES_PER_COMMIT`](super::MAX_CHANGES_PER_COMMIT) changes;
//!   a longer backlog takes more rounds), with `config.json` when the
//!   settings changed; changed settings alone are a commit on the same
//!   watermark; nothing at all finishes the flush, recording the
//!   watermark when the room has not recorded it yet.
//! - After a commit: success finishes (or goes round again when the
//!   journal filled the commit); a lost compare-and-swap or an unknown
//!   outcome re-reads the branch (never repeats the write); anything else
//!   fails the flush.

use skygit_consensus::model::{Change, RoomSettings};

use super::{CommitterError, MAX_CHANGES_PER_COMMIT};
use crate::layout::{self, RoomConfig};
use crate::ports::{CommitRequest, RepoError};

/// What one round knows.
#[derive(Debug, Clone)]
pub struct Round<'a> {
    /// The branch head and its watermark.
    pub head_sha: &'a str,
    pub watermark: u64,
    /// The head is the one this committer remembered, not one just read.
    pub from_cache: bool,
    /// What the room recorded as synced.
    pub synced: u64,
    /// The epoch of this committer's group (its commits carry it).
    pub epoch: u64,
    /// The journal above the watermark (at most one commit's worth).
    pub changes: &'a [Change],
    pub settings: &'a RoomSettings,
    /// `config.json` to write with this round, when the settings changed.
    pub new_config: Option<&'a RoomConfig>,
}

/// What one round does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Read the branch again (another leader wrote since).
    Reread,
    /// Refuse: the branch was rewound.
    Fail(CommitterError),
    /// Nothing to write; record `record` as synced first when set.
    Done { record: Option<u64> },
    /// Commit `req`; it holds the changes `first..=last` (`changes` of
    /// them: 0 for settings alone) and `config.json` when `settings`.
    Commit {
        req: CommitRequest,
        first: u64,
        last: u64,
        changes: usize,
        settings: bool,
        /// The journal filled the commit: more may follow.
        more: bool,
    },
}

/// Whether a round can go on from a head at `watermark` (`None`), before
/// anything else is read: a head behind the room's synced record was
/// rewound, or is a stale memory of this committer's.
pub fn check_head(watermark: u64, synced: u64, from_cache: bool) -> Option<Plan> {
    if watermark >= synced {
        return None;
    }
    Some(if from_cache {
        Plan::Reread
    } else {
        Plan::Fail(CommitterError::Rewound {
            repo: watermark,
            room: synced,
        })
    })
}

/// Whether this committer, of a group of `epoch`, may write on a head made
/// by a group of `head_epoch`: never after a newer group's founding (the
/// compare-and-swap alone would let it write on top once it re-read the
/// head).
pub fn check_epoch(head_epoch: u64, epoch: u64) -> Option<Plan> {
    (head_epoch > epoch).then_some(Plan::Fail(CommitterError::Superseded {
        head: head_epoch,
        ours: epoch,
    }))
}

/// Plans one round.
pub fn plan_round(r: &Round<'_>) -> Plan {
    if let Some(p) = check_head(r.watermark, r.synced, r.from_cache) {
        return p;
    }
    let config_file = r
        .new_config
        .map(|c| (layout::CONFIG_PATH.to_owned(), c.to_bytes()));
    let more = r.changes.len() >= MAX_CHANGES_PER_COMMIT;
    match (layout::render(r.changes), r.new_config) {
        (Some(mut b), _) => {
            if let Some(f) = config_file {
                b.files.push(f);
                b.files.sort_by(|x, y| x.0.cmp(&y.0));
            }
            Plan::Commit {
                req: CommitRequest {
                    expected_head: Some(r.head_sha.to_owned()),
                    files: b.files,
                    message: layout::with_epoch(b.message, r.epoch),
                    time_secs: b.time_secs,
                },
                first: b.first_index,
                last: b.last_index,
                changes: b.changes,
                settings: r.new_config.is_some(),
                more,
            }
        }
        (None, Some(c)) => Plan::Commit {
            req: CommitRequest {
                expected_head: Some(r.head_sha.to_owned()),
                files: config_file.into_iter().collect(),
                message: layout::with_epoch(
                    layout::settings_message(c, r.watermark, r.settings.changed_index),
                    r.epoch,
                ),
                time_secs: r.settings.changed_at.div_euclid(1000).max(0),
            },
            first: r.watermark,
            last: r.watermark,
            changes: 0,
            settings: true,
            more: false,
        },
        (None, None) => Plan::Done {
            record: (r.watermark > r.synced).then_some(r.watermark),
        },
    }
}

/// Whether a failed commit is followed by a fresh read of the branch (and
/// another round): it lost the compare-and-swap, or its outcome is unknown
/// and the head read tells whether it landed. Any other error fails the
/// flush. A commit is never repeated blindly.
pub fn rereads(e: &CommitterError) -> bool {
    matches!(
        e,
        CommitterError::Repo(RepoError::Conflict | RepoError::Unknown(_))
            | CommitterError::Timeout(_)
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
