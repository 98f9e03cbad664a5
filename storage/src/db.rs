//! Opening a room's RocksDB, its column families, key layout and errors.
//!
//! One room is one RocksDB directory (its storage namespace). Column
//! families:
//!
//! | cf | key | value |
//! | --- | --- | --- |
//! | `log` | index (u64 BE) | raft entry |
//! | `raft_meta` | `vote`, `last_purged`, `committed` | vote / log id |
//! | `sm_meta` | `last_applied`, `last_membership` | log id / membership |
//! | `messages` | conversation, 0, post index (u64 BE) | message record |
//! | `message_ids` | message id (16 bytes) | its `messages` key |
//! | `conversations` | conversation name | conversation |
//! | `requests` | request id (16 bytes) | index it took effect at (u64 BE) |
//! | `synced` | watermark index (u64 BE) | commit sha |
//! | `outbox` | request id (16 bytes) | request not yet committed |
//! | `journal` | index (u64 BE) | change not yet in the repository |
//! | `group` | `current` | the raft group this state belongs to (epoch, base) |
//!
//! `log`, `raft_meta` and `sm_meta` belong to the current raft group and
//! use its raft indices; every other family keeps *room* indices, which run
//! on across groups (see `GroupStart`). A database without a `group`
//! record is epoch 0, base 0.
//!
//! The write-ahead log is shared by all column families, so one synced
//! write makes every earlier write of the room durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::{Disk, RealDisk};
use crate::sim_disk::SimDisk;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};
use skygit_consensus::codec::{self, CodecError};
use skygit_consensus::model::{Change, ChatRequest, Command, GroupStart};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM_META: &str = "sm_meta";
pub(crate) const CF_MESSAGES: &str = "messages";
pub(crate) const CF_MESSAGE_IDS: &str = "message_ids";
pub(crate) const CF_CONVERSATIONS: &str = "conversations";
pub(crate) const CF_REQUESTS: &str = "requests";
pub(crate) const CF_SYNCED: &str = "synced";
pub(crate) const CF_OUTBOX: &str = "outbox";
pub(crate) const CF_JOURNAL: &str = "journal";
/// The room's settings (one record, [`KEY_ROOM_SETTINGS`]).
pub(crate) const CF_SETTINGS: &str = "settings";
pub(crate) const KEY_ROOM_SETTINGS: &[u8] = b"room";
/// The raft group the state belongs to (one record, [`KEY_GROUP`]).
pub(crate) const CF_GROUP: &str = "group";
pub(crate) const KEY_GROUP: &[u8] = b"current";

const ALL_CFS: [&str; 12] = [
    CF_LOG,
    CF_RAFT_META,
    CF_SM_META,
    CF_MESSAGES,
    CF_MESSAGE_IDS,
    CF_CONVERSATIONS,
    CF_REQUESTS,
    CF_SYNCED,
    CF_OUTBOX,
    CF_JOURNAL,
    CF_SETTINGS,
    CF_GROUP,
];

/// The state-machine column families a snapshot carries, with their tags.
pub(crate) const SNAPSHOT_CFS: [(u8, &str); 8] = [
    (1, CF_MESSAGES),
    (2, CF_MESSAGE_IDS),
    (3, CF_CONVERSATIONS),
    (4, CF_REQUESTS),
    (5, CF_SYNCED),
    (6, CF_JOURNAL),
    (7, CF_SETTINGS),
    (8, CF_GROUP),
];

/// The raft group a room's state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupRecord {
    pub start: GroupStart,
    /// Whether the chat state is the group's: the founder's own, or a
    /// snapshot of the group installed from its leader. A node that joined
    /// a newer group holds its old group's state until that snapshot
    /// arrives, and must not apply the new group's entries on top of it.
    pub seeded: bool,
}

impl Default for GroupRecord {
    fn default() -> Self {
        Self {
            start: GroupStart::default(),
            seeded: true,
        }
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored value is corrupt: {0}")]
    Codec(#[from] CodecError),
    #[error("stored key is corrupt: {0}")]
    BadKey(&'static str),
    #[error("snapshot is corrupt: {0}")]
    BadSnapshot(String),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error("column family {0} is missing")]
    MissingCf(&'static str),
    #[error("the outbox is full ({0} requests waiting)")]
    OutboxFull(usize),
    #[error("background storage task failed: {0}")]
    Background(String),
    #[error("cannot start group epoch {new} over epoch {current}: {why}")]
    Epoch {
        current: u64,
        new: u64,
        why: &'static str,
    },
    #[error("{dir} holds a room in storage format {found}, and this build reads format {FORMAT}: move the directory aside (the room's peers and repository still hold its messages) and start again")]
    Format { dir: String, found: u32 },
}

/// The storage format this build writes and reads (2: requests and
/// changes carry their author's signature). Kept under [`KEY_FORMAT`] in
/// `raft_meta`; a database without it that holds anything is format 1.
pub const FORMAT: u32 = 2;
const KEY_FORMAT: &[u8] = b"format";

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// A room's open database.
#[derive(Clone)]
pub struct RoomDb {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: PathBuf,
    /// Where writes become durable: the real disk or the simulator's.
    pub(crate) disk: Arc<dyn Disk>,
}

impl std::fmt::Debug for RoomDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomDb").field("dir", &self.dir).finish()
    }
}

impl RoomDb {
    /// Opens (creating when missing) the room database in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_on(dir.as_ref(), Arc::new(RealDisk))
    }

    /// Opens the database on the simulator's disk model: no fsync, no
    /// blocking pool (see [`SimDisk`]).
    pub fn open_sim(dir: impl AsRef<Path>, disk: SimDisk) -> Result<Self, StorageError> {
        Self::open_on(dir.as_ref(), Arc::new(disk))
    }

    fn open_on(dir: &Path, disk: Arc<dyn Disk>) -> Result<Self, StorageError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bound the WAL and memtables: a node runs beside a person's editor.
        opts.set_max_total_wal_size(64 << 20);
        opts.set_write_buffer_size(16 << 20);
        opts.set_keep_log_file_num(4);
        if disk.inline() {
            // Many simulated nodes share one process: keep each small.
            opts.set_write_buffer_size(1 << 20);
            opts.set_max_background_jobs(1);
        }
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        disk.attach(&dir.join("db"));
        let room = Self {
            db: Arc::new(db),
            dir,
            disk,
        };
        room.check_format()?;
        Ok(room)
    }

    /// Refuses a database written in another format (its values would not
    /// decode); marks a new one with this build's.
    fn check_format(&self) -> Result<(), StorageError> {
        let meta = self.cf(CF_RAFT_META)?;
        let found = match self.db.get_cf(meta, KEY_FORMAT)? {
            Some(v) => <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .unwrap_or(0),
            None => {
                let empty = ALL_CFS.iter().try_fold(true, |empty, name| {
                    Ok::<bool, StorageError>(
                        empty
                            && self
                                .db
                                .iterator_cf(self.cf(name)?, rocksdb::IteratorMode::Start)
                                .next()
                                .is_none(),
                    )
                })?;
                if !empty {
                    1
                } else {
                    let mut opts = rocksdb::WriteOptions::default();
                    opts.set_sync(self.fsync_writes());
                    self.db
                        .put_cf_opt(meta, KEY_FORMAT, FORMAT.to_be_bytes(), &opts)?;
                    FORMAT
                }
            }
        };
        if found != FORMAT {
            return Err(StorageError::Format {
                dir: self.dir.display().to_string(),
                found,
            });
        }
        Ok(())
    }

    /// How many handles on the open database exist (the simulator waits
    /// for a crashed node's last one before it cuts the disk back).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Whether writes that must be durable ask RocksDB to fsync (not on
    /// the simulator's disk, which models durability itself).
    pub(crate) fn fsync_writes(&self) -> bool {
        self.disk.fsync_writes()
    }

    /// After a write that must be durable: on the simulator's disk, the
    /// fsync RocksDB was not asked for.
    pub(crate) fn synced_write(&self) {
        self.disk.synced_write();
    }

    /// Runs blocking storage work: on tokio's blocking pool for a real
    /// node, inline on the simulator's single thread.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    {
        if self.disk.inline() {
            return f();
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StorageError::Background(e.to_string()))?
    }

    /// The directory holding this room's database and snapshot.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or(StorageError::MissingCf(name))
    }

    /// Reads and decodes the value under `key` in column family `cf`.
    pub(crate) fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_pinned_cf(self.cf(cf)?, key)? {
            Some(bytes) => Ok(Some(codec::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The raft group this state belongs to (epoch 0, base 0, seeded when
    /// the database has never switched groups).
    pub fn group(&self) -> Result<GroupRecord, StorageError> {
        Ok(self.get_decoded(CF_GROUP, KEY_GROUP)?.unwrap_or_default())
    }

    /// Makes every write so far durable, from inside blocking work (a
    /// snapshot): the WAL's fsync, and the disk told of it.
    pub(crate) fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        self.disk.synced_write();
        Ok(())
    }

    /// Makes every write so far durable, waiting as long as the disk's
    /// fsync takes; `false`: the machine lost power meanwhile.
    pub(crate) async fn sync_wal_async(&self) -> Result<bool, StorageError> {
        self.disk.sync_wal(&self.db).await
    }
}

/// The one write that moves a room's state into a new raft group (see
/// `RoomStorage::begin_group`).
pub(crate) fn begin_group(
    db: &RoomDb,
    next: GroupStart,
    role: crate::GroupRole,
) -> Result<(GroupRecord, usize), StorageError> {
    let current = db.group()?;
    let refuse = |why| StorageError::Epoch {
        current: current.start.epoch,
        new: next.epoch,
        why,
    };
    if next.epoch <= current.start.epoch {
        return Err(refuse("epochs only increase"));
    }
    let applied: Option<skygit_consensus::types::LogId> =
        db.get_decoded(CF_SM_META, crate::state_machine::KEY_LAST_APPLIED)?;
    let applied_room = current
        .start
        .room_index(applied.map_or(0, |l| l.index))
        .ok_or(StorageError::BadKey("applied index"))?;
    if role == crate::GroupRole::Founder && next.base < applied_room {
        return Err(refuse("the base is below the room index this node applied"));
    }
    // The snapshot file is derived from the state the batch keeps; removed
    // first, so no crash leaves the old group's snapshot beside the new
    // group's empty log.
    match std::fs::remove_file(db.dir.join(crate::state_machine::SNAPSHOT_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut batch = rocksdb::WriteBatch::default();
    // What may be nowhere else goes to the outbox.
    let mut carry: Vec<ChatRequest> = Vec::new();
    let applied_raft = applied.map_or(0, |l| l.index);
    for item in db.db.iterator_cf(
        db.cf(CF_LOG)?,
        rocksdb::IteratorMode::From(
            &index_key(applied_raft.saturating_add(1)),
            rocksdb::Direction::Forward,
        ),
    ) {
        let (_, v) = item?;
        let entry: skygit_consensus::types::Entry = codec::from_bytes(&v)?;
        if let openraft::EntryPayload::Normal(req) = entry.payload {
            if !matches!(req.command, Command::Synced { .. }) {
                carry.push(req);
            }
        }
    }
    if role == crate::GroupRole::Joiner {
        // The whole journal: no index proves a change is in the
        // repository, which may hold another group's changes at the same
        // numbers (a group founded on top of a newer one than its own). A
        // change the new group has is a duplicate there, by id.
        for item in db
            .db
            .iterator_cf(db.cf(CF_JOURNAL)?, rocksdb::IteratorMode::Start)
        {
            let (_, v) = item?;
            let change: Change = codec::from_bytes(&v)?;
            carry.push(change.request());
        }
    }
    let outbox = db.cf(CF_OUTBOX)?;
    for req in &carry {
        batch.put_cf(outbox, req.id.to_bytes(), codec::to_bytes(req)?);
    }
    batch.delete_range_cf(db.cf(CF_LOG)?, index_key(0), index_key(u64::MAX));
    let raft_meta = db.cf(CF_RAFT_META)?;
    for key in crate::log_store::GROUP_KEYS {
        batch.delete_cf(raft_meta, key);
    }
    let sm_meta = db.cf(CF_SM_META)?;
    batch.delete_cf(sm_meta, crate::state_machine::KEY_LAST_APPLIED);
    batch.delete_cf(sm_meta, crate::state_machine::KEY_MEMBERSHIP);
    let record = GroupRecord {
        start: next,
        seeded: role == crate::GroupRole::Founder,
    };
    batch.put_cf(db.cf(CF_GROUP)?, KEY_GROUP, codec::to_bytes(&record)?);
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(db.fsync_writes());
    db.db.write_opt(batch, &opts)?;
    db.synced_write();
    tracing::info!(
        from = current.start.epoch,
        epoch = next.epoch,
        base = next.base,
        ?role,
        carried = carry.len(),
        "the room's state moved to a new raft group"
    );
    Ok((record, carry.len()))
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn index_from_key(key: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StorageError::BadKey("index"))?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn message_key(conversation: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(conversation.len() + 9);
    k.extend_from_slice(conversation.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Splits a `messages` key into conversation name and index.
pub(crate) fn split_message_key(key: &[u8]) -> Result<(&[u8], u64), StorageError> {
    if key.len() < 9 || key[key.len() - 9] != 0 {
        return Err(StorageError::BadKey("message"));
    }
    let (conv, rest) = key.split_at(key.len() - 9);
    Ok((conv, index_from_key(&rest[1..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_another_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = RoomDb::open(dir.path()).expect("a new database opens");
            db.db
                .put_cf(db.cf(CF_LOG).expect("cf"), 1u64.to_be_bytes(), b"old entry")
                .expect("put");
        }
        // Reopening the same format is fine.
        drop(RoomDb::open(dir.path()).expect("reopens"));
        // A format-1 database: data, no marker.
        {
            let db = RoomDb::open(dir.path()).expect("reopens");
            db.db
                .delete_cf(db.cf(CF_RAFT_META).expect("cf"), KEY_FORMAT)
                .expect("delete");
        }
        let e = RoomDb::open(dir.path()).expect_err("format 1 refused");
        assert!(matches!(e, StorageError::Format { found: 1, .. }), "{e}");
        assert!(e.to_string().contains("move the directory aside"), "{e}");
        // Nothing was changed: still refused, the entry still there.
        assert!(RoomDb::open(dir.path()).is_err());
    }
}
