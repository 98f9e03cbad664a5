//! The mesh actor: keeps one link to every online peer of the room.
//!
//! The protocol (glare, signalling through the repository or relayed over
//! the mesh, bounces, timeouts, backoff, restarts) is the plain state
//! machine in [`core`]; this actor carries out its actions on the
//! transport, the presence actor and one [`PeerActor`] per peer (the state
//! shown to people), and feeds the transport's answers back to it.
//!
//! Subscribers learn of links going up and down ([`LinkChanged`]); the
//! membership controller uses that as its view of who is online.

pub mod core;
pub mod identity;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use skygit_consensus::codec::{self, Envelope, EnvelopeKind};
use skygit_consensus::NodeId;
use tokio::time::Instant;
use tracing::Instrument;

use self::core::{Action, Input, MeshCore};
use self::identity::{Admit, Gate, Outcome, RefusedPeer, VerifiedPeers};
use crate::peer::{ConnectionState, PeerActor, StateChanged};
use crate::ports::{
    LinkInfo, PeerLink, PeerTransport, PresenceRecord, RandomSource, SignalKind, TransportEvent,
    WallClock,
};
use crate::presence::{
    ClearSignal, PeerEvent, Poll, PresenceActor, SetFastPoll, SetSignal, SignalReceived,
};

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
    /// Where peers' keys come from, when the room verifies identities.
    pub verified_by: Option<&'static str>,
    /// Peers refused a link, and why.
    pub refused: Vec<RefusedPeer>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

pub struct MeshActor {
    me: NodeId,
    room: String,
    core: MeshCore,
    transport: Arc<dyn PeerTransport>,
    link: Arc<dyn PeerLink>,
    presence: Addr<PresenceActor>,
    clock: Arc<dyn WallClock>,
    peers: BTreeMap<NodeId, Addr<PeerActor>>,
    subscribers: Vec<Recipient<LinkChanged>>,
    /// Set on a room that verifies identities.
    identity: Option<MeshIdentity>,
    gate: Gate,
    span: tracing::Span,
    /// Peers this node never links to (fault injection).
    blocked: BTreeSet<NodeId>,
}

/// How a room that verifies identities checks its peers.
#[derive(Clone)]
pub struct MeshIdentity {
    pub directory: Arc<dyn skygit_ports::identity::KeyDirectory>,
    /// Filled with each verified peer's user.
    pub verified: VerifiedPeers,
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
            room: room.to_owned(),
            core: MeshCore::new(me, session, opts, rng),
            transport,
            link,
            presence,
            clock,
            peers: BTreeMap::new(),
            subscribers: Vec::new(),
            identity: None,
            gate: Gate::default(),
            blocked: BTreeSet::new(),
            span: tracing::info_span!("mesh", room, node = me),
        }
    }

    /// Links only to peers whose signed presence verifies.
    pub fn verifying(mut self, identity: MeshIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// A peer's record, through the identity gate when there is one.
    fn on_online(&mut self, record: PresenceRecord, ctx: &mut Context<Self>) {
        let Some(identity) = self.identity.clone() else {
            return self.feed_online(record, ctx);
        };
        match self.gate.on_record(Instant::now(), record) {
            Admit::Now(r) => self.feed_online(r, ctx),
            Admit::Wait => {}
            Admit::Check(r) => {
                write_verified(&identity.verified).remove(&r.node_id);
                self.check(identity, r, ctx);
            }
        }
    }

    /// Checks `r`'s signed claim against its user's keys.
    fn check(&mut self, identity: MeshIdentity, r: PresenceRecord, ctx: &mut Context<Self>) {
        ctx.spawn(
            async move {
                let result =
                    skygit_ports::identity::check_presence(identity.directory.as_ref(), &r).await;
                (r, result)
            }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|(r, result), act, ctx| act.on_checked(r, result, ctx)),
        );
    }

    /// Checks again the claims that are due: linked peers verified a while
    /// ago (a member may have been removed since; they stay linked
    /// meanwhile), refused ones (a member may have been added since).
    fn recheck(&mut self, ctx: &mut Context<Self>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        for r in self.gate.due_for_recheck(Instant::now()) {
            self.check(identity.clone(), r, ctx);
        }
    }

    fn on_checked(
        &mut self,
        checked: PresenceRecord,
        result: Result<
            Result<(), skygit_ports::identity::Refusal>,
            skygit_ports::identity::DirectoryError,
        >,
        ctx: &mut Context<Self>,
    ) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let peer = checked.node_id;
        let span = self.span.clone();
        let _e = span.enter();
        match self.gate.on_verdict(Instant::now(), &checked, result) {
            Outcome::Admit(record) => {
                tracing::info!(peer, user = %record.user, "peer's identity verified");
                write_verified(&identity.verified).insert(peer, record.user.clone());
                self.feed_online(record, ctx);
            }
            Outcome::Refused(refusal) => {
                tracing::warn!(peer, user = %checked.user, reason = %refusal, "refused a peer");
                write_verified(&identity.verified).remove(&peer);
                metrics::counter!("skygit_identity_refusals_total", "room" => self.room.clone())
                    .increment(1);
                // Even an open link goes (a member removed since it was
                // verified), and the core forgets the peer so that it
                // neither offers nor answers until a record verifies.
                self.feed(Input::Refused(peer), ctx);
            }
            Outcome::Unavailable(error) => {
                tracing::warn!(peer, %error, "cannot check a peer's identity now; trying again later");
            }
            Outcome::Confirmed | Outcome::Stale => {}
        }
    }

    fn feed_online(&mut self, record: PresenceRecord, ctx: &mut Context<Self>) {
        let id = record.node_id;
        let old_link_alive = self.transport.links().iter().any(|l| {
            l.peer == id && !matches!(l.state.to_ascii_lowercase().as_str(), "failed" | "closed")
        });
        self.feed(
            Input::Online {
                record,
                old_link_alive,
            },
            ctx,
        );
    }

    /// Feeds one input to the core and carries out its actions.
    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        // A blocked peer's offers and answers never arrive: no link can
        // open, as between two networks with no path between them.
        match &input {
            Input::Signal { from, .. } if self.blocked.contains(from) => return,
            Input::Relayed { relayed, .. } if self.blocked.contains(&relayed.origin) => return,
            _ => {}
        }
        let span = self.span.clone();
        let _e = span.enter();
        let actions = self.core.on(Instant::now(), input);
        for a in actions {
            self.act(a, ctx);
        }
    }

    fn act(&mut self, action: Action, ctx: &mut Context<Self>) {
        let transport = self.transport.clone();
        match action {
            Action::Track { peer, .. } => {
                let actor = PeerActor::new(peer, &self.room).start();
                self.peers.insert(peer, actor);
            }
            Action::Untrack(peer) => {
                if let Some(a) = self.peers.remove(&peer) {
                    a.do_send(StateChanged(ConnectionState::Closed));
                }
            }
            Action::State { peer, state } => {
                if let Some(a) = self.peers.get(&peer) {
                    a.do_send(StateChanged(state));
                }
            }
            Action::Offer {
                peer,
                attempt,
                fingerprint,
            } => {
                ctx.spawn(
                    async move { transport.offer(peer, fingerprint).await }
                        .instrument(self.span.clone())
                        .into_actor(self)
                        .map(move |result, act, ctx| {
                            act.feed(
                                Input::Offered {
                                    peer,
                                    attempt,
                                    result,
                                },
                                ctx,
                            )
                        }),
                );
            }
            Action::Answer {
                peer,
                attempt,
                sdp,
                fingerprint,
            } => {
                ctx.spawn(
                    async move { transport.answer(peer, sdp, fingerprint).await }
                        .instrument(self.span.clone())
                        .into_actor(self)
                        .map(move |result, act, ctx| {
                            act.feed(
                                Input::Answered {
                                    peer,
                                    attempt,
                                    result,
                                },
                                ctx,
                            )
                        }),
                );
            }
            Action::Accept { peer, sdp } => {
                ctx.spawn(
                    async move { transport.accept_answer(peer, sdp).await }
                        .instrument(self.span.clone())
                        .into_actor(self)
                        .map(move |result, act, ctx| {
                            act.feed(Input::Accepted { peer, result }, ctx)
                        }),
                );
            }
            Action::Close(peer) => {
                actix::spawn(async move { transport.close(peer).await });
            }
            Action::Detach(peer) => {
                // The first poll detaches the link; its teardown goes on in
                // the background.
                let mut close: futures::future::BoxFuture<'static, ()> =
                    Box::pin(async move { transport.close(peer).await });
                if futures::FutureExt::now_or_never(&mut close).is_none() {
                    actix::spawn(close);
                }
            }
            Action::Publish(signal) => {
                metrics::counter!("skygit_mesh_signals_total", "room" => self.room.clone(), "via" => "repository")
                    .increment(1);
                self.presence.do_send(SetSignal(signal));
            }
            Action::Relay { relayed, via } => {
                if relayed.origin == self.me && relayed.hops == 0 && !relayed.bounced {
                    metrics::counter!("skygit_mesh_signals_total", "room" => self.room.clone(), "via" => "mesh")
                        .increment(1);
                }
                self.relay(relayed, via);
            }
            Action::ClearSignal(peer) => self.presence.do_send(ClearSignal(peer)),
            Action::Poll => self.presence.do_send(Poll),
            Action::FastPoll(fast) => self.presence.do_send(SetFastPoll(fast)),
            Action::Link { peer, up } => self.notify(peer, up),
            Action::Failed { .. } => {
                metrics::counter!("skygit_mesh_link_failures_total", "room" => self.room.clone())
                    .increment(1);
            }
        }
    }

    fn notify(&mut self, peer: NodeId, up: bool) {
        let open = self.core.open_peers().len();
        metrics::gauge!("skygit_mesh_links_open", "room" => self.room.clone()).set(open as f64);
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(LinkChanged { peer, up });
        }
    }

    /// Encodes a relayed signal once and sends it to each of `via`.
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
                    epoch: 0,
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

    /// Publishes each open link's round-trip time as a metric.
    fn record_rtts(&self) {
        for l in self.transport.links() {
            if let (true, Some(rtt)) = (l.open, l.rtt_us) {
                metrics::gauge!("skygit_mesh_rtt_seconds", "room" => self.room.clone(), "peer" => l.peer.to_string())
                    .set(rtt as f64 / 1e6);
            }
        }
    }
}

impl Actor for MeshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.span.in_scope(|| tracing::info!("mesh actor started"));
        ctx.run_interval(Duration::from_millis(250), |act, ctx| {
            act.feed(Input::Tick, ctx)
        });
        ctx.run_interval(Duration::from_secs(5), |act, _| act.record_rtts());
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.recheck(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for a in self.peers.values() {
            a.do_send(StateChanged(ConnectionState::Closed));
        }
    }
}

impl Handler<PeerEvent> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: PeerEvent, ctx: &mut Self::Context) {
        match msg {
            PeerEvent::Online(record) => self.on_online(record, ctx),
            PeerEvent::Offline(id) => {
                if let Some(identity) = &self.identity {
                    self.gate.forget(id);
                    write_verified(&identity.verified).remove(&id);
                }
                self.feed(Input::Offline(id), ctx);
            }
        }
    }
}

impl Handler<SignalReceived> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, ctx: &mut Self::Context) {
        self.feed(
            Input::Signal {
                from: msg.from,
                signal: msg.signal,
            },
            ctx,
        );
    }
}

impl Handler<RelayFrame> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: RelayFrame, ctx: &mut Self::Context) {
        let relayed: Relayed = match codec::from_bytes(&msg.0.payload) {
            Ok(r) => r,
            Err(e) => {
                self.span.in_scope(|| {
                    tracing::warn!(from = msg.0.from, error = %e, "dropped a malformed relayed signal")
                });
                return;
            }
        };
        self.feed(
            Input::Relayed {
                from: msg.0.from,
                relayed,
            },
            ctx,
        );
    }
}

/// An event of this room's peer transport, for the mesh actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FromTransport(pub TransportEvent);

impl Handler<FromTransport> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: FromTransport, ctx: &mut Self::Context) {
        self.feed(Input::Transport(msg.0), ctx);
    }
}

impl Handler<SubscribeLinks> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribeLinks, _ctx: &mut Self::Context) {
        for peer in self.core.open_peers() {
            msg.0.do_send(LinkChanged { peer, up: true });
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<GetMeshStatus> for MeshActor {
    type Result = MessageResult<GetMeshStatus>;

    fn handle(&mut self, _: GetMeshStatus, _ctx: &mut Self::Context) -> Self::Result {
        let mut status = self.core.status(self.transport.links());
        status.verified_by = self.identity.as_ref().map(|i| i.directory.name());
        status.refused = self.gate.refused();
        MessageResult(status)
    }
}

impl Handler<StopMesh> for MeshActor {
    type Result = ();

    fn handle(&mut self, _: StopMesh, ctx: &mut Self::Context) {
        let peers = self.core.peers();
        let transport = self.transport.clone();
        actix::spawn(async move {
            for p in peers {
                transport.close(p).await;
            }
        });
        ctx.stop();
    }
}

/// Never link to this peer again, closing the link if one is open
/// (fault injection for tests: two nodes with no path between them).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BlockPeer(pub NodeId);

impl Handler<BlockPeer> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: BlockPeer, ctx: &mut Self::Context) {
        self.span
            .in_scope(|| tracing::warn!(peer = msg.0, "fault: this node never links to the peer"));
        self.blocked.insert(msg.0);
        if self.core.is_open(msg.0) {
            self.feed(Input::Drop(msg.0), ctx);
        }
    }
}

impl Handler<DropLink> for MeshActor {
    type Result = bool;

    fn handle(&mut self, msg: DropLink, ctx: &mut Self::Context) -> bool {
        let open = self.core.is_open(msg.0);
        self.feed(Input::Drop(msg.0), ctx);
        open
    }
}

fn write_verified(v: &VerifiedPeers) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, String>> {
    v.write().unwrap_or_else(|e| e.into_inner())
}
