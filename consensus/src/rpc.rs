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
    #[serde(with = "serde_bytes")]
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
    #[error("the link to node {to} went down before it answered")]
    LinkDown { to: NodeId },
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
    #[error("frame of group epoch {theirs} from node {from}, this node is in epoch {ours}")]
    OtherEpoch {
        from: NodeId,
        theirs: u64,
        ours: u64,
        kind: EnvelopeKind,
        /// The call id when the frame was a call (it may be answered with a
        /// notice of this node's epoch), `None` for an answer.
        call: Option<u64>,
    },
}

type Pending = BTreeMap<u64, (NodeId, oneshot::Sender<Result<Vec<u8>, RpcError>>)>;

/// Matches calls with answers for one node.
pub struct RpcMux {
    link: Arc<dyn PeerLink>,
    clock: Arc<dyn WallClock>,
    /// The raft group epoch stamped on every frame and required of every
    /// frame taken.
    epoch: u64,
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
        Self::in_epoch(link, clock, 0)
    }

    /// A multiplexer for the raft group of `epoch`.
    pub fn in_epoch(link: Arc<dyn PeerLink>, clock: Arc<dyn WallClock>, epoch: u64) -> Self {
        Self {
            link,
            clock,
            epoch,
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
            epoch: self.epoch,
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
            rx.await.map_err(|_| RpcError::Abandoned)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout { to, after: timeout }),
        }
    }

    /// Fails every call waiting for an answer from `peer` (its link went
    /// down, so no answer will come) instead of letting each wait out its
    /// timeout. Returns how many there were.
    pub fn link_down(&self, peer: NodeId) -> usize {
        let mut pending = self.lock_pending();
        let ids: Vec<u64> = pending
            .iter()
            .filter(|(_, (to, _))| *to == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some((to, tx)) = pending.remove(id) {
                // The caller may have given up already.
                let _ = tx.send(Err(RpcError::LinkDown { to }));
            }
        }
        ids.len()
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
        if env.epoch != self.epoch {
            return Err(FrameError::OtherEpoch {
                from: env.from,
                theirs: env.epoch,
                ours: self.epoch,
                kind: env.kind,
                call: (!rpc.response).then_some(rpc.id),
            });
        }
        if rpc.response {
            let mut pending = self.lock_pending();
            // Only the node we called may answer a call.
            if pending.get(&rpc.id).is_some_and(|(to, _)| *to == env.from) {
                if let Some((_, tx)) = pending.remove(&rpc.id) {
                    // The caller may have given up; then the answer is dropped.
                    let _ = tx.send(Ok(rpc.body));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{IncomingFrame, LinkError, PeerLink, SystemClock};
    use futures::future::BoxFuture;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// Nodes that all reach each other: the multiplexer needs no more.
    #[derive(Clone, Default)]
    struct InProcNet(Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<IncomingFrame>>>>);

    struct Link(NodeId, InProcNet);

    impl PeerLink for Link {
        fn local_id(&self) -> NodeId {
            self.0
        }
        fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
            let inbox = self.1 .0.lock().unwrap().get(&to).cloned();
            let peer = self.0;
            Box::pin(async move {
                let inbox = inbox.ok_or(LinkError::Unreachable(to))?;
                inbox
                    .send(IncomingFrame { peer, frame })
                    .await
                    .map_err(|_| LinkError::Closed(to))
            })
        }
    }

    impl InProcNet {
        fn new() -> Self {
            Self::default()
        }
    }

    fn mux(net: &InProcNet, id: NodeId) -> (RpcMux, mpsc::Receiver<IncomingFrame>) {
        let (tx, rx) = mpsc::channel(64);
        net.0.lock().unwrap().insert(id, tx);
        let link = Arc::new(Link(id, net.clone()));
        (RpcMux::new(link, Arc::new(SystemClock)), rx)
    }

    #[tokio::test]
    async fn a_call_gets_its_answer_and_leaves_no_pending_entry() {
        let net = InProcNet::new();
        let (a, _rx_a) = mux(&net, 1);
        let (b, mut rx_b) = mux(&net, 2);
        let a = Arc::new(a);
        let caller = {
            let a = a.clone();
            tokio::spawn(async move {
                a.call(
                    EnvelopeKind::Chat,
                    2,
                    b"ping".to_vec(),
                    Duration::from_secs(5),
                )
                .await
            })
        };
        let req = b.on_frame(rx_b.recv().await.unwrap()).unwrap().unwrap();
        assert_eq!((req.from, req.body.as_slice()), (1, &b"ping"[..]));
        b.respond(EnvelopeKind::Chat, 1, req.id, b"pong".to_vec())
            .await
            .unwrap();
        // Deliver the answer to node 1's mux.
        let mut rx_a = _rx_a;
        assert!(a.on_frame(rx_a.recv().await.unwrap()).unwrap().is_none());
        assert_eq!(caller.await.unwrap().unwrap(), b"pong");
        assert_eq!(a.pending_calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_going_down_fails_only_the_calls_to_that_peer() {
        let net = InProcNet::new();
        let (a, _rx_a) = mux(&net, 1);
        let (_b, mut rx_b) = mux(&net, 2);
        let (_c, mut rx_c) = mux(&net, 3);
        let a = Arc::new(a);
        let call = |to| {
            let a = a.clone();
            tokio::spawn(async move {
                a.call(EnvelopeKind::Chat, to, vec![], Duration::from_secs(60))
                    .await
            })
        };
        let to_b = call(2);
        let to_c = call(3);
        // Both calls are out.
        rx_b.recv().await.unwrap();
        rx_c.recv().await.unwrap();
        assert_eq!(a.pending_calls(), 2);

        assert_eq!(a.link_down(2), 1);
        let r = to_b.await.unwrap();
        assert!(matches!(r, Err(RpcError::LinkDown { to: 2 })), "{r:?}");
        assert_eq!(a.pending_calls(), 1, "the call to node 3 still waits");
        assert_eq!(a.link_down(2), 0);
        assert_eq!(a.link_down(3), 1);
        let r = to_c.await.unwrap();
        assert!(matches!(r, Err(RpcError::LinkDown { to: 3 })), "{r:?}");
        assert_eq!(a.pending_calls(), 0);
    }

    /// Raft and chat traffic of another group epoch is never delivered;
    /// the refusal says which epochs, and whether it was a call.
    #[tokio::test(start_paused = true)]
    async fn frames_of_another_epoch_are_refused_and_named() {
        let net = InProcNet::new();
        let (tx_a, mut rx_a) = mpsc::channel(64);
        net.0.lock().unwrap().insert(1, tx_a);
        let old = Arc::new(RpcMux::in_epoch(
            Arc::new(Link(1, net.clone())),
            Arc::new(SystemClock),
            4,
        ));
        let (tx_b, mut rx_b) = mpsc::channel(64);
        net.0.lock().unwrap().insert(2, tx_b);
        let new = RpcMux::in_epoch(Arc::new(Link(2, net.clone())), Arc::new(SystemClock), 5);
        let caller = {
            let old = old.clone();
            tokio::spawn(async move {
                old.call(
                    EnvelopeKind::Raft,
                    2,
                    b"vote".to_vec(),
                    Duration::from_secs(1),
                )
                .await
            })
        };
        let e = new.on_frame(rx_b.recv().await.unwrap()).unwrap_err();
        let FrameError::OtherEpoch {
            from: 1,
            theirs: 4,
            ours: 5,
            kind: EnvelopeKind::Raft,
            call: Some(id),
        } = e
        else {
            panic!("{e}");
        };
        // The notice: an answer stamped with the newer epoch, which the
        // older node reads as a hint and does not deliver.
        new.respond(EnvelopeKind::Raft, 1, id, Vec::new())
            .await
            .unwrap();
        let e = old.on_frame(rx_a.recv().await.unwrap()).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::OtherEpoch {
                    from: 2,
                    theirs: 5,
                    ours: 4,
                    call: None,
                    ..
                }
            ),
            "{e}"
        );
        let r = caller.await.unwrap();
        assert!(matches!(r, Err(RpcError::Timeout { .. })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_times_out_and_is_forgotten() {
        let net = InProcNet::new();
        let (a, _rx_a) = mux(&net, 1);
        let (_b, _rx_b) = mux(&net, 2);
        let r = a
            .call(EnvelopeKind::Raft, 2, vec![], Duration::from_millis(200))
            .await;
        assert!(matches!(r, Err(RpcError::Timeout { to: 2, .. })), "{r:?}");
        assert_eq!(a.pending_calls(), 0);
    }

    #[tokio::test]
    async fn calls_to_a_missing_node_fail_at_once() {
        let net = InProcNet::new();
        let (a, _rx) = mux(&net, 1);
        let r = a
            .call(EnvelopeKind::Raft, 9, vec![], Duration::from_secs(5))
            .await;
        assert!(
            matches!(r, Err(RpcError::Link(LinkError::Unreachable(9)))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn spoofed_and_misrouted_frames_are_refused() {
        let net = InProcNet::new();
        let (a, _rx) = mux(&net, 1);
        let frame = |from, to| {
            codec::encode_frame(&Envelope {
                kind: EnvelopeKind::Raft,
                from,
                to,
                epoch: 0,
                timestamp: 0,
                payload: codec::to_bytes(&RpcFrame {
                    id: 1,
                    response: false,
                    body: vec![],
                })
                .unwrap(),
            })
            .unwrap()
        };
        let spoofed = IncomingFrame {
            peer: 3,
            frame: frame(2, 1),
        };
        assert!(matches!(
            a.on_frame(spoofed),
            Err(FrameError::Spoofed {
                claimed: 2,
                peer: 3
            })
        ));
        let misrouted = IncomingFrame {
            peer: 2,
            frame: frame(2, 7),
        };
        assert!(matches!(
            a.on_frame(misrouted),
            Err(FrameError::Misrouted { to: 7, local: 1 })
        ));
        let garbage = IncomingFrame {
            peer: 2,
            frame: vec![1, 2, 3],
        };
        assert!(matches!(a.on_frame(garbage), Err(FrameError::Codec(_))));
    }

    #[tokio::test]
    async fn an_answer_from_another_node_is_ignored() {
        let net = InProcNet::new();
        let (a, _rx_a) = mux(&net, 1);
        let a = Arc::new(a);
        let (_b, _rx_b) = mux(&net, 2);
        let caller = {
            let a = a.clone();
            tokio::spawn(async move {
                a.call(EnvelopeKind::Chat, 2, vec![], Duration::from_millis(300))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Node 3 forges an answer to call id 1, which went to node 2.
        let forged = codec::encode_frame(&Envelope {
            kind: EnvelopeKind::Chat,
            from: 3,
            to: 1,
            epoch: 0,
            timestamp: 0,
            payload: codec::to_bytes(&RpcFrame {
                id: 1,
                response: true,
                body: b"forged".to_vec(),
            })
            .unwrap(),
        })
        .unwrap();
        assert!(a
            .on_frame(IncomingFrame {
                peer: 3,
                frame: forged
            })
            .unwrap()
            .is_none());
        assert!(matches!(
            caller.await.unwrap(),
            Err(RpcError::Timeout { .. })
        ));
    }
}
