//! openraft's `RaftLogStorage` on RocksDB.
//!
//! Appends are written to RocksDB inside `append` (so they are readable at
//! once) and acknowledged to raft only after a dedicated sync thread has
//! fsynced the write-ahead log: nothing is acknowledged before it is
//! durable. The sync thread groups every append waiting at that moment into
//! one fsync (group commit) and completes their callbacks in order.
//! Votes are written with a synced write before `save_vote` returns.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use skygit_consensus::codec;
use skygit_consensus::types::{Entry, LogId, TypeConfig, Vote};

use crate::db::{index_from_key, index_key, RoomDb, StorageError, CF_LOG, CF_RAFT_META};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// The raft group's own records in `raft_meta` (not the format marker).
pub(crate) const GROUP_KEYS: [&[u8]; 3] = [KEY_VOTE, KEY_LAST_PURGED, KEY_COMMITTED];

/// Entries a single read returns at most (bounds memory per read).
const MAX_ENTRIES_PER_READ: usize = 4096;
/// Recently appended entries kept decoded in memory.
pub const RECENT_ENTRIES: usize = 8192;

/// Fault injection for proving the tests can fail: acknowledge appends
/// before the WAL is synced. Only the simulator's canaries use this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Synced,
    /// Acknowledge appends before they are durable (a planted bug).
    AckBeforeDurable,
}

/// The raft log of one room.
#[derive(Clone)]
pub struct LogStore {
    db: RoomDb,
    /// Appends waiting for the disk's next fsync.
    syncer: tokio::sync::mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
    durability: Durability,
    recent: Arc<Mutex<Recent>>,
}

/// The newest appended entries, decoded, with contiguous indexes: the
/// leader replicates from here instead of re-reading and re-decoding
/// RocksDB. It mirrors every append, truncation and purge, in order.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index())
    }

    fn push(&mut self, entry: Entry) {
        if let Some(last) = self.entries.back() {
            if last.index() + 1 != entry.index() {
                self.entries.clear();
            }
        }
        self.entries.push_back(entry);
        while self.entries.len() > RECENT_ENTRIES {
            self.entries.pop_front();
        }
    }

    fn truncate_after(&mut self, last: Option<u64>) {
        while self
            .entries
            .back()
            .is_some_and(|e| last.is_none_or(|l| e.index() > l))
        {
            self.entries.pop_back();
        }
    }

    fn purge_upto(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index() <= index) {
            self.entries.pop_front();
        }
    }

    /// Entries `[start, end)`, at most `limit`, if all of them are here.
    fn get(&self, start: u64, end: Bound<u64>, limit: usize) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.index();
        let end_excl = match end {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => e,
            Bound::Unbounded => last + 1,
        };
        if start < first || end_excl > last + 1 {
            return None;
        }
        if start >= end_excl {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = ((end_excl - first) as usize).min(from.saturating_add(limit));
        Some(self.entries.range(from..to).cloned().collect())
    }
}

impl LogStore {
    pub(crate) fn new(db: RoomDb, durability: Durability) -> Result<Self, StorageError> {
        let (syncer, rx) = tokio::sync::mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            StorageError::Background(format!("the WAL sync task needs a tokio runtime: {e}"))
        })?;
        runtime.spawn(sync_loop(db.clone(), rx));
        Ok(Self {
            db,
            syncer,
            durability,
            recent: Arc::new(Mutex::new(Recent::default())),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.db.get_decoded(CF_RAFT_META, key)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // Every operation leaves the deque valid, so a poisoned lock is usable.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in `[start, end)`, at most `limit` of them.
    fn read_range(
        &self,
        start: u64,
        end: Bound<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(hit) = self.recent().get(start, end, limit) {
            return Ok(hit);
        }
        let cf = self.db.cf(CF_LOG)?;
        let key = index_key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .db
            .iterator_cf(cf, IteratorMode::From(&key, Direction::Forward))
        {
            let (k, v) = item?;
            let index = index_from_key(&k)?;
            let inside = match end {
                Bound::Included(e) => index <= e,
                Bound::Excluded(e) => index < e,
                Bound::Unbounded => true,
            };
            if !inside || out.len() >= limit {
                break;
            }
            let entry: Entry = codec::from_bytes(&v)?;
            if entry.index() != index {
                return Err(StorageError::BadKey("log entry under another index"));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// Every append waiting at that moment shares one fsync of the room's
/// disk (real, or the simulator's model), then is acknowledged in order;
/// after a power loss (the simulator's) never.
async fn sync_loop(
    db: RoomDb,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let res = match db.sync_wal_async().await {
            Ok(true) => Ok(()),
            // Power is off: these appends were never acknowledged.
            Ok(false) => continue,
            Err(e) => Err(e.to_string()),
        };
        for cb in batch {
            cb.io_completed(res.clone().map_err(std::io::Error::other));
        }
    }
}

fn start_of(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// Every entry of the range (openraft's contract: no early stop). Large
    /// ranges go through [`Self::entries_stream`] or
    /// [`Self::limited_get_log_entries`], which bound memory.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        Ok(self.read_range(start_of(&range), range.end_bound().cloned(), usize::MAX)?)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, std::io::Error> {
        Ok(self.read_range(start, Bound::Excluded(end), MAX_ENTRIES_PER_READ)?)
    }

    /// Streams the range in chunks of [`MAX_ENTRIES_PER_READ`], so applying a
    /// long stretch of the log never holds it all in memory.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl Stream<Item = Result<Entry, std::io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let start = start_of(&range);
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let store = self.clone();
        futures::stream::unfold(Some(start), move |next| {
            let store = store.clone();
            async move {
                let next = next.filter(|n| *n < end)?;
                let (items, following): (Vec<Result<Entry, std::io::Error>>, _) =
                    match store.read_range(next, Bound::Excluded(end), MAX_ENTRIES_PER_READ) {
                        // Like `try_get_log_entries`, the stream holds what
                        // exists of the range; it ends when a read finds nothing.
                        Ok(v) => {
                            let following = v.last().map(|e| e.index() + 1);
                            (v.into_iter().map(Ok).collect(), following)
                        }
                        Err(e) => (vec![Err(e.into())], None),
                    };
                Some((futures::stream::iter(items), following))
            }
        })
        .flatten()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.get_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let cf = self.db.cf(CF_LOG)?;
        let last = match self.db.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(StorageError::from)?;
                let e: Entry = codec::from_bytes(&v).map_err(StorageError::from)?;
                Some(e.log_id())
            }
            None => None,
        };
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let bytes = codec::to_bytes(vote).map_err(StorageError::from)?;
        let db = self.db.clone();
        db.clone()
            .blocking(move || -> Result<(), StorageError> {
                let mut opts = WriteOptions::default();
                opts.set_sync(db.fsync_writes());
                db.db
                    .put_cf_opt(db.cf(CF_RAFT_META)?, KEY_VOTE, bytes, &opts)?;
                db.synced_write();
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let cf = self.db.cf(CF_RAFT_META)?;
        match committed {
            Some(c) => {
                let bytes = codec::to_bytes(&c).map_err(StorageError::from)?;
                self.db
                    .db
                    .put_cf(cf, KEY_COMMITTED, bytes)
                    .map_err(StorageError::from)?;
            }
            None => self
                .db
                .db
                .delete_cf(cf, KEY_COMMITTED)
                .map_err(StorageError::from)?,
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.get_meta(KEY_COMMITTED)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut appended: Vec<Entry> = Vec::new();
        for entry in entries {
            let bytes = codec::to_bytes(&entry).map_err(StorageError::from)?;
            batch.put_cf(cf, index_key(entry.index()), bytes);
            appended.push(entry);
        }
        self.db.db.write(batch).map_err(StorageError::from)?;
        {
            let mut recent = self.recent();
            for e in appended {
                recent.push(e);
            }
        }
        match self.durability {
            Durability::Synced => {
                if let Err(tokio::sync::mpsc::error::SendError(cb)) = self.syncer.send(callback) {
                    cb.io_completed(Err(std::io::Error::other("the WAL sync task stopped")));
                }
            }
            // The planted bug: done at once, durable whenever the disk
            // happens to write it back.
            Durability::AckBeforeDurable => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        self.recent().truncate_after(last_log_id.map(|l| l.index()));
        let cf = self.db.cf(CF_LOG)?;
        self.db
            .db
            .delete_range_cf(cf, index_key(from), index_key(u64::MAX))
            .map_err(StorageError::from)?;
        // The last possible index is outside the range above.
        self.db
            .db
            .delete_cf(cf, index_key(u64::MAX))
            .map_err(StorageError::from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let bytes = codec::to_bytes(&log_id).map_err(StorageError::from)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_RAFT_META)?, KEY_LAST_PURGED, bytes);
        batch.delete_range_cf(
            self.db.cf(CF_LOG)?,
            index_key(0),
            index_key(log_id.index() + 1),
        );
        self.db.db.write(batch).map_err(StorageError::from)?;
        self.recent().purge_upto(log_id.index());
        Ok(())
    }
}

/// Opens the log store of a room database.
pub fn log_store(db: &RoomDb, durability: Durability) -> Result<LogStore, StorageError> {
    LogStore::new(db.clone(), durability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn entry(index: u64) -> Entry {
        let leader = openraft::vote::leader_id_adv::LeaderId::new(1, 1);
        Entry::new_blank(openraft::LogId::new(leader.to_committed(), index))
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.index()).collect())
    }

    #[test]
    fn recent_entries_mirror_appends_truncations_and_purges() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(entry(i));
        }
        assert_eq!(
            indexes(r.get(5, Bound::Excluded(10), usize::MAX)),
            Some(vec![5, 6, 7, 8, 9])
        );
        assert_eq!(
            indexes(r.get(7, Bound::Included(8), usize::MAX)),
            Some(vec![7, 8])
        );
        assert_eq!(
            indexes(r.get(4, Bound::Excluded(6), usize::MAX)),
            None,
            "4 is not cached"
        );
        assert_eq!(
            indexes(r.get(8, Bound::Excluded(11), usize::MAX)),
            None,
            "10 does not exist"
        );
        r.truncate_after(Some(7));
        assert_eq!(
            indexes(r.get(5, Bound::Unbounded, 2)),
            Some(vec![5, 6]),
            "limited"
        );
        assert_eq!(
            indexes(r.get(5, Bound::Unbounded, usize::MAX)),
            Some(vec![5, 6, 7])
        );
        r.purge_upto(5);
        assert_eq!(
            indexes(r.get(6, Bound::Unbounded, usize::MAX)),
            Some(vec![6, 7])
        );
        // A gap (a snapshot installed far ahead) restarts the cache.
        r.push(entry(20));
        assert_eq!(
            indexes(r.get(20, Bound::Unbounded, usize::MAX)),
            Some(vec![20])
        );
        assert_eq!(r.first_index(), Some(20));
        r.truncate_after(None);
        assert_eq!(r.first_index(), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES as u64 + 10) {
            r.push(entry(i));
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first_index(), Some(10));
    }
}
