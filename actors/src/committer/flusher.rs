//! The flush itself: rounds of read the head, ask the plan, commit, record,
//! until the repository holds every applied change.

use super::*;

/// What the flush logic needs; shared by the actor's flush tasks.
pub struct Flusher {
    pub(super) remote: Arc<dyn RepoRemote>,
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
    /// The epoch of this node's raft group, when set by hand (tests);
    /// otherwise the group the room's state belongs to now.
    epoch: Option<u64>,
    /// Stores the files a batch names before it is committed; `None`
    /// commits the lines alone (a room that keeps no attachments).
    media: Option<Arc<super::media::MediaStaging>>,
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
            epoch: None,
            media: None,
        }
    }

    /// Stores attachments with `media` before each commit.
    pub fn with_media(mut self, media: Arc<super::media::MediaStaging>) -> Self {
        self.media = Some(media);
        self
    }

    /// A committer of the group of `epoch` (0: the room's first group).
    pub fn at_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Forgets the remembered head: the next flush reads the branch (a
    /// node that just became leader must learn what its predecessors did).
    pub fn forget_head(&self) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn config_written(&self) -> u64 {
        *self
            .config_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_config_written(&self, index: u64) {
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
    pub(super) async fn config_to_write(
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

    pub(super) fn remember_head(&self, sha: String, watermark: u64) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((sha, watermark));
    }

    pub(super) async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RepoError>>,
    ) -> Result<T, CommitterError> {
        match tokio::time::timeout(self.call_timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CommitterError::Timeout(self.call_timeout)),
        }
    }

    pub(super) async fn watermark(&self, head: &RepoHead) -> Result<u64, CommitterError> {
        self.timed(readback::watermark_of(self.remote.as_ref(), head))
            .await
    }

    /// Records through raft that the repository holds everything up to
    /// `up_to_index` as `sha`.
    pub(super) async fn record(&self, up_to_index: u64, sha: &str) -> Result<(), CommitterError> {
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
                id: None,
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
        let epoch = match self.epoch {
            Some(e) => e,
            None => {
                self.reader
                    .group()
                    .map_err(|e| CommitterError::Storage(e.to_string()))?
                    .start
                    .epoch
            }
        };
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
                        let head_epoch = layout::group_epoch(&head.message);
                        if let Some(plan::Plan::Fail(e)) = plan::check_epoch(head_epoch, epoch) {
                            tracing::error!(error = %e, "the room's group was re-formed without this node");
                            return Err(e);
                        }
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
                epoch,
                changes: &changes,
                settings: &settings,
                new_config: new_config.as_ref(),
            };
            let (mut req, first, last, n, with_settings, more) = match plan::plan_round(&round) {
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
            if let Some(media) = &self.media {
                let staged = media.stage(&config.media, &changes).await?;
                if !staged.files.is_empty() {
                    req.files.extend(staged.files);
                    req.files.sort_by(|x, y| x.0.cmp(&y.0));
                    req.files.dedup_by(|x, y| x.0 == y.0);
                }
                report.attachments += staged.stored;
            }
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
    pub(super) async fn initialise(
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
    pub(super) fn finished(
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
