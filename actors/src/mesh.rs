//! The mesh actor: keeps one link to every online peer of the room.
//!
//! For each peer it runs a small state machine (idle, offering, answering,
//! open, backing off) and a [`PeerActor`] that holds the state shown to
//! people. Rules:
//!
//! - Glare: the node with the smaller id offers; the other answers.
//! - Signals (non-trickle offers and answers) go through the repository
//!   (this node's presence record) only while the node has no open link;
//!   once it has one, they are relayed over the mesh by every open
//!   neighbour that is linked to the addressee. A relayed attempt that
//!   does not connect in time falls back to the repository.
//! - A link that fails (a killed peer sends no close, the transport
//!   reports Failed) is retried with exponential backoff and jitter.
//! - The transport authenticates: it keeps a link only when the remote
//!   certificate matches the fingerprint of the peer's presence record.
//!
//! Subscribers learn of links going up and down ([`LinkChanged`]); the
//! membership controller uses that as its view of who is online.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use skygit_consensus::codec::{self, Envelope, EnvelopeKind};
use skygit_consensus::NodeId;
use tokio::time::Instant;
use tracing::Instrument;

use crate::peer::{ConnectionState, PeerActor, StateChanged};
use crate::ports::{
    LinkInfo, PeerLink, PeerTransport, PresenceRecord, RandomSource, Signal, SignalKind,
    TransportEvent, WallClock,
};
use crate::presence::{
    ClearSignal, PeerEvent, Poll, PresenceActor, SetFastPoll, SetSignal, SignalReceived,
};

/// Signals held for peers whose presence record has not been read yet.
const MAX_PENDING_SIGNALS: usize = 64;

/// The mesh's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshOptions {
    /// An attempt that has not opened a link by then has failed.
    pub connect_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A link to a peer went up or down.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LinkChanged {
    pub peer: NodeId,
    pub up: bool,
}

/// Receive [`LinkChanged`] (links already open are reported at once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeLinks(pub Recipient<LinkChanged>);

/// A signalling frame that arrived over the mesh.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RelayFrame(pub Envelope);

/// Close the link to one peer as if it had failed (fault injection for
/// tests; the usual reconnect follows).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DropLink(pub NodeId);

/// Close every link and stop (the node is shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopMesh;

/// The mesh as this node sees it.
#[derive(Message)]
#[rtype(result = "MeshStatus")]
pub struct GetMeshStatus;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshStatus {
    pub peers: Vec<PeerStatus>,
    /// Signals this node sent through the repository and over the mesh.
    pub signals_via_repo: u64,
    pub signals_via_mesh: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub user: String,
    pub phase: &'static str,
    pub attempt: u64,
    pub failures: u32,
    pub link: Option<LinkInfo>,
}

/// A signal relayed over the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relayed {
    pub origin: NodeId,
    pub target: NodeId,
    /// 0 when sent by the origin; a relay forwards only hop-0 signals.
    pub hops: u8,
    /// Sent back to the origin by a relay that has no open link to the
    /// target: the origin falls back to the repository.
    pub bounced: bool,
    pub kind: SignalKind,
    pub to_session: String,
    pub from_session: String,
    pub attempt: u64,
    pub sdp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Offering { attempt: u64, since: Instant },
    Answering { attempt: u64, since: Instant },
    Open,
    Backoff { until: Instant },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Offering { .. } => "offering",
            Phase::Answering { .. } => "answering",
            Phase::Open => "open",
            Phase::Backoff { .. } => "backoff",
        }
    }
}

struct Conn {
    record: PresenceRecord,
    phase: Phase,
    attempt: u64,
    failures: u32,
    /// The last attempt's signals went over the mesh and did not connect.
    relay_failed: bool,
    /// Relays of the current signal that have not bounced it, and the
    /// signal itself while it travels over the mesh (sent through the
    /// repository when all bounce; `None` once it went there).
    relays_left: usize,
    relayed_signal: Option<Signal>,
    /// The attempt whose answer is being applied (a relayed answer may
    /// arrive twice).
    accepting: Option<u64>,
    /// This node closed the link of the peer's previous session: the
    /// transport's `Closed` for it is about that old link, not the new
    /// attempt, and is ignored once.
    old_link_closing: bool,
    actor: Addr<PeerActor>,
}

pub struct MeshActor {
    me: NodeId,
    session: String,
    room: String,
    transport: Arc<dyn PeerTransport>,
    link: Arc<dyn PeerLink>,
    presence: Addr<PresenceActor>,
    clock: Arc<dyn WallClock>,
    rng: Box<dyn RandomSource>,
    opts: MeshOptions,
    peers: BTreeMap<NodeId, Conn>,
    pending: Vec<(NodeId, Signal)>,
    subscribers: Vec<Recipient<LinkChanged>>,
    signals_via_repo: u64,
    signals_via_mesh: u64,
    span: tracing::Span,
}

impl MeshActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        room: &str,
        me: NodeId,
        session: String,
        transport: Arc<dyn PeerTransport>,
        link: Arc<dyn PeerLink>,
        presence: Addr<PresenceActor>,
        clock: Arc<dyn WallClock>,
        rng: Box<dyn RandomSource>,
        opts: MeshOptions,
    ) -> Self {
        Self {
            me,
            session,
            room: room.to_owned(),
            transport,
            link,
            presence,
            clock,
            rng,
            opts,
            peers: BTreeMap::new(),
            pending: Vec::new(),
            subscribers: Vec::new(),
            signals_via_repo: 0,
            signals_via_mesh: 0,
            span: tracing::info_span!("mesh", room, node = me),
        }
    }

    fn offers_to(&self, peer: NodeId) -> bool {
        self.me < peer
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let exp = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << failures.min(10))
            .min(self.opts.backoff_max);
        // Up to 50% jitter so two nodes that failed together do not retry
        // in lockstep.
        let jitter_ms = self.rng.next_u64() % (exp.as_millis() as u64 / 2 + 1);
        exp + Duration::from_millis(jitter_ms)
    }

    fn set_state(&self, peer: NodeId, state: ConnectionState) {
        if let Some(c) = self.peers.get(&peer) {
            c.actor.do_send(StateChanged(state));
        }
    }

    fn notify(&mut self, peer: NodeId, up: bool) {
        let open = self
            .peers
            .values()
            .filter(|c| c.phase == Phase::Open)
            .count();
        metrics::gauge!("skygit_mesh_links_open", "room" => self.room.clone()).set(open as f64);
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(LinkChanged { peer, up });
        }
    }

    fn update_poll_speed(&self) {
        let settled = self.peers.values().all(|c| c.phase == Phase::Open);
        self.presence.do_send(SetFastPoll(!settled));
    }

    fn open_neighbours(&self, except: NodeId) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(id, c)| **id != except && c.phase == Phase::Open)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends a signal over the mesh when this node has open links (and the
    /// last relayed attempt did not fail), else through the repository.
    fn send_signal(&mut self, signal: Signal) {
        let neighbours = self.open_neighbours(signal.to);
        let Some(conn) = self.peers.get_mut(&signal.to) else {
            return;
        };
        if neighbours.is_empty() || conn.relay_failed {
            conn.relayed_signal = None;
            self.signals_via_repo += 1;
            metrics::counter!("skygit_mesh_signals_total", "room" => self.room.clone(), "via" => "repository")
                .increment(1);
            tracing::debug!(peer = signal.to, kind = ?signal.kind, attempt = signal.attempt, "signal through the repository");
            self.presence.do_send(SetSignal(signal));
            return;
        }
        conn.relays_left = neighbours.len();
        conn.relayed_signal = Some(signal.clone());
        self.signals_via_mesh += 1;
        metrics::counter!("skygit_mesh_signals_total", "room" => self.room.clone(), "via" => "mesh")
            .increment(1);
        tracing::debug!(peer = signal.to, kind = ?signal.kind, attempt = signal.attempt, via = ?neighbours, "signal over the mesh");
        let relayed = Relayed {
            origin: self.me,
            target: signal.to,
            hops: 0,
            bounced: false,
            kind: signal.kind,
            to_session: signal.to_session,
            from_session: signal.from_session,
            attempt: signal.attempt,
            sdp: signal.sdp,
        };
        self.relay(relayed, neighbours);
    }

    fn relay(&self, relayed: Relayed, via: Vec<NodeId>) {
        let payload = match codec::to_bytes(&relayed) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a relayed signal");
                return;
            }
        };
        let (link, me, now) = (self.link.clone(), self.me, self.clock.now_ms());
        let frames: Vec<(NodeId, Vec<u8>)> = via
            .into_iter()
            .filter_map(|to| {
                codec::encode_frame(&Envelope {
                    kind: EnvelopeKind::Signal,
                    from: me,
                    to,
                    timestamp: now,
                    payload: payload.clone(),
                })
                .ok()
                .map(|f| (to, f))
            })
            .collect();
        actix::spawn(
            async move {
                for (to, frame) in frames {
                    if let Err(e) = link.send(to, frame).await {
                        tracing::debug!(to, error = %e, "relay not sent");
                    }
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// A relay could not forward this node's signal: when every relay has
    /// bounced it, the signal goes through the repository.
    fn on_bounce(&mut self, bounced: Relayed) {
        let Some(conn) = self.peers.get_mut(&bounced.target) else {
            return;
        };
        let current = conn
            .relayed_signal
            .as_ref()
            .is_some_and(|s| s.attempt == bounced.attempt && s.kind == bounced.kind);
        if !current {
            return;
        }
        conn.relays_left = conn.relays_left.saturating_sub(1);
        if conn.relays_left == 0 {
            if let Some(signal) = conn.relayed_signal.take() {
                tracing::debug!(
                    peer = bounced.target,
                    "no relay reaches the peer; signalling through the repository"
                );
                conn.relay_failed = true;
                self.signals_via_repo += 1;
                self.presence.do_send(SetSignal(signal));
            }
        }
    }

    fn start_offer(&mut self, peer: NodeId, ctx: &mut Context<Self>) {
        let Some(conn) = self.peers.get_mut(&peer) else {
            return;
        };
        conn.attempt += 1;
        let attempt = conn.attempt;
        conn.phase = Phase::Offering {
            attempt,
            since: Instant::now(),
        };
        let fingerprint = conn.record.dtls_fingerprint.clone();
        let to_session = conn.record.session_id.clone();
        self.set_state(peer, ConnectionState::Connecting);
        self.update_poll_speed();
        let transport = self.transport.clone();
        tracing::info!(peer, attempt, "offering a link");
        ctx.spawn(
            async move { transport.offer(peer, fingerprint).await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(move |res, act, _| {
                    let still = matches!(act.peers.get(&peer).map(|c| c.phase), Some(Phase::Offering { attempt: a, .. }) if a == attempt);
                    if !still {
                        return;
                    }
                    match res {
                        Ok(sdp) => {
                            let signal = Signal {
                                to: peer,
                                to_session,
                                from_session: act.session.clone(),
                                attempt,
                                kind: SignalKind::Offer,
                                sdp,
                            };
                            act.send_signal(signal);
                        }
                        Err(e) => act.failed(peer, &format!("offer: {e}")),
                    }
                }),
        );
    }

    fn answer(&mut self, peer: NodeId, signal: Signal, ctx: &mut Context<Self>) {
        let Some(conn) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_open = conn.phase == Phase::Open;
        conn.attempt = signal.attempt;
        conn.phase = Phase::Answering {
            attempt: signal.attempt,
            since: Instant::now(),
        };
        let fingerprint = conn.record.dtls_fingerprint.clone();
        if was_open {
            self.notify(peer, false);
        }
        self.set_state(peer, ConnectionState::Connecting);
        self.update_poll_speed();
        let transport = self.transport.clone();
        let attempt = signal.attempt;
        tracing::info!(peer, attempt, "answering an offer");
        ctx.spawn(
            async move { transport.answer(peer, signal.sdp, fingerprint).await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(move |res, act, _| {
                    let Some(conn) = act.peers.get(&peer) else {
                        return;
                    };
                    if !matches!(conn.phase, Phase::Answering { attempt: a, .. } if a == attempt) {
                        return;
                    }
                    match res {
                        Ok(sdp) => {
                            let signal = Signal {
                                to: peer,
                                to_session: conn.record.session_id.clone(),
                                from_session: act.session.clone(),
                                attempt,
                                kind: SignalKind::Answer,
                                sdp,
                            };
                            act.send_signal(signal);
                        }
                        Err(e) => act.failed(peer, &format!("answer: {e}")),
                    }
                }),
        );
    }

    fn failed(&mut self, peer: NodeId, reason: &str) {
        let Some(failures) = self.peers.get(&peer).map(|c| c.failures) else {
            return;
        };
        let wait = self.backoff(failures);
        let Some(conn) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_open = conn.phase == Phase::Open;
        if !was_open && conn.relayed_signal.is_some() {
            conn.relay_failed = true;
        }
        conn.failures = conn.failures.saturating_add(1);
        metrics::counter!("skygit_mesh_link_failures_total", "room" => self.room.clone())
            .increment(1);
        conn.phase = Phase::Backoff {
            until: Instant::now() + wait,
        };
        tracing::warn!(peer, reason, retry_in = ?wait, "link to peer failed");
        self.set_state(peer, ConnectionState::Failed);
        if was_open {
            self.notify(peer, false);
        }
        self.update_poll_speed();
    }

    fn on_signal(&mut self, from: NodeId, signal: Signal, ctx: &mut Context<Self>) {
        if signal.to != self.me || signal.to_session != self.session {
            tracing::debug!(from, "stale signal for another session");
            return;
        }
        let Some(conn) = self.peers.get(&from) else {
            // The sender's record is not known yet: keep the signal and
            // read the channel now.
            if self.pending.len() < MAX_PENDING_SIGNALS {
                self.pending.push((from, signal));
            }
            self.presence.do_send(Poll);
            return;
        };
        if signal.from_session != conn.record.session_id {
            tracing::debug!(from, "signal from another session of the peer");
            return;
        }
        match signal.kind {
            SignalKind::Offer => {
                if self.offers_to(from) {
                    tracing::warn!(
                        from,
                        "ignoring an offer from a peer this node offers to (glare rule)"
                    );
                    return;
                }
                let newer = signal.attempt > conn.attempt
                    || !matches!(conn.phase, Phase::Answering { .. } | Phase::Open);
                if newer {
                    self.answer(from, signal, ctx);
                }
            }
            SignalKind::Answer => {
                let Phase::Offering { attempt, .. } = conn.phase else {
                    return;
                };
                if attempt != signal.attempt || conn.accepting == Some(attempt) {
                    return;
                }
                if let Some(c) = self.peers.get_mut(&from) {
                    c.accepting = Some(attempt);
                }
                let transport = self.transport.clone();
                ctx.spawn(
                    async move { transport.accept_answer(from, signal.sdp).await }
                        .instrument(self.span.clone())
                        .into_actor(self)
                        .map(move |res, act, _| {
                            if let Err(e) = res {
                                act.failed(from, &format!("accepting the answer: {e}"));
                            }
                        }),
                );
            }
        }
    }

    /// Publishes each open link's round-trip time as a metric.
    fn record_rtts(&self) {
        for l in self.transport.links() {
            if let (true, Some(rtt)) = (l.open, l.rtt_us) {
                metrics::gauge!("skygit_mesh_rtt_seconds", "room" => self.room.clone(), "peer" => l.peer.to_string())
                    .set(rtt as f64 / 1e6);
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut offer = Vec::new();
        let mut timed_out = Vec::new();
        for (id, c) in &mut self.peers {
            match c.phase {
                Phase::Offering { since, .. } | Phase::Answering { since, .. }
                    if now.duration_since(since) > self.opts.connect_timeout =>
                {
                    timed_out.push(*id);
                }
                Phase::Backoff { until } if now >= until => {
                    c.phase = Phase::Idle;
                    if *id > self.me {
                        offer.push(*id);
                    }
                }
                Phase::Idle if *id > self.me => offer.push(*id),
                _ => {}
            }
        }
        for id in timed_out {
            let transport = self.transport.clone();
            actix::spawn(async move { transport.close(id).await });
            self.failed(id, "the link did not open in time");
        }
        for id in offer {
            self.start_offer(id, ctx);
        }
    }
}

impl Actor for MeshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _e = span.enter();
        tracing::info!(session = %self.session, "mesh actor started");
        ctx.run_interval(Duration::from_millis(250), |act, ctx| act.tick(ctx));
        ctx.run_interval(Duration::from_secs(5), |act, _| act.record_rtts());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for c in self.peers.values() {
            c.actor.do_send(StateChanged(ConnectionState::Closed));
        }
    }
}

impl Handler<PeerEvent> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: PeerEvent, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _e = span.enter();
        match msg {
            PeerEvent::Online(record) => {
                let id = record.node_id;
                if let Some(c) = self.peers.get_mut(&id) {
                    if c.record.session_id == record.session_id {
                        c.record = record;
                        return;
                    }
                    // A new session: the peer restarted. Start over.
                    tracing::info!(peer = id, session = %record.session_id, "peer restarted");
                    let was_open = c.phase == Phase::Open;
                    c.record = record;
                    c.phase = Phase::Idle;
                    c.failures = 0;
                    // Its neighbours' links to it are stale too.
                    c.relay_failed = true;
                    // Closing the old link reports `Closed` later, possibly
                    // while the new session's link is being set up.
                    c.old_link_closing = self.transport.links().iter().any(|l| {
                        l.peer == id
                            && !matches!(l.state.to_ascii_lowercase().as_str(), "failed" | "closed")
                    });
                    if was_open {
                        self.notify(id, false);
                    }
                    // Detach the old link now, not when a spawned task gets
                    // to it: by then a link to the new session may exist,
                    // and closing "the link to this peer" would close that.
                    // The first poll detaches it; its teardown goes on in
                    // the background.
                    let transport = self.transport.clone();
                    let mut close: futures::future::BoxFuture<'static, ()> =
                        Box::pin(async move { transport.close(id).await });
                    if futures::FutureExt::now_or_never(&mut close).is_none() {
                        actix::spawn(close);
                    }
                } else {
                    tracing::info!(peer = id, user = %record.user, "peer online");
                    let actor = PeerActor::new(id, &self.room).start();
                    self.peers.insert(
                        id,
                        Conn {
                            record,
                            phase: Phase::Idle,
                            attempt: 0,
                            failures: 0,
                            // A peer never linked before may not be linked
                            // to any neighbour either: its first signals go
                            // through the repository.
                            relay_failed: true,
                            relays_left: 0,
                            relayed_signal: None,
                            accepting: None,
                            old_link_closing: false,
                            actor,
                        },
                    );
                }
                let waiting: Vec<(NodeId, Signal)> = std::mem::take(&mut self.pending);
                for (from, s) in waiting {
                    if self.peers.contains_key(&from) {
                        self.on_signal(from, s, ctx);
                    } else {
                        self.pending.push((from, s));
                    }
                }
                self.update_poll_speed();
            }
            PeerEvent::Offline(id) => {
                // An open link is better evidence than a stale record.
                if self.peers.get(&id).is_some_and(|c| c.phase != Phase::Open) {
                    tracing::info!(peer = id, "peer offline");
                    if let Some(c) = self.peers.remove(&id) {
                        c.actor.do_send(StateChanged(ConnectionState::Closed));
                    }
                    self.presence.do_send(ClearSignal(id));
                    let transport = self.transport.clone();
                    actix::spawn(async move { transport.close(id).await });
                    self.update_poll_speed();
                }
            }
        }
    }
}

impl Handler<SignalReceived> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _e = span.enter();
        self.on_signal(msg.from, msg.signal, ctx);
    }
}

impl Handler<RelayFrame> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: RelayFrame, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _e = span.enter();
        let relayed: Relayed = match codec::from_bytes(&msg.0.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(from = msg.0.from, error = %e, "dropped a malformed relayed signal");
                return;
            }
        };
        if relayed.sdp.len() > crate::ports::MAX_SDP_BYTES {
            tracing::warn!(from = msg.0.from, "dropped an oversized relayed signal");
            return;
        }
        if relayed.bounced {
            if relayed.origin == self.me {
                self.on_bounce(relayed);
            }
            return;
        }
        if relayed.target == self.me {
            if relayed.hops == 0 && relayed.origin != msg.0.from {
                tracing::warn!(
                    from = msg.0.from,
                    origin = relayed.origin,
                    "dropped a relayed signal whose origin is not its sender"
                );
                return;
            }
            let signal = Signal {
                to: relayed.target,
                to_session: relayed.to_session,
                from_session: relayed.from_session,
                attempt: relayed.attempt,
                kind: relayed.kind,
                sdp: relayed.sdp,
            };
            self.on_signal(relayed.origin, signal, ctx);
        } else if relayed.hops == 0
            && relayed.origin == msg.0.from
            && self
                .peers
                .get(&relayed.target)
                .is_some_and(|c| c.phase == Phase::Open)
        {
            let target = relayed.target;
            self.relay(Relayed { hops: 1, ..relayed }, vec![target]);
        }
    }
}

impl Handler<TransportEvent> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: TransportEvent, _ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _e = span.enter();
        match msg {
            TransportEvent::Open(peer) => {
                let Some(c) = self.peers.get_mut(&peer) else {
                    // A link nobody asked for (the peer's record is gone).
                    let transport = self.transport.clone();
                    actix::spawn(async move { transport.close(peer).await });
                    return;
                };
                c.phase = Phase::Open;
                c.failures = 0;
                c.relay_failed = false;
                c.old_link_closing = false;
                tracing::info!(peer, "link open");
                self.presence.do_send(ClearSignal(peer));
                self.set_state(peer, ConnectionState::Connected);
                self.notify(peer, true);
                self.update_poll_speed();
            }
            TransportEvent::Failed { peer, reason } => self.failed(peer, &reason),
            TransportEvent::Closed(peer) => {
                if let Some(c) = self.peers.get_mut(&peer).filter(|c| c.old_link_closing) {
                    c.old_link_closing = false;
                    tracing::debug!(peer, "the restarted peer's old link closed");
                    return;
                }
                self.failed(peer, "closed")
            }
            TransportEvent::Refused { peer, reason } => {
                tracing::error!(
                    peer,
                    reason,
                    "refused a peer whose certificate does not match its presence record"
                );
                self.failed(peer, &format!("refused: {reason}"));
            }
            TransportEvent::Misbehaved { peer, reason } => {
                tracing::warn!(peer, reason, "dropped a peer that broke the wire format");
                self.failed(peer, &format!("misbehaved: {reason}"));
            }
        }
    }
}

impl Handler<SubscribeLinks> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribeLinks, _ctx: &mut Self::Context) {
        for (id, c) in &self.peers {
            if c.phase == Phase::Open {
                msg.0.do_send(LinkChanged {
                    peer: *id,
                    up: true,
                });
            }
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<GetMeshStatus> for MeshActor {
    type Result = MessageResult<GetMeshStatus>;

    fn handle(&mut self, _: GetMeshStatus, _ctx: &mut Self::Context) -> Self::Result {
        let links: BTreeMap<NodeId, LinkInfo> = self
            .transport
            .links()
            .into_iter()
            .map(|l| (l.peer, l))
            .collect();
        MessageResult(MeshStatus {
            signals_via_repo: self.signals_via_repo,
            signals_via_mesh: self.signals_via_mesh,
            peers: self
                .peers
                .iter()
                .map(|(id, c)| PeerStatus {
                    node_id: *id,
                    user: c.record.user.clone(),
                    phase: c.phase.name(),
                    attempt: c.attempt,
                    failures: c.failures,
                    link: links.get(id).cloned(),
                })
                .collect(),
        })
    }
}

impl Handler<StopMesh> for MeshActor {
    type Result = ();

    fn handle(&mut self, _: StopMesh, ctx: &mut Self::Context) {
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        let transport = self.transport.clone();
        actix::spawn(async move {
            for p in peers {
                transport.close(p).await;
            }
        });
        ctx.stop();
    }
}

impl Handler<DropLink> for MeshActor {
    type Result = bool;

    fn handle(&mut self, msg: DropLink, _ctx: &mut Self::Context) -> bool {
        let peer = msg.0;
        if !self
            .peers
            .get(&peer)
            .is_some_and(|c| c.phase == Phase::Open)
        {
            return false;
        }
        let transport = self.transport.clone();
        actix::spawn(async move { transport.close(peer).await });
        self.failed(peer, "dropped on request");
        true
    }
}
