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

pub mod plan;

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
    #[error("recording the sync in the room failed: {0}")]
    Record(String),
    #[error("the branch kept moving; gave up after {0} rounds")]
    Contended(usize),
    #[error("the committer stopped")]
    Stopped,
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

/// What the flush logic needs; shared by the actor's flush tasks.
pub struct Flusher {
    remote: Arc<dyn RepoRemote>,
    reader: ChatReader,
    consensus: Addr<ConsensusActor>,
    user: UserId,
    call_timeout: Duration,
    /// One flush at a time.
    running: tokio::sync::Mutex<()>,
    /// The branch head this committer last wrote or read, with its
    /// watermark: a flush starts from it without reading the branch (the
    /// compare-and-swap still catches a branch that moved meanwhile).
    known: std::sync::Mutex<Option<(String, u64)>>,
    /// The settings change (its raft index) the repository's `config.json`
    /// is known to hold; 0 until looked at on a head this committer did not
    /// write (which includes the first flush after [`Self::forget_head`]).
    config_written: std::sync::Mutex<u64>,
}

impl Flusher {
    pub fn new(
        remote: Arc<dyn RepoRemote>,
        reader: ChatReader,
        consensus: Addr<ConsensusActor>,
        user: UserId,
        call_timeout: Duration,
    ) -> Self {
        Self {
            remote,
            reader,
            consensus,
            user,
            call_timeout,
            running: tokio::sync::Mutex::new(()),
            known: std::sync::Mutex::new(None),
            config_written: std::sync::Mutex::new(0),
        }
    }

    /// Forgets the remembered head: the next flush reads the branch (a
    /// node that just became leader must learn what its predecessors did).
    pub fn forget_head(&self) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn config_written(&self) -> u64 {
        *self
            .config_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_config_written(&self, index: u64) {
        *self
            .config_written
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// The `config.json` to write with the next commit on `head_sha`, when
    /// the room's settings changed through the log since the repository
    /// last took them. Reads the file at the head once per change, and
    /// again whenever the head was not this committer's own (`fresh`):
    /// another writer may have changed it. Never goes back to older
    /// settings than the file's (a stale leader's state lags).
    async fn config_to_write(
        &self,
        head_sha: &str,
        fresh: bool,
        settings: &RoomSettings,
    ) -> Result<Option<RoomConfig>, CommitterError> {
        if fresh {
            self.set_config_written(0);
        }
        if settings.changed_index == 0 || settings.changed_index <= self.config_written() {
            return Ok(None);
        }
        let at_head = match self
            .timed(readback::config_at(self.remote.as_ref(), head_sha))
            .await?
        {
            Some(Ok(c)) => Some(c),
            None => Some(RoomConfig::default()),
            Some(Err(e)) => {
                // Perhaps a newer layout: rewriting it from the defaults
                // could drop what this build does not know. The messages
                // still flush; the settings wait for a readable file.
                tracing::warn!(error = %e, "the repository's config.json is unreadable; not replacing it with the room's settings");
                None
            }
        };
        // Never older settings over newer ones (this node may lag), and no
        // commit for a file that already says the same.
        let wanted = at_head
            .filter(|c| c.settings_index <= settings.changed_index)
            .map(|c| (c.with_settings(settings), c))
            .and_then(|(wanted, c)| (wanted != c).then_some(wanted));
        if wanted.is_none() {
            self.set_config_written(settings.changed_index);
        }
        Ok(wanted)
    }

    fn remember_head(&self, sha: String, watermark: u64) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((sha, watermark));
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RepoError>>,
    ) -> Result<T, CommitterError> {
        match tokio::time::timeout(self.call_timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CommitterError::Timeout(self.call_timeout)),
        }
    }

    async fn watermark(&self, head: &RepoHead) -> Result<u64, CommitterError> {
        self.timed(readback::watermark_of(self.remote.as_ref(), head))
            .await
    }

    /// Records through raft that the repository holds everything up to
    /// `up_to_index` as `sha`.
    async fn record(&self, up_to_index: u64, sha: &str) -> Result<(), CommitterError> {
        if up_to_index == 0 {
            return Ok(());
        }
        let submitted = self
            .consensus
            .send(Submit {
                sender: self.user.clone(),
                command: Command::Synced {
                    up_to_index,
                    commit_sha: sha.to_owned(),
                },
            })
            .await
            .map_err(|_| CommitterError::Stopped)?;
        match submitted {
            Ok((_, Proposed::Committed(outcome))) => {
                tracing::debug!(up_to_index, sha, ?outcome, "sync recorded");
                Ok(())
            }
            Ok((_, Proposed::Queued { .. })) => Ok(()),
            Err(e) => Err(CommitterError::Record(e.to_string())),
        }
    }

    /// One flush: rounds of read-head, render, commit, record until the
    /// repository holds every applied change.
    pub async fn flush(&self, config: &RoomConfig) -> Result<FlushReport, CommitterError> {
        let _one = self.running.lock().await;
        let calls_before = self.remote.calls();
        let mut report = FlushReport::default();
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(CommitterError::Contended(MAX_ROUNDS));
            }
            let cached = self.known.lock().unwrap_or_else(|e| e.into_inner()).take();
            let from_cache = cached.is_some();
            let (head_sha, watermark) = match cached {
                Some(known) => known,
                None => match self.timed(self.remote.head()).await? {
                    Some(head) => {
                        let w = self.watermark(&head).await?;
                        (head.commit_sha, w)
                    }
                    None => {
                        self.initialise(config, &mut report).await?;
                        continue;
                    }
                },
            };
            let synced = self
                .reader
                .synced_up_to()
                .map_err(|e| CommitterError::Storage(e.to_string()))?;
            match plan::check_head(watermark, synced, from_cache) {
                None => {}
                Some(plan::Plan::Fail(e)) => return Err(e),
                // Another leader wrote since: read the branch.
                Some(_) => continue,
            }
            let changes = self
                .reader
                .journal(watermark, MAX_CHANGES_PER_COMMIT)
                .map_err(|e| CommitterError::Storage(e.to_string()))?;
            let settings = self
                .reader
                .settings()
                .map_err(|e| CommitterError::Storage(e.to_string()))?;
            let new_config = self
                .config_to_write(&head_sha, !from_cache, &settings)
                .await?;
            let round = plan::Round {
                head_sha: &head_sha,
                watermark,
                from_cache,
                synced,
                changes: &changes,
                settings: &settings,
                new_config: new_config.as_ref(),
            };
            let (req, first, last, n, with_settings, more) = match plan::plan_round(&round) {
                plan::Plan::Reread => continue,
                plan::Plan::Fail(e) => return Err(e),
                plan::Plan::Done { record } => {
                    // Everything applied is in the repository; make sure
                    // the room knows (a predecessor may have committed
                    // without recording it).
                    if let Some(w) = record {
                        self.record(w, &head_sha).await?;
                    }
                    self.remember_head(head_sha.clone(), watermark);
                    return Ok(self.finished(report, head_sha, watermark, calls_before));
                }
                plan::Plan::Commit {
                    req,
                    first,
                    last,
                    changes,
                    settings,
                    more,
                } => (req, first, last, changes, settings, more),
            };
            let span =
                tracing::info_span!("commit", first, last, changes = n, settings = with_settings);
            match self.timed(self.remote.commit(req)).instrument(span).await {
                Ok(sha) => {
                    tracing::info!(
                        %sha,
                        up_to_index = last,
                        changes = n,
                        settings = with_settings,
                        "committed to the repository"
                    );
                    if with_settings {
                        self.set_config_written(settings.changed_index);
                    }
                    report.changes += n;
                    report.commits += 1;
                    self.remember_head(sha.clone(), last);
                    // The settings alone leave the watermark: nothing new
                    // to record.
                    if n > 0 {
                        self.record(last, &sha).await?;
                    }
                    if !more {
                        // The head is known: no need to read it again.
                        return Ok(self.finished(report, sha, last, calls_before));
                    }
                    // More journal than one commit takes: go round again.
                    rounds = 0;
                }
                Err(e) if plan::rereads(&e) => {
                    tracing::info!(error = %e, "the branch moved or the commit's outcome is unknown; re-reading it");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The first commit of an empty repository: the room's config.
    async fn initialise(
        &self,
        config: &RoomConfig,
        report: &mut FlushReport,
    ) -> Result<(), CommitterError> {
        let req = CommitRequest {
            expected_head: None,
            files: vec![(layout::CONFIG_PATH.to_owned(), config.to_bytes())],
            message: layout::init_message(),
            time_secs: 0,
        };
        match self.timed(self.remote.commit(req)).await {
            Ok(sha) => {
                tracing::info!(%sha, "initialised the repository with the room config");
                report.commits += 1;
                self.remember_head(sha, 0);
                Ok(())
            }
            // Another writer initialised it first, or it may have landed:
            // the next round reads the branch.
            Err(CommitterError::Repo(RepoError::Conflict | RepoError::Unknown(_)))
            | Err(CommitterError::Timeout(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `report` of a flush that left the branch at `head`, holding the log
    /// up to `up_to_index`.
    fn finished(
        &self,
        mut report: FlushReport,
        head: String,
        up_to_index: u64,
        calls_before: u64,
    ) -> FlushReport {
        report.head = Some(head);
        report.up_to_index = up_to_index;
        report.remote_calls = self.remote.calls() - calls_before;
        report
    }

    /// The room's settings as the repository holds them, or the defaults
    /// when the repository has none yet.
    pub async fn read_config(&self) -> Result<RoomConfig, CommitterError> {
        let Some(head) = self.timed(self.remote.head()).await? else {
            return Ok(RoomConfig::default());
        };
        match self
            .timed(readback::config_at(self.remote.as_ref(), &head.commit_sha))
            .await?
        {
            None => Ok(RoomConfig::default()),
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(CommitterError::Repo(RepoError::Invalid(e.to_string()))),
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
