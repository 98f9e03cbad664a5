//! The mesh's protocol as a plain state machine: [`MeshCore::on`] takes
//! the time and one input (a tick, a peer's presence, a signal, a
//! transport event, the result of an offer or answer) and returns what to
//! do ([`Action`]). It does no I/O and holds no actor: the
//! [`MeshActor`](super::MeshActor) carries the actions out and feeds the
//! results back, the unit tests below drive it by hand.
//!
//! The rules, per peer (idle, offering, answering, open, backing off):
//!
//! - Glare: the node with the smaller id offers; the other answers, and
//!   ignores offers from a peer it offers to.
//! - A signal (a non-trickle offer or answer) goes over the mesh, through
//!   every open neighbour, while this node has one and the last relayed
//!   attempt to that peer did not fail; otherwise through the repository
//!   (this node's presence record). A relay forwards only a hop-0 signal
//!   from its origin, and bounces it back when it has no open link to the
//!   target; once every relay bounced it, the origin writes it to the
//!   repository.
//! - A signal for another session of this node, or from another session
//!   of the peer, is stale and dropped; one from a peer whose record is
//!   not read yet is held (at most [`MAX_PENDING_SIGNALS`]) and the
//!   presence channel read at once.
//! - An attempt that has not opened a link within the connect timeout has
//!   failed. A failed link is retried after an exponential backoff with up
//!   to 50% jitter (from the node's seeded RNG).
//! - A peer with a new session restarted: its link starts over at once.
//! - Presence saying a peer is offline does not end an open link.

use std::collections::BTreeMap;
use std::time::Duration;

use skygit_consensus::NodeId;
use tokio::time::Instant;

use super::{LinkInfo, MeshOptions, MeshStatus, PeerStatus, Relayed};
use crate::peer::ConnectionState;
use crate::ports::{PresenceRecord, RandomSource, Signal, SignalKind, TransportEvent};

/// Signals held for peers whose presence record has not been read yet.
pub const MAX_PENDING_SIGNALS: usize = 64;

/// What the mesh hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed (the actor ticks every 250 ms).
    Tick,
    /// A peer's presence record; `old_link_alive`: the transport still has
    /// a link to the peer that has not failed or closed.
    Online {
        record: PresenceRecord,
        old_link_alive: bool,
    },
    /// Presence says the peer is gone.
    Offline(NodeId),
    /// A signal read from the peer's presence record or relayed to us.
    Signal {
        from: NodeId,
        signal: Signal,
    },
    /// A relayed signal that arrived over the link to `from`.
    Relayed {
        from: NodeId,
        relayed: Relayed,
    },
    /// The transport made this attempt's offer (or could not).
    Offered {
        peer: NodeId,
        attempt: u64,
        result: Result<String, String>,
    },
    /// The transport made this attempt's answer (or could not).
    Answered {
        peer: NodeId,
        attempt: u64,
        result: Result<String, String>,
    },
    /// The transport took the peer's answer (or refused it).
    Accepted {
        peer: NodeId,
        result: Result<(), String>,
    },
    Transport(TransportEvent),
    /// Close an open link as if it had failed (fault injection).
    Drop(NodeId),
}

/// What the mesh asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new peer: track its state for people.
    Track { peer: NodeId, user: String },
    /// The peer is gone: its state is `Closed` and no longer tracked.
    Untrack(NodeId),
    /// The peer's state as shown to people.
    State {
        peer: NodeId,
        state: ConnectionState,
    },
    /// Start a link to `peer` as the offering side.
    Offer {
        peer: NodeId,
        attempt: u64,
        fingerprint: String,
    },
    /// Answer `peer`'s offer.
    Answer {
        peer: NodeId,
        attempt: u64,
        sdp: String,
        fingerprint: String,
    },
    /// Complete this node's offer with the peer's answer.
    Accept { peer: NodeId, sdp: String },
    /// Close the link to the peer (in the background).
    Close(NodeId),
    /// Detach the link to the peer now, before anything else touches the
    /// transport: the peer restarted, and a later close of "the link to
    /// this peer" could hit its new session's link.
    Detach(NodeId),
    /// Write the signal into this node's presence record.
    Publish(Signal),
    /// Send the relayed signal over the links to `via`.
    Relay { relayed: Relayed, via: Vec<NodeId> },
    /// Drop this node's pending signal for the peer from its record.
    ClearSignal(NodeId),
    /// Read the presence channel now.
    Poll,
    /// Poll presence fast (a link is being set up) or slowly (settled).
    FastPoll(bool),
    /// The link to the peer went up or down.
    Link { peer: NodeId, up: bool },
    /// The link failed; the next attempt is in `retry_in`.
    Failed {
        peer: NodeId,
        reason: String,
        retry_in: Duration,
    },
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
}

/// The mesh's state: one connection per known peer.
pub struct MeshCore {
    me: NodeId,
    session: String,
    opts: MeshOptions,
    rng: Box<dyn RandomSource>,
    peers: BTreeMap<NodeId, Conn>,
    pending: Vec<(NodeId, Signal)>,
    signals_via_repo: u64,
    signals_via_mesh: u64,
    out: Vec<Action>,
}

impl MeshCore {
    pub fn new(me: NodeId, session: String, opts: MeshOptions, rng: Box<dyn RandomSource>) -> Self {
        Self {
            me,
            session,
            opts,
            rng,
            peers: BTreeMap::new(),
            pending: Vec::new(),
            signals_via_repo: 0,
            signals_via_mesh: 0,
            out: Vec::new(),
        }
    }

    /// Takes one input at `now`; returns the actions, in order.
    pub fn on(&mut self, now: Instant, input: Input) -> Vec<Action> {
        match input {
            Input::Tick => self.tick(now),
            Input::Online {
                record,
                old_link_alive,
            } => self.online(now, record, old_link_alive),
            Input::Offline(id) => self.offline(id),
            Input::Signal { from, signal } => self.on_signal(now, from, signal),
            Input::Relayed { from, relayed } => self.on_relayed(now, from, relayed),
            Input::Offered {
                peer,
                attempt,
                result,
            } => self.offered(now, peer, attempt, result),
            Input::Answered {
                peer,
                attempt,
                result,
            } => self.answered(now, peer, attempt, result),
            Input::Accepted { peer, result } => {
                if let Err(e) = result {
                    self.failed(now, peer, &format!("accepting the answer: {e}"));
                }
            }
            Input::Transport(e) => self.on_transport(now, e),
            Input::Drop(peer) => {
                if self.is_open(peer) {
                    self.out.push(Action::Close(peer));
                    self.failed(now, peer, "dropped on request");
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Whether the link to `peer` is open.
    pub fn is_open(&self, peer: NodeId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|c| c.phase == Phase::Open)
    }

    /// The peers with an open link.
    pub fn open_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, c)| c.phase == Phase::Open)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every known peer (to close their links when the mesh stops).
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// The mesh as this node sees it, with the transport's `links`.
    pub fn status(&self, links: Vec<LinkInfo>) -> MeshStatus {
        let links: BTreeMap<NodeId, LinkInfo> = links.into_iter().map(|l| (l.peer, l)).collect();
        MeshStatus {
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

    fn state(&mut self, peer: NodeId, state: ConnectionState) {
        self.out.push(Action::State { peer, state });
    }

    fn update_poll_speed(&mut self) {
        let settled = self.peers.values().all(|c| c.phase == Phase::Open);
        self.out.push(Action::FastPoll(!settled));
    }

    fn open_neighbours(&self, except: NodeId) -> Vec<NodeId> {
        self.open_peers()
            .into_iter()
            .filter(|id| *id != except)
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
            tracing::debug!(peer = signal.to, kind = ?signal.kind, attempt = signal.attempt, "signal through the repository");
            self.out.push(Action::Publish(signal));
            return;
        }
        conn.relays_left = neighbours.len();
        conn.relayed_signal = Some(signal.clone());
        self.signals_via_mesh += 1;
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
        self.out.push(Action::Relay {
            relayed,
            via: neighbours,
        });
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
                self.out.push(Action::Publish(signal));
            }
        }
    }

    fn start_offer(&mut self, now: Instant, peer: NodeId) {
        let Some(conn) = self.peers.get_mut(&peer) else {
            return;
        };
        conn.attempt += 1;
        let attempt = conn.attempt;
        conn.phase = Phase::Offering {
            attempt,
            since: now,
        };
        let fingerprint = conn.record.dtls_fingerprint.clone();
        self.state(peer, ConnectionState::Connecting);
        self.update_poll_speed();
        tracing::info!(peer, attempt, "offering a link");
        self.out.push(Action::Offer {
            peer,
            attempt,
            fingerprint,
        });
    }

    fn offered(
        &mut self,
        now: Instant,
        peer: NodeId,
        attempt: u64,
        result: Result<String, String>,
    ) {
        let Some(conn) = self.peers.get(&peer) else {
            return;
        };
        if !matches!(conn.phase, Phase::Offering { attempt: a, .. } if a == attempt) {
            return;
        }
        match result {
            Ok(sdp) => {
                let signal = Signal {
                    to: peer,
                    to_session: conn.record.session_id.clone(),
                    from_session: self.session.clone(),
                    attempt,
                    kind: SignalKind::Offer,
                    sdp,
                };
                self.send_signal(signal);
            }
            Err(e) => self.failed(now, peer, &format!("offer: {e}")),
        }
    }

    fn answer(&mut self, now: Instant, peer: NodeId, signal: Signal) {
        let Some(conn) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_open = conn.phase == Phase::Open;
        conn.attempt = signal.attempt;
        conn.phase = Phase::Answering {
            attempt: signal.attempt,
            since: now,
        };
        let fingerprint = conn.record.dtls_fingerprint.clone();
        if was_open {
            self.out.push(Action::Link { peer, up: false });
        }
        self.state(peer, ConnectionState::Connecting);
        self.update_poll_speed();
        tracing::info!(peer, attempt = signal.attempt, "answering an offer");
        self.out.push(Action::Answer {
            peer,
            attempt: signal.attempt,
            sdp: signal.sdp,
            fingerprint,
        });
    }

    fn answered(
        &mut self,
        now: Instant,
        peer: NodeId,
        attempt: u64,
        result: Result<String, String>,
    ) {
        let Some(conn) = self.peers.get(&peer) else {
            return;
        };
        if !matches!(conn.phase, Phase::Answering { attempt: a, .. } if a == attempt) {
            return;
        }
        match result {
            Ok(sdp) => {
                let signal = Signal {
                    to: peer,
                    to_session: conn.record.session_id.clone(),
                    from_session: self.session.clone(),
                    attempt,
                    kind: SignalKind::Answer,
                    sdp,
                };
                self.send_signal(signal);
            }
            Err(e) => self.failed(now, peer, &format!("answer: {e}")),
        }
    }

    fn failed(&mut self, now: Instant, peer: NodeId, reason: &str) {
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
        conn.phase = Phase::Backoff { until: now + wait };
        tracing::warn!(peer, reason, retry_in = ?wait, "link to peer failed");
        self.out.push(Action::Failed {
            peer,
            reason: reason.to_owned(),
            retry_in: wait,
        });
        self.state(peer, ConnectionState::Failed);
        if was_open {
            self.out.push(Action::Link { peer, up: false });
        }
        self.update_poll_speed();
    }

    fn on_signal(&mut self, now: Instant, from: NodeId, signal: Signal) {
        if signal.to != self.me || signal.to_session != self.session {
            tracing::debug!(from, "stale signal for another session");
            return;
        }
        let offers = self.offers_to(from);
        let Some(conn) = self.peers.get_mut(&from) else {
            // The sender's record is not known yet: keep the signal and
            // read the channel now.
            if self.pending.len() < MAX_PENDING_SIGNALS {
                self.pending.push((from, signal));
            }
            self.out.push(Action::Poll);
            return;
        };
        if signal.from_session != conn.record.session_id {
            tracing::debug!(from, "signal from another session of the peer");
            return;
        }
        match signal.kind {
            SignalKind::Offer => {
                if offers {
                    tracing::warn!(
                        from,
                        "ignoring an offer from a peer this node offers to (glare rule)"
                    );
                    return;
                }
                let newer = signal.attempt > conn.attempt
                    || !matches!(conn.phase, Phase::Answering { .. } | Phase::Open);
                if newer {
                    self.answer(now, from, signal);
                }
            }
            SignalKind::Answer => {
                let Phase::Offering { attempt, .. } = conn.phase else {
                    return;
                };
                if attempt != signal.attempt || conn.accepting == Some(attempt) {
                    return;
                }
                conn.accepting = Some(attempt);
                self.out.push(Action::Accept {
                    peer: from,
                    sdp: signal.sdp,
                });
            }
        }
    }

    fn on_relayed(&mut self, now: Instant, from: NodeId, relayed: Relayed) {
        if relayed.sdp.len() > crate::ports::MAX_SDP_BYTES {
            tracing::warn!(from, "dropped an oversized relayed signal");
            return;
        }
        if relayed.bounced {
            if relayed.origin == self.me {
                self.on_bounce(relayed);
            }
            return;
        }
        if relayed.target == self.me {
            if relayed.hops == 0 && relayed.origin != from {
                tracing::warn!(
                    from,
                    origin = relayed.origin,
                    "dropped a relayed signal whose origin is not its sender"
                );
                return;
            }
            let origin = relayed.origin;
            let signal = Signal {
                to: relayed.target,
                to_session: relayed.to_session,
                from_session: relayed.from_session,
                attempt: relayed.attempt,
                kind: relayed.kind,
                sdp: relayed.sdp,
            };
            self.on_signal(now, origin, signal);
        } else if relayed.hops == 0 && relayed.origin == from {
            let (target, origin) = (relayed.target, relayed.origin);
            if self.is_open(target) {
                self.out.push(Action::Relay {
                    relayed: Relayed { hops: 1, ..relayed },
                    via: vec![target],
                });
            } else {
                // This node cannot reach the target: the origin hears so
                // and, once every relay said it, uses the repository.
                self.out.push(Action::Relay {
                    relayed: Relayed {
                        bounced: true,
                        ..relayed
                    },
                    via: vec![origin],
                });
            }
        }
    }

    fn online(&mut self, now: Instant, record: PresenceRecord, old_link_alive: bool) {
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
            // Closing the old link reports `Closed` later, possibly while
            // the new session's link is being set up.
            c.old_link_closing = old_link_alive;
            if was_open {
                self.out.push(Action::Link {
                    peer: id,
                    up: false,
                });
            }
            self.out.push(Action::Detach(id));
        } else {
            tracing::info!(peer = id, user = %record.user, "peer online");
            self.out.push(Action::Track {
                peer: id,
                user: record.user.clone(),
            });
            self.peers.insert(
                id,
                Conn {
                    record,
                    phase: Phase::Idle,
                    attempt: 0,
                    failures: 0,
                    // A peer never linked before may not be linked to any
                    // neighbour either: its first signals go through the
                    // repository.
                    relay_failed: true,
                    relays_left: 0,
                    relayed_signal: None,
                    accepting: None,
                    old_link_closing: false,
                },
            );
        }
        let waiting: Vec<(NodeId, Signal)> = std::mem::take(&mut self.pending);
        for (from, s) in waiting {
            if self.peers.contains_key(&from) {
                self.on_signal(now, from, s);
            } else {
                self.pending.push((from, s));
            }
        }
        self.update_poll_speed();
    }

    fn offline(&mut self, id: NodeId) {
        // An open link is better evidence than a stale record.
        if self.peers.get(&id).is_some_and(|c| c.phase != Phase::Open) {
            tracing::info!(peer = id, "peer offline");
            self.peers.remove(&id);
            self.out.push(Action::Untrack(id));
            self.out.push(Action::ClearSignal(id));
            self.out.push(Action::Close(id));
            self.update_poll_speed();
        }
    }

    fn tick(&mut self, now: Instant) {
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
            self.out.push(Action::Close(id));
            self.failed(now, id, "the link did not open in time");
        }
        for id in offer {
            self.start_offer(now, id);
        }
    }

    fn on_transport(&mut self, now: Instant, event: TransportEvent) {
        match event {
            TransportEvent::Open(peer) => {
                let Some(c) = self.peers.get_mut(&peer) else {
                    // A link nobody asked for (the peer's record is gone).
                    self.out.push(Action::Close(peer));
                    return;
                };
                c.phase = Phase::Open;
                c.failures = 0;
                c.relay_failed = false;
                c.old_link_closing = false;
                tracing::info!(peer, "link open");
                self.out.push(Action::ClearSignal(peer));
                self.state(peer, ConnectionState::Connected);
                self.out.push(Action::Link { peer, up: true });
                self.update_poll_speed();
            }
            TransportEvent::Failed { peer, reason } => self.failed(now, peer, &reason),
            TransportEvent::Closed(peer) => {
                if let Some(c) = self.peers.get_mut(&peer).filter(|c| c.old_link_closing) {
                    c.old_link_closing = false;
                    tracing::debug!(peer, "the restarted peer's old link closed");
                    return;
                }
                self.failed(now, peer, "closed")
            }
            TransportEvent::Refused { peer, reason } => {
                tracing::error!(
                    peer,
                    reason,
                    "refused a peer whose certificate does not match its presence record"
                );
                self.failed(now, peer, &format!("refused: {reason}"));
            }
            TransportEvent::Misbehaved { peer, reason } => {
                tracing::warn!(peer, reason, "dropped a peer that broke the wire format");
                self.failed(now, peer, &format!("misbehaved: {reason}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random source that always answers `0` (no jitter) or always the
    /// maximum (the largest jitter).
    struct Fixed(u64);
    impl RandomSource for Fixed {
        fn next_u128(&mut self) -> u128 {
            u128::from(self.0)
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
    }

    const OPTS: MeshOptions = MeshOptions {
        connect_timeout: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
    };

    fn record(id: NodeId, session: &str) -> PresenceRecord {
        PresenceRecord {
            version: crate::ports::PRESENCE_VERSION,
            user: format!("u{id}"),
            node_id: id,
            session_id: session.into(),
            last_seen: 0,
            dtls_fingerprint: format!("fp{id}"),
            in_group: false,
            signals: Vec::new(),
        }
    }

    fn signal(
        to: NodeId,
        to_session: &str,
        from_session: &str,
        attempt: u64,
        kind: SignalKind,
    ) -> Signal {
        Signal {
            to,
            to_session: to_session.into(),
            from_session: from_session.into(),
            attempt,
            kind,
            sdp: format!("sdp-{attempt}"),
        }
    }

    /// Node `me` (session `s<me>`) at a fixed start time.
    struct T {
        core: MeshCore,
        t0: Instant,
    }

    impl T {
        fn new(me: NodeId) -> Self {
            Self::with_rng(me, 0)
        }
        fn with_rng(me: NodeId, r: u64) -> Self {
            T {
                core: MeshCore::new(me, format!("s{me}"), OPTS, Box::new(Fixed(r))),
                t0: Instant::now(),
            }
        }
        fn at(&mut self, secs: u64, input: Input) -> Vec<Action> {
            self.core.on(self.t0 + Duration::from_secs(secs), input)
        }
        fn on(&mut self, input: Input) -> Vec<Action> {
            self.at(0, input)
        }
        fn online(&mut self, id: NodeId) -> Vec<Action> {
            self.on(Input::Online {
                record: record(id, &format!("s{id}")),
                old_link_alive: false,
            })
        }
        /// Brings the link to `peer` up (this node offering or answering).
        fn open(&mut self, peer: NodeId) {
            self.online(peer);
            self.on(Input::Transport(TransportEvent::Open(peer)));
        }
    }

    fn offers(actions: &[Action]) -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Offer { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    fn failed_wait(actions: &[Action]) -> Option<Duration> {
        actions.iter().find_map(|a| match a {
            Action::Failed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
    }

    #[test]
    fn the_smaller_id_offers_and_the_larger_waits() {
        // (me, peer, offers on the next tick)
        for (me, peer, expect) in [(1, 2, true), (2, 1, false), (5, 9, true), (9, 5, false)] {
            let mut t = T::new(me);
            let joined = t.online(peer);
            assert!(joined.contains(&Action::Track {
                peer,
                user: format!("u{peer}")
            }));
            let tick = t.on(Input::Tick);
            assert_eq!(
                offers(&tick) == vec![peer],
                expect,
                "{me} -> {peer}: {tick:?}"
            );
            if expect {
                assert!(tick.contains(&Action::Offer {
                    peer,
                    attempt: 1,
                    fingerprint: format!("fp{peer}")
                }));
                assert!(tick.contains(&Action::FastPoll(true)));
            }
        }
    }

    #[test]
    fn an_offer_from_a_peer_this_node_offers_to_is_ignored() {
        let mut t = T::new(1);
        t.online(2);
        let got = t.on(Input::Signal {
            from: 2,
            signal: signal(1, "s1", "s2", 1, SignalKind::Offer),
        });
        assert!(got.is_empty(), "{got:?}");
        // The other way round it is answered.
        let mut t = T::new(2);
        t.online(1);
        let got = t.on(Input::Signal {
            from: 1,
            signal: signal(2, "s2", "s1", 1, SignalKind::Offer),
        });
        assert!(got.contains(&Action::Answer {
            peer: 1,
            attempt: 1,
            sdp: "sdp-1".into(),
            fingerprint: "fp1".into()
        }));
    }

    #[test]
    fn stale_signals_are_dropped() {
        // (to, to_session, from_session): only (2, s2, s1) is current.
        for (to, to_session, from_session, current) in [
            (2, "s2", "s1", true),
            (3, "s2", "s1", false),
            (2, "old", "s1", false),
            (2, "s2", "old", false),
        ] {
            let mut t = T::new(2);
            t.online(1);
            let got = t.on(Input::Signal {
                from: 1,
                signal: signal(to, to_session, from_session, 1, SignalKind::Offer),
            });
            assert_eq!(
                !got.is_empty(),
                current,
                "{to} {to_session} {from_session}: {got:?}"
            );
        }
    }

    #[test]
    fn a_signal_before_the_record_is_held_and_replayed() {
        let mut t = T::new(2);
        let got = t.on(Input::Signal {
            from: 1,
            signal: signal(2, "s2", "s1", 1, SignalKind::Offer),
        });
        assert_eq!(got, vec![Action::Poll]);
        let got = t.online(1);
        assert!(
            got.iter()
                .any(|a| matches!(a, Action::Answer { peer: 1, .. })),
            "{got:?}"
        );
        // Held signals are bounded.
        let mut t = T::new(2);
        for i in 0..(MAX_PENDING_SIGNALS as u64 + 10) {
            t.on(Input::Signal {
                from: 100 + i,
                signal: signal(2, "s2", "x", 1, SignalKind::Offer),
            });
        }
        assert_eq!(t.core.pending.len(), MAX_PENDING_SIGNALS);
    }

    #[test]
    fn signals_go_through_the_repository_until_a_neighbour_can_relay() {
        let mut t = T::new(1);
        t.online(3);
        let tick = t.on(Input::Tick);
        assert_eq!(offers(&tick), vec![3]);
        // No open neighbour: the repository.
        let got = t.on(Input::Offered {
            peer: 3,
            attempt: 1,
            result: Ok("offer".into()),
        });
        assert!(
            matches!(&got[..], [Action::Publish(s)] if s.to == 3 && s.kind == SignalKind::Offer)
        );
        // Linked to 2, and 3 was linked once: the next offer goes over the
        // mesh through 2.
        t.open(2);
        t.on(Input::Transport(TransportEvent::Open(3)));
        t.on(Input::Transport(TransportEvent::Failed {
            peer: 3,
            reason: "gone".into(),
        }));
        let tick = t.at(100, Input::Tick);
        assert_eq!(offers(&tick), vec![3]);
        let got = t.at(
            100,
            Input::Offered {
                peer: 3,
                attempt: 2,
                result: Ok("offer2".into()),
            },
        );
        assert!(
            matches!(&got[..], [Action::Relay { relayed, via }] if via == &vec![2] && relayed.hops == 0 && relayed.origin == 1 && relayed.target == 3),
            "{got:?}"
        );
        assert_eq!(t.core.status(Vec::new()).signals_via_mesh, 1);
    }

    #[test]
    fn a_relay_forwards_once_and_bounces_what_it_cannot_deliver() {
        let relayed = |origin, target, hops| Relayed {
            origin,
            target,
            hops,
            bounced: false,
            kind: SignalKind::Offer,
            to_session: format!("s{target}"),
            from_session: format!("s{origin}"),
            attempt: 1,
            sdp: "sdp".into(),
        };
        let mut t = T::new(2);
        t.open(1);
        t.open(3);
        // Forwarded to the open target with one hop.
        let got = t.on(Input::Relayed {
            from: 1,
            relayed: relayed(1, 3, 0),
        });
        assert_eq!(
            got,
            vec![Action::Relay {
                relayed: relayed(1, 3, 1),
                via: vec![3]
            }]
        );
        // Only hop-0 signals from their origin are forwarded.
        assert!(t
            .on(Input::Relayed {
                from: 1,
                relayed: relayed(1, 3, 1)
            })
            .is_empty());
        assert!(t
            .on(Input::Relayed {
                from: 3,
                relayed: relayed(1, 4, 0)
            })
            .is_empty());
        // No link to the target: bounced back to the origin.
        let got = t.on(Input::Relayed {
            from: 1,
            relayed: relayed(1, 4, 0),
        });
        assert_eq!(
            got,
            vec![Action::Relay {
                relayed: Relayed {
                    bounced: true,
                    ..relayed(1, 4, 0)
                },
                via: vec![1]
            }]
        );
        // A signal for this node whose origin is not its sender is dropped.
        assert!(t
            .on(Input::Relayed {
                from: 3,
                relayed: relayed(1, 2, 0)
            })
            .is_empty());
        // An oversized one too.
        let mut big = relayed(1, 3, 0);
        big.sdp = "x".repeat(crate::ports::MAX_SDP_BYTES + 1);
        assert!(t
            .on(Input::Relayed {
                from: 1,
                relayed: big
            })
            .is_empty());
    }

    #[test]
    fn when_every_relay_bounces_the_signal_goes_through_the_repository() {
        let mut t = T::new(1);
        t.open(2);
        t.open(3);
        t.online(4);
        // Make 4 look linked once, so its signal goes over the mesh.
        t.on(Input::Transport(TransportEvent::Open(4)));
        t.on(Input::Transport(TransportEvent::Failed {
            peer: 4,
            reason: "gone".into(),
        }));
        t.at(100, Input::Tick);
        let got = t.at(
            100,
            Input::Offered {
                peer: 4,
                attempt: 1,
                result: Ok("o".into()),
            },
        );
        let Some(Action::Relay { relayed, via }) = got.first().cloned() else {
            panic!("not relayed: {got:?}");
        };
        assert_eq!(via, vec![2, 3]);
        let bounced = Relayed {
            bounced: true,
            ..relayed
        };
        // One bounce of two: still waiting.
        assert!(t
            .on(Input::Relayed {
                from: 2,
                relayed: bounced.clone()
            })
            .is_empty());
        let got = t.on(Input::Relayed {
            from: 3,
            relayed: bounced.clone(),
        });
        assert!(
            matches!(&got[..], [Action::Publish(s)] if s.to == 4),
            "{got:?}"
        );
        // A late third bounce changes nothing.
        assert!(t
            .on(Input::Relayed {
                from: 3,
                relayed: bounced
            })
            .is_empty());
    }

    #[test]
    fn an_attempt_that_does_not_open_times_out_and_backs_off_exponentially() {
        let mut t = T::new(1);
        t.online(2);
        t.on(Input::Tick);
        // Not yet.
        assert!(offers(&t.at(30, Input::Tick)).is_empty());
        let got = t.at(31, Input::Tick);
        assert_eq!(got.first(), Some(&Action::Close(2)));
        assert_eq!(failed_wait(&got), Some(Duration::from_secs(1)));
        // Each failure doubles the wait, up to the maximum.
        let mut now = 31;
        for expect in [2, 4, 8, 16, 30, 30] {
            let wait = t.core.peers[&2].phase;
            let Phase::Backoff { until } = wait else {
                panic!("{wait:?}")
            };
            now = until.duration_since(t.t0).as_secs();
            assert_eq!(offers(&t.at(now, Input::Tick)), vec![2]);
            let got = t.at(
                now,
                Input::Transport(TransportEvent::Failed {
                    peer: 2,
                    reason: "x".into(),
                }),
            );
            assert_eq!(failed_wait(&got), Some(Duration::from_secs(expect)));
        }
        assert!(now > 31);
        // Jitter adds at most half.
        let mut t = T::with_rng(1, u64::MAX);
        t.online(2);
        t.on(Input::Tick);
        let got = t.on(Input::Transport(TransportEvent::Failed {
            peer: 2,
            reason: "x".into(),
        }));
        let wait = failed_wait(&got).unwrap();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1500),
            "{wait:?}"
        );
    }

    #[test]
    fn an_answer_is_accepted_once_and_only_for_the_current_attempt() {
        let mut t = T::new(1);
        t.online(2);
        t.on(Input::Tick);
        let answer = |attempt| Input::Signal {
            from: 2,
            signal: signal(1, "s1", "s2", attempt, SignalKind::Answer),
        };
        assert!(t.on(answer(7)).is_empty());
        assert_eq!(
            t.on(answer(1)),
            vec![Action::Accept {
                peer: 2,
                sdp: "sdp-1".into()
            }]
        );
        assert!(t.on(answer(1)).is_empty(), "a second copy is ignored");
        let got = t.on(Input::Accepted {
            peer: 2,
            result: Err("bad".into()),
        });
        assert!(failed_wait(&got).is_some());
    }

    #[test]
    fn a_restarted_peer_starts_over_and_its_old_links_close_is_ignored_once() {
        let mut t = T::new(1);
        t.open(2);
        let got = t.on(Input::Online {
            record: record(2, "new"),
            old_link_alive: true,
        });
        assert!(got.contains(&Action::Link { peer: 2, up: false }));
        assert!(got.contains(&Action::Detach(2)));
        // The old link's Closed is not taken for the new attempt.
        assert!(t.on(Input::Transport(TransportEvent::Closed(2))).is_empty());
        assert_eq!(offers(&t.on(Input::Tick)), vec![2]);
        // A second Closed is a real failure.
        let got = t.on(Input::Transport(TransportEvent::Closed(2)));
        assert!(failed_wait(&got).is_some(), "{got:?}");
        // The same session again only refreshes the record.
        assert!(t
            .on(Input::Online {
                record: record(2, "new"),
                old_link_alive: true
            })
            .is_empty());
    }

    #[test]
    fn presence_saying_offline_does_not_end_an_open_link() {
        let mut t = T::new(1);
        t.open(2);
        assert!(t.on(Input::Offline(2)).is_empty());
        assert!(t.core.is_open(2));
        t.online(3);
        let got = t.on(Input::Offline(3));
        assert_eq!(
            got,
            vec![
                Action::Untrack(3),
                Action::ClearSignal(3),
                Action::Close(3),
                Action::FastPoll(false)
            ]
        );
        // A link nobody asked for is closed.
        assert_eq!(
            t.on(Input::Transport(TransportEvent::Open(9))),
            vec![Action::Close(9)]
        );
        // Dropping an open link fails it; dropping a closed one does nothing.
        let got = t.on(Input::Drop(2));
        assert_eq!(got.first(), Some(&Action::Close(2)));
        assert!(got.contains(&Action::Link { peer: 2, up: false }));
        assert!(t.on(Input::Drop(2)).is_empty());
    }
}
