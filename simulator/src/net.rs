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

/// Delivers one direction of one link generation, in order.
async fn deliver(
    shared: Arc<Shared>,
    from: NodeId,
    to: NodeId,
    generation: u64,
    mut rx: mpsc::Receiver<Queued>,
) {
    // No frame goes before this instant (set when held frames resume).
    let mut floor: Option<Instant> = None;
    while let Some(Queued { at, frame }) = rx.recv().await {
        let len = frame.len();
        let mut at = floor.map_or(at, |f| at.max(f));
        let mut held = false;
        let inbox = loop {
            tokio::time::sleep_until(at).await;
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut w = shared.lock();
                if !w.link_open(from, to, generation) {
                    w.drop_frame(from, to, len, "link ended");
                    break None;
                }
                if !w.is_blocked(from, to) {
                    if held {
                        // Retransmitted once the path is back.
                        held = false;
                        at = Instant::now() + w.latency(from, to);
                        floor = Some(at);
                        continue;
                    }
                    match w.nodes.get(&to) {
                        Some(n) => break Some(n.incoming.clone()),
                        None => {
                            w.drop_frame(from, to, len, "receiver gone");
                            break None;
                        }
                    }
                }
                held = true;
            }
            notified.await;
        };
        let Some(inbox) = inbox else {
            continue;
        };
        let sent = inbox.send(IncomingFrame { peer: from, frame }).await;
        let mut w = shared.lock();
        if sent.is_ok() {
            w.stats.frames_delivered += 1;
            w.stats.bytes_delivered += len as u64;
            w.trace
                .event(to, "net.deliver", format_args!("{from}->{to} {len}"));
        } else {
            w.drop_frame(from, to, len, "receiver gone");
        }
    }
}

/// `peer`'s end of `generation` learns that `closer` closed the link.
async fn close_notice(
    shared: Arc<Shared>,
    closer: NodeId,
    peer: NodeId,
    generation: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut w = shared.lock();
            if !w.end_in(peer, closer, generation, EndState::Open) {
                return;
            }
            if !w.is_blocked(closer, peer) {
                if let Some(end) = w.ends.get_mut(&(peer, closer)) {
                    end.state = EndState::Closed;
                    end.out = None;
                }
                w.trace.event(
                    peer,
                    "net.closed",
                    format_args!("{peer}-{closer} gen={generation}"),
                );
                w.emit(peer, TransportEvent::Closed(closer));
                drop(w);
                shared.changed.notify_waiters();
                return;
            }
        }
        notified.await;
    }
}

/// `peer` notices that `dead` crashed.
async fn dead_peer_notice(
    shared: Arc<Shared>,
    peer: NodeId,
    dead: NodeId,
    generation: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let failed = {
        let mut w = shared.lock();
        let reason = format!("peer unreachable: no answer for {delay:?}");
        let failed = w.fail_end(peer, dead, Some(generation), &reason);
        if failed {
            w.stats.links_failed += 1;
        }
        failed
    };
    if failed {
        shared.changed.notify_waiters();
    }
}

/// Fails the link when `from -> to` stays blocked (same epoch) for `delay`.
async fn block_watchdog(
    shared: Arc<Shared>,
    from: NodeId,
    to: NodeId,
    epoch: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let failed = {
        let mut w = shared.lock();
        if w.blocked.get(&(from, to)) != Some(&epoch) {
            return;
        }
        let reason = format!("{from}->{to} unreachable for {delay:?}");
        w.fail_pair(from, to, &reason)
    };
    if failed {
        shared.changed.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SdpKind {
    Offer,
    Answer,
}

impl fmt::Display for SdpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SdpKind::Offer => "offer",
            SdpKind::Answer => "answer",
        })
    }
}

/// A simulated session description: who offers or answers to whom, for
/// which link generation, presenting which fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sdp {
    kind: SdpKind,
    from: NodeId,
    to: NodeId,
    generation: u64,
    fp: String,
}

impl Sdp {
    fn encode(&self) -> String {
        format!(
            "{SDP_PREFIX} {} from={} to={} gen={} fp={}",
            self.kind, self.from, self.to, self.generation, self.fp
        )
    }

    /// Parses a description that must be of `kind` and sent by `from`
    /// to `to`.
    fn parse_for(s: &str, kind: SdpKind, from: NodeId, to: NodeId) -> Result<Self, String> {
        let sdp = Self::parse(s)?;
        if sdp.kind != kind {
            return Err(format!("expected an {kind}"));
        }
        if sdp.to != to || sdp.from != from {
            return Err(format!(
                "an {kind} from node {} to node {} (expected {from} to {to})",
                sdp.from, sdp.to
            ));
        }
        Ok(sdp)
    }

    fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_SDP_BYTES {
            return Err(format!(
                "session description of {} bytes (at most {MAX_SDP_BYTES})",
                s.len()
            ));
        }
        let mut words = s.split(' ');
        if words.next() != Some(SDP_PREFIX) {
            return Err("not a simulated session description".to_owned());
        }
        let kind = match words.next() {
            Some("offer") => SdpKind::Offer,
            Some("answer") => SdpKind::Answer,
            _ => return Err("session description of unknown kind".to_owned()),
        };
        fn field<'a>(words: &mut std::str::Split<'a, char>, key: &str) -> Result<&'a str, String> {
            words
                .next()
                .and_then(|w| w.strip_prefix(key))
                .and_then(|w| w.strip_prefix('='))
                .ok_or_else(|| format!("session description without {key}"))
        }
        fn number(v: &str, key: &str) -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("session description with a bad {key}"))
        }
        let from = number(field(&mut words, "from")?, "from")?;
        let to = number(field(&mut words, "to")?, "to")?;
        let generation = number(field(&mut words, "gen")?, "gen")?;
        let fp = field(&mut words, "fp")?;
        if fp.is_empty() {
            return Err("session description with an empty fingerprint".to_owned());
        }
        if words.next().is_some() {
            return Err("session description with trailing words".to_owned());
        }
        Ok(Self {
            kind,
            from,
            to,
            generation,
            fp: fp.to_owned(),
        })
    }
}

/// One incarnation of a node's network ports.
struct Endpoint {
    shared: Arc<Shared>,
    id: NodeId,
    incarnation: u64,
}

const NOT_ATTACHED: &str = "this node is not attached to the network";

impl Endpoint {
    fn lock(&self) -> Result<MutexGuard<'_, World>, String> {
        let w = self.shared.lock();
        if w.current(self.id, self.incarnation) {
            Ok(w)
        } else {
            Err(NOT_ATTACHED.to_owned())
        }
    }

    async fn send_frame(&self, to: NodeId, frame: Vec<u8>) -> Result<(), LinkError> {
        let me = self.id;
        if frame.len() > MAX_FRAME_BYTES {
            return Err(LinkError::Unreachable(to));
        }
        let (tx, generation) = {
            let w = self.lock().map_err(|_| LinkError::Unreachable(to))?;
            match w.ends.get(&(me, to)) {
                Some(End {
                    state: EndState::Open,
                    out: Some(out),
                    generation,
                    ..
                }) => (out.tx.clone(), *generation),
                _ => return Err(LinkError::Unreachable(to)),
            }
        };
        // Waits while the directed link's queue is full.
        let permit = tx.reserve().await.map_err(|_| LinkError::Closed(to))?;
        let mut w = self.lock().map_err(|_| LinkError::Closed(to))?;
        if !w.end_in(me, to, generation, EndState::Open) {
            return Err(LinkError::Closed(to));
        }
        let (delay, lost) = w.frame_delay(me, to);
        let now = Instant::now();
        let Some(out) = w.ends.get_mut(&(me, to)).and_then(|e| e.out.as_mut()) else {
            return Err(LinkError::Closed(to));
        };
        let at = (now + delay).max(out.last_at);
        out.last_at = at;
        w.stats.frames_sent += 1;
        if lost {
            w.stats.retransmits += 1;
        }
        permit.send(Queued { at, frame });
        Ok(())
    }

    fn do_offer(&self, peer: NodeId, expected: String) -> Result<String, String> {
        let me = self.id;
        if peer == me {
            return Err("cannot link a node to itself".to_owned());
        }
        if expected.is_empty() || expected.len() > MAX_FINGERPRINT_BYTES {
            return Err("bad expected fingerprint".to_owned());
        }
        let mut w = self.lock()?;
        let generation = w.next_generation;
        w.next_generation += 1;
        Ok(self.start_end(w, peer, generation, EndState::Offered, expected))
    }

    fn do_answer(&self, peer: NodeId, offer: &str, expected: String) -> Result<String, String> {
        let me = self.id;
        let sdp = Sdp::parse_for(offer, SdpKind::Offer, peer, me)?;
        let mut w = self.lock()?;
        if sdp.fp != expected {
            let reason = format!("offer presents {:?}, expected {expected:?}", sdp.fp);
            return Err(w.refuse(me, peer, reason));
        }
        Ok(self.start_end(w, peer, sdp.generation, EndState::Answered, expected))
    }

    /// Installs this node's new end of the link to `peer` and answers the
    /// session description that announces it.
    fn start_end(
        &self,
        mut w: MutexGuard<'_, World>,
        peer: NodeId,
        generation: u64,
        state: EndState,
        expected_fp: String,
    ) -> String {
        let me = self.id;
        w.install(
            &self.shared,
            me,
            peer,
            End {
                generation,
                state,
                expected_fp,
                out: None,
            },
        );
        drop(w);
        self.shared.changed.notify_waiters();
        Sdp {
            kind: if state == EndState::Offered {
                SdpKind::Offer
            } else {
                SdpKind::Answer
            },
            from: me,
            to: peer,
            generation,
            fp: fingerprint_of(me),
        }
        .encode()
    }

    fn do_accept(&self, peer: NodeId, answer: &str) -> Result<(), String> {
        let me = self.id;
        let sdp = Sdp::parse_for(answer, SdpKind::Answer, peer, me)?;
        let mut w = self.lock()?;
        let Some(end) = w
            .ends
            .get_mut(&(me, peer))
            .filter(|e| e.state == EndState::Offered && e.generation == sdp.generation)
        else {
            return Err(format!("no pending offer to node {peer}"));
        };
        if sdp.fp != end.expected_fp {
            let reason = format!(
                "answer presents {:?}, expected {:?}",
                sdp.fp, end.expected_fp
            );
            end.state = EndState::Failed;
            return Err(w.refuse(me, peer, reason));
        }
        end.state = EndState::Connecting;
        let m = w.model(me, peer);
        let delay = w.uniform(m.connect_min, m.connect_max);
        tokio::spawn(connect(
            self.shared.clone(),
            me,
            peer,
            sdp.generation,
            delay,
        ));
        Ok(())
    }

    fn do_close(&self, peer: NodeId) {
        let me = self.id;
        let Ok(mut w) = self.lock() else {
            return;
        };
        let Some(end) = w.ends.remove(&(me, peer)) else {
            return;
        };
        if !end.state.ended() {
            w.trace.event(
                me,
                "net.close",
                format_args!("{me}-{peer} gen={}", end.generation),
            );
            w.emit(me, TransportEvent::Closed(peer));
        }
        if end.state == EndState::Open {
            w.notify_close(&self.shared, me, peer, end.generation);
        }
        drop(w);
        self.shared.changed.notify_waiters();
    }

    fn do_links(&self) -> Vec<LinkInfo> {
        let me = self.id;
        let Ok(w) = self.lock() else {
            return Vec::new();
        };
        w.ends
            .range((me, NodeId::MIN)..=(me, NodeId::MAX))
            .map(|((_, peer), e)| {
                let m = w.model(me, *peer);
                let open = e.state == EndState::Open;
                LinkInfo {
                    peer: *peer,
                    open,
                    state: e.state.name().to_owned(),
                    rtt_us: open.then(|| micros(m.latency_min.saturating_add(m.latency_max))),
                    queued_frames: e
                        .out
                        .as_ref()
                        .map_or(0, |o| o.tx.max_capacity().saturating_sub(o.tx.capacity())),
                }
            })
            .collect()
    }
}

/// Completes the connection of `generation` from offerer `a` to `b`.
async fn connect(shared: Arc<Shared>, a: NodeId, b: NodeId, generation: u64, delay: Duration) {
    tokio::time::sleep(delay).await;
    let mut w = shared.lock();
    let current = w.end_in(a, b, generation, EndState::Connecting)
        && w.end_in(b, a, generation, EndState::Answered);
    if !current {
        w.trace.event(
            a,
            "net.noconnect",
            format_args!("{a}-{b} gen={generation} stale"),
        );
        return;
    }
    if w.is_blocked(a, b) || w.is_blocked(b, a) {
        w.trace.event(
            a,
            "net.noconnect",
            format_args!("{a}-{b} gen={generation} blocked"),
        );
        return;
    }
    w.open(&shared, a, b, generation);
}

impl PeerLink for Endpoint {
    fn local_id(&self) -> NodeId {
        self.id
    }

    /// Queues `frame` for `to`: `Unreachable` without an open link (or for
    /// a frame over `MAX_FRAME_BYTES`); waits while the link's queue is
    /// full; `Closed` if the link ends meanwhile.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(self.send_frame(to, frame))
    }
}

impl PeerTransport for Endpoint {
    fn fingerprint(&self) -> String {
        fingerprint_of(self.id)
    }

    fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_offer(peer, expected_fingerprint) })
    }

    fn answer(
        &self,
        peer: NodeId,
        offer: String,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_answer(peer, &offer, expected_fingerprint) })
    }

    fn accept_answer(&self, peer: NodeId, answer: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.do_accept(peer, &answer) })
    }

    fn close(&self, peer: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.do_close(peer) })
    }

    fn links(&self) -> Vec<LinkInfo> {
        self.do_links()
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
mod tests {
    use super::*;
    use tokio::sync::mpsc::error::TryRecvError;

    fn model() -> LinkModel {
        LinkModel::default()
    }

    fn new_net(seed: u64, model: LinkModel) -> SimNet {
        SimNet::new(seed, model, Trace::new(None).expect("trace"))
    }

    /// Connects `a` (the offerer) and `b` and waits for both Open events.
    async fn connect_pair(a: &mut NodeNet, b: &mut NodeNet) {
        let (ia, ib) = (a.link.local_id(), b.link.local_id());
        let offer = a
            .transport
            .offer(ib, fingerprint_of(ib))
            .await
            .expect("offer");
        let answer = b
            .transport
            .answer(ia, offer, fingerprint_of(ia))
            .await
            .expect("answer");
        a.transport.accept_answer(ib, answer).await.expect("accept");
        assert_eq!(a.events.recv().await, Some(TransportEvent::Open(ib)));
        assert_eq!(b.events.recv().await, Some(TransportEvent::Open(ia)));
    }

    fn index(frame: &[u8]) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&frame[..4]);
        u32::from_le_bytes(b)
    }

    #[tokio::test(start_paused = true)]
    async fn two_nodes_connect_and_both_get_open() {
        let net = new_net(1, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        assert!(!net.is_open(1, 2));
        let start = Instant::now();
        connect_pair(&mut a, &mut b).await;
        let took = start.elapsed();
        let m = model();
        assert!(took >= m.connect_min && took <= m.connect_max + Duration::from_millis(1));
        assert!(net.is_open(1, 2) && net.is_open(2, 1));
        let links = a.transport.links();
        assert_eq!(links.len(), 1);
        assert!(links[0].open && links[0].peer == 2 && links[0].state == "open");
        assert!(links[0].rtt_us.is_some());
        assert_eq!(net.stats().links_opened, 1);
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_frames_arrive_in_order_within_the_model() {
        let m = LinkModel {
            loss: 0.05,
            ..model()
        };
        let net = new_net(7, m);
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        // Sending to a node without a link is refused.
        assert_eq!(
            a.link.send(3, vec![1]).await,
            Err(LinkError::Unreachable(3))
        );
        let mut incoming = b.incoming;
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 1000 {
                let Some(f) = incoming.recv().await else {
                    break;
                };
                assert_eq!(f.peer, 1);
                got.push((Instant::now(), index(&f.frame)));
            }
            got
        });
        let mut sent_at = Vec::new();
        for i in 0..1000u32 {
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent_at.push(Instant::now());
            a.link
                .send(2, i.to_le_bytes().to_vec())
                .await
                .expect("send");
        }
        let got = receiver.await.expect("receiver");
        assert_eq!(got.len(), 1000);
        let mut slow = 0;
        for (n, (at, i)) in got.iter().enumerate() {
            assert_eq!(*i as usize, n, "frames arrive in order");
            let delay = at.duration_since(sent_at[n]);
            assert!(delay >= m.latency_min, "frame {n} after {delay:?}");
            // Tokio's timer rounds up to the millisecond.
            assert!(
                delay <= m.latency_max + m.retransmit + Duration::from_millis(1),
                "frame {n} after {delay:?}"
            );
            if delay > m.latency_max + Duration::from_millis(1) {
                slow += 1;
            }
        }
        let stats = net.stats();
        assert!(stats.retransmits > 0 && slow > 0);
        assert_eq!(stats.frames_sent, 1000);
        assert_eq!(stats.frames_delivered, 1000);
        assert_eq!(stats.bytes_delivered, 4000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_direction_holds_frames_until_unblocked() {
        let net = new_net(3, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        net.block(1, 2, true);
        for i in 0..10u32 {
            a.link
                .send(2, i.to_le_bytes().to_vec())
                .await
                .expect("send");
        }
        // The other direction still flows.
        b.link.send(1, vec![9, 9, 9, 9]).await.expect("send back");
        let back = a.incoming.recv().await.expect("frame back");
        assert_eq!(back.peer, 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(matches!(b.incoming.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(a.transport.links()[0].queued_frames, 9);
        let unblocked = Instant::now();
        net.block(1, 2, false);
        for i in 0..10u32 {
            let f = b.incoming.recv().await.expect("held frame");
            assert_eq!(index(&f.frame), i);
            assert!(Instant::now() > unblocked);
        }
        assert!(net.is_open(1, 2));
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(net.stats().frames_dropped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_direction_blocked_past_fail_detect_fails_both_sides() {
        let m = model();
        let net = new_net(4, m);
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        net.block(1, 2, true);
        for i in 0..3u32 {
            a.link
                .send(2, i.to_le_bytes().to_vec())
                .await
                .expect("send");
        }
        tokio::time::sleep(m.fail_detect - Duration::from_millis(100)).await;
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(net.is_open(1, 2));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(
            a.events.try_recv(),
            Ok(TransportEvent::Failed { peer: 2, .. })
        ));
        assert!(matches!(
            b.events.try_recv(),
            Ok(TransportEvent::Failed { peer: 1, .. })
        ));
        assert!(!net.is_open(1, 2));
        assert_eq!(
            a.link.send(2, vec![0]).await,
            Err(LinkError::Unreachable(2))
        );
        net.block(1, 2, false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(b.incoming.try_recv(), Err(TryRecvError::Empty)));
        let stats = net.stats();
        assert_eq!(stats.frames_dropped, 3);
        assert_eq!(stats.links_failed, 1);
        assert_eq!(a.transport.links()[0].state, "failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_does_not_open_while_blocked() {
        let net = new_net(5, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        net.block(2, 1, true);
        let offer = a
            .transport
            .offer(2, fingerprint_of(2))
            .await
            .expect("offer");
        let answer = b
            .transport
            .answer(1, offer, fingerprint_of(1))
            .await
            .expect("answer");
        a.transport.accept_answer(2, answer).await.expect("accept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(!net.is_open(1, 2));
        assert_eq!(a.transport.links()[0].state, "connecting");
        net.heal();
        connect_pair(&mut a, &mut b).await;
        assert!(net.is_open(1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn detach_makes_the_peer_fail_after_fail_detect() {
        let m = model();
        let net = new_net(6, m);
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        let crashed = Instant::now();
        net.detach(2);
        assert!(!net.is_open(1, 2));
        // The crashed node's receivers end.
        assert_eq!(b.incoming.recv().await, None);
        assert_eq!(b.events.recv().await, None);
        // Its peer does not know yet: the frame is accepted, then lost.
        a.link
            .send(2, vec![1, 2, 3])
            .await
            .expect("send to the dead");
        let ev = a.events.recv().await.expect("failed event");
        assert!(
            matches!(ev, TransportEvent::Failed { peer: 2, .. }),
            "{ev:?}"
        );
        assert!(crashed.elapsed() >= m.fail_detect);
        assert!(crashed.elapsed() <= m.fail_detect + Duration::from_millis(1));
        let stats = net.stats();
        assert_eq!(stats.frames_dropped, 1);
        assert_eq!(stats.links_failed, 1);
        // The old incarnation's handles are inert; the restarted node links
        // again.
        assert_eq!(
            b.link.send(1, vec![0]).await,
            Err(LinkError::Unreachable(1))
        );
        assert!(b.transport.offer(1, fingerprint_of(1)).await.is_err());
        let mut b2 = net.attach(2);
        connect_pair(&mut a, &mut b2).await;
        assert!(net.is_open(1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn close_reports_closed_here_and_there() {
        let net = new_net(8, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        b.transport.close(1).await;
        assert_eq!(b.events.try_recv(), Ok(TransportEvent::Closed(1)));
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        let ev = a.events.recv().await;
        assert_eq!(ev, Some(TransportEvent::Closed(2)));
        assert!(!net.is_open(1, 2));
        assert!(b.transport.links().is_empty());
        assert_eq!(a.transport.links()[0].state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_attempt_is_ignored() {
        let net = new_net(9, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        let offer1 = a
            .transport
            .offer(2, fingerprint_of(2))
            .await
            .expect("offer");
        let answer1 = b
            .transport
            .answer(1, offer1, fingerprint_of(1))
            .await
            .expect("answer");
        let offer2 = a
            .transport
            .offer(2, fingerprint_of(2))
            .await
            .expect("offer");
        assert!(a.transport.accept_answer(2, answer1).await.is_err());
        let answer2 = b
            .transport
            .answer(1, offer2, fingerprint_of(1))
            .await
            .expect("answer");
        a.transport
            .accept_answer(2, answer2.clone())
            .await
            .expect("accept");
        // A second accept of the same answer is refused.
        assert!(a.transport.accept_answer(2, answer2).await.is_err());
        assert_eq!(a.events.recv().await, Some(TransportEvent::Open(2)));
        assert_eq!(b.events.recv().await, Some(TransportEvent::Open(1)));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(net.stats().links_opened, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_link_fails_both_sides_now() {
        let net = new_net(10, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        net.fail_link(2, 1);
        assert!(matches!(
            a.events.try_recv(),
            Ok(TransportEvent::Failed { peer: 2, .. })
        ));
        assert!(matches!(
            b.events.try_recv(),
            Ok(TransportEvent::Failed { peer: 1, .. })
        ));
        assert!(!net.is_open(1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_fingerprint_is_refused() {
        let net = new_net(11, model());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        // The answerer expects another certificate than the offer presents.
        let offer = a
            .transport
            .offer(2, fingerprint_of(2))
            .await
            .expect("offer");
        let err = b.transport.answer(1, offer, "sim-fp-666".to_owned()).await;
        assert!(err.is_err());
        assert!(matches!(
            b.events.try_recv(),
            Ok(TransportEvent::Refused { peer: 1, .. })
        ));
        assert!(b.transport.links().is_empty());
        // The offerer expects another certificate than the answer presents.
        let offer = a
            .transport
            .offer(2, "sim-fp-777".to_owned())
            .await
            .expect("offer");
        let answer = b
            .transport
            .answer(1, offer, fingerprint_of(1))
            .await
            .expect("answer");
        assert!(a.transport.accept_answer(2, answer).await.is_err());
        assert!(matches!(
            a.events.try_recv(),
            Ok(TransportEvent::Refused { peer: 2, .. })
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!net.is_open(1, 2));
        assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_session_descriptions_are_errors() {
        let net = new_net(12, model());
        let a = net.attach(1);
        let b = net.attach(2);
        let good = a
            .transport
            .offer(2, fingerprint_of(2))
            .await
            .expect("offer");
        let long = "x".repeat(MAX_SDP_BYTES + 1);
        let mut bad = vec![
            String::new(),
            "garbage".to_owned(),
            long,
            format!("{SDP_PREFIX}"),
            format!("{SDP_PREFIX} offer"),
            format!("{SDP_PREFIX} hello from=1 to=2 gen=1 fp=sim-fp-1"),
            format!("{SDP_PREFIX} offer from=x to=2 gen=1 fp=sim-fp-1"),
            format!("{SDP_PREFIX} offer from=1 to=2 gen=99999999999999999999999 fp=sim-fp-1"),
            format!("{SDP_PREFIX} offer from=1 to=2 gen=1 fp="),
            format!("{SDP_PREFIX} offer from=1 to=2 gen=1 fp=sim-fp-1 more"),
            format!("{SDP_PREFIX} offer to=2 from=1 gen=1 fp=sim-fp-1"),
            format!("{SDP_PREFIX} offer from=-1 to=2 gen=1 fp=sim-fp-1"),
            // Addressed to another node, or from another one.
            format!("{SDP_PREFIX} offer from=1 to=3 gen=1 fp=sim-fp-1"),
            format!("{SDP_PREFIX} offer from=4 to=2 gen=1 fp=sim-fp-1"),
            // An answer where an offer is expected.
            format!("{SDP_PREFIX} answer from=1 to=2 gen=1 fp=sim-fp-1"),
            "é\u{0}🦀".to_owned(),
        ];
        for cut in 0..good.len() {
            if good.is_char_boundary(cut) {
                bad.push(good[..cut].to_owned());
            }
        }
        for sdp in &bad {
            assert!(
                b.transport
                    .answer(1, sdp.clone(), fingerprint_of(1))
                    .await
                    .is_err(),
                "answer accepted {sdp:?}"
            );
            assert!(
                a.transport.accept_answer(2, sdp.clone()).await.is_err(),
                "accept_answer accepted {sdp:?}"
            );
        }
        // The offer itself is still answerable, and its answer acceptable.
        let answer = b
            .transport
            .answer(1, good, fingerprint_of(1))
            .await
            .expect("answer");
        assert!(b
            .transport
            .answer(1, answer.clone(), fingerprint_of(1))
            .await
            .is_err());
        a.transport.accept_answer(2, answer).await.expect("accept");
    }

    /// A scripted exchange: its receipts (time since start, frame) at node 2.
    async fn scripted(seed: u64) -> (Vec<(Duration, Vec<u8>)>, String) {
        let trace = Trace::new(None).expect("trace");
        let net = SimNet::new(seed, model(), trace.clone());
        let mut a = net.attach(1);
        let mut b = net.attach(2);
        connect_pair(&mut a, &mut b).await;
        let link = a.link.clone();
        let sender = tokio::spawn(async move {
            for i in 0..200u32 {
                let _ = link.send(2, i.to_le_bytes().to_vec()).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        let mut got = Vec::new();
        while got.len() < 200 {
            let Some(f) = b.incoming.recv().await else {
                break;
            };
            got.push((trace.elapsed(), f.frame));
        }
        sender.await.expect("sender");
        (got, trace.digest())
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_delivery_times() {
        let (first, d1) = scripted(42).await;
        let (second, d2) = scripted(42).await;
        assert_eq!(first.len(), 200);
        assert_eq!(first, second);
        assert_eq!(d1, d2);
        let (other, d3) = scripted(43).await;
        assert_eq!(other.len(), 200);
        assert_ne!(first, other);
        assert_ne!(d1, d3);
    }
}
