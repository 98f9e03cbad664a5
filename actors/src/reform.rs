//! Re-forming a room's raft group: founding a new epoch, joining a newer
//! one, and seeding a new group so its joiners start from the founder's
//! state. The membership actor decides when
//! ([`skygit_consensus::reform::decide`], or a peer's frame naming a newer
//! epoch) and runs these; each checks the repository first, which is the
//! tie-breaker: a group exists only once its founding commit won the
//! compare-and-swap on the branch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use skygit_consensus::model::GroupStart;
use skygit_consensus::replica::Replica;
use skygit_consensus::NodeId;
use skygit_storage::{GroupRole, RoomStorage, StateMachine};

use crate::layout;
use crate::membership::{verify_founding, Founder};
use crate::ports::{CommitRequest, RepoError, RepoHead, RepoRemote, WallClock};

/// Commits searched (newest first) for the founding of the head's epoch.
const MAX_FOUNDING_SEARCH: usize = 1000;
/// Longest the new group's founder waits to lead it and to build its seed.
const SEED_WAIT: Duration = Duration::from_secs(10);

/// What a node needs to re-form its room's group.
#[derive(Clone)]
pub struct Reformer {
    pub replica: Arc<Replica<StateMachine>>,
    pub storage: RoomStorage,
    pub repo: Arc<dyn RepoRemote>,
    pub clock: Arc<dyn WallClock>,
    /// The signing identity, on a room that verifies identities.
    pub founder: Option<Founder>,
    /// The simulator's canary: found without the founding commit.
    pub skip_founding_commit: bool,
}

/// A group this node moved into.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub group: GroupStart,
    pub founder: NodeId,
    /// Requests carried into the outbox, to be proposed again.
    pub carried: usize,
    /// Whether this node founded the group (it must then seed it).
    pub founded: bool,
}

/// Why a re-formation did not happen (the node stays where it was).
#[derive(Debug, thiserror::Error)]
pub enum ReformError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the repository's branch is empty")]
    NoBranch,
    #[error("the repository holds the log up to index {watermark}, this node only up to {applied}, and it could not catch up: {why}")]
    Behind {
        watermark: u64,
        applied: u64,
        why: String,
    },
    #[error("another node founded group epoch {0} first")]
    Lost(u64),
    #[error("the room's group was re-formed without this node (epoch {0}): it joins when it meets a member")]
    Superseded(u64),
    #[error("the repository names no group newer than epoch {0}")]
    NotNewer(u64),
    #[error("no verified founding of group epoch {0} in the repository's recent history")]
    NoFounding(u64),
    #[error("the room's members would not accept this node's founding: {0}")]
    NotMember(String),
    #[error("storage: {0}")]
    Storage(#[from] skygit_storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
}

impl Reformer {
    fn me(&self) -> NodeId {
        self.replica.id()
    }

    /// The room index this node has applied.
    fn applied(&self) -> Result<u64, ReformError> {
        let group = self.storage.group().start;
        let raft = self.storage.reader.last_applied()?.map_or(0, |l| l.index);
        Ok(group.room_index(raft).unwrap_or(u64::MAX))
    }

    /// Starts the group this node was in again (a re-formation that did
    /// not happen after its raft was stopped).
    async fn resume(&mut self) -> Result<(), ReformError> {
        self.storage.reopen_log()?;
        self.start(self.storage.group().start).await
    }

    /// Moves the stopped node into `group` (see
    /// [`RoomStorage::begin_group`]) and starts its raft there; a founder
    /// initialises it as the one voter. Answers how many requests were
    /// carried. If the storage cannot move, the old group runs again.
    async fn enter(&mut self, group: GroupStart, role: GroupRole) -> Result<usize, ReformError> {
        let carried = match self.storage.begin_group(group, role).await {
            Ok(n) => n,
            Err(e) => {
                self.resume().await?;
                return Err(e.into());
            }
        };
        self.start(group).await?;
        if role == GroupRole::Founder {
            let me = self.me();
            let members = BTreeMap::from([(me, BasicNode::new(format!("node:{me}")))]);
            self.replica
                .raft()
                .initialize(members)
                .await
                .map_err(|e| ReformError::Raft(e.to_string()))?;
        }
        Ok(carried)
    }

    /// Founds a new group: a compare-and-swap founding commit of the next
    /// epoch on the branch, then a one-voter group of this node whose
    /// state (the seed) is this node's. Its log numbers on from the room
    /// index this node applied, which is at least the repository's.
    pub async fn found(&mut self) -> Result<Moved, ReformError> {
        let me = self.me();
        let current = self.storage.group().start;
        let head = self.repo.head().await?.ok_or(ReformError::NoBranch)?;
        let head_epoch = layout::group_epoch(&head.message);
        if head_epoch > current.epoch {
            // Above the newer group's base this node's state is another
            // history than the one the branch continues: it may only join
            // that group (when it meets one of its members).
            return Err(ReformError::Superseded(head_epoch));
        }
        let epoch = current.epoch + 1;
        let watermark = crate::readback::watermark_of(self.repo.as_ref(), &head).await?;
        // Stop this group's raft, so what it applied is final.
        self.replica.stop_group().await;
        let outcome = match self.catch_up(&head, watermark).await {
            Ok(applied) => self.claim(&head, epoch, watermark, applied).await,
            Err(e) => Err(e),
        };
        let base = match outcome {
            Ok(base) => base,
            Err(e) => {
                self.resume().await?;
                return Err(e);
            }
        };
        let group = GroupStart { epoch, base };
        let carried = self.enter(group, GroupRole::Founder).await?;
        tracing::warn!(
            epoch,
            base,
            carried,
            "founded a new raft group for the room: the old group's majority is gone"
        );
        Ok(Moved {
            group,
            founder: me,
            carried,
            founded: true,
        })
    }

    /// Brings the stopped node's state up to the repository's `watermark`
    /// when it is behind (the rest of the room committed and wrote what it
    /// never received: a partition's other side, say), from the batch
    /// files at `head`. Answers the room index it has applied then.
    async fn catch_up(&self, head: &RepoHead, watermark: u64) -> Result<u64, ReformError> {
        let applied = self.applied()?;
        if watermark <= applied {
            return Ok(applied);
        }
        let behind = |why: String| ReformError::Behind {
            watermark,
            applied,
            why,
        };
        let changes = crate::readback::changes_between(
            self.repo.as_ref(),
            head,
            applied,
            watermark,
            crate::readback::ReadbackLimits::default(),
        )
        .await
        .map_err(|e| behind(e.to_string()))?;
        let n = self
            .storage
            .state_machine
            .catch_up(changes, watermark, head.commit_sha.clone())
            .await
            .map_err(|e| behind(e.to_string()))?;
        tracing::info!(
            from = applied,
            to = watermark,
            changes = n,
            "caught up from the repository before founding"
        );
        Ok(watermark)
    }

    /// Commits the founding of `epoch` on `head` with this node's state
    /// at room index `applied`; answers the group's base.
    async fn claim(
        &self,
        head: &RepoHead,
        epoch: u64,
        watermark: u64,
        applied: u64,
    ) -> Result<u64, ReformError> {
        let me = self.me();
        let base = applied.max(watermark);
        if self.skip_founding_commit {
            return Ok(base);
        }
        let message = match &self.founder {
            None => layout::founding_message(me, epoch, base, watermark),
            Some(ours) => {
                let claim = skygit_ports::identity::founding_claim(epoch, base, me, &ours.user);
                let sig = ours
                    .identity
                    .key
                    .sign(&claim)
                    .map_err(|e| RepoError::Invalid(e.to_string()))?;
                let message =
                    layout::signed_founding_message(me, epoch, base, watermark, &ours.user, &sig);
                // A founding the members would pass over (this node's user
                // was removed, say) is not made: it would only stop their
                // committers.
                if let Err(why) = verify_founding(ours, me, &message).await? {
                    return Err(ReformError::NotMember(why));
                }
                message
            }
        };
        let committed = self
            .repo
            .commit(CommitRequest {
                expected_head: Some(head.commit_sha.clone()),
                files: Vec::new(),
                message,
                time_secs: self.clock.now_ms() / 1000,
            })
            .await;
        match committed {
            Ok(_) => Ok(base),
            Err(RepoError::Conflict) => Err(ReformError::Lost(epoch)),
            Err(RepoError::Unknown(why)) => {
                // Whether it landed is settled by reading the head, never
                // by committing again.
                let now = self.repo.head().await?.ok_or(ReformError::NoBranch)?;
                let ours = layout::founder(&now.message) == Some(me)
                    && layout::group_epoch(&now.message) == epoch;
                if ours {
                    Ok(base)
                } else {
                    tracing::info!(reason = %why, "the founding commit did not land");
                    Err(ReformError::Lost(epoch))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn start(&mut self, group: GroupStart) -> Result<(), ReformError> {
        self.replica
            .start_group(
                group,
                self.storage.log.clone(),
                self.storage.state_machine.clone(),
            )
            .await
            .map_err(|e| ReformError::Raft(e.to_string()))
    }

    /// Joins the newest group the repository names, when it is newer than
    /// this node's: carries into the outbox what the new group may not
    /// have (its journal, its unapplied log), and waits (uninitialised) for that group's
    /// leader to add it and send it the group's snapshot. A founding of
    /// this node's own (its founder stopped before it switched) makes it
    /// the founder again.
    pub async fn join(&mut self) -> Result<Moved, ReformError> {
        let me = self.me();
        let current = self.storage.group().start;
        let head = self.repo.head().await?.ok_or(ReformError::NoBranch)?;
        let epoch = layout::group_epoch(&head.message);
        if epoch <= current.epoch {
            return Err(ReformError::NotNewer(current.epoch));
        }
        let (founder, base) = self.founding_of(&head, epoch).await?;
        let role = if founder == me {
            GroupRole::Founder
        } else {
            GroupRole::Joiner
        };
        self.replica.stop_group().await;
        let group = GroupStart { epoch, base };
        let carried = self.enter(group, role).await?;
        tracing::warn!(
            epoch,
            base,
            founder,
            carried,
            "joined the room's newer raft group"
        );
        Ok(Moved {
            group,
            founder,
            carried,
            founded: role == GroupRole::Founder,
        })
    }

    /// The founder and base of group `epoch`, from its founding commit
    /// (signed by a member, on a room that verifies identities).
    async fn founding_of(&self, head: &RepoHead, epoch: u64) -> Result<(NodeId, u64), ReformError> {
        let mut messages = vec![head.message.clone()];
        if layout::founder(&head.message).is_none() {
            messages.extend(
                self.repo
                    .history(&head.commit_sha, MAX_FOUNDING_SEARCH)
                    .await?
                    .into_iter()
                    .map(|c| c.message),
            );
        }
        for m in &messages {
            let Some(node) = layout::founder(m) else {
                continue;
            };
            if layout::group_epoch(m) != epoch {
                continue;
            }
            if let Some(ours) = &self.founder {
                if let Err(why) = verify_founding(ours, node, m).await? {
                    tracing::warn!(node, reason = %why, "passed over a founding commit whose signature does not verify");
                    continue;
                }
            }
            return Ok((node, layout::group_base(m)));
        }
        Err(ReformError::NoFounding(epoch))
    }

    /// Seeds the group this node founded: once it leads and has applied
    /// its log, a snapshot of its state is built and the log purged up to
    /// it, so every joiner starts from that snapshot (never by applying
    /// the group's entries to a state of its own).
    pub async fn seed(&self) -> Result<(), ReformError> {
        use openraft::async_runtime::WatchReceiver;
        let raft = self.replica.raft();
        let me = self.me();
        let mut rx = raft.metrics();
        let ready = async {
            loop {
                {
                    let m = rx.borrow_watched();
                    if m.current_leader == Some(me) && m.last_applied.is_some() {
                        let applied = m.last_applied.map(|l| l.index);
                        if applied >= m.last_log_index {
                            return Ok(());
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ReformError::Raft("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(SEED_WAIT, ready)
            .await
            .map_err(|_| ReformError::Raft("did not lead the new group in time".into()))??;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| ReformError::Raft(e.to_string()))?;
        let built = async {
            loop {
                let snapshot = rx.borrow_watched().snapshot;
                if let Some(s) = snapshot {
                    return Ok(s.index);
                }
                if rx.changed().await.is_err() {
                    return Err(ReformError::Raft("raft stopped".into()));
                }
            }
        };
        let upto = tokio::time::timeout(SEED_WAIT, built)
            .await
            .map_err(|_| ReformError::Raft("the seed snapshot was not built in time".into()))??;
        raft.trigger()
            .purge_log(upto)
            .await
            .map_err(|e| ReformError::Raft(e.to_string()))?;
        let purged = async {
            loop {
                if rx.borrow_watched().purged.is_some_and(|p| p.index >= upto) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(ReformError::Raft("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(SEED_WAIT, purged)
            .await
            .map_err(|_| ReformError::Raft("the log was not purged in time".into()))??;
        tracing::info!(snapshot = upto, "the new group is seeded");
        Ok(())
    }
}
