//! The simulator's model of a node's disk, for proving that nothing is
//! acknowledged before it is durable.
//!
//! A room opened with a [`SimDisk`] does no fsync and no blocking-pool
//! work (the simulator runs on one thread with paused time). Instead the
//! disk remembers how far the raft log has been written and how far it is
//! durable: an append waits one simulated fsync before raft hears it is
//! done, and the simulator's periodic [`SimDisk::writeback`] plays the
//! operating system writing dirty pages back on its own. After a power
//! loss, [`lose_unsynced`] deletes the log entries that were not durable,
//! as the machine would have lost them. (Votes and the state machine are
//! treated as durable when written; the model's loss is the log's tail.)

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rocksdb::WriteBatch;

use crate::db::{index_key, RoomDb, StorageError, CF_LOG};

#[derive(Debug, Default)]
struct DiskState {
    /// Last log index written (the log is contiguous up to it).
    written: Option<u64>,
    /// Last log index known durable.
    synced: Option<u64>,
    /// The machine lost power: nothing more becomes durable or done.
    dead: bool,
    fsyncs: u64,
}

/// One node's simulated disk (shared by the room's storage and the
/// simulator; cheap to clone).
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    fsync: Duration,
}

impl SimDisk {
    /// A disk whose fsync takes `fsync` of simulated time.
    pub fn new(fsync: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState::default())),
            fsync,
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long one fsync takes.
    pub fn fsync_time(&self) -> Duration {
        self.fsync
    }

    /// The operating system wrote every dirty page back.
    pub fn writeback(&self) {
        let mut s = self.lock();
        if !s.dead {
            s.synced = s.written;
        }
    }

    /// Last log index written / durable.
    pub fn written(&self) -> Option<u64> {
        self.lock().written
    }
    pub fn synced(&self) -> Option<u64> {
        self.lock().synced
    }
    /// Fsyncs done so far.
    pub fn fsyncs(&self) -> u64 {
        self.lock().fsyncs
    }

    /// The machine stops: from now on nothing becomes durable and no
    /// pending append is acknowledged.
    pub fn power_off(&self) {
        self.lock().dead = true;
    }

    /// Whether the machine is off.
    pub fn is_off(&self) -> bool {
        self.lock().dead
    }

    pub(crate) fn note_append(&self, last: u64) {
        let mut s = self.lock();
        if !s.dead {
            s.written = Some(last);
        }
    }

    pub(crate) fn note_truncate(&self, last: Option<u64>) {
        let mut s = self.lock();
        if s.dead {
            return;
        }
        s.written = last;
        if s.synced > last {
            s.synced = last;
        }
    }

    /// An fsync finished that started when `upto` was written; false if
    /// the machine went off meanwhile (the append is then never done).
    pub(crate) fn note_fsync(&self, upto: Option<u64>) -> bool {
        let mut s = self.lock();
        if s.dead {
            return false;
        }
        s.fsyncs += 1;
        if upto > s.synced {
            s.synced = upto.min(s.written);
        }
        true
    }
}

/// After a simulated power loss: deletes from the (closed) room database
/// in `dir` every log entry `disk` had not made durable, then powers the
/// disk back on with its written mark at the durable one. Answers how many
/// entries were lost.
pub fn lose_unsynced(dir: &Path, disk: &SimDisk) -> Result<u64, StorageError> {
    let synced = disk.synced();
    let written = disk.written();
    let db = RoomDb::open_sim(dir, disk.clone())?;
    let from = synced.map(|s| s + 1).unwrap_or(0);
    let mut lost = 0;
    if let Some(w) = written {
        if w >= from {
            let cf = db.cf(CF_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, index_key(from), index_key(u64::MAX));
            batch.delete_cf(cf, index_key(u64::MAX));
            db.db.write(batch)?;
            lost = w - from + 1;
        }
    }
    drop(db);
    let mut s = disk.lock();
    s.written = synced;
    s.dead = false;
    Ok(lost)
}

/// The node restarts after a crash that kept its memory-mapped writes (a
/// process crash): the disk is on again and nothing is lost.
pub fn power_on(disk: &SimDisk) {
    disk.lock().dead = false;
}
