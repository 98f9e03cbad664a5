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
    /// The peer's identity was refused: forget it even if its link is open
    /// (a link is never kept, or offered again, for a refused peer; only a
    /// new record that verifies brings it back).
    Refused(NodeId),
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
            Input::Refused(id) => self.refused(id),
            Input::Signal { from, signal } => self.on_signal(now, from, signal),
            Input::Relayed { from, relayed } => self.on_relayed(now, from, relayed),
            Input::Offered {
                peer,
                attempt,
                result,
            } => self.described(now, peer, attempt, SignalKind::Offer, result),
            Input::Answered {
                peer,
                attempt,
                result,
            } => self.described(now, peer, attempt, SignalKind::Answer, result),
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
            verified_by: None,
            refused: Vec::new(),
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

    /// The transport made (or could not make) this attempt's offer or
    /// answer: signal it to the peer, if the attempt is still current.
    fn described(
        &mut self,
        now: Instant,
        peer: NodeId,
        attempt: u64,
        kind: SignalKind,
        result: Result<String, String>,
    ) {
        let Some(conn) = self.peers.get(&peer) else {
            return;
        };
        let current = match (kind, conn.phase) {
            (SignalKind::Offer, Phase::Offering { attempt: a, .. })
            | (SignalKind::Answer, Phase::Answering { attempt: a, .. }) => a == attempt,
            _ => false,
        };
        if !current {
            return;
        }
        match result {
            Ok(sdp) => {
                let signal = Signal {
                    to: peer,
                    to_session: conn.record.session_id.clone(),
                    from_session: self.session.clone(),
                    attempt,
                    kind,
                    sdp,
                };
                self.send_signal(signal);
            }
            Err(e) => {
                let what = match kind {
                    SignalKind::Offer => "offer",
                    SignalKind::Answer => "answer",
                };
                self.failed(now, peer, &format!("{what}: {e}"));
            }
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

    fn refused(&mut self, id: NodeId) {
        let Some(conn) = self.peers.remove(&id) else {
            return;
        };
        tracing::info!(peer = id, "peer refused: link closed");
        self.pending.retain(|(from, _)| *from != id);
        self.out.push(Action::Untrack(id));
        self.out.push(Action::ClearSignal(id));
        self.out.push(Action::Close(id));
        if conn.phase == Phase::Open {
            self.out.push(Action::Link {
                peer: id,
                up: false,
            });
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
#[path = "core_tests.rs"]
mod tests;
