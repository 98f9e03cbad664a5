//! Requests accepted while no leader was reachable, kept durably until
//! they commit. Proposing one again is safe: the state machine applies a
//! request id once.

use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{IteratorMode, WriteOptions};
use skygit_consensus::codec;
use skygit_consensus::model::ChatRequest;
use ulid::Ulid;

use crate::db::{RoomDb, StorageError, CF_OUTBOX};

/// Most requests the outbox holds; beyond it new requests are refused
/// with [`StorageError::OutboxFull`] rather than dropped.
pub const MAX_OUTBOX: usize = 10_000;

/// The durable outbox of one room.
#[derive(Clone)]
pub struct Outbox {
    db: RoomDb,
    /// The number of requests held; the lock also serialises every change,
    /// so the count always matches the column family.
    len: Arc<Mutex<usize>>,
}

impl Outbox {
    pub(crate) fn open(db: RoomDb) -> Result<Self, StorageError> {
        let mut n = 0;
        for item in db.db.iterator_cf(db.cf(CF_OUTBOX)?, IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(Self {
            db,
            len: Arc::new(Mutex::new(n)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // The count is only changed after the write it counts succeeded.
        self.len.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        *self.lock()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `req` durably (synced) before returning.
    pub async fn put(&self, req: &ChatRequest) -> Result<(), StorageError> {
        let bytes = codec::to_bytes(req)?;
        let key = req.id.to_bytes();
        let this = self.clone();
        self.db
            .clone()
            .blocking(move || -> Result<(), StorageError> {
                let mut len = this.lock();
                let cf = this.db.cf(CF_OUTBOX)?;
                let existed = this.db.db.get_pinned_cf(cf, key)?.is_some();
                if !existed && *len >= MAX_OUTBOX {
                    return Err(StorageError::OutboxFull(*len));
                }
                let mut opts = WriteOptions::default();
                opts.set_sync(this.db.fsync_writes());
                this.db.db.put_cf_opt(cf, key, bytes, &opts)?;
                this.db.synced_write();
                if !existed {
                    *len += 1;
                }
                Ok(())
            })
            .await
    }

    /// Counts the requests again (after a write that bypassed [`Self::put`]).
    pub(crate) fn recount(&self) -> Result<(), StorageError> {
        let mut len = self.lock();
        let mut n = 0;
        for item in self
            .db
            .db
            .iterator_cf(self.db.cf(CF_OUTBOX)?, IteratorMode::Start)
        {
            item?;
            n += 1;
        }
        *len = n;
        Ok(())
    }

    /// Forgets a request that committed (or was refused for good).
    pub fn remove(&self, id: Ulid) -> Result<bool, StorageError> {
        let mut len = self.lock();
        let cf = self.db.cf(CF_OUTBOX)?;
        let existed = self.db.db.get_pinned_cf(cf, id.to_bytes())?.is_some();
        if existed {
            // Not synced: if the removal is lost, the request is proposed
            // again and deduplicated by id.
            self.db.db.delete_cf(cf, id.to_bytes())?;
            *len = len.saturating_sub(1);
        }
        Ok(existed)
    }

    /// Up to `limit` waiting requests, oldest id first.
    pub fn list(&self, limit: usize) -> Result<Vec<ChatRequest>, StorageError> {
        let mut out = Vec::new();
        for item in self
            .db
            .db
            .iterator_cf(self.db.cf(CF_OUTBOX)?, IteratorMode::Start)
        {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            out.push(codec::from_bytes(&v)?);
        }
        Ok(out)
    }
}
