//! The ports the consensus layer needs from the outside world.
//!
//! A port is a trait with a real implementation (WebRTC, the system clock)
//! and a simulated one (the simulator's links and clock). The actors crate
//! re-exports these next to its own ports.

use futures::future::BoxFuture;

use crate::types::NodeId;

/// A frame that arrived over a peer link, with the authenticated id of the
/// peer at the other end of that link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFrame {
    pub peer: NodeId,
    pub frame: Vec<u8>,
}

/// Why a frame could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no link to node {0}")]
    Unreachable(NodeId),
    #[error("link to node {0} is closed")]
    Closed(NodeId),
}

/// Sends framed envelopes to other nodes of the room. Frames from peers
/// arrive on the receiver the transport hands out with the link.
///
/// `send` waits while the link's bounded queue is full: that is the
/// backpressure a slow peer exerts on the traffic addressed to it alone.
pub trait PeerLink: Send + Sync + 'static {
    /// This node's raft id.
    fn local_id(&self) -> NodeId;
    /// Queues one frame for `to`.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>>;
}

/// Wall-clock time for timestamps shown to people (never for timeouts,
/// which use tokio time so the simulator can pause it).
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}
