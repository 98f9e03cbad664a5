//! Requests accepted while no leader was reachable, kept durably until
//! they commit. Proposing one again is safe: the state machine applies a
//! request id once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
    len: Arc<AtomicUsize>,
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
            len: Arc::new(AtomicUsize::new(n)),
        })
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `req` durably (synced) before returning.
    pub async fn put(&self, req: &ChatRequest) -> Result<(), StorageError> {
        let n = self.len();
        if n >= MAX_OUTBOX {
            return Err(StorageError::OutboxFull(n));
        }
        let bytes = codec::to_bytes(req)?;
        let key = req.id.to_bytes();
        let db = self.db.clone();
        let existed = tokio::task::spawn_blocking(move || -> Result<bool, StorageError> {
            let cf = db.cf(CF_OUTBOX)?;
            let existed = db.db.get_pinned_cf(cf, key)?.is_some();
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.db.put_cf_opt(cf, key, bytes, &opts)?;
            Ok(existed)
        })
        .await
        .map_err(|e| StorageError::Background(e.to_string()))??;
        if !existed {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Forgets a request that committed (or was refused for good).
    pub fn remove(&self, id: Ulid) -> Result<bool, StorageError> {
        let cf = self.db.cf(CF_OUTBOX)?;
        let existed = self.db.db.get_pinned_cf(cf, id.to_bytes())?.is_some();
        if existed {
            // Not synced: if the removal is lost, the request is proposed
            // again and deduplicated by id.
            self.db.db.delete_cf(cf, id.to_bytes())?;
            self.len.fetch_sub(1, Ordering::Relaxed);
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
