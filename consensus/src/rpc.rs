//! Request/response calls over a one-way peer link.
//!
//! A call is an [`Envelope`] whose payload is an [`RpcFrame`] with a
//! per-node call id; the answer comes back as a frame with the same id and
//! `response = true`. [`RpcMux`] keeps the table of calls in flight
//! (bounded), matches answers to callers, drops answers nobody waits for,
//! and cleans up after a caller that timed out or gave up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::codec::{self, CodecError, Envelope, EnvelopeKind};
use crate::ports::{LinkError, PeerLink, WallClock};
use crate::types::NodeId;

/// Most calls a node has in flight at once.
pub const MAX_PENDING_CALLS: usize = 16 * 1024;

/// The payload of a call or its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcFrame {
    pub id: u64,
    pub response: bool,
    pub body: Vec<u8>,
}

/// A call that failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no answer from node {to} within {after:?}")]
    Timeout { to: NodeId, after: Duration },
    #[error("too many calls in flight ({MAX_PENDING_CALLS})")]
    Overloaded,
    #[error("the call was abandoned: this node is shutting down")]
    Abandoned,
}

/// A request that arrived for this node's services.
#[derive(Debug)]
pub struct IncomingRequest {
    pub kind: EnvelopeKind,
    pub from: NodeId,
    pub id: u64,
    pub body: Vec<u8>,
}

/// Why an incoming frame was dropped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("frame claims to be from node {claimed} but came over the link of node {peer}")]
    Spoofed { claimed: NodeId, peer: NodeId },
    #[error("frame addressed to node {to}, this is node {local}")]
    Misrouted { to: NodeId, local: NodeId },
}

type Pending = BTreeMap<u64, (NodeId, oneshot::Sender<Vec<u8>>)>;

/// Matches calls with answers for one node.
pub struct RpcMux {
    link: Arc<dyn PeerLink>,
    clock: Arc<dyn WallClock>,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
}

/// Removes a call from the table when its caller stops waiting.
struct PendingGuard<'a> {
    mux: &'a RpcMux,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.mux.lock_pending().remove(&self.id);
    }
}

impl RpcMux {
    pub fn new(link: Arc<dyn PeerLink>, clock: Arc<dyn WallClock>) -> Self {
        Self {
            link,
            clock,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.link.local_id()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so recover.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of calls waiting for an answer.
    pub fn pending_calls(&self) -> usize {
        self.lock_pending().len()
    }

    fn frame(&self, kind: EnvelopeKind, to: NodeId, rpc: &RpcFrame) -> Result<Vec<u8>, CodecError> {
        codec::encode_frame(&Envelope {
            kind,
            from: self.local_id(),
            to,
            timestamp: self.clock.now_ms(),
            payload: codec::to_bytes(rpc)?,
        })
    }

    /// Sends `body` to `to` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        kind: EnvelopeKind,
        to: NodeId,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.frame(
            kind,
            to,
            &RpcFrame {
                id,
                response: false,
                body,
            },
        )?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if pending.len() >= MAX_PENDING_CALLS {
                return Err(RpcError::Overloaded);
            }
            pending.insert(id, (to, tx));
        }
        let _guard = PendingGuard { mux: self, id };
        let exchange = async {
            self.link.send(to, frame).await?;
            rx.await.map_err(|_| RpcError::Abandoned)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout { to, after: timeout }),
        }
    }

    /// Answers call `id` from node `to`.
    pub async fn respond(
        &self,
        kind: EnvelopeKind,
        to: NodeId,
        id: u64,
        body: Vec<u8>,
    ) -> Result<(), RpcError> {
        let frame = self.frame(
            kind,
            to,
            &RpcFrame {
                id,
                response: true,
                body,
            },
        )?;
        self.link.send(to, frame).await?;
        Ok(())
    }

    /// Takes one frame from the link: answers go to their callers (and
    /// `Ok(None)` is returned), requests are returned for a service.
    pub fn on_frame(
        &self,
        incoming: crate::ports::IncomingFrame,
    ) -> Result<Option<IncomingRequest>, FrameError> {
        let env = codec::decode_frame(&incoming.frame)?;
        if env.from != incoming.peer {
            return Err(FrameError::Spoofed {
                claimed: env.from,
                peer: incoming.peer,
            });
        }
        let local = self.local_id();
        if env.to != local {
            return Err(FrameError::Misrouted { to: env.to, local });
        }
        let rpc: RpcFrame = codec::from_bytes(&env.payload)?;
        if rpc.response {
            let mut pending = self.lock_pending();
            // Only the node we called may answer a call.
            if pending.get(&rpc.id).is_some_and(|(to, _)| *to == env.from) {
                if let Some((_, tx)) = pending.remove(&rpc.id) {
                    // The caller may have given up; then the answer is dropped.
                    let _ = tx.send(rpc.body);
                }
            } else {
                tracing::debug!(
                    id = rpc.id,
                    from = env.from,
                    "answer to no pending call dropped"
                );
            }
            return Ok(None);
        }
        Ok(Some(IncomingRequest {
            kind: env.kind,
            from: env.from,
            id: rpc.id,
            body: rpc.body,
        }))
    }
}
