//! skygit's consensus core: the chat domain, the one wire codec, openraft's
//! type configuration, the chat state machine's logic and the raft network
//! over peer links.
//!
//! Start with [`model`] (what a room holds), then [`chat`] (how a committed
//! request changes it), [`codec`] (every byte that crosses a link),
//! [`network`] and [`replica`] (raft over peer links, proposals forwarded to
//! the leader).

pub mod attachment;
pub mod call;
pub mod chat;
pub mod codec;
pub mod config;
pub mod membership;
pub mod model;
pub mod network;
pub mod ports;
pub mod reform;
pub mod replica;
pub mod rpc;
pub mod rt;
pub mod types;

pub use types::{NodeId, TypeConfig};
