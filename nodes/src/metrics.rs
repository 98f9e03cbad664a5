//! Prometheus metrics of a node.
//!
//! The actors emit their metrics through the `metrics` facade wherever
//! something happens (mesh links, presence polls, membership changes, the
//! committer's flushes, API requests). This module installs the process's
//! recorder, renders it for `GET /metrics`, and samples each room's raft
//! and storage state once a second into gauges labelled `room`.
//!
//! Every metric the node exports is listed in `docs/metrics.md`; a test
//! below keeps that list and the code in step, and another checks that the
//! Grafana dashboard (`grafana/skygit-dashboard.json`) asks only for
//! documented metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use anyhow::Context as _;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use skygit_actors::consensus::{ConsensusActor, GetStatus};
use skygit_actors::room::RoomHandle;
use skygit_consensus::model::ApplyOutcome;
use skygit_consensus::types::TypeConfig;
use skygit_consensus::NodeId;
use skygit_storage::{AppliedEvent, ChatReader};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;

/// Upper bounds of the buckets of every `*_seconds` histogram: from half a
/// millisecond (an API call on loopback) to two minutes (a slow flush to a
/// rate-limited GitHub).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// How often the room sampler reads a room's state.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for the consensus actor's status; a busier actor skips a
/// sample rather than stacking them up.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// How often histograms are drained when nobody scrapes (a scrape drains
/// them too); keeps their memory bounded.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder's configuration, shared by [`install`] and the tests.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
}

/// Installs the process's global recorder and returns the handle that
/// renders it. No HTTP listener: the node's API serves `GET /metrics`.
///
/// Once per process: a second call returns an error (the first recorder
/// stays). Starts a thread that drains histograms every few seconds so
/// they stay bounded when nobody scrapes.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()
        .context("configuring the metrics recorder")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("skygit-metrics".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Scrapes still drain the histograms; only idle memory grows.
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
    Ok(handle)
}

/// The metrics in Prometheus's text format (the body of `GET /metrics`).
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// Samples room `room` every second into gauges labelled `room` = `key`
/// and counts the messages it applies. See `docs/metrics.md`.
///
/// The task ends when the room stops: its consensus actor is gone or its
/// state machine's event stream closes. It then sets
/// `skygit_raft_is_leader` to 0. Until it notices (within about a second)
/// it keeps the room's database open.
pub fn spawn_room_sampler(room: RoomHandle, key: String) -> JoinHandle<()> {
    let events = room.storage.state_machine.subscribe();
    let source = Source {
        node_id: room.node_id,
        consensus: room.consensus.clone(),
        raft: room.replica.raft().metrics(),
        reader: room.storage.reader.clone(),
    };
    // Hold nothing else of the room: its state machine (whose sender must
    // drop for the event stream to close), raft and actors stay its own.
    drop(room);
    tokio::spawn(Sampler::new(key, source).run(events))
}

/// What the sampler reads a room through.
struct Source {
    node_id: NodeId,
    consensus: Addr<ConsensusActor>,
    raft: openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    reader: ChatReader,
}

/// One reading of a room's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sample {
    term: u64,
    is_leader: bool,
    last_log_index: u64,
    committed_index: u64,
    applied_index: u64,
    outbox_messages: usize,
    /// `None` when the read failed (the gauge keeps its last value).
    synced_index: Option<u64>,
    /// Entries each follower lacks; empty unless this node leads.
    lag: BTreeMap<NodeId, u64>,
}

impl Sample {
    /// The raft part of a sample, from one consistent metrics snapshot.
    fn from_raft(me: NodeId, m: &RaftMetrics<TypeConfig>) -> Self {
        let last_log_index = m.last_log_index.unwrap_or(0);
        let is_leader = m.state == ServerState::Leader;
        let lag = match (&m.replication, is_leader) {
            (Some(replication), true) => replication
                .iter()
                .filter(|(id, _)| **id != me)
                .map(|(id, matched)| {
                    let matched = matched.as_ref().map_or(0, |l| l.index);
                    (*id, last_log_index.saturating_sub(matched))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            term: m.current_term,
            is_leader,
            last_log_index,
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            outbox_messages: 0,
            synced_index: None,
            lag,
        }
    }
}

/// Whether an applied event counts in `skygit_messages_applied_total`: a
/// post, edit or delete that took effect.
fn counts_as_message(ev: &AppliedEvent) -> bool {
    ev.message.is_some() && matches!(ev.outcome, ApplyOutcome::Applied { .. })
}

/// The room is gone.
struct Stopped;

/// Writes a room's samples into its gauges.
struct RoomGauges {
    /// The `room` label.
    key: String,
    /// Followers whose lag gauge has been set.
    peers: BTreeSet<NodeId>,
}

impl RoomGauges {
    fn new(key: String) -> Self {
        Self {
            key,
            peers: BTreeSet::new(),
        }
    }

    fn record(&mut self, s: &Sample) {
        let room = self.key.clone();
        metrics::gauge!("skygit_raft_term", "room" => room.clone()).set(s.term as f64);
        metrics::gauge!("skygit_raft_is_leader", "room" => room.clone()).set(if s.is_leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("skygit_raft_last_log_index", "room" => room.clone())
            .set(s.last_log_index as f64);
        metrics::gauge!("skygit_raft_committed_index", "room" => room.clone())
            .set(s.committed_index as f64);
        metrics::gauge!("skygit_raft_applied_index", "room" => room.clone())
            .set(s.applied_index as f64);
        metrics::gauge!("skygit_outbox_messages", "room" => room.clone())
            .set(s.outbox_messages as f64);
        if let Some(synced) = s.synced_index {
            metrics::gauge!("skygit_synced_index", "room" => room).set(synced as f64);
        }
        for (peer, lag) in &s.lag {
            self.set_lag(*peer, *lag as f64);
        }
        // A follower no longer replicated from here (it left, or this node
        // stopped leading) would otherwise keep a stale lag.
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| !s.lag.contains_key(p))
            .copied()
            .collect();
        for peer in gone {
            self.set_lag(peer, 0.0);
        }
        self.peers = s.lag.keys().copied().collect();
    }

    fn set_lag(&self, peer: NodeId, lag: f64) {
        metrics::gauge!(
            "skygit_raft_replication_lag_entries",
            "room" => self.key.clone(),
            "peer" => peer.to_string()
        )
        .set(lag);
    }

    /// The room stopped: this node no longer leads or replicates it.
    fn record_stopped(&mut self) {
        metrics::gauge!("skygit_raft_is_leader", "room" => self.key.clone()).set(0.0);
        for peer in std::mem::take(&mut self.peers) {
            self.set_lag(peer, 0.0);
        }
    }
}

struct Sampler {
    source: Source,
    gauges: RoomGauges,
    /// The last synced-index read failed (log the next failures quietly).
    synced_failing: bool,
}

impl Sampler {
    fn new(key: String, source: Source) -> Self {
        Self {
            source,
            gauges: RoomGauges::new(key),
            synced_failing: false,
        }
    }

    fn key(&self) -> &str {
        &self.gauges.key
    }

    async fn run(mut self, mut events: broadcast::Receiver<Arc<AppliedEvent>>) {
        let applied =
            metrics::counter!("skygit_messages_applied_total", "room" => self.key().to_owned());
        // Export the series at 0 before the first message.
        applied.increment(0);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        if counts_as_message(&ev) {
                            applied.increment(1);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(room = %self.key(), missed, "the metrics sampler fell behind the applied events; skygit_messages_applied_total misses them");
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => match self.sample().await {
                    Ok(Some(sample)) => self.gauges.record(&sample),
                    Ok(None) => {}
                    Err(Stopped) => break,
                },
            }
        }
        self.gauges.record_stopped();
        tracing::debug!(room = %self.key(), "the room stopped; its metrics sampler ends");
    }

    /// Reads the room; `Ok(None)` skips this tick.
    async fn sample(&mut self) -> Result<Option<Sample>, Stopped> {
        if !self.source.consensus.connected() {
            return Err(Stopped);
        }
        let status = tokio::time::timeout(STATUS_WAIT, self.source.consensus.send(GetStatus)).await;
        let outbox_messages = match status {
            Ok(Ok(s)) => s.outbox_len,
            Ok(Err(MailboxError::Closed)) => return Err(Stopped),
            Ok(Err(MailboxError::Timeout)) | Err(_) => {
                tracing::debug!(room = %self.key(), "the consensus actor did not answer in time; skipping a metrics sample");
                return Ok(None);
            }
        };
        let mut sample = {
            let m = self.source.raft.borrow_watched();
            Sample::from_raft(self.source.node_id, &m)
        };
        sample.outbox_messages = outbox_messages;
        sample.synced_index = self.synced_index().await;
        Ok(Some(sample))
    }

    /// The room's synced index, read off the runtime (RocksDB blocks).
    async fn synced_index(&mut self) -> Option<u64> {
        let reader = self.source.reader.clone();
        let failure = match tokio::task::spawn_blocking(move || reader.synced_up_to()).await {
            Ok(Ok(index)) => {
                self.synced_failing = false;
                return Some(index);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if self.synced_failing {
            tracing::debug!(room = %self.key(), error = %failure, "cannot read the synced index");
        } else {
            tracing::warn!(room = %self.key(), error = %failure, "cannot read the synced index; skygit_synced_index keeps its last value");
        }
        self.synced_failing = true;
        None
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
