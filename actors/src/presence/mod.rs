//! The presence actor: heartbeats this node into the room's presence
//! channel, polls it, keeps the list of online peers, and carries WebRTC
//! signals (offers and answers) in this node's record until a peer picks
//! them up.
//!
//! Schedule ([`schedule`], a plain state machine): the record is
//! republished every [`PresenceOptions::heartbeat`] and at once when its
//! signals or group flag change; the channel is polled every
//! [`PresenceOptions::fast_poll`] while a connection is being set up
//! ([`SetFastPoll`]) and every [`PresenceOptions::slow_poll`] when settled.
//! A rate-limited channel pauses both until the host's retry time and the
//! status says so. A peer whose record is older than [`OFFLINE_AFTER`] is
//! offline.

pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use skygit_consensus::NodeId;
use tracing::Instrument;

use self::schedule::{Action, Input, Schedule};
use crate::ports::{PresenceChannel, PresenceError, PresenceRecord, Signal, WallClock};

/// A peer is offline when its last heartbeat is older than this (or than
/// three heartbeat intervals, when those are longer).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(180);
/// Most peers tracked per room; further records are ignored and logged.
pub const MAX_PEERS: usize = 256;
/// Longest pause a rate-limit answer can impose.
pub const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// The presence schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceOptions {
    pub heartbeat: Duration,
    pub fast_poll: Duration,
    pub slow_poll: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(60),
            fast_poll: Duration::from_secs(5),
            slow_poll: Duration::from_secs(60),
        }
    }
}

/// A peer appeared or went offline.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum PeerEvent {
    Online(PresenceRecord),
    Offline(NodeId),
}

/// A signal addressed to this node's session was found in a peer's record.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct SignalReceived {
    pub from: NodeId,
    pub signal: Signal,
}

/// Publish this node's heartbeat now (through the schedule: after a
/// publish in flight, not while the channel is rate limited).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// Read the presence channel now and update the peer list (through the
/// schedule: after a poll in flight, not while rate limited).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poll;

/// The peers a node must defer to before starting a group: the online
/// ones, and those whose record looked stale at first sight but has not
/// been watched long enough to call them gone (their clock may be behind).
/// `None` until two reads of the channel have succeeded (one read cannot
/// tell a live record from a stale one).
#[derive(Message)]
#[rtype(result = "Option<Vec<PresenceRecord>>")]
pub struct PossiblePeers;

/// What this node has seen of one peer's record.
struct Observed {
    record: PresenceRecord,
    /// When (local monotonic time) the record was first seen.
    first_seen: tokio::time::Instant,
    /// When it last changed; `None`: seen only with a stale stamp so far.
    changed_at: Option<tokio::time::Instant>,
}

/// Receive [`PeerEvent`]s (the current peers are sent at once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribePeers(pub Recipient<PeerEvent>);

/// Receive [`SignalReceived`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeSignals(pub Recipient<SignalReceived>);

/// Put a signal for one peer into this node's record (replacing the
/// earlier one for that peer) and publish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSignal(pub Signal);

/// Remove the signal for a peer from this node's record (published with
/// the next heartbeat).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClearSignal(pub NodeId);

/// Whether this node is a member of the raft group (published at once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetInGroup(pub bool);

/// Poll fast (a connection is being set up) or slow (settled).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetFastPoll(pub bool);

/// The presence actor's state, for status pages.
#[derive(Message)]
#[rtype(result = "PresenceStatus")]
pub struct GetPresenceStatus;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceStatus {
    pub session_id: String,
    pub fingerprint: String,
    pub in_group: bool,
    pub fast_poll: bool,
    pub online: Vec<NodeId>,
    pub publishes: u64,
    pub polls: u64,
    pub errors: u64,
    /// Set while the channel asked us to slow down (milliseconds left).
    pub throttled_ms: Option<u64>,
    pub last_error: Option<String>,
}

pub struct PresenceActor {
    /// The room's name, the `room` label of this actor's metrics.
    room: String,
    me: PresenceRecord,
    channel: Arc<dyn PresenceChannel>,
    clock: Arc<dyn WallClock>,
    opts: PresenceOptions,
    online: BTreeMap<NodeId, PresenceRecord>,
    signals: BTreeMap<NodeId, Signal>,
    /// Signals already handed to subscribers: (from, attempt, kind).
    seen_signals: BTreeSet<(NodeId, String, u64, bool)>,
    subscribers: Vec<Recipient<PeerEvent>>,
    signal_subscribers: Vec<Recipient<SignalReceived>>,
    schedule: Schedule,
    /// Each peer's last `last_seen` and when (local monotonic time) this
    /// node saw it change: liveness is judged by this node's own clock,
    /// so a peer whose wall clock is behind is not taken for gone.
    observed: BTreeMap<NodeId, Observed>,
    /// Successful reads of the channel.
    fetched: u64,
    publishes: u64,
    polls: u64,
    errors: u64,
    last_error: Option<String>,
    span: tracing::Span,
}

impl PresenceActor {
    pub fn new(
        me: PresenceRecord,
        channel: Arc<dyn PresenceChannel>,
        clock: Arc<dyn WallClock>,
        room: &str,
    ) -> Self {
        Self::with_options(me, channel, clock, room, PresenceOptions::default())
    }

    pub fn with_options(
        me: PresenceRecord,
        channel: Arc<dyn PresenceChannel>,
        clock: Arc<dyn WallClock>,
        room: &str,
        opts: PresenceOptions,
    ) -> Self {
        let span = tracing::info_span!("presence", room, node = me.node_id);
        let now = tokio::time::Instant::now();
        Self {
            room: room.to_owned(),
            me,
            channel,
            clock,
            opts,
            online: BTreeMap::new(),
            signals: BTreeMap::new(),
            seen_signals: BTreeSet::new(),
            subscribers: Vec::new(),
            signal_subscribers: Vec::new(),
            schedule: Schedule::new(now, opts),
            observed: BTreeMap::new(),
            fetched: 0,
            publishes: 0,
            polls: 0,
            errors: 0,
            last_error: None,
            span,
        }
    }

    /// Folds fetched records into the online list, returning the events.
    fn update(&mut self, records: Vec<PresenceRecord>, now_ms: i64) -> Vec<PeerEvent> {
        // Three missed heartbeats, and never less than OFFLINE_AFTER.
        let offline_after = OFFLINE_AFTER.max(self.opts.heartbeat.saturating_mul(3));
        let cutoff = now_ms - offline_after.as_millis() as i64;
        let local_now = tokio::time::Instant::now();
        self.fetched += 1;
        let mut fresh = BTreeMap::new();
        let mut observed = BTreeMap::new();
        for r in records {
            if r.node_id == self.me.node_id {
                continue;
            }
            // A record seen before is alive while it keeps changing (by
            // this node's monotonic clock). One seen for the first time
            // can only be judged by its wall-clock stamp; if that looks
            // stale (its writer's clock may be behind), its next change
            // proves it alive.
            let (first_seen, changed_at) = match self.observed.get(&r.node_id) {
                Some(o) if o.record == r => (o.first_seen, o.changed_at),
                Some(o) => (o.first_seen, Some(local_now)),
                None => (local_now, (r.last_seen >= cutoff).then_some(local_now)),
            };
            if observed.len() < MAX_PEERS {
                observed.insert(
                    r.node_id,
                    Observed {
                        record: r.clone(),
                        first_seen,
                        changed_at,
                    },
                );
            }
            let Some(changed_at) = changed_at else {
                continue;
            };
            if local_now.duration_since(changed_at) > offline_after {
                continue;
            }
            if fresh.len() >= MAX_PEERS {
                tracing::warn!(
                    max = MAX_PEERS,
                    "too many presence records; ignoring the rest"
                );
                break;
            }
            fresh.insert(r.node_id, r);
        }
        let mut events = Vec::new();
        for id in self.online.keys() {
            if !fresh.contains_key(id) {
                events.push(PeerEvent::Offline(*id));
            }
        }
        for (id, r) in &fresh {
            if self.online.get(id).map(|o| &o.session_id) != Some(&r.session_id) {
                events.push(PeerEvent::Online(r.clone()));
            }
        }
        self.online = fresh;
        self.observed = observed;
        metrics::gauge!("skygit_presence_online_peers", "room" => self.room.clone())
            .set(self.online.len() as f64);
        events
    }

    /// Signals in the online records addressed to this session, not yet
    /// handed on.
    fn new_signals(&mut self) -> Vec<SignalReceived> {
        let mut out = Vec::new();
        for r in self.online.values() {
            for s in &r.signals {
                if s.to != self.me.node_id || s.to_session != self.me.session_id {
                    continue;
                }
                let key = (
                    r.node_id,
                    s.from_session.clone(),
                    s.attempt,
                    s.kind == crate::ports::SignalKind::Offer,
                );
                if self.seen_signals.insert(key) {
                    out.push(SignalReceived {
                        from: r.node_id,
                        signal: s.clone(),
                    });
                }
            }
        }
        // Bound the memory of handed-on signals.
        while self.seen_signals.len() > 4 * MAX_PEERS {
            self.seen_signals.pop_first();
        }
        out
    }

    fn failed(&mut self, e: &PresenceError, what: &str) {
        self.errors += 1;
        self.last_error = Some(format!("{what}: {e}"));
        metrics::counter!("skygit_presence_errors_total", "room" => self.room.clone()).increment(1);
        if !matches!(e, PresenceError::RateLimited { .. }) {
            tracing::warn!(error = %e, "{what} failed");
        }
    }

    fn record(&mut self) -> PresenceRecord {
        self.me.last_seen = self.clock.now_ms();
        self.me.signals = self.signals.values().cloned().collect();
        self.me.clone()
    }

    /// Feeds the schedule one input and starts what it says.
    fn run(&mut self, input: Input, ctx: &mut Context<Self>) {
        let now = tokio::time::Instant::now();
        for action in self.schedule.on(now, input) {
            match action {
                Action::Publish => self.publish(ctx),
                Action::Poll => self.poll(ctx),
                Action::Throttled(wait) => {
                    metrics::counter!("skygit_presence_throttled_total", "room" => self.room.clone())
                        .increment(1);
                    tracing::warn!(?wait, "the presence channel is rate limited; slowing down");
                }
            }
        }
    }

    fn publish(&mut self, ctx: &mut Context<Self>) {
        let (channel, record) = (self.channel.clone(), self.record());
        ctx.spawn(
            async move { channel.publish(record).await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|res, act, ctx| {
                    match &res {
                        Ok(()) => {
                            act.publishes += 1;
                            metrics::counter!("skygit_presence_publishes_total", "room" => act.room.clone()).increment(1);
                        }
                        Err(e) => act.failed(e, "publishing presence"),
                    }
                    act.run(Input::Published(res), ctx);
                }),
        );
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let channel = self.channel.clone();
        ctx.spawn(
            async move { channel.fetch().await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|res, act, ctx| {
                    let res = match res {
                        Ok(records) => {
                            act.polls += 1;
                            metrics::counter!("skygit_presence_polls_total", "room" => act.room.clone()).increment(1);
                            act.absorb(records);
                            Ok(())
                        }
                        Err(e) => {
                            act.failed(&e, "polling presence");
                            Err(e)
                        }
                    };
                    act.run(Input::Polled(res), ctx);
                }),
        );
    }

    fn absorb(&mut self, records: Vec<PresenceRecord>) {
        let events = self.update(records, self.clock.now_ms());
        self.subscribers.retain(|s| s.connected());
        for e in events {
            for s in &self.subscribers {
                s.do_send(e.clone());
            }
        }
        let signals = self.new_signals();
        self.signal_subscribers.retain(|s| s.connected());
        for sig in signals {
            for s in &self.signal_subscribers {
                s.do_send(sig.clone());
            }
        }
    }
}

impl Actor for PresenceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _e = self.span.enter();
        tracing::info!(session = %self.me.session_id, "presence actor started");
        ctx.run_interval(Duration::from_millis(200), |act, ctx| {
            act.run(Input::Tick, ctx)
        });
    }
}

impl Handler<Heartbeat> for PresenceActor {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, ctx: &mut Self::Context) {
        self.run(Input::Changed, ctx);
    }
}

impl Handler<Poll> for PresenceActor {
    type Result = ();

    fn handle(&mut self, _: Poll, ctx: &mut Self::Context) {
        self.run(Input::PollNow, ctx);
    }
}

impl Handler<PossiblePeers> for PresenceActor {
    type Result = MessageResult<PossiblePeers>;

    fn handle(&mut self, _: PossiblePeers, _ctx: &mut Self::Context) -> Self::Result {
        let offline_after = OFFLINE_AFTER.max(self.opts.heartbeat.saturating_mul(3));
        let now = tokio::time::Instant::now();
        if self.fetched < 2 {
            return MessageResult(None);
        }
        MessageResult(Some(
            self.observed
                .values()
                .filter(|o| {
                    let since = o.changed_at.unwrap_or(o.first_seen);
                    now.duration_since(since) <= offline_after
                })
                .map(|o| o.record.clone())
                .collect(),
        ))
    }
}

impl Handler<SubscribePeers> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribePeers, _ctx: &mut Self::Context) {
        for r in self.online.values() {
            msg.0.do_send(PeerEvent::Online(r.clone()));
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<SubscribeSignals> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribeSignals, _ctx: &mut Self::Context) {
        self.signal_subscribers.push(msg.0);
    }
}

impl Handler<SetSignal> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SetSignal, ctx: &mut Self::Context) {
        self.signals.insert(msg.0.to, msg.0);
        self.run(Input::Changed, ctx);
    }
}

impl Handler<ClearSignal> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: ClearSignal, _ctx: &mut Self::Context) {
        self.signals.remove(&msg.0);
    }
}

impl Handler<SetInGroup> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SetInGroup, ctx: &mut Self::Context) {
        if self.me.in_group != msg.0 {
            self.me.in_group = msg.0;
            self.run(Input::Changed, ctx);
        }
    }
}

impl Handler<SetFastPoll> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SetFastPoll, ctx: &mut Self::Context) {
        self.run(Input::Fast(msg.0), ctx);
    }
}

impl Handler<GetPresenceStatus> for PresenceActor {
    type Result = MessageResult<GetPresenceStatus>;

    fn handle(&mut self, _: GetPresenceStatus, _ctx: &mut Self::Context) -> Self::Result {
        let throttled_ms = self
            .schedule
            .throttled_for(tokio::time::Instant::now())
            .map(|d| d.as_millis() as u64);
        MessageResult(PresenceStatus {
            session_id: self.me.session_id.clone(),
            fingerprint: self.me.dtls_fingerprint.clone(),
            in_group: self.me.in_group,
            fast_poll: self.schedule.fast(),
            online: self.online.keys().copied().collect(),
            publishes: self.publishes,
            polls: self.polls,
            errors: self.errors,
            throttled_ms,
            last_error: self.last_error.clone(),
        })
    }
}

/// An in-process presence channel shared by the nodes of one process (the
/// single-process demo and tests); real rooms use the repository.
#[derive(Default)]
pub struct LocalPresence {
    records: std::sync::Mutex<BTreeMap<NodeId, PresenceRecord>>,
}

impl PresenceChannel for LocalPresence {
    fn publish(
        &self,
        record: PresenceRecord,
    ) -> futures::future::BoxFuture<'_, Result<(), PresenceError>> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.node_id, record);
        Box::pin(async { Ok(()) })
    }

    fn fetch(&self) -> futures::future::BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>> {
        let all = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        Box::pin(async { Ok(all) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: NodeId, session: &str, last_seen: i64) -> PresenceRecord {
        PresenceRecord {
            user: format!("u{id}"),
            node_id: id,
            session_id: session.into(),
            last_seen,
            dtls_fingerprint: String::new(),
            in_group: false,
            signals: Vec::new(),
            version: crate::ports::PRESENCE_VERSION,
            identity: None,
        }
    }

    /// Node 1's presence actor (its channel and clock are not used).
    fn node_one() -> PresenceActor {
        PresenceActor::new(
            rec(1, "s1", 0),
            Arc::new(LocalPresence::default()),
            Arc::new(crate::ports::SystemClock),
            "r",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn peers_come_online_and_time_out() {
        let mut a = node_one();
        let t0 = 1_000_000_000;
        let ev = a.update(
            vec![rec(1, "s1", t0), rec(2, "s2", t0), rec(3, "s3", t0)],
            t0,
        );
        assert_eq!(
            ev,
            vec![
                PeerEvent::Online(rec(2, "s2", t0)),
                PeerEvent::Online(rec(3, "s3", t0))
            ]
        );
        // Node 3 keeps beating, node 2 falls silent past the cutoff (by
        // this node's own clock).
        tokio::time::advance(OFFLINE_AFTER + Duration::from_millis(1)).await;
        let t1 = t0 + OFFLINE_AFTER.as_millis() as i64 + 1;
        let ev = a.update(vec![rec(2, "s2", t0), rec(3, "s3", t1)], t1);
        assert_eq!(ev, vec![PeerEvent::Offline(2)]);
        // Node 3 restarts with a new session: it is announced again.
        let ev = a.update(vec![rec(3, "s3b", t1)], t1);
        assert_eq!(ev, vec![PeerEvent::Online(rec(3, "s3b", t1))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_whose_clock_is_behind_is_online_once_its_record_changes() {
        let mut a = node_one();
        let now = 1_000_000_000;
        // Node 2's clock is ten minutes behind: its fresh record looks old.
        let behind = now - 600_000;
        assert!(a.update(vec![rec(2, "s2", behind)], now).is_empty());
        // Not online, but a node about to start a group must wait for it.
        assert!(a.online.is_empty());
        assert_eq!(a.observed.len(), 1);
        // Its next heartbeat proves it alive, whatever its clock says.
        tokio::time::advance(Duration::from_secs(60)).await;
        let ev = a.update(vec![rec(2, "s2", behind + 60_000)], now + 60_000);
        assert_eq!(ev, vec![PeerEvent::Online(rec(2, "s2", behind + 60_000))]);
        // A node whose clock is ahead is not kept alive by its stamp: a
        // record that stops changing goes offline by this node's clock.
        let ahead = now + 3_600_000;
        let ev = a.update(
            vec![rec(2, "s2", behind + 60_000), rec(3, "s3", ahead)],
            now + 60_000,
        );
        assert_eq!(ev, vec![PeerEvent::Online(rec(3, "s3", ahead))]);
        tokio::time::advance(OFFLINE_AFTER + Duration::from_secs(1)).await;
        let ev = a.update(
            vec![rec(2, "s2", behind + 60_000), rec(3, "s3", ahead)],
            now,
        );
        assert_eq!(ev, vec![PeerEvent::Offline(2), PeerEvent::Offline(3)]);
    }

    fn signal(
        to: NodeId,
        to_session: &str,
        attempt: u64,
        kind: crate::ports::SignalKind,
    ) -> Signal {
        Signal {
            to,
            to_session: to_session.into(),
            from_session: "s2".into(),
            attempt,
            kind,
            sdp: "v=0".into(),
        }
    }

    #[test]
    fn only_new_signals_for_this_session_are_handed_on() {
        use crate::ports::SignalKind::{Answer, Offer};
        let mut a = node_one();
        let t0 = 1_000_000_000;
        let mut peer = rec(2, "s2", t0);
        peer.signals = vec![
            signal(1, "s1", 1, Offer),
            signal(1, "old-session", 1, Offer),
            signal(3, "s3", 1, Offer),
        ];
        a.update(vec![peer.clone()], t0);
        let got = a.new_signals();
        assert_eq!(got.len(), 1, "only the offer to this session: {got:?}");
        assert_eq!(got[0].from, 2);
        assert_eq!(got[0].signal.attempt, 1);
        // The same record read again hands nothing on.
        a.update(vec![peer.clone()], t0);
        assert!(a.new_signals().is_empty());
        // A new attempt, and an answer, are new.
        peer.signals = vec![signal(1, "s1", 2, Offer), signal(1, "s1", 2, Answer)];
        a.update(vec![peer], t0);
        assert_eq!(a.new_signals().len(), 2);
    }

    #[test]
    fn records_from_outside_are_checked() {
        let mut r = rec(2, "s2", 1);
        assert_eq!(PresenceRecord::from_json(&r.to_json()), Ok(r.clone()));
        r.version = 2;
        assert!(matches!(
            PresenceRecord::from_json(&r.to_json()),
            Err(crate::ports::RecordError::Version(2))
        ));
        r.version = crate::ports::PRESENCE_VERSION;
        r.signals = (0..17)
            .map(|i| signal(1, "s1", i, crate::ports::SignalKind::Offer))
            .collect();
        assert!(matches!(
            PresenceRecord::from_json(&r.to_json()),
            Err(crate::ports::RecordError::Bound(_))
        ));
        assert!(PresenceRecord::from_json(b"{not json").is_err());
        assert!(matches!(
            PresenceRecord::from_json(&vec![b' '; crate::ports::MAX_PRESENCE_RECORD_BYTES + 1]),
            Err(crate::ports::RecordError::TooLarge(_))
        ));
    }
}
