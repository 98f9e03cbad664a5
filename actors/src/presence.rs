//! The presence actor: heartbeats this node into the room's presence
//! channel, polls it, and keeps the list of online peers. A peer whose
//! record is older than [`OFFLINE_AFTER`] is offline.
//!
//! This issue builds the bookkeeping and the port; the real presence
//! channels (GitHub Discussion, per-node git refs) and the fast/slow poll
//! schedule come with the mesh issue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use skygit_consensus::NodeId;
use tracing::Instrument;

use crate::ports::{PresenceChannel, PresenceError, PresenceRecord, WallClock};

/// A peer is offline when its last heartbeat is older than this.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(180);
/// Most peers tracked per room; further records are ignored and logged.
pub const MAX_PEERS: usize = 256;

/// A peer appeared or went offline.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum PeerEvent {
    Online(PresenceRecord),
    Offline(NodeId),
}

/// Publish this node's heartbeat now.
#[derive(Message)]
#[rtype(result = "Result<(), PresenceError>")]
pub struct Heartbeat;

/// Read the presence channel now and update the peer list.
#[derive(Message)]
#[rtype(result = "Result<Vec<PresenceRecord>, PresenceError>")]
pub struct Poll;

/// The peers currently online.
#[derive(Message)]
#[rtype(result = "Vec<PresenceRecord>")]
pub struct OnlinePeers;

/// Receive [`PeerEvent`]s.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribePeers(pub Recipient<PeerEvent>);

pub struct PresenceActor {
    me: PresenceRecord,
    channel: Arc<dyn PresenceChannel>,
    clock: Arc<dyn WallClock>,
    online: BTreeMap<NodeId, PresenceRecord>,
    subscribers: Vec<Recipient<PeerEvent>>,
    span: tracing::Span,
}

impl PresenceActor {
    pub fn new(
        me: PresenceRecord,
        channel: Arc<dyn PresenceChannel>,
        clock: Arc<dyn WallClock>,
        room: &str,
    ) -> Self {
        let span = tracing::info_span!("presence", room, node = me.node_id);
        Self {
            me,
            channel,
            clock,
            online: BTreeMap::new(),
            subscribers: Vec::new(),
            span,
        }
    }

    /// Folds fetched records into the online list, returning the events.
    fn update(&mut self, records: Vec<PresenceRecord>, now_ms: i64) -> Vec<PeerEvent> {
        let cutoff = now_ms - OFFLINE_AFTER.as_millis() as i64;
        let mut fresh = BTreeMap::new();
        for r in records {
            if r.node_id == self.me.node_id || r.last_seen < cutoff {
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
        events
    }
}

impl Actor for PresenceActor {
    type Context = Context<Self>;
}

impl Handler<Heartbeat> for PresenceActor {
    type Result = ResponseFuture<Result<(), PresenceError>>;

    fn handle(&mut self, _: Heartbeat, _ctx: &mut Self::Context) -> Self::Result {
        self.me.last_seen = self.clock.now_ms();
        let (channel, record) = (self.channel.clone(), self.me.clone());
        Box::pin(async move { channel.publish(record).await }.instrument(self.span.clone()))
    }
}

impl Handler<Poll> for PresenceActor {
    type Result = ResponseActFuture<Self, Result<Vec<PresenceRecord>, PresenceError>>;

    fn handle(&mut self, _: Poll, _ctx: &mut Self::Context) -> Self::Result {
        let channel = self.channel.clone();
        Box::pin(
            async move { channel.fetch().await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|res, act, _| {
                    let records = res?;
                    let events = act.update(records, act.clock.now_ms());
                    act.subscribers.retain(|s| s.connected());
                    for e in events {
                        for s in &act.subscribers {
                            s.do_send(e.clone());
                        }
                    }
                    Ok(act.online.values().cloned().collect())
                }),
        )
    }
}

impl Handler<OnlinePeers> for PresenceActor {
    type Result = MessageResult<OnlinePeers>;

    fn handle(&mut self, _: OnlinePeers, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.online.values().cloned().collect())
    }
}

impl Handler<SubscribePeers> for PresenceActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribePeers, _ctx: &mut Self::Context) {
        self.subscribers.push(msg.0);
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
        }
    }

    #[test]
    fn peers_come_online_and_time_out() {
        let me = rec(1, "s1", 0);
        let mut a = PresenceActor::new(
            me,
            Arc::new(LocalPresence::default()),
            Arc::new(crate::ports::SystemClock),
            "r",
        );
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
        // Node 3 keeps beating, node 2 falls silent past the cutoff.
        let t1 = t0 + OFFLINE_AFTER.as_millis() as i64 + 1;
        let ev = a.update(vec![rec(2, "s2", t0), rec(3, "s3", t1)], t1);
        assert_eq!(ev, vec![PeerEvent::Offline(2)]);
        // Node 3 restarts with a new session: it is announced again.
        let ev = a.update(vec![rec(3, "s3b", t1)], t1);
        assert_eq!(ev, vec![PeerEvent::Online(rec(3, "s3b", t1))]);
    }
}
