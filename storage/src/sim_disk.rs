//! The simulator's model of a node's disk, for proving that nothing is
//! acknowledged before it is durable.
//!
//! A room opened with a [`SimDisk`] does no fsync and no blocking-pool
//! work (the simulator runs on one thread with paused time). RocksDB
//! still writes its write-ahead log to the (tmpfs) file system; the disk
//! model notes, at every simulated fsync, how long each WAL file was.
//! An append waits one simulated fsync before raft hears it is done;
//! votes and outbox entries are written durably as on a real node; the
//! simulator's periodic [`SimDisk::writeback`] plays the operating system
//! writing dirty pages back on its own. After a power loss,
//! [`lose_unsynced`] cuts every WAL file back to its durable length, so
//! RocksDB's point-in-time recovery loses exactly what the machine would
//! have lost: every write of the room (log, state machine, outbox) after
//! the last sync, and nothing before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::db::StorageError;

#[derive(Debug, Default)]
struct DiskState {
    /// The database directory whose WAL files are modelled.
    dir: Option<PathBuf>,
    /// Durable length of each WAL file.
    durable: BTreeMap<PathBuf, u64>,
    /// After a crash: the length each WAL file keeps on recovery (what
    /// the disk, or the operating system's cache, held at that instant).
    cut: Option<BTreeMap<PathBuf, u64>>,
    /// The machine lost power: nothing more becomes durable or done.
    dead: bool,
}

/// One node's simulated disk (shared by the room's storage and the
/// simulator; cheap to clone).
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    fsync: Duration,
}

/// The length of every WAL file in `dir` now.
fn wal_lengths(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                if let Ok(m) = e.metadata() {
                    out.insert(p, m.len());
                }
            }
        }
    }
    out
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

    pub(crate) fn attach(&self, db_dir: &Path) {
        self.lock().dir = Some(db_dir.to_path_buf());
    }

    /// What an fsync started now would make durable.
    pub(crate) fn begin_sync(&self) -> BTreeMap<PathBuf, u64> {
        let dir = self.lock().dir.clone();
        dir.map(|d| wal_lengths(&d)).unwrap_or_default()
    }

    /// An fsync that began with `lengths` finished; false if the machine
    /// went off meanwhile (what waited on it is then never done).
    pub(crate) fn end_sync(&self, lengths: BTreeMap<PathBuf, u64>) -> bool {
        let mut s = self.lock();
        if s.dead {
            return false;
        }
        for (p, len) in lengths {
            let d = s.durable.entry(p).or_default();
            *d = (*d).max(len);
        }
        true
    }

    /// A write that is synced before it returns (votes, the outbox).
    pub(crate) fn sync_now(&self) -> bool {
        let lengths = self.begin_sync();
        self.end_sync(lengths)
    }

    /// The operating system wrote every dirty page back.
    pub fn writeback(&self) {
        self.sync_now();
    }

    /// The node dies now. With `power_loss` the machine keeps only what
    /// was durable; otherwise (the process died, the operating system
    /// lives on) it keeps everything written so far. Either way nothing
    /// the dead process does afterwards reaches the disk, and no pending
    /// append is acknowledged.
    pub fn crash(&self, power_loss: bool) {
        let now = self.begin_sync();
        let mut s = self.lock();
        s.dead = true;
        s.cut = Some(if power_loss { s.durable.clone() } else { now });
    }
}

/// After a crash, with the room's database closed: cuts every WAL file
/// back to what the crash kept and turns the disk on. Answers how many
/// bytes of WAL were lost.
pub fn recover(disk: &SimDisk) -> Result<u64, StorageError> {
    let (dir, cut) = {
        let s = disk.lock();
        (s.dir.clone(), s.cut.clone())
    };
    let mut lost = 0;
    if let (Some(dir), Some(cut)) = (dir, cut) {
        for (path, len) in wal_lengths(&dir) {
            let keep = cut.get(&path).copied().unwrap_or(0);
            if len > keep {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(keep)?;
                lost += len - keep;
            }
        }
    }
    let mut s = disk.lock();
    s.dead = false;
    s.cut = None;
    Ok(lost)
}
