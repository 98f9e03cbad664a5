//! The in-process peer transport: the nodes of a room in one process,
//! linked by bounded tokio channels. It implements the same ports as
//! WebRTC ([`PeerTransport`] and [`PeerLink`]), so an in-process room forms
//! exactly as a real one does: presence, the mesh actor's offers and
//! answers, the membership controller.
//!
//! A link exists only between an offer and its accepted answer, as on a
//! real network: frames to a peer without an open link fail as
//! unreachable. Frames are encoded and decoded exactly as on a real link,
//! so the codec and its limits are exercised. Tests crash nodes
//! ([`InProcNet::leave`]: the peers' links fail) and cut them off
//! ([`InProcNet::isolate`]: their links fail and no new one opens until
//! healed).
//!
//! Session descriptions are `inproc <from> <generation> <fingerprint>`;
//! the fingerprint is the node's id in a fixed form, and an answer or
//! accept whose peer presents another one is refused, as the DTLS check
//! refuses a certificate other than the presence record's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use skygit_consensus::ports::{IncomingFrame, LinkError, PeerLink};
use skygit_consensus::NodeId;
use tokio::sync::mpsc;

use crate::ports::{LinkInfo, PeerTransport, TransportEvent};

/// Frames a node's inbox holds before senders wait.
pub const INBOX_CAPACITY: usize = 4096;
/// Transport events queued for a node's mesh actor.
const EVENT_CAPACITY: usize = 1024;

/// One node's end of a link to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// This node offered (generation).
    Offered(u64),
    /// This node answered the peer's offer (generation).
    Answered(u64),
    /// The link is up (generation).
    Open(u64),
}

impl End {
    fn name(&self) -> &'static str {
        match self {
            End::Offered(_) | End::Answered(_) => "connecting",
            End::Open(_) => "open",
        }
    }
}

struct NodeState {
    inbox: mpsc::Sender<IncomingFrame>,
    events: mpsc::Sender<TransportEvent>,
    /// Which attach this is: handles of an earlier one go inert.
    incarnation: u64,
}

#[derive(Default)]
struct Hub {
    nodes: BTreeMap<NodeId, NodeState>,
    /// `(me, peer)`: my end of the link to `peer`.
    ends: BTreeMap<(NodeId, NodeId), End>,
    isolated: BTreeSet<NodeId>,
    /// Pairs that cannot reach each other (a partition), both ways.
    cut: BTreeSet<(NodeId, NodeId)>,
    next_generation: u64,
    next_incarnation: u64,
}

impl Hub {
    fn emit(&self, to: NodeId, event: TransportEvent) {
        if let Some(n) = self.nodes.get(&to) {
            // A full queue means a mesh actor that stopped reading.
            if n.events.try_send(event).is_err() {
                tracing::warn!(node = to, "in-process transport event dropped");
            }
        }
    }

    fn open_both(&self, a: NodeId, b: NodeId) -> bool {
        matches!(
            (self.ends.get(&(a, b)), self.ends.get(&(b, a))),
            (Some(End::Open(x)), Some(End::Open(y))) if x == y
        )
    }

    /// Ends the link between `a` and `b` on both sides; each side that
    /// had it open hears `Failed`.
    fn fail(&mut self, a: NodeId, b: NodeId, reason: &str) {
        for (me, peer) in [(a, b), (b, a)] {
            if let Some(End::Open(_)) = self.ends.get(&(me, peer)) {
                self.ends.remove(&(me, peer));
                self.emit(
                    me,
                    TransportEvent::Failed {
                        peer,
                        reason: reason.to_owned(),
                    },
                );
            }
        }
    }

    /// Fails every link of `id` and forgets its attempts.
    fn fail_all(&mut self, id: NodeId, reason: &str) {
        let peers: BTreeSet<NodeId> = self
            .ends
            .keys()
            .filter_map(|(a, b)| {
                if *a == id {
                    Some(*b)
                } else if *b == id {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect();
        for p in peers {
            self.fail(id, p, reason);
            self.ends.remove(&(id, p));
            self.ends.remove(&(p, id));
        }
    }

    fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated.contains(&a) || self.isolated.contains(&b) || self.cut.contains(&(a, b))
    }
}

/// The nodes of a room in this process. Cheap to clone.
#[derive(Clone, Default)]
pub struct InProcNet {
    hub: Arc<Mutex<Hub>>,
}

/// What a node gets when it joins: its raft link and incoming frames, and
/// its transport with the transport's events.
pub struct InProcNode {
    pub link: Arc<InProcEndpoint>,
    pub incoming: mpsc::Receiver<IncomingFrame>,
    pub transport: Arc<InProcEndpoint>,
    pub events: mpsc::Receiver<TransportEvent>,
}

/// The fingerprint node `id` presents.
pub fn fingerprint_of(id: NodeId) -> String {
    format!("inproc-{id}")
}

impl InProcNet {
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `id` joins (first start or restart); an earlier attach of the
    /// same id is replaced as a crash would be (its links fail).
    pub fn join(&self, id: NodeId) -> InProcNode {
        let (inbox, incoming) = mpsc::channel(INBOX_CAPACITY);
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let incarnation = {
            let mut hub = self.hub();
            hub.fail_all(id, "the peer restarted");
            hub.next_incarnation += 1;
            let incarnation = hub.next_incarnation;
            hub.nodes.insert(
                id,
                NodeState {
                    inbox,
                    events: events_tx,
                    incarnation,
                },
            );
            incarnation
        };
        let endpoint = Arc::new(InProcEndpoint {
            id,
            incarnation,
            net: self.clone(),
        });
        InProcNode {
            link: endpoint.clone(),
            incoming,
            transport: endpoint,
            events,
        }
    }

    /// Node `id` crashed: it vanishes, and every peer linked to it hears
    /// that the link failed.
    pub fn leave(&self, id: NodeId) {
        let mut hub = self.hub();
        hub.fail_all(id, "the peer vanished");
        hub.nodes.remove(&id);
    }

    /// Cuts node `id` off from every other node (its links fail, none
    /// opens), or heals it (the mesh actors reconnect by themselves).
    pub fn isolate(&self, id: NodeId, isolated: bool) {
        let mut hub = self.hub();
        if isolated {
            hub.isolated.insert(id);
            hub.fail_all(id, "the peer is cut off");
        } else {
            hub.isolated.remove(&id);
        }
    }

    /// Splits the room: the nodes in `side` reach each other, the others
    /// reach each other, and no link crosses (their links fail, none
    /// opens). An empty `side` heals every such split.
    pub fn split(&self, side: &[NodeId]) {
        let mut hub = self.hub();
        if side.is_empty() {
            hub.cut.clear();
            return;
        }
        let others: Vec<NodeId> = hub
            .nodes
            .keys()
            .copied()
            .filter(|id| !side.contains(id))
            .collect();
        for a in side {
            for b in &others {
                hub.cut.insert((*a, *b));
                hub.cut.insert((*b, *a));
                hub.fail(*a, *b, "the peer is on the other side of a partition");
                hub.ends.remove(&(*a, *b));
                hub.ends.remove(&(*b, *a));
            }
        }
    }

    /// Opens a link between two joined nodes without signalling and
    /// without telling either node's mesh actor: what a peer that already
    /// holds an authenticated link sees. For tests of a member that
    /// misbehaves on its link.
    pub fn open_unannounced(&self, a: NodeId, b: NodeId) {
        let mut hub = self.hub();
        hub.next_generation += 1;
        let g = hub.next_generation;
        hub.ends.insert((a, b), End::Open(g));
        hub.ends.insert((b, a), End::Open(g));
    }
}

/// One node's end of an [`InProcNet`]: its [`PeerLink`] and
/// [`PeerTransport`].
pub struct InProcEndpoint {
    id: NodeId,
    incarnation: u64,
    net: InProcNet,
}

/// Parses `inproc <from> <generation> <fingerprint>`.
fn parse_description(s: &str) -> Option<(NodeId, u64, &str)> {
    let mut parts = s.split(' ');
    if parts.next()? != "inproc" {
        return None;
    }
    let from = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    let fingerprint = parts.next()?;
    parts
        .next()
        .is_none()
        .then_some((from, generation, fingerprint))
}

impl InProcEndpoint {
    /// The hub, if this endpoint is still its node's current attach.
    fn current(&self) -> Result<std::sync::MutexGuard<'_, Hub>, String> {
        let hub = self.net.hub();
        match hub.nodes.get(&self.id) {
            Some(n) if n.incarnation == self.incarnation => Ok(hub),
            _ => Err(format!("node {} left the network", self.id)),
        }
    }

    fn do_offer(&self, peer: NodeId, expected: &str) -> Result<String, String> {
        if expected != fingerprint_of(peer) {
            return Err(format!("node {peer}'s record names another fingerprint"));
        }
        let mut hub = self.current()?;
        // A new attempt replaces whatever link there was.
        hub.fail(self.id, peer, "replaced by a new offer");
        hub.next_generation += 1;
        let g = hub.next_generation;
        hub.ends.insert((self.id, peer), End::Offered(g));
        Ok(format!(
            "inproc {} {g} {}",
            self.id,
            fingerprint_of(self.id)
        ))
    }

    fn do_answer(&self, peer: NodeId, offer: &str, expected: &str) -> Result<String, String> {
        let (from, g, fingerprint) =
            parse_description(offer).ok_or_else(|| "malformed in-process offer".to_owned())?;
        if from != peer {
            return Err(format!("an offer from node {from} came as node {peer}'s"));
        }
        if fingerprint != expected {
            return Err(format!(
                "node {peer} presented a fingerprint other than its record's"
            ));
        }
        let mut hub = self.current()?;
        if hub.ends.get(&(peer, self.id)) != Some(&End::Offered(g)) {
            return Err(format!("node {peer}'s offer is stale"));
        }
        hub.fail(self.id, peer, "replaced by a new offer");
        hub.ends.insert((self.id, peer), End::Answered(g));
        Ok(format!(
            "inproc {} {g} {}",
            self.id,
            fingerprint_of(self.id)
        ))
    }

    fn do_accept(&self, peer: NodeId, answer: &str) -> Result<(), String> {
        let (from, g, fingerprint) =
            parse_description(answer).ok_or_else(|| "malformed in-process answer".to_owned())?;
        if from != peer || fingerprint != fingerprint_of(peer) {
            return Err(format!("the answer is not node {peer}'s"));
        }
        let mut hub = self.current()?;
        let mine = hub.ends.get(&(self.id, peer)) == Some(&End::Offered(g));
        let theirs = hub.ends.get(&(peer, self.id)) == Some(&End::Answered(g));
        if !mine || !theirs {
            return Err(format!("the answer from node {peer} is stale"));
        }
        if hub.blocked(self.id, peer) {
            // As on a real network: the attempt never connects; the mesh
            // actor's connect timeout ends it.
            return Ok(());
        }
        hub.ends.insert((self.id, peer), End::Open(g));
        hub.ends.insert((peer, self.id), End::Open(g));
        hub.emit(self.id, TransportEvent::Open(peer));
        hub.emit(peer, TransportEvent::Open(self.id));
        Ok(())
    }

    fn do_close(&self, peer: NodeId) {
        let Ok(mut hub) = self.current() else {
            return;
        };
        let mine = hub.ends.remove(&(self.id, peer));
        if mine.is_some() {
            hub.emit(self.id, TransportEvent::Closed(peer));
        }
        if let (Some(End::Open(g)), Some(End::Open(h))) = (mine, hub.ends.get(&(peer, self.id))) {
            if g == *h {
                hub.ends.remove(&(peer, self.id));
                hub.emit(peer, TransportEvent::Closed(self.id));
            }
        }
    }
}

impl PeerLink for InProcEndpoint {
    fn local_id(&self) -> NodeId {
        self.id
    }

    /// Queues `frame` for `to`: `Unreachable` without an open link; waits
    /// while the peer's inbox is full.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
        let inbox = self.current().ok().and_then(|hub| {
            (hub.open_both(self.id, to) && !hub.blocked(self.id, to))
                .then(|| hub.nodes.get(&to).map(|n| n.inbox.clone()))
                .flatten()
        });
        let from = self.id;
        Box::pin(async move {
            let inbox = inbox.ok_or(LinkError::Unreachable(to))?;
            inbox
                .send(IncomingFrame { peer: from, frame })
                .await
                .map_err(|_| LinkError::Closed(to))
        })
    }
}

impl PeerTransport for InProcEndpoint {
    fn fingerprint(&self) -> String {
        fingerprint_of(self.id)
    }

    fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_offer(peer, &expected_fingerprint) })
    }

    fn answer(
        &self,
        peer: NodeId,
        offer: String,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_answer(peer, &offer, &expected_fingerprint) })
    }

    fn accept_answer(&self, peer: NodeId, answer: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.do_accept(peer, &answer) })
    }

    fn close(&self, peer: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.do_close(peer) })
    }

    fn links(&self) -> Vec<LinkInfo> {
        let Ok(hub) = self.current() else {
            return Vec::new();
        };
        let queued = |peer: NodeId| {
            hub.nodes
                .get(&peer)
                .map_or(0, |n| n.inbox.max_capacity() - n.inbox.capacity())
        };
        hub.ends
            .range((self.id, NodeId::MIN)..=(self.id, NodeId::MAX))
            .map(|((_, peer), end)| {
                let open = hub.open_both(self.id, *peer);
                LinkInfo {
                    peer: *peer,
                    open,
                    state: end.name().to_owned(),
                    rtt_us: open.then_some(0),
                    queued_frames: queued(*peer),
                    path: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(a: &InProcNode, b: &InProcNode, ida: NodeId, idb: NodeId) {
        let offer = a.transport.offer(idb, fingerprint_of(idb)).await.unwrap();
        let answer = b
            .transport
            .answer(ida, offer, fingerprint_of(ida))
            .await
            .unwrap();
        a.transport.accept_answer(idb, answer).await.unwrap();
    }

    #[tokio::test]
    async fn frames_flow_only_over_an_open_link() {
        let net = InProcNet::new();
        let (mut a, mut b) = (net.join(1), net.join(2));
        assert_eq!(
            a.link.send(2, vec![1]).await,
            Err(LinkError::Unreachable(2))
        );
        connect(&a, &b, 1, 2).await;
        assert_eq!(a.events.recv().await, Some(TransportEvent::Open(2)));
        assert_eq!(b.events.recv().await, Some(TransportEvent::Open(1)));
        a.link.send(2, vec![7]).await.unwrap();
        let got = b.incoming.recv().await.unwrap();
        assert_eq!((got.peer, got.frame), (1, vec![7]));
        assert!(a.transport.links()[0].open);
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_or_a_stale_answer_is_refused() {
        let net = InProcNet::new();
        let (a, b) = (net.join(1), net.join(2));
        assert!(a.transport.offer(2, "inproc-9".into()).await.is_err());
        let offer = a.transport.offer(2, fingerprint_of(2)).await.unwrap();
        assert!(b
            .transport
            .answer(1, offer.clone(), "inproc-9".into())
            .await
            .is_err());
        let answer = b
            .transport
            .answer(1, offer, fingerprint_of(1))
            .await
            .unwrap();
        // A newer offer makes the answer stale.
        a.transport.offer(2, fingerprint_of(2)).await.unwrap();
        assert!(a.transport.accept_answer(2, answer).await.is_err());
        assert!(b
            .transport
            .answer(1, "garbage".into(), fingerprint_of(1))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_crash_or_a_cut_fails_the_peers_links() {
        let net = InProcNet::new();
        let (mut a, mut b, mut c) = (net.join(1), net.join(2), net.join(3));
        connect(&a, &b, 1, 2).await;
        connect(&a, &c, 1, 3).await;
        for events in [&mut a.events, &mut b.events, &mut c.events] {
            assert!(matches!(events.recv().await, Some(TransportEvent::Open(_))));
        }
        assert!(matches!(
            a.events.recv().await,
            Some(TransportEvent::Open(_))
        ));
        net.leave(2);
        assert!(matches!(
            a.events.recv().await,
            Some(TransportEvent::Failed { peer: 2, .. })
        ));
        net.isolate(3, true);
        assert!(matches!(
            a.events.recv().await,
            Some(TransportEvent::Failed { peer: 3, .. })
        ));
        assert!(matches!(
            c.events.recv().await,
            Some(TransportEvent::Failed { peer: 1, .. })
        ));
        assert_eq!(
            a.link.send(3, vec![1]).await,
            Err(LinkError::Unreachable(3))
        );
        // While cut off, an attempt never opens; healed, it does.
        connect(&a, &c, 1, 3).await;
        assert!(a.link.send(3, vec![1]).await.is_err());
        net.isolate(3, false);
        connect(&a, &c, 1, 3).await;
        assert_eq!(a.events.recv().await, Some(TransportEvent::Open(3)));
        a.link.send(3, vec![5]).await.unwrap();
        assert_eq!(c.incoming.recv().await.unwrap().frame, vec![5]);
        // A restart (a new join) fails the old incarnation's links, and
        // the old handles go inert.
        let again = net.join(3);
        assert!(matches!(
            a.events.recv().await,
            Some(TransportEvent::Failed { peer: 3, .. })
        ));
        assert!(c.transport.offer(1, fingerprint_of(1)).await.is_err());
        drop(again);
    }
}
