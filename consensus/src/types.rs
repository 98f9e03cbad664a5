//! The openraft type configuration of a room's raft group.
//!
//! Application data is a [`ChatRequest`], the response an [`ApplyOutcome`].
//! Node ids are `u64` and never reused: a re-formed group takes new ids.
//! Snapshots travel as one byte buffer, chunked on the wire by
//! [`crate::network`].

use crate::model::{ApplyOutcome, ChatRequest};

openraft::declare_raft_types!(
    /// The raft types of a skygit room.
    pub TypeConfig:
        D = ChatRequest,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        AsyncRuntime = crate::rt::RaftRuntime,
);

/// A raft node id. Unique per room for all time.
pub type NodeId = u64;

/// The bytes of a state-machine snapshot.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

pub type Raft<SM> = openraft::Raft<TypeConfig, SM>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
