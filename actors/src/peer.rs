//! The peer actor: one per remote node of a room, holding the state of the
//! link to it for the UI. The mesh actor (`crate::mesh`) runs the link
//! itself (signalling, reconnects with backoff) and reports its state here.

use actix::prelude::*;
use skygit_consensus::NodeId;

/// The state of the link to one peer, as shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ConnectionState {
    New,
    Connecting,
    Connected,
    /// The link failed; a reconnect is scheduled.
    Failed,
    Closed,
}

/// The link's state changed (sent by the transport).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StateChanged(pub ConnectionState);

/// A round-trip time sample in microseconds.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RttSample(pub u64);

/// The link's state and last RTT.
#[derive(Message)]
#[rtype(result = "PeerInfo")]
pub struct GetPeerInfo;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub state: ConnectionState,
    pub rtt_us: Option<u64>,
}

pub struct PeerActor {
    info: PeerInfo,
    span: tracing::Span,
}

impl PeerActor {
    pub fn new(node_id: NodeId, room: &str) -> Self {
        Self {
            info: PeerInfo {
                node_id,
                state: ConnectionState::New,
                rtt_us: None,
            },
            span: tracing::info_span!("peer", room, peer = node_id),
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;
}

impl Handler<StateChanged> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: StateChanged, _ctx: &mut Self::Context) {
        let _e = self.span.enter();
        tracing::info!(from = ?self.info.state, to = ?msg.0, "peer connection state");
        self.info.state = msg.0;
    }
}

impl Handler<RttSample> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: RttSample, _ctx: &mut Self::Context) {
        self.info.rtt_us = Some(msg.0);
    }
}

impl Handler<GetPeerInfo> for PeerActor {
    type Result = MessageResult<GetPeerInfo>;
    fn handle(&mut self, _: GetPeerInfo, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.info.clone())
    }
}
