//! Read access to a room's chat state for the API, CLI and tests.

use rocksdb::{Direction, IteratorMode};
use skygit_consensus::codec;
use skygit_consensus::model::{Change, Conversation, ConversationId, MessageRecord, RoomSettings};
use skygit_consensus::types::LogId;
use ulid::Ulid;

use crate::db::{
    index_from_key, index_key, message_key, split_message_key, RoomDb, StorageError,
    CF_CONVERSATIONS, CF_JOURNAL, CF_MESSAGES, CF_SM_META, CF_SYNCED,
};
use crate::state_machine::{read_message, read_settings, synced_up_to, KEY_LAST_APPLIED};

/// Most records one read returns.
pub const MAX_PAGE: usize = 1000;

/// Reads a room's state machine.
#[derive(Clone, Debug)]
pub struct ChatReader {
    db: RoomDb,
}

impl ChatReader {
    pub(crate) fn new(db: RoomDb) -> Self {
        Self { db }
    }

    /// The last log id applied to the state machine.
    pub fn last_applied(&self) -> Result<Option<LogId>, StorageError> {
        self.db.get_decoded(CF_SM_META, KEY_LAST_APPLIED)
    }

    /// The raft group the state belongs to.
    pub fn group(&self) -> Result<crate::GroupRecord, StorageError> {
        self.db.group()
    }

    /// The room's settings as the log has set them.
    pub fn settings(&self) -> Result<RoomSettings, StorageError> {
        read_settings(&self.db)
    }

    /// A message by id.
    pub fn message(&self, id: Ulid) -> Result<Option<MessageRecord>, StorageError> {
        read_message(&self.db, id)
    }

    /// Messages of `conversation` with index in `(after, before)`, oldest
    /// first; with only `before` given, the newest `limit` before it.
    pub fn messages(
        &self,
        conversation: &ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        // One more than a page, so a caller can tell whether more follow.
        let limit = limit.min(MAX_PAGE + 1);
        let cf = self.db.cf(CF_MESSAGES)?;
        let conv = conversation.as_str();
        let mut out = Vec::new();
        let prefix_ok = |k: &[u8]| -> Result<Option<u64>, StorageError> {
            let (c, i) = split_message_key(k)?;
            Ok((c == conv.as_bytes()).then_some(i))
        };
        match after {
            Some(a) => {
                let start = message_key(conv, a.saturating_add(1));
                for item in self
                    .db
                    .db
                    .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
                {
                    let (k, v) = item?;
                    let Some(i) = prefix_ok(&k)? else { break };
                    if before.is_some_and(|b| i >= b) || out.len() >= limit {
                        break;
                    }
                    out.push(codec::from_bytes(&v)?);
                }
            }
            None => {
                let start = message_key(conv, before.unwrap_or(u64::MAX).saturating_sub(1));
                for item in self
                    .db
                    .db
                    .iterator_cf(cf, IteratorMode::From(&start, Direction::Reverse))
                {
                    let (k, v) = item?;
                    let Some(_) = prefix_ok(&k)? else { break };
                    if out.len() >= limit {
                        break;
                    }
                    out.push(codec::from_bytes(&v)?);
                }
                out.reverse();
            }
        }
        Ok(out)
    }

    /// Every message of the room in log order (for tests and small rooms;
    /// the API pages with [`ChatReader::messages`]).
    pub fn all_messages(&self) -> Result<Vec<MessageRecord>, StorageError> {
        let mut out: Vec<MessageRecord> = Vec::new();
        for item in self
            .db
            .db
            .iterator_cf(self.db.cf(CF_MESSAGES)?, IteratorMode::Start)
        {
            out.push(codec::from_bytes(&item?.1)?);
        }
        out.sort_by_key(|m| m.index);
        Ok(out)
    }

    /// The ids of every message of the room, in log order.
    pub fn all_message_ids(&self) -> Result<Vec<Ulid>, StorageError> {
        Ok(self
            .all_messages()?
            .into_iter()
            .map(|m| m.message.id)
            .collect())
    }

    /// The room's conversations, by name.
    pub fn conversations(&self) -> Result<Vec<Conversation>, StorageError> {
        let mut out = Vec::new();
        for item in self
            .db
            .db
            .iterator_cf(self.db.cf(CF_CONVERSATIONS)?, IteratorMode::Start)
        {
            out.push(codec::from_bytes(&item?.1)?);
        }
        Ok(out)
    }

    /// A conversation by id, if it exists.
    pub fn conversation(&self, id: &ConversationId) -> Result<Option<Conversation>, StorageError> {
        self.db
            .get_decoded(CF_CONVERSATIONS, id.as_str().as_bytes())
    }

    /// The highest log index known to be in the repository (0 if none).
    pub fn synced_up_to(&self) -> Result<u64, StorageError> {
        synced_up_to(&self.db)
    }

    /// The commit that holds log index `index`, when it is synced.
    pub fn commit_for(&self, index: u64) -> Result<Option<String>, StorageError> {
        Ok(self.commit_covering(index)?.map(|(_, sha)| sha))
    }

    /// The first commit whose watermark is at or above `index`, with that
    /// watermark: every index from `index` up to it is in that commit.
    pub fn commit_covering(&self, index: u64) -> Result<Option<(u64, String)>, StorageError> {
        let start = index_key(index);
        match self
            .db
            .db
            .iterator_cf(
                self.db.cf(CF_SYNCED)?,
                IteratorMode::From(&start, Direction::Forward),
            )
            .next()
        {
            Some(item) => {
                let (k, v) = item?;
                let up_to = index_from_key(&k)?;
                Ok(Some((up_to, String::from_utf8_lossy(&v).into_owned())))
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` journaled changes (applied, not yet known to be in the
    /// repository) with index above `after`, in index order. Unlike the
    /// raft log, the journal is never purged by a snapshot: it is part of
    /// the state and shrinks only when a `synced` record covers it.
    pub fn journal(&self, after: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
        let start = index_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.db.iterator_cf(
            self.db.cf(CF_JOURNAL)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            if out.len() >= limit {
                break;
            }
            out.push(codec::from_bytes(&item?.1)?);
        }
        Ok(out)
    }
}
