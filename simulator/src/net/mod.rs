//! The simulated network: every node's [`PeerLink`] and [`PeerTransport`]
//! in one process, with seeded latency, loss (as retransmission delay),
//! connection set-up time, blocked directions, partitions and crashes.
//!
//! # Model
//!
//! Each node keeps at most one link *end* per peer, as the real WebRTC mesh
//! does (`skygit-mesh`). An end belongs to a *generation*: every offer makes
//! a new one, carried by the offer and its answer, and every deferred action
//! (a connection completing, a frame arriving, a close or failure noticed by
//! the peer) names the generation it belongs to and is ignored when the end
//! has moved on. A new offer or answer replaces the end silently (the
//! replaced link's events are never reported); when the replaced end was
//! open, the peer learns of it one latency later (`Closed`), as it would
//! when the old data channel closes.
//!
//! A link opens a seeded delay after `accept_answer` when both ends still
//! hold the same generation and neither direction is blocked; both nodes then
//! get [`TransportEvent::Open`]. Otherwise nothing is reported and the mesh
//! actor times the attempt out itself.
//!
//! Each direction of an open link is an ordered, reliable channel: one
//! delivery task consumes a FIFO of `(deliver_at, frame)`, where
//! `deliver_at = max(now + latency (+ retransmit when the loss draw hits),
//! previous deliver_at)`. A frame due on a blocked direction is held until
//! the direction is unblocked (then it goes after a fresh latency, and the
//! frames behind it no earlier), unless the link fails first. A direction
//! that stays blocked for `fail_detect` fails the link on both sides.
//!
//! # Choices
//!
//! - Backpressure: [`PeerLink::send`] waits while the directed link's queue
//!   ([`LINK_QUEUE_FRAMES`]) is full, as the real mesh does (the port's
//!   contract); it fails with [`LinkError::Closed`] when the link ends
//!   while it waits. A delivery task likewise waits while the receiver's
//!   incoming channel ([`INCOMING_FRAMES`]) is full (SCTP flow control).
//! - Events: each node's event channel is bounded ([`EVENT_QUEUE`]); events
//!   are pushed with `try_send` under the world lock (never blocking it), and
//!   an event that does not fit is counted ([`NetStats::events_dropped`])
//!   and traced (`net.event_drop`). A consumer 1024 events behind is stuck.
//! - `close(peer)` reports `Closed(peer)` to the closing node too when its
//!   end had not already ended, as `skygit-mesh` does; the peer's open end
//!   gets `Closed` one latency later.
//! - A crashed node's peers keep their ends open (sends succeed, frames are
//!   dropped) until `fail_detect` has passed, then get `Failed`.
//! - Handles of a detached (or re-attached) node's earlier incarnation are
//!   inert: `send` answers `Unreachable`, transport calls answer errors.
//!
//! Every random draw comes from one seeded ChaCha8 generator under the
//! world lock, the world lives in `BTreeMap`s, and time is tokio's (paused
//! in the simulator), so a run replays from its seed.

mod endpoint;
mod sdp;
mod tasks;

use endpoint::*;
use sdp::*;
use tasks::*;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skygit_actors::ports::{
    IncomingFrame, LinkError, LinkInfo, PeerLink, PeerTransport, TransportEvent,
};
use skygit_consensus::codec::MAX_FRAME_BYTES;
use skygit_consensus::NodeId;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::trace::Trace;

/// Capacity of a node's incoming-frame channel (as the real mesh).
pub const INCOMING_FRAMES: usize = 4096;
/// Capacity of a node's transport-event channel (as the real mesh).
pub const EVENT_QUEUE: usize = 1024;
/// Frames one direction of a link holds (in flight or held) before `send`
/// waits.
pub const LINK_QUEUE_FRAMES: usize = 65_536;
/// Longest session description the simulated transport accepts.
pub const MAX_SDP_BYTES: usize = 1024;
/// Longest fingerprint an offer may expect.
const MAX_FINGERPRINT_BYTES: usize = 256;
/// First word of every simulated session description.
const SDP_PREFIX: &str = "skygit-sim-sdp/1";

/// The fingerprint the simulated transport of node `id` presents.
pub fn fingerprint_of(id: NodeId) -> String {
    format!("sim-fp-{id}")
}

/// How one link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// One-way delay, uniform in `[latency_min, latency_max]`.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Chance a frame is lost once and retransmitted: on a reliable channel
    /// it arrives later (by `retransmit`), still in order.
    pub loss: f64,
    /// Extra delay of a retransmitted frame.
    pub retransmit: Duration,
    /// Time from `accept_answer` to `Open` on both sides, uniform.
    pub connect_min: Duration,
    pub connect_max: Duration,
    /// How long a node takes to notice a dead or unreachable peer (the
    /// ICE/SCTP timeout).
    pub fail_detect: Duration,
}

impl Default for LinkModel {
    /// A LAN: 1–20 ms, 1% loss retransmitted after 200 ms, 50–400 ms to
    /// connect, 10 s to notice a dead peer.
    fn default() -> Self {
        Self {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(20),
            loss: 0.01,
            retransmit: Duration::from_millis(200),
            connect_min: Duration::from_millis(50),
            connect_max: Duration::from_millis(400),
            fail_detect: Duration::from_secs(10),
        }
    }
}

/// Counters of the whole network.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NetStats {
    /// Frames accepted by `send`.
    pub frames_sent: u64,
    pub frames_delivered: u64,
    /// Frames of links that ended (closed, failed, replaced, crashed peer).
    pub frames_dropped: u64,
    pub bytes_delivered: u64,
    pub links_opened: u64,
    pub links_failed: u64,
    /// Frames the loss draw hit (delivered later).
    pub retransmits: u64,
    /// Transport events a full (or dropped) event channel did not take.
    pub events_dropped: u64,
}

/// What a node gets when it joins the network.
pub struct NodeNet {
    pub link: Arc<dyn PeerLink>,
    pub incoming: mpsc::Receiver<IncomingFrame>,
    pub transport: Arc<dyn PeerTransport>,
    pub events: mpsc::Receiver<TransportEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndState {
    /// An offer was made; its answer is awaited.
    Offered,
    /// An offer was answered; the connection is awaited.
    Answered,
    /// The answer was accepted; the connection is under way.
    Connecting,
    Open,
    Failed,
    /// Closed by the peer (an end closed here leaves the table).
    Closed,
}

impl EndState {
    fn name(self) -> &'static str {
        match self {
            EndState::Offered | EndState::Answered | EndState::Connecting => "connecting",
            EndState::Open => "open",
            EndState::Failed => "failed",
            EndState::Closed => "closed",
        }
    }

    fn ended(self) -> bool {
        matches!(self, EndState::Failed | EndState::Closed)
    }
}

struct Queued {
    at: Instant,
    frame: Vec<u8>,
}

/// The sending half of one direction of an open link.
struct DirLink {
    tx: mpsc::Sender<Queued>,
    last_at: Instant,
}

/// One node's end of its link to a peer.
struct End {
    generation: u64,
    state: EndState,
    /// The fingerprint the peer must present.
    expected_fp: String,
    /// Set while open.
    out: Option<DirLink>,
}

struct NodeState {
    incarnation: u64,
    incoming: mpsc::Sender<IncomingFrame>,
    events: mpsc::Sender<TransportEvent>,
}

struct World {
    rng: ChaCha8Rng,
    default_model: LinkModel,
    /// Per-pair models, keyed by (smaller id, larger id).
    models: BTreeMap<(NodeId, NodeId), LinkModel>,
    nodes: BTreeMap<NodeId, NodeState>,
    next_incarnation: u64,
    /// Link ends by (owner, peer).
    ends: BTreeMap<(NodeId, NodeId), End>,
    /// Blocked directions (from, to) with the epoch of the block.
    blocked: BTreeMap<(NodeId, NodeId), u64>,
    next_epoch: u64,
    next_generation: u64,
    stats: NetStats,
    trace: Trace,
}

struct Shared {
    world: Mutex<World>,
    /// Woken whenever a held frame or notice may proceed or be dropped
    /// (unblock, heal, a link ending, a crash).
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic under the lock leaves at worst a half-applied fault; the
        // world stays usable for the report.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl World {
    fn model(&self, a: NodeId, b: NodeId) -> LinkModel {
        self.models
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.default_model)
    }

    fn uniform(&mut self, min: Duration, max: Duration) -> Duration {
        let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
        Duration::from_nanos(self.rng.random_range(nanos(lo)..=nanos(hi)))
    }

    fn latency(&mut self, a: NodeId, b: NodeId) -> Duration {
        let m = self.model(a, b);
        self.uniform(m.latency_min, m.latency_max)
    }

    /// A frame's delay: latency, plus the retransmission delay when the
    /// loss draw hits (second element).
    fn frame_delay(&mut self, a: NodeId, b: NodeId) -> (Duration, bool) {
        let m = self.model(a, b);
        let latency = self.uniform(m.latency_min, m.latency_max);
        let p = if m.loss.is_finite() {
            m.loss.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let lost = self.rng.random_bool(p);
        if lost {
            (latency.saturating_add(m.retransmit), true)
        } else {
            (latency, false)
        }
    }

    fn current(&self, id: NodeId, incarnation: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.incarnation == incarnation)
    }

    fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains_key(&(from, to))
    }

    fn end_in(&self, me: NodeId, peer: NodeId, generation: u64, state: EndState) -> bool {
        self.ends
            .get(&(me, peer))
            .is_some_and(|e| e.generation == generation && e.state == state)
    }

    /// Both ends of generation `generation` are open.
    fn link_open(&self, a: NodeId, b: NodeId, generation: u64) -> bool {
        self.end_in(a, b, generation, EndState::Open)
            && self.end_in(b, a, generation, EndState::Open)
    }

    fn emit(&mut self, node: NodeId, event: TransportEvent) {
        let Some(n) = self.nodes.get(&node) else {
            return;
        };
        if let Err(e) = n.events.try_send(event) {
            self.stats.events_dropped += 1;
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "full",
                mpsc::error::TrySendError::Closed(_) => "no receiver",
            };
            self.trace.event(node, "net.event_drop", why);
        }
    }

    /// Ends `me`'s open end to `peer` (of `generation` when given) as
    /// failed and reports it. Returns whether it did.
    fn fail_end(
        &mut self,
        me: NodeId,
        peer: NodeId,
        generation: Option<u64>,
        reason: &str,
    ) -> bool {
        let Some(end) = self.ends.get_mut(&(me, peer)) else {
            return false;
        };
        if end.state != EndState::Open || generation.is_some_and(|g| g != end.generation) {
            return false;
        }
        end.state = EndState::Failed;
        end.out = None;
        self.trace
            .event(me, "net.fail", format_args!("{me}-{peer} {reason}"));
        self.emit(
            me,
            TransportEvent::Failed {
                peer,
                reason: reason.to_owned(),
            },
        );
        true
    }

    /// Fails both ends of the open link between `a` and `b`.
    fn fail_pair(&mut self, a: NodeId, b: NodeId, reason: &str) -> bool {
        let x = self.fail_end(a, b, None, reason);
        let y = self.fail_end(b, a, None, reason);
        if x || y {
            self.stats.links_failed += 1;
        }
        x || y
    }

    fn drop_frame(&mut self, from: NodeId, to: NodeId, len: usize, why: &str) {
        self.stats.frames_dropped += 1;
        self.trace
            .event(to, "net.drop", format_args!("{from}->{to} {len} {why}"));
    }

    /// Installs `end` as `me`'s end to `peer`, replacing any earlier one
    /// silently; an open one's peer learns one latency later.
    /// `me` refuses `peer`'s certificate: traced and reported; answers
    /// the error for the caller.
    fn refuse(&mut self, me: NodeId, peer: NodeId, reason: String) -> String {
        self.trace
            .event(me, "net.refuse", format_args!("{me}-{peer} {reason}"));
        let err = format!("peer {peer} refused: {reason}");
        self.emit(me, TransportEvent::Refused { peer, reason });
        err
    }

    fn install(&mut self, shared: &Arc<Shared>, me: NodeId, peer: NodeId, end: End) {
        let new_generation = end.generation;
        if let Some(old) = self.ends.insert((me, peer), end) {
            if old.state == EndState::Open {
                self.trace.event(
                    me,
                    "net.close",
                    format_args!(
                        "{me}-{peer} gen={} replaced by gen={new_generation}",
                        old.generation
                    ),
                );
                self.notify_close(shared, me, peer, old.generation);
            }
        }
    }

    /// The peer's end of `generation` learns that `me` closed it, after
    /// one latency (held while the direction is blocked).
    fn notify_close(&mut self, shared: &Arc<Shared>, me: NodeId, peer: NodeId, generation: u64) {
        let delay = self.latency(me, peer);
        tokio::spawn(close_notice(shared.clone(), me, peer, generation, delay));
    }

    /// Opens the link of `generation` between offerer `a` and answerer `b`.
    fn open(&mut self, shared: &Arc<Shared>, a: NodeId, b: NodeId, generation: u64) {
        let now = Instant::now();
        for (me, peer) in [(a, b), (b, a)] {
            let (tx, rx) = mpsc::channel(LINK_QUEUE_FRAMES);
            if let Some(end) = self.ends.get_mut(&(me, peer)) {
                end.state = EndState::Open;
                end.out = Some(DirLink { tx, last_at: now });
                tokio::spawn(deliver(shared.clone(), me, peer, generation, rx));
            }
        }
        self.stats.links_opened += 1;
        self.trace
            .event(a, "net.open", format_args!("{a}-{b} gen={generation}"));
        self.emit(a, TransportEvent::Open(b));
        self.emit(b, TransportEvent::Open(a));
    }

    /// Node `id` is gone: its ends vanish, its peers' open ends fail after
    /// `fail_detect`.
    fn remove_node(&mut self, shared: &Arc<Shared>, id: NodeId) -> bool {
        let was = self.nodes.remove(&id).is_some();
        let mine: Vec<(NodeId, NodeId)> = self
            .ends
            .range((id, NodeId::MIN)..=(id, NodeId::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in mine {
            self.ends.remove(&k);
        }
        let theirs: Vec<(NodeId, u64)> = self
            .ends
            .iter()
            .filter(|((_, peer), e)| *peer == id && e.state == EndState::Open)
            .map(|((me, _), e)| (*me, e.generation))
            .collect();
        for (peer, generation) in theirs {
            let delay = self.model(peer, id).fail_detect;
            tokio::spawn(dead_peer_notice(
                shared.clone(),
                peer,
                id,
                generation,
                delay,
            ));
        }
        was
    }

    /// Blocks or unblocks `from -> to`; a new block arms its watchdog.
    /// Returns whether anything changed.
    fn set_block(&mut self, shared: &Arc<Shared>, from: NodeId, to: NodeId, on: bool) -> bool {
        if from == to {
            return false;
        }
        if !on {
            return self.blocked.remove(&(from, to)).is_some();
        }
        if self.blocked.contains_key(&(from, to)) {
            return false;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.blocked.insert((from, to), epoch);
        let delay = self.model(from, to).fail_detect;
        tokio::spawn(block_watchdog(shared.clone(), from, to, epoch, delay));
        true
    }
}

/// The simulated network shared by every node of a run. Cheap to clone.
/// Its methods must be called inside the simulation's tokio runtime.
#[derive(Clone)]
pub struct SimNet {
    shared: Arc<Shared>,
}

impl SimNet {
    /// A network drawing every random choice from `seed`.
    pub fn new(seed: u64, model: LinkModel, trace: Trace) -> Self {
        Self {
            shared: Arc::new(Shared {
                world: Mutex::new(World {
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    default_model: model,
                    models: BTreeMap::new(),
                    nodes: BTreeMap::new(),
                    next_incarnation: 1,
                    ends: BTreeMap::new(),
                    blocked: BTreeMap::new(),
                    next_epoch: 1,
                    next_generation: 1,
                    stats: NetStats::default(),
                    trace,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Node `id` joins (first start or restart after a crash); a new attach
    /// replaces any earlier one for `id` (as a crash would: its old
    /// receivers are dropped, its old handles go inert).
    pub fn attach(&self, id: NodeId) -> NodeNet {
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_FRAMES);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let incarnation = {
            let mut w = self.shared.lock();
            let replaced = w.remove_node(&self.shared, id);
            let incarnation = w.next_incarnation;
            w.next_incarnation += 1;
            w.nodes.insert(
                id,
                NodeState {
                    incarnation,
                    incoming: incoming_tx,
                    events: events_tx,
                },
            );
            w.trace.event(
                id,
                "net.attach",
                format_args!("incarnation={incarnation} replaced={replaced}"),
            );
            incarnation
        };
        self.shared.changed.notify_waiters();
        let endpoint = Arc::new(Endpoint {
            shared: self.shared.clone(),
            id,
            incarnation,
        });
        NodeNet {
            link: endpoint.clone(),
            incoming,
            transport: endpoint,
            events,
        }
    }

    /// Node `id` crashed: its links vanish at once on its side; each peer
    /// with an open link to it gets `Failed` after `fail_detect` (unless
    /// that link was replaced meanwhile); frames in flight to or from it
    /// are dropped.
    pub fn detach(&self, id: NodeId) {
        {
            let mut w = self.shared.lock();
            if w.remove_node(&self.shared, id) {
                w.trace.event(id, "net.detach", "");
            }
        }
        self.shared.changed.notify_waiters();
    }

    /// Blocks (or unblocks) the direction `from -> to`. Frames due on a
    /// blocked direction are held and delivered in order after unblocking,
    /// unless the link fails first: a direction blocked for `fail_detect`
    /// fails the link on both sides. No link opens while either of its
    /// directions is blocked.
    pub fn block(&self, from: NodeId, to: NodeId, blocked: bool) {
        {
            let mut w = self.shared.lock();
            if w.set_block(&self.shared, from, to, blocked) {
                let state = if blocked { "on" } else { "off" };
                w.trace
                    .event(0, "net.block", format_args!("{from}->{to} {state}"));
            }
        }
        self.shared.changed.notify_waiters();
    }

    /// Blocks both directions between every node of `a` and every node of
    /// `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut w = self.shared.lock();
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    if w.set_block(&self.shared, from, to, true) {
                        w.trace
                            .event(0, "net.block", format_args!("{from}->{to} on"));
                    }
                }
            }
        }
    }

    /// Unblocks everything.
    pub fn heal(&self) {
        {
            let mut w = self.shared.lock();
            let n = w.blocked.len();
            w.blocked.clear();
            w.trace
                .event(0, "net.heal", format_args!("{n} directions unblocked"));
        }
        self.shared.changed.notify_waiters();
    }

    /// Fails the open link between `a` and `b` now (both sides get
    /// `Failed`).
    pub fn fail_link(&self, a: NodeId, b: NodeId) {
        let failed = self.shared.lock().fail_pair(a, b, "link failed (injected)");
        if failed {
            self.shared.changed.notify_waiters();
        }
    }

    /// Replaces the model of the link between `a` and `b` (both
    /// directions).
    pub fn set_link_model(&self, a: NodeId, b: NodeId, model: LinkModel) {
        self.shared.lock().models.insert(pair(a, b), model);
    }

    /// Replaces the model of every link without a model of its own.
    pub fn set_default_model(&self, model: LinkModel) {
        self.shared.lock().default_model = model;
    }

    /// Whether `a` and `b` have an open link (both ends consider it open,
    /// in the same generation).
    pub fn is_open(&self, a: NodeId, b: NodeId) -> bool {
        let w = self.shared.lock();
        w.ends
            .get(&(a, b))
            .is_some_and(|e| w.link_open(a, b, e.generation))
    }

    /// The network's counters.
    pub fn stats(&self) -> NetStats {
        self.shared.lock().stats.clone()
    }
}

#[cfg(test)]
mod tests;
