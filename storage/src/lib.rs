//! skygit's durable storage: one RocksDB per room holding the raft log
//! ([`LogStore`], openraft's `RaftLogStorage`), the chat state machine
//! ([`StateMachine`], openraft's `RaftStateMachine`), the [`Outbox`] and
//! the sync watermark, plus a [`ChatReader`] for the API.
//!
//! Durability rule: raft is told an append or a vote is done only after the
//! write-ahead log holding it is fsynced. See `db.rs` for the layout.

mod db;
mod disk;
mod log_store;
mod outbox;
mod reader;
mod sim_disk;
mod snapshot;
mod state_machine;

pub use db::{RoomDb, StorageError};
pub use disk::{Disk, RealDisk};
pub use log_store::{Durability, LogStore};
pub use outbox::{Outbox, MAX_OUTBOX};
pub use reader::{ChatReader, MAX_PAGE};
pub use sim_disk::{recover, SimDisk};
pub use state_machine::{AppliedEvent, ApplyMode, StateMachine, EVENT_CAPACITY};

use std::path::Path;

/// Fault injection switches (off in every real node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub durability: Durability,
    pub apply: ApplyMode,
}

/// Everything one room keeps on this node's disk.
#[derive(Clone)]
pub struct RoomStorage {
    pub db: RoomDb,
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub outbox: Outbox,
    pub reader: ChatReader,
}

impl RoomStorage {
    /// Opens (or creates) the room storage in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir, Faults::default())
    }

    /// Opens the room storage with fault injection (simulator canaries).
    pub fn open_with(dir: impl AsRef<Path>, faults: Faults) -> Result<Self, StorageError> {
        Self::from_db(RoomDb::open(dir)?, faults)
    }

    /// Opens the room storage on the simulator's disk model.
    pub fn open_sim(
        dir: impl AsRef<Path>,
        faults: Faults,
        disk: SimDisk,
    ) -> Result<Self, StorageError> {
        Self::from_db(RoomDb::open_sim(dir, disk)?, faults)
    }

    fn from_db(db: RoomDb, faults: Faults) -> Result<Self, StorageError> {
        Ok(Self {
            log: log_store::log_store(&db, faults.durability)?,
            state_machine: StateMachine::new(db.clone(), faults.apply),
            outbox: Outbox::open(db.clone())?,
            reader: ChatReader::new(db.clone()),
            db,
        })
    }
}
