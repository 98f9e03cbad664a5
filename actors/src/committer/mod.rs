//! The committer: on the leader only, writes the room's committed changes
//! into the repository through [`RepoRemote`].
//!
//! A flush reads the branch head and its watermark (`Raft-Last-Index`),
//! renders the journaled changes above it ([`layout::render`]), commits
//! them on top of that head and records `synced {up_to_index, commit_sha}`
//! through raft, which also clears the journal up to there on every node.
//!
//! The compare-and-swap on the branch keeps history linear when leaders
//! overlap: a committer whose commit is refused re-reads the head and
//! writes only what is still missing, never overwriting. When a commit's
//! outcome is unknown (a timeout), the next round's head read tells
//! whether it landed. A new leader does the same on its first flush, so
//! whatever its predecessor had not written is written once.
//!
//! Flushes happen every commit interval (from `config.json`, or the
//! node's override), when this node becomes leader, on graceful shutdown
//! and on demand.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use skygit_consensus::model::{Command, RoomSettings, UserId};
use skygit_storage::ChatReader;
use tracing::Instrument;

use crate::consensus::{ConsensusActor, LeaderChanged, Proposed, Submit};
use crate::layout::{self, RoomConfig};
use crate::ports::{CommitRequest, RepoError, RepoHead, RepoRemote};
use crate::readback;

mod flusher;
pub mod media;
pub mod plan;

pub use flusher::Flusher;

/// Most changes rendered into one commit; a longer backlog takes several.
pub const MAX_CHANGES_PER_COMMIT: usize = 250_000;
/// Compare-and-swap rounds one flush tries before giving up for now.
const MAX_ROUNDS: usize = 8;
/// First retry delay after a failed flush; doubles up to the interval.
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// Why a flush did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitterError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("this room has no repository")]
    NoRepository,
    #[error("repository: {0}")]
    Repo(#[from] RepoError),
    #[error("repository call timed out after {0:?}")]
    Timeout(Duration),
    #[error("local storage: {0}")]
    Storage(String),
    #[error(
        "the repository's watermark ({repo}) is behind what the room recorded as synced ({room}): \
         the branch was rewound; refusing to write a gap"
    )]
    Rewound { repo: u64, room: u64 },
    #[error(
        "the repository holds the log of a newer group (epoch {head}) than this node's \
         (epoch {ours}): not writing after its founding"
    )]
    Superseded { head: u64, ours: u64 },
    #[error("recording the sync in the room failed: {0}")]
    Record(String),
    #[error("the branch kept moving; gave up after {0} rounds")]
    Contended(usize),
    #[error("the committer stopped")]
    Stopped,
    /// A file a batch names could not be stored (retried next flush).
    #[error("attachments: {0}")]
    Media(String),
}

/// Why a flush was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Interval,
    BecameLeader,
    Shutdown,
    OnDemand,
    Retry,
    /// The room's settings changed: `config.json` takes them at once.
    Settings,
}

/// What a flush did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlushReport {
    /// The branch head afterwards.
    pub head: Option<String>,
    /// The repository's watermark afterwards.
    pub up_to_index: u64,
    /// Changes written by this flush.
    pub changes: usize,
    /// Commits made by this flush.
    pub commits: usize,
    /// Calls to the remote during this flush.
    pub remote_calls: u64,
    /// Files stored outside git (Git LFS, S3) by this flush.
    pub attachments: usize,
}

/// Flushes this node remembers for the dashboard.
pub const FLUSH_HISTORY: usize = 100;

/// One flush as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlushRecord {
    /// Milliseconds since the Unix epoch (this node's clock) when it began.
    pub at_ms: i64,
    pub reason: String,
    pub ok: bool,
    pub changes: usize,
    pub commits: usize,
    pub head: Option<String>,
    pub up_to_index: u64,
    pub duration_ms: f64,
    pub remote_calls: u64,
    pub error: Option<String>,
}

/// The last [`FLUSH_HISTORY`] flushes, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<FlushRecord>")]
pub struct GetFlushes;

/// The committer's settings and last flush.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CommitterInfo {
    pub leader: bool,
    /// The interval this node flushes at when it leads.
    pub interval_secs: u64,
    /// This node's own interval (its command line), which wins over the
    /// room's.
    pub interval_override_secs: Option<u64>,
    /// The interval in the repository's `config.json` as last read (at
    /// start and whenever this node becomes leader; the default before).
    pub config_interval_secs: u64,
    pub last_flush: Option<FlushRecord>,
}

#[derive(Message)]
#[rtype(result = "CommitterInfo")]
pub struct GetCommitterInfo;

/// The room's settings changed through the log (every node is told; the
/// leader writes them into `config.json` and uses the new interval).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SettingsChanged(pub RoomSettings);

/// Override the commit interval on this node from now on (`None`: the
/// room's settings).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetInterval(pub Option<Duration>);

impl From<FlushReport> for skygit_consensus::replica::FlushSummary {
    fn from(r: FlushReport) -> Self {
        Self {
            head: r.head,
            up_to_index: r.up_to_index,
            changes: r.changes as u64,
            commits: r.commits as u64,
            remote_calls: r.remote_calls,
        }
    }
}

/// Write the committed log to the repository now.
#[derive(Message)]
#[rtype(result = "Result<FlushReport, CommitterError>")]
pub struct Flush(pub FlushReason);

/// Stop the committer, dropping any flush in progress.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopCommitter;

/// Per-node committer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitterOptions {
    /// Overrides the room's `commit_interval_secs`.
    pub interval: Option<Duration>,
    /// Longest wait for one remote call.
    pub call_timeout: Duration,
}

impl Default for CommitterOptions {
    fn default() -> Self {
        Self {
            interval: None,
            call_timeout: Duration::from_secs(120),
        }
    }
}

/// The committer actor of one room on one node.
pub struct CommitterActor {
    /// The room's name, the `room` label of this actor's metrics.
    room: String,
    leader: Option<LeaderChanged>,
    flusher: Option<Arc<Flusher>>,
    options: CommitterOptions,
    /// `config.json` as read at start and when this node last became
    /// leader.
    config: RoomConfig,
    /// `config` came with the room's spec: no read at start.
    config_given: bool,
    /// The settings the room's log has set (they win over `config`).
    settings: RoomSettings,
    /// Bumped on every leadership change, so timers of an old term stop.
    epoch: u64,
    retry_delay: Duration,
    history: VecDeque<FlushRecord>,
    timer: Option<SpawnHandle>,
    span: tracing::Span,
}

impl CommitterActor {
    /// A committer; without a `flusher` the room has no repository and
    /// every flush answers [`CommitterError::NoRepository`]. Without a
    /// `config` it reads the room's `config.json` when it starts.
    pub fn new(
        room: &str,
        node: u64,
        flusher: Option<Arc<Flusher>>,
        options: CommitterOptions,
        config: Option<RoomConfig>,
    ) -> Self {
        Self {
            leader: None,
            flusher,
            options,
            config_given: config.is_some(),
            config: config.unwrap_or_default(),
            settings: RoomSettings::default(),
            epoch: 0,
            retry_delay: RETRY_FIRST,
            history: VecDeque::new(),
            timer: None,
            room: room.to_owned(),
            span: tracing::info_span!("committer", room, node),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.is_self)
    }

    /// This node's override, else the room's settings, else its
    /// `config.json`.
    fn interval(&self) -> Duration {
        self.options.interval.unwrap_or(Duration::from_secs(
            self.config
                .with_settings(&self.settings)
                .commit_interval_secs,
        ))
    }

    /// Flushes every interval for as long as this epoch lasts.
    /// Replaces any earlier interval timer.
    fn start_interval(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let epoch = self.epoch;
        self.timer = Some(ctx.run_interval(self.interval(), move |act, ctx| {
            if act.epoch == epoch && act.is_leader() {
                ctx.notify(Flush(FlushReason::Interval));
            }
        }));
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration, reason: FlushReason) {
        let epoch = self.epoch;
        ctx.run_later(after, move |act, ctx| {
            if act.epoch == epoch && act.is_leader() {
                ctx.notify(Flush(reason));
            }
        });
    }
}

impl Actor for CommitterActor {
    type Context = Context<Self>;

    /// Reads the room's `config.json` once (unless the room's spec brought
    /// it), so a follower too reports the interval the room runs at (a
    /// leader reads it again when elected).
    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(flusher) = self.flusher.clone().filter(|_| !self.config_given) else {
            return;
        };
        let epoch = self.epoch;
        ctx.spawn(
            async move { flusher.read_config().await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(move |config, act, _| match config {
                    // A leadership change meanwhile reads it itself.
                    Ok(c) if act.epoch == epoch => act.config = c,
                    Ok(_) => {}
                    Err(e) => {
                        let _e = act.span.enter();
                        tracing::debug!(error = %e, "cannot read the room config yet");
                    }
                }),
        );
    }
}

/// Wall-clock milliseconds, for display only (flush history): no
/// decision depends on it.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CommitterActor {
    /// Remembers a flush (bounded) and counts it in the metrics.
    fn record(
        &mut self,
        at_ms: i64,
        reason: FlushReason,
        took: Duration,
        result: &Result<FlushReport, CommitterError>,
    ) {
        let label = match result {
            Ok(_) => "ok",
            Err(CommitterError::Repo(RepoError::RateLimited { .. })) => "rate_limited",
            Err(CommitterError::NotLeader) => "not_leader",
            Err(_) => "error",
        };
        let room = self.room.clone();
        metrics::counter!("skygit_committer_flushes_total", "room" => room.clone(), "result" => label)
            .increment(1);
        metrics::histogram!("skygit_committer_flush_duration_seconds", "room" => room.clone())
            .record(took.as_secs_f64());
        let report = result.as_ref().ok();
        if let Some(r) = report {
            metrics::counter!("skygit_committer_changes_total", "room" => room.clone())
                .increment(r.changes as u64);
            metrics::counter!("skygit_committer_commits_total", "room" => room)
                .increment(r.commits as u64);
        }
        if self.history.len() >= FLUSH_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(FlushRecord {
            at_ms,
            reason: format!("{reason:?}"),
            ok: report.is_some(),
            changes: report.map_or(0, |r| r.changes),
            commits: report.map_or(0, |r| r.commits),
            head: report.and_then(|r| r.head.clone()),
            up_to_index: report.map_or(0, |r| r.up_to_index),
            duration_ms: took.as_secs_f64() * 1e3,
            remote_calls: report.map_or(0, |r| r.remote_calls),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
    }
}

impl Handler<GetFlushes> for CommitterActor {
    type Result = MessageResult<GetFlushes>;
    fn handle(&mut self, _: GetFlushes, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.history.iter().cloned().collect())
    }
}

impl Handler<GetCommitterInfo> for CommitterActor {
    type Result = MessageResult<GetCommitterInfo>;
    fn handle(&mut self, _: GetCommitterInfo, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(CommitterInfo {
            leader: self.is_leader(),
            interval_secs: self.interval().as_secs(),
            interval_override_secs: self.options.interval.map(|d| d.as_secs()),
            config_interval_secs: self.config.commit_interval_secs,
            last_flush: self.history.back().cloned(),
        })
    }
}

impl Handler<SetInterval> for CommitterActor {
    type Result = ();
    fn handle(&mut self, msg: SetInterval, ctx: &mut Self::Context) {
        self.options.interval = msg.0;
        if self.is_leader() && self.flusher.is_some() {
            self.start_interval(ctx);
        }
    }
}

impl Handler<SettingsChanged> for CommitterActor {
    type Result = ();
    fn handle(&mut self, msg: SettingsChanged, ctx: &mut Self::Context) {
        if msg.0.changed_index <= self.settings.changed_index {
            return;
        }
        let before = self.interval();
        self.settings = msg.0;
        if !self.is_leader() || self.flusher.is_none() {
            return;
        }
        if self.interval() != before {
            self.start_interval(ctx);
        }
        ctx.notify(Flush(FlushReason::Settings));
    }
}

impl Handler<LeaderChanged> for CommitterActor {
    type Result = ();
    fn handle(&mut self, msg: LeaderChanged, ctx: &mut Self::Context) {
        let was = self.is_leader();
        self.leader = Some(msg);
        if self.is_leader() == was {
            return;
        }
        self.epoch += 1;
        let _e = self.span.enter();
        if !self.is_leader() {
            tracing::info!("no longer leader; committer idle");
            return;
        }
        let Some(flusher) = self.flusher.clone() else {
            return;
        };
        tracing::info!(repository = %flusher.remote.describe(), "became leader; committer active");
        flusher.forget_head();
        let epoch = self.epoch;
        let span = self.span.clone();
        // Learn the room's interval, then write what predecessors had not.
        ctx.spawn(
            async move { flusher.read_config().await }
                .instrument(span)
                .into_actor(self)
                .map(move |config, act, ctx| {
                    if act.epoch != epoch {
                        return;
                    }
                    match config {
                        Ok(c) => act.config = c,
                        Err(e) => {
                            let _e = act.span.enter();
                            tracing::warn!(error = %e, "cannot read the room config; using defaults");
                        }
                    }
                    ctx.notify(Flush(FlushReason::BecameLeader));
                    act.start_interval(ctx);
                }),
        );
    }
}

impl Handler<StopCommitter> for CommitterActor {
    type Result = ();
    fn handle(&mut self, _: StopCommitter, ctx: &mut Self::Context) {
        self.epoch += 1;
        self.leader = None;
        ctx.stop();
    }
}

impl Handler<Flush> for CommitterActor {
    type Result = ResponseActFuture<Self, Result<FlushReport, CommitterError>>;

    fn handle(&mut self, msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let reason = msg.0;
        let not_now = |e| Box::pin(fut::ready(Err(e))) as Self::Result;
        if !self.is_leader() {
            return not_now(CommitterError::NotLeader);
        }
        let Some(flusher) = self.flusher.clone() else {
            return not_now(CommitterError::NoRepository);
        };
        // An empty repository starts with the room's settings.
        let config = self.config.with_settings(&self.settings);
        let span = tracing::info_span!(parent: &self.span, "flush", ?reason);
        let started = Instant::now();
        let at_ms = wall_ms();
        Box::pin(
            async move { flusher.flush(&config).await }
                .instrument(span)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let span = act.span.clone();
                    let _e = span.enter();
                    act.record(at_ms, reason, started.elapsed(), &result);
                    match &result {
                        Ok(r) => {
                            act.retry_delay = RETRY_FIRST;
                            if r.commits > 0 {
                                tracing::info!(
                                    ?reason,
                                    changes = r.changes,
                                    commits = r.commits,
                                    up_to_index = r.up_to_index,
                                    calls = r.remote_calls,
                                    "flushed"
                                );
                            }
                        }
                        Err(CommitterError::Repo(RepoError::RateLimited { retry_after_ms })) => {
                            let wait = Duration::from_millis(*retry_after_ms);
                            tracing::warn!(?wait, "rate limited; flushing again after the wait");
                            if reason != FlushReason::Shutdown {
                                act.schedule(ctx, wait, FlushReason::Retry);
                            }
                        }
                        Err(CommitterError::NotLeader | CommitterError::NoRepository) => {}
                        Err(e) => {
                            let wait = act.retry_delay.min(act.interval());
                            tracing::warn!(error = %e, ?wait, "flush failed; retrying");
                            if reason != FlushReason::Shutdown {
                                act.retry_delay = (act.retry_delay * 2).min(act.interval());
                                act.schedule(ctx, wait, FlushReason::Retry);
                            }
                        }
                    }
                    result
                }),
        )
    }
}
