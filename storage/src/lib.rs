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

pub use db::{GroupRecord, RoomDb, StorageError};
pub use disk::{Disk, RealDisk};
pub use log_store::{Durability, LogStore};
pub use outbox::{Outbox, MAX_OUTBOX};
pub use reader::{ChatReader, MAX_PAGE};
pub use sim_disk::{recover, SimDisk};
pub use state_machine::{AppliedEvent, ApplyMode, StateMachine, EVENT_CAPACITY};

use std::path::Path;

use skygit_consensus::model::GroupStart;

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
    faults: Faults,
}

/// How this node enters a new raft group of its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    /// It founded the group: its chat state is the group's seed.
    Founder,
    /// It joins a group someone else founded: its chat state stays only
    /// until the group's snapshot replaces it.
    Joiner,
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
        let group = db.group()?;
        Ok(Self {
            log: log_store::log_store(&db, faults.durability)?,
            state_machine: StateMachine::new(db.clone(), faults.apply, group),
            outbox: Outbox::open(db.clone())?,
            reader: ChatReader::new(db.clone()),
            db,
            faults,
        })
    }

    /// The raft group this room's state belongs to.
    pub fn group(&self) -> GroupRecord {
        self.state_machine.group()
    }

    /// Moves the room's state into a new raft group, in one synced write
    /// (a crash leaves the old group or the new one, never a mix):
    ///
    /// - the old group's log, vote and applied position are forgotten;
    /// - the chat state, the outbox and the applied request ids are kept;
    /// - what this node holds that the new group may not have is carried
    ///   into the outbox, to be proposed again (deduplicated by id): the
    ///   requests in its log above what it applied (not yet known to be
    ///   committed), and for a joiner, whose chat state the group's
    ///   snapshot replaces, every journaled change (not yet known to be in
    ///   the repository; one the new group has is a duplicate there).
    ///
    /// The old group's raft must be shut down first. `self.log` is then a
    /// fresh log store for the new group (raft's log and the state machine
    /// are handed to the new raft). A founder's `next.base` must not be
    /// below the last room index it applied (room indices never repeat).
    /// Returns how many requests were carried.
    pub async fn begin_group(
        &mut self,
        next: GroupStart,
        role: GroupRole,
    ) -> Result<usize, StorageError> {
        let on = self.db.clone();
        let (record, carried) = self
            .db
            .blocking(move || db::begin_group(&on, next, role))
            .await?;
        self.outbox.recount()?;
        self.state_machine.set_group(record);
        self.log = log_store::log_store(&self.db, self.faults.durability)?;
        Ok(carried)
    }

    /// A new log store on the room's log, for a raft started again in the
    /// same group (the old raft shut down).
    pub fn reopen_log(&mut self) -> Result<(), StorageError> {
        self.log = log_store::log_store(&self.db, self.faults.durability)?;
        Ok(())
    }
}
