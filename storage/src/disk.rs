//! How a room's storage makes its writes durable: one path through the
//! [`Disk`] port, real or simulated.
//!
//! [`RealDisk`] asks RocksDB to fsync (a durable write is synced before it
//! returns; appends wait for one `flush_wal(true)` shared by every append
//! waiting at that moment) and runs blocking work on tokio's blocking
//! pool. The simulator's [`SimDisk`](crate::SimDisk) does no fsync and no
//! blocking-pool work: it notes how long each WAL file was at every
//! simulated fsync, so a power loss drops exactly what was never synced.

use std::path::Path;

use futures::future::BoxFuture;
use rocksdb::DB;

use crate::db::StorageError;

/// Where a room's writes become durable.
pub trait Disk: Send + Sync + std::fmt::Debug + 'static {
    /// The database in `db_dir` was opened on this disk.
    fn attach(&self, _db_dir: &Path) {}
    /// Whether RocksDB itself is asked to fsync a durable write.
    fn fsync_writes(&self) -> bool;
    /// A durable write (a vote, an outbox entry) returned: whatever the
    /// disk must do so that it survives a power loss.
    fn synced_write(&self);
    /// Whether storage work runs inline (the simulator's single thread,
    /// which a blocking pool would stall) instead of on the blocking pool.
    fn inline(&self) -> bool;
    /// Makes every write so far durable. `Ok(false)`: the machine lost
    /// power meanwhile, so nothing waiting on it may be acknowledged.
    fn sync_wal<'a>(
        &'a self,
        db: &'a std::sync::Arc<DB>,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;
}

/// The machine's own disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn fsync_writes(&self) -> bool {
        true
    }

    fn synced_write(&self) {}

    fn inline(&self) -> bool {
        false
    }

    fn sync_wal<'a>(
        &'a self,
        db: &'a std::sync::Arc<DB>,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        let db = db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush_wal(true))
                .await
                .map_err(|e| StorageError::Background(e.to_string()))??;
            Ok(true)
        })
    }
}

impl Disk for crate::SimDisk {
    fn attach(&self, db_dir: &Path) {
        crate::SimDisk::attach(self, db_dir);
    }

    fn fsync_writes(&self) -> bool {
        false
    }

    fn synced_write(&self) {
        self.sync_now();
    }

    fn inline(&self) -> bool {
        true
    }

    fn sync_wal<'a>(
        &'a self,
        _db: &'a std::sync::Arc<DB>,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(async move {
            let lengths = self.begin_sync();
            tokio::time::sleep(self.fsync_time()).await;
            Ok(self.end_sync(lengths))
        })
    }
}
