//! openraft's `RaftStateMachine` on RocksDB, running the chat logic of
//! `skygit_consensus::chat` over the room's column families.
//!
//! A batch of committed entries is applied with one RocksDB write; reads
//! during the batch see the batch's own earlier effects through [`View`].
//! Live subscribers get an [`AppliedEvent`] per request after the write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use skygit_consensus::chat::{self, ChatView, Effect};
use skygit_consensus::codec;
use skygit_consensus::model::{
    ApplyOutcome, ChatRequest, Command, ConversationId, MessageRecord, RoomSettings,
};
use skygit_consensus::types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use tokio::sync::{broadcast, watch};
use ulid::Ulid;

use crate::db::{
    index_from_key, index_key, message_key, GroupRecord, RoomDb, StorageError, CF_CONVERSATIONS,
    CF_GROUP, CF_JOURNAL, CF_MESSAGES, CF_MESSAGE_IDS, CF_REQUESTS, CF_SETTINGS, CF_SM_META,
    CF_SYNCED, KEY_GROUP, KEY_ROOM_SETTINGS, SNAPSHOT_CFS,
};
use crate::snapshot::{self, SnapshotWriter};

pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"last_membership";
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";

/// Applied events buffered for live subscribers; a subscriber that falls
/// further behind is told it lagged and re-reads from storage.
pub const EVENT_CAPACITY: usize = 64 * 1024;

/// One request applied to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    /// The epoch of the raft group that applied it.
    pub epoch: u64,
    /// The room index the request was applied at.
    pub index: u64,
    pub request: Ulid,
    pub outcome: ApplyOutcome,
    /// The message as it is after this request, for posts, edits, deletes.
    pub message: Option<MessageRecord>,
    /// The room's settings after this request, when it changed them.
    pub settings: Option<RoomSettings>,
}

/// Fault injection for proving the tests can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyMode {
    #[default]
    Correct,
    /// Forget which request ids were applied (a planted bug: duplicates).
    DuplicateApply,
}

/// The chat state machine of one room.
#[derive(Clone)]
pub struct StateMachine {
    db: RoomDb,
    events: broadcast::Sender<Arc<AppliedEvent>>,
    mode: ApplyMode,
    /// Serialises writes of the snapshot file: openraft builds snapshots in
    /// a task of their own, concurrently with installing one from a leader.
    snapshot_file: Arc<std::sync::Mutex<()>>,
    /// Posts, edits and deletes applied since this process opened the room.
    messages_applied: Arc<AtomicU64>,
    /// The room's settings as applied so far.
    settings: Arc<watch::Sender<RoomSettings>>,
    /// The raft group the state belongs to (changed by a snapshot).
    group: Arc<watch::Sender<GroupRecord>>,
    /// How many times the state was replaced or changed in bulk, without
    /// an applied event per change (a snapshot installed, a catch-up from
    /// the repository): readers re-read.
    replaced: Arc<watch::Sender<u64>>,
}

impl StateMachine {
    pub(crate) fn new(db: RoomDb, mode: ApplyMode, group: GroupRecord) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let settings = read_settings(&db).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the room's settings; using the defaults");
            RoomSettings::default()
        });
        Self {
            db,
            events,
            mode,
            snapshot_file: Arc::new(std::sync::Mutex::new(())),
            messages_applied: Arc::new(AtomicU64::new(0)),
            settings: Arc::new(watch::Sender::new(settings)),
            group: Arc::new(watch::Sender::new(group)),
            replaced: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Changes each time the state is replaced or changed in bulk (a
    /// snapshot installed, a catch-up from the repository): what a reader
    /// shows may be stale, and the applied events do not tell what.
    pub fn watch_replaced(&self) -> watch::Receiver<u64> {
        self.replaced.subscribe()
    }

    /// The raft group this state belongs to.
    pub fn group(&self) -> GroupRecord {
        *self.group.borrow()
    }

    pub(crate) fn set_group(&self, group: GroupRecord) {
        self.group.send_replace(group);
    }

    /// The room's settings as applied so far, and every later change (a
    /// watch: a slow reader sees the latest, never a backlog).
    pub fn watch_settings(&self) -> watch::Receiver<RoomSettings> {
        self.settings.subscribe()
    }

    /// Posts, edits and deletes applied since this process opened the
    /// room (the dashboard's messages per second).
    pub fn messages_applied(&self) -> u64 {
        self.messages_applied.load(Ordering::Relaxed)
    }

    /// Live applied events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedEvent>> {
        self.events.subscribe()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.db.dir.join(SNAPSHOT_FILE)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.db.get_decoded(CF_SM_META, key)
    }
}

/// The state as of the current batch: the database plus the batch's
/// pending effects.
struct View<'a> {
    db: &'a RoomDb,
    mode: ApplyMode,
    messages: BTreeMap<Ulid, MessageRecord>,
    conversations: BTreeSet<ConversationId>,
    requests: BTreeMap<Ulid, u64>,
    synced: Option<u64>,
    settings: Option<RoomSettings>,
    /// Term of the entry being applied.
    term: u64,
}

impl ChatView for View<'_> {
    type Error = StorageError;

    fn message(&mut self, id: Ulid) -> Result<Option<MessageRecord>, StorageError> {
        if let Some(m) = self.messages.get(&id) {
            return Ok(Some(m.clone()));
        }
        read_message(self.db, id)
    }

    fn conversation_exists(&mut self, id: &ConversationId) -> Result<bool, StorageError> {
        if self.conversations.contains(id) {
            return Ok(true);
        }
        Ok(self
            .db
            .db
            .get_pinned_cf(self.db.cf(CF_CONVERSATIONS)?, id.as_str())?
            .is_some())
    }

    fn applied_request(&mut self, id: Ulid) -> Result<Option<u64>, StorageError> {
        if self.mode == ApplyMode::DuplicateApply {
            return Ok(None);
        }
        if let Some(i) = self.requests.get(&id) {
            return Ok(Some(*i));
        }
        match self
            .db
            .db
            .get_pinned_cf(self.db.cf(CF_REQUESTS)?, id.to_bytes())?
        {
            Some(v) => Ok(Some(index_from_key(&v)?)),
            None => Ok(None),
        }
    }

    fn synced_up_to(&mut self) -> Result<u64, StorageError> {
        if let Some(s) = self.synced {
            return Ok(s);
        }
        synced_up_to(self.db)
    }

    fn settings(&mut self) -> Result<RoomSettings, StorageError> {
        if let Some(s) = self.settings {
            return Ok(s);
        }
        read_settings(self.db)
    }
}

pub(crate) fn read_settings(db: &RoomDb) -> Result<RoomSettings, StorageError> {
    Ok(db
        .get_decoded(CF_SETTINGS, KEY_ROOM_SETTINGS)?
        .unwrap_or_default())
}

pub(crate) fn read_message(db: &RoomDb, id: Ulid) -> Result<Option<MessageRecord>, StorageError> {
    let Some(key) = db.db.get_pinned_cf(db.cf(CF_MESSAGE_IDS)?, id.to_bytes())? else {
        return Ok(None);
    };
    match db.db.get_pinned_cf(db.cf(CF_MESSAGES)?, &key)? {
        Some(v) => Ok(Some(codec::from_bytes(&v)?)),
        None => Err(StorageError::BadKey("message id points at nothing")),
    }
}

pub(crate) fn synced_up_to(db: &RoomDb) -> Result<u64, StorageError> {
    match db
        .db
        .iterator_cf(db.cf(CF_SYNCED)?, IteratorMode::End)
        .next()
    {
        Some(item) => index_from_key(&item?.0),
        None => Ok(0),
    }
}

impl<'a> View<'a> {
    /// The database's state, with no batch effects yet.
    fn over(db: &'a RoomDb, mode: ApplyMode) -> Self {
        Self {
            db,
            mode,
            messages: BTreeMap::new(),
            conversations: BTreeSet::new(),
            requests: BTreeMap::new(),
            synced: None,
            settings: None,
            term: 0,
        }
    }

    fn stage(&mut self, batch: &mut WriteBatch, effect: Effect) -> Result<(), StorageError> {
        match effect {
            Effect::PutMessage(rec) => {
                let key = message_key(rec.message.conversation.as_str(), rec.index);
                batch.put_cf(self.db.cf(CF_MESSAGES)?, &key, codec::to_bytes(&rec)?);
                batch.put_cf(self.db.cf(CF_MESSAGE_IDS)?, rec.message.id.to_bytes(), &key);
                self.messages.insert(rec.message.id, rec);
            }
            Effect::PutConversation(c) => {
                batch.put_cf(
                    self.db.cf(CF_CONVERSATIONS)?,
                    c.id.as_str(),
                    codec::to_bytes(&c)?,
                );
                self.conversations.insert(c.id);
            }
            Effect::RecordRequest { id, index } => {
                batch.put_cf(self.db.cf(CF_REQUESTS)?, id.to_bytes(), index_key(index));
                self.requests.insert(id, index);
            }
            Effect::Journal(mut change) => {
                change.term = self.term;
                batch.put_cf(
                    self.db.cf(CF_JOURNAL)?,
                    index_key(change.index),
                    codec::to_bytes(&change)?,
                );
            }
            Effect::Synced {
                up_to_index,
                commit_sha,
            } => {
                // Applied in batch order: journaled changes earlier in this
                // batch are forgotten too when they are covered.
                batch.delete_range_cf(
                    self.db.cf(CF_JOURNAL)?,
                    index_key(0),
                    index_key(up_to_index.saturating_add(1)),
                );
                batch.put_cf(
                    self.db.cf(CF_SYNCED)?,
                    index_key(up_to_index),
                    commit_sha.as_bytes(),
                );
                self.synced = Some(up_to_index);
            }
            Effect::PutSettings(s) => {
                batch.put_cf(
                    self.db.cf(CF_SETTINGS)?,
                    KEY_ROOM_SETTINGS,
                    codec::to_bytes(&s)?,
                );
                self.settings = Some(s);
            }
        }
        Ok(())
    }
}

fn message_id_of(req: &ChatRequest) -> Option<Ulid> {
    match &req.command {
        Command::Post { .. } | Command::Call { .. } => Some(req.id),
        Command::Edit { message, .. } | Command::Delete { message } => Some(*message),
        _ => None,
    }
}

impl StateMachine {
    /// Applies what the repository holds and this state does not:
    /// `changes` (in index order, read from the batch files, each at its
    /// room index), then records that everything up to `watermark` is in
    /// the repository as `commit_sha`. For a node about to found a group
    /// whose state is behind the repository; its raft must be stopped. A
    /// change already applied here (same request id) is skipped; one the
    /// chat logic refuses means the repository and this state disagree.
    /// Answers how many changes took effect.
    pub async fn catch_up(
        &self,
        changes: Vec<skygit_consensus::model::Change>,
        watermark: u64,
        commit_sha: String,
    ) -> Result<usize, StorageError> {
        let db = self.db.clone();
        let (events, settings) = self
            .db
            .blocking(move || {
                let mut batch = WriteBatch::default();
                let mut view = View::over(&db, ApplyMode::Correct);
                let mut events = Vec::new();
                let epoch = db.group()?.start.epoch;
                for change in changes {
                    view.term = change.term;
                    let req = change.request();
                    let (effects, outcome) = chat::apply(&mut view, change.index, &req)?;
                    match &outcome {
                        ApplyOutcome::Applied { .. } => {}
                        ApplyOutcome::Duplicate { .. } => continue,
                        ApplyOutcome::Rejected { reason, .. } => {
                            return Err(StorageError::BadSnapshot(format!(
                                "the repository's change at index {} does not apply here: {reason}",
                                change.index
                            )))
                        }
                    }
                    for e in effects {
                        view.stage(&mut batch, e)?;
                    }
                    let message =
                        message_id_of(&req).and_then(|id| view.messages.get(&id).cloned());
                    events.push(AppliedEvent {
                        epoch,
                        index: change.index,
                        request: req.id,
                        outcome,
                        message,
                        settings: None,
                    });
                }
                view.stage(
                    &mut batch,
                    Effect::Synced {
                        up_to_index: watermark,
                        commit_sha,
                    },
                )?;
                let mut opts = WriteOptions::default();
                opts.set_sync(db.fsync_writes());
                db.db.write_opt(batch, &opts)?;
                db.synced_write();
                Ok((events, view.settings))
            })
            .await?;
        if let Some(s) = settings {
            self.settings.send_replace(s);
        }
        let n = events.len();
        self.messages_applied.fetch_add(
            events.iter().filter(|e| e.message.is_some()).count() as u64,
            Ordering::Relaxed,
        );
        for e in events {
            let _ = self.events.send(Arc::new(e));
        }
        self.replaced.send_modify(|n| *n += 1);
        Ok(n)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let applied = self.read_meta(KEY_LAST_APPLIED)?;
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut view = View::over(&self.db, self.mode);
        let mut last_applied = None;
        let mut membership = None;
        let mut replies = Vec::new();
        let mut events = Vec::new();
        let group = self.group();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let index = group
                .start
                .room_index(log_id.index())
                .ok_or(StorageError::BadKey(
                    "raft index past the end of the room's sequence",
                ))?;
            let outcome = match entry.payload {
                EntryPayload::Blank => ApplyOutcome::Applied { index },
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    ApplyOutcome::Applied { index }
                }
                EntryPayload::Normal(req) => {
                    if !group.seeded {
                        // Applying the group's entries on the old group's
                        // state would diverge from every other member.
                        return Err(std::io::Error::other(format!(
                            "entry {log_id} of group epoch {} reached a state machine that \
                             has not received the group's snapshot",
                            group.start.epoch
                        )));
                    }
                    view.term = log_id.leader_id.term;
                    let (effects, outcome) = chat::apply(&mut view, index, &req)?;
                    for e in effects {
                        view.stage(&mut batch, e)?;
                    }
                    let message =
                        message_id_of(&req).and_then(|id| view.messages.get(&id).cloned());
                    let settings = match (&req.command, &outcome) {
                        (Command::Configure { .. }, ApplyOutcome::Applied { .. }) => view.settings,
                        _ => None,
                    };
                    events.push(AppliedEvent {
                        epoch: group.start.epoch,
                        index,
                        request: req.id,
                        outcome: outcome.clone(),
                        message,
                        settings,
                    });
                    outcome
                }
            };
            last_applied = Some(log_id);
            if let Some(r) = responder {
                replies.push((r, outcome));
            }
        }
        let new_settings = view.settings;
        let meta_cf = self.db.cf(CF_SM_META)?;
        if let Some(l) = &last_applied {
            batch.put_cf(
                meta_cf,
                KEY_LAST_APPLIED,
                codec::to_bytes(l).map_err(StorageError::from)?,
            );
        }
        if let Some(m) = &membership {
            batch.put_cf(
                meta_cf,
                KEY_MEMBERSHIP,
                codec::to_bytes(m).map_err(StorageError::from)?,
            );
        }
        // Not synced on its own: the WAL is shared with the log, whose
        // entries are synced before they can be committed, and a lost
        // state-machine write is re-applied from the log on restart.
        self.db.db.write(batch).map_err(StorageError::from)?;
        if let Some(s) = new_settings {
            self.settings.send_replace(s);
        }
        for (r, o) in replies {
            r.send(o);
        }
        let changed = events.iter().filter(|e| e.message.is_some()).count() as u64;
        self.messages_applied.fetch_add(changed, Ordering::Relaxed);
        for e in events {
            // No subscriber is fine.
            let _ = self.events.send(Arc::new(e));
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let bytes = snapshot.into_inner();
        let db = self.db.clone();
        let file = SnapshotFile {
            path: self.snapshot_path(),
            lock: self.snapshot_file.clone(),
        };
        let meta = meta.clone();
        db.clone()
            .blocking(move || install(&db, &meta, &bytes, &file))
            .await?;
        // The snapshot brought the settings as of its last entry, and the
        // group's record (seeded).
        self.settings
            .send_replace(read_settings(&self.db).map_err(std::io::Error::from)?);
        self.group
            .send_replace(self.db.group().map_err(std::io::Error::from)?);
        self.replaced.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = snapshot::parse_meta(&bytes)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let db = self.db.clone();
        let file = SnapshotFile {
            path: self.snapshot_path(),
            lock: self.snapshot_file.clone(),
        };
        let (meta, bytes) = db.clone().blocking(move || build(&db, &file)).await?;
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        })
    }
}

/// The room's snapshot file and the lock its writers take.
struct SnapshotFile {
    path: PathBuf,
    lock: Arc<std::sync::Mutex<()>>,
}

impl SnapshotFile {
    /// Replaces the file with `bytes` unless it already holds a snapshot at
    /// least as new as `meta`.
    fn store_if_newer(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<bool, StorageError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = match std::fs::read(&self.path) {
            Ok(b) => snapshot::parse_meta(&b).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if current.is_some_and(|c| c.last_log_id >= meta.last_log_id) {
            return Ok(false);
        }
        write_file_durably(&self.path, bytes)?;
        Ok(true)
    }
}

fn build(db: &RoomDb, file: &SnapshotFile) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
    // Everything the snapshot covers must be durable before raft may purge
    // the log entries it replaces.
    db.sync_wal()?;
    let snap = db.db.snapshot();
    let meta_cf = db.cf(CF_SM_META)?;
    let last_log_id: Option<LogId> = match snap.get_cf(meta_cf, KEY_LAST_APPLIED)? {
        Some(b) => Some(codec::from_bytes(&b)?),
        None => None,
    };
    let last_membership: StoredMembership = match snap.get_cf(meta_cf, KEY_MEMBERSHIP)? {
        Some(b) => codec::from_bytes(&b)?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let mut w = SnapshotWriter::new(&meta)?;
    for (tag, name) in SNAPSHOT_CFS {
        for item in snap.iterator_cf(db.cf(name)?, IteratorMode::Start) {
            let (k, v) = item?;
            w.record(tag, &k, &v)?;
        }
    }
    let bytes = w.finish();
    file.store_if_newer(&meta, &bytes)?;
    Ok((meta, bytes))
}

fn install(
    db: &RoomDb,
    meta: &SnapshotMeta,
    bytes: &[u8],
    file: &SnapshotFile,
) -> Result<(), StorageError> {
    let parsed = snapshot::parse(bytes)?;
    if parsed.meta != *meta {
        return Err(StorageError::BadSnapshot(
            "metadata differs from the announced one".into(),
        ));
    }
    // A snapshot of another group's state would mix two histories.
    let theirs: GroupRecord = match parsed
        .records
        .iter()
        .find(|r| r.cf == CF_GROUP && r.key == KEY_GROUP)
    {
        Some(r) => codec::from_bytes(r.value)?,
        None => GroupRecord::default(),
    };
    let ours = db.group()?;
    if theirs.start != ours.start || !theirs.seeded {
        return Err(StorageError::BadSnapshot(format!(
            "it holds group epoch {} (base {}), this node is in epoch {} (base {})",
            theirs.start.epoch, theirs.start.base, ours.start.epoch, ours.start.base
        )));
    }
    let mut batch = WriteBatch::default();
    for (_, name) in SNAPSHOT_CFS {
        let cf = db.cf(name)?;
        for item in db.db.iterator_cf(cf, IteratorMode::Start) {
            batch.delete_cf(cf, item?.0);
        }
    }
    for r in &parsed.records {
        batch.put_cf(db.cf(r.cf)?, r.key, r.value);
    }
    let meta_cf = db.cf(CF_SM_META)?;
    match &meta.last_log_id {
        Some(l) => batch.put_cf(meta_cf, KEY_LAST_APPLIED, codec::to_bytes(l)?),
        None => batch.delete_cf(meta_cf, KEY_LAST_APPLIED),
    }
    batch.put_cf(
        meta_cf,
        KEY_MEMBERSHIP,
        codec::to_bytes(&meta.last_membership)?,
    );
    let mut opts = WriteOptions::default();
    opts.set_sync(db.fsync_writes());
    db.db.write_opt(batch, &opts)?;
    db.synced_write();
    file.store_if_newer(meta, bytes)?;
    tracing::info!(
        records = parsed.records.len(),
        bytes = bytes.len(),
        "installed snapshot"
    );
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one.
fn write_file_durably(path: &std::path::Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{n}"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
