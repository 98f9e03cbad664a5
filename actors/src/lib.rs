//! skygit's actors and the ports they talk through.
//!
//! Per room and node: a [`consensus::ConsensusActor`] (raft, proposals,
//! outbox, leader changes), a [`presence::PresenceActor`], one
//! [`peer::PeerActor`] per remote node, a [`committer::CommitterActor`]
//! (leader only) and a [`media::MediaActor`]. [`room::start_room`] wires
//! them; [`room::Rooms`] holds the rooms of a node; [`local::LocalCluster`]
//! runs a whole room in one process.
//!
//! Determinism: actors read time and randomness only through [`ports`].

pub mod committer;
pub mod consensus;
pub mod inproc;
pub mod local;
pub mod media;
pub mod membership;
pub mod mesh;
pub mod peer;
pub mod presence;
pub mod reform;
pub mod room;

// The ports, the repository layout and read-back live in `skygit-ports`;
// the actors reach them by their old paths.
pub use skygit_ports as ports;
pub use skygit_ports::{ice, layout, members, readback};
