//! The membership actor: on the leader, carries out the membership
//! controller's plan ([`skygit_consensus::membership::plan`]) one step at a
//! time, from the links the mesh reports and raft's replication metrics.
//! On every node it also bootstraps the group when the room has none: the
//! smallest-id node among online nodes none of which is in a group starts
//! a one-voter group, and the leader grows it from there.

use crate::mesh::identity::VerifiedPeers;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use openraft::BasicNode;
use skygit_consensus::membership::{plan, MembershipPolicy, MembershipView, Step};
use skygit_consensus::replica::Replica;
use skygit_consensus::NodeId;
use skygit_storage::StateMachine;
use tokio::time::Instant;
use tracing::Instrument;

use crate::layout;
use crate::mesh::LinkChanged;
use crate::ports::{CommitRequest, RepoError, RepoHead, RepoRemote, WallClock};
use crate::presence::{PossiblePeers, PresenceActor, SetInGroup};
use crate::reform::{Moved, Reformer};
use skygit_consensus::reform::{self, ReformDecision, ReformPolicy, ReformView};

/// A membership change that has not committed by then is abandoned (and
/// planned again).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a new node may start a group when nobody else has one.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// Yes, after this long online (so that nodes starting together see
    /// each other first).
    After(Duration),
    /// No: the reason is logged (for example the repository holds history
    /// that only a member of the old group can continue).
    Refuse(String),
}

/// The controller's state and settings, for status pages.
#[derive(Message)]
#[rtype(result = "MembershipStatus")]
pub struct GetMembershipStatus;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MembershipStatus {
    /// How many voters the controller aims for.
    pub target_voters: usize,
    /// The target is this node's own (its command line), not the room's.
    pub voters_pinned: bool,
    pub voters: Vec<NodeId>,
    /// A joint configuration: the voters are changing.
    pub joint: bool,
    pub learners: Vec<NodeId>,
    pub online: Vec<NodeId>,
    pub leaving: Vec<NodeId>,
    pub last_step: Option<String>,
    pub waiting: Option<String>,
    /// The raft group this node is in.
    pub epoch: u64,
    pub base: u64,
    /// Why the group is not re-formed, while no leader is reachable.
    pub reform_waiting: Option<String>,
    /// This node's last move into a new group.
    pub reformed: Option<Reformed>,
}

/// A move of this node into a new group of its room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reformed {
    pub at_ms: i64,
    pub reason: String,
    pub moved: Moved,
}

/// How long a failed join or founding waits before the repository is
/// read again.
const JOIN_RETRY: Duration = Duration::from_secs(5);

pub struct MembershipActor {
    /// The room's name, the `room` label of this actor's metrics.
    room: String,
    replica: Arc<Replica<StateMachine>>,
    presence: Addr<PresenceActor>,
    policy: MembershipPolicy,
    bootstrap: Bootstrap,
    /// The room's repository: read again right before starting a group,
    /// so a node that lost sight of an existing group does not start a
    /// second one once that group has committed.
    repo: Option<(Arc<dyn RepoRemote>, Arc<dyn WallClock>)>,
    started: Instant,
    online: BTreeSet<NodeId>,
    down_since: BTreeMap<NodeId, Instant>,
    busy: bool,
    in_group: bool,
    last_step: Option<String>,
    waiting: Option<String>,
    /// Set on a room that verifies identities.
    verified: Option<VerifiedPeers>,
    founder: Option<Founder>,
    /// Re-forming the group (a node with a repository).
    reform: Option<(Reformer, ReformPolicy)>,
    /// Since when no leader has been reachable.
    leaderless_since: Option<Instant>,
    /// This node founded the group it is in and has not seeded it yet:
    /// nobody is added before the seed snapshot exists.
    seed_pending: bool,
    reform_waiting: Option<String>,
    reformed: Option<Reformed>,
    /// No join is tried before this (after one failed).
    join_after: Option<Instant>,
    /// No founding is tried before this (after one failed: each attempt
    /// stops and restarts raft and reads the repository).
    found_after: Option<Instant>,
    span: tracing::Span,
}

impl MembershipActor {
    pub fn new(
        room: &str,
        replica: Arc<Replica<StateMachine>>,
        presence: Addr<PresenceActor>,
        policy: MembershipPolicy,
        bootstrap: Bootstrap,
        repo: Option<(Arc<dyn RepoRemote>, Arc<dyn WallClock>)>,
    ) -> Self {
        let span = tracing::info_span!("membership", room, node = replica.id());
        let me = replica.id();
        Self {
            room: room.to_owned(),
            replica,
            presence,
            policy,
            bootstrap,
            repo,
            started: Instant::now(),
            online: BTreeSet::from([me]),
            down_since: BTreeMap::new(),
            busy: false,
            in_group: false,
            last_step: None,
            waiting: None,
            verified: None,
            founder: None,
            reform: None,
            leaderless_since: None,
            seed_pending: false,
            reform_waiting: None,
            reformed: None,
            join_after: None,
            found_after: None,
            span,
        }
    }

    /// Re-forms the room's group when its majority is gone for good
    /// (`policy`), and joins a newer group a peer names, with `reformer`.
    pub fn reforming(mut self, reformer: Reformer, policy: ReformPolicy) -> Self {
        self.reform = Some((reformer, policy));
        self
    }

    /// Tracks since when no leader has been reachable, and answers for how
    /// long. A leader that reaches no majority of its voters counts as
    /// none: it can commit nothing (raft keeps it leading).
    fn leaderless_for(&mut self, initialized: bool) -> Duration {
        let m = self.replica.metrics();
        let me = self.replica.id();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let voters_up = voters
            .iter()
            .filter(|v| **v == me || self.online.contains(v))
            .count();
        let reachable = m.current_leader.is_some_and(|l| {
            (l == me && voters_up * 2 > voters.len()) || (l != me && self.online.contains(&l))
        });
        if reachable || !initialized {
            self.leaderless_since = None;
            return Duration::ZERO;
        }
        let since = *self.leaderless_since.get_or_insert_with(Instant::now);
        since.elapsed()
    }

    /// Joins a newer group a peer's frames named, after the repository
    /// confirms it. Returns whether it started.
    fn try_join(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some((reformer, _)) = &self.reform else {
            return false;
        };
        let hint = *self.replica.newer_epoch_seen().borrow();
        let current = self.replica.group().epoch;
        if hint.is_none_or(|e| e <= current) {
            return false;
        }
        if self.join_after.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.busy = true;
        let mut reformer = reformer.clone();
        ctx.spawn(
            async move { reformer.join().await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|joined, act, _| {
                    act.busy = false;
                    match joined {
                        Ok(moved) => act.moved(moved, "a peer is in a newer group of the room"),
                        Err(e) => {
                            tracing::warn!(error = %e, "did not join the newer group");
                            act.join_after = Some(Instant::now() + JOIN_RETRY);
                        }
                    }
                }),
        );
        true
    }

    /// Founds a new group when [`reform::decide`] says so. Returns whether
    /// it started.
    fn try_reform(&mut self, ctx: &mut Context<Self>, leaderless_for: Duration) -> bool {
        let Some((reformer, policy)) = &self.reform else {
            return false;
        };
        let m = self.replica.metrics();
        let membership = m.membership_config.membership();
        let view = ReformView {
            me: self.replica.id(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            reachable: self.online.clone(),
            leaderless_for,
        };
        match reform::decide(&view, policy) {
            ReformDecision::Healthy => {
                self.reform_waiting = None;
                false
            }
            ReformDecision::Wait(why) => {
                if self.reform_waiting.as_ref() != Some(&why) {
                    tracing::info!(reason = %why, "not re-forming the group");
                    self.reform_waiting = Some(why);
                }
                false
            }
            ReformDecision::Found if self.found_after.is_some_and(|t| Instant::now() < t) => false,
            ReformDecision::Found => {
                self.busy = true;
                let mut reformer = reformer.clone();
                ctx.spawn(
                    async move { reformer.found().await }
                        .instrument(self.span.clone())
                        .into_actor(self)
                        .map(|founded, act, _| {
                            act.busy = false;
                            match founded {
                                Ok(moved) => act.moved(
                                    moved,
                                    "no leader was reachable and a majority of voters was gone",
                                ),
                                Err(e) => {
                                    tracing::warn!(error = %e, "did not re-form the group");
                                    act.reform_waiting = Some(e.to_string());
                                    act.found_after = Some(Instant::now() + JOIN_RETRY);
                                }
                            }
                        }),
                );
                true
            }
        }
    }

    /// This node is in a new group now.
    fn moved(&mut self, moved: Moved, reason: &str) {
        metrics::counter!(
            "skygit_reformations_total",
            "room" => self.room.clone(),
            "role" => if moved.founded { "founded" } else { "joined" }
        )
        .increment(1);
        metrics::counter!("skygit_reform_carried_requests_total", "room" => self.room.clone())
            .increment(moved.carried as u64);
        self.leaderless_since = None;
        self.reform_waiting = None;
        self.join_after = None;
        self.found_after = None;
        self.seed_pending = moved.founded;
        let at_ms = self.reform.as_ref().map_or(0, |(r, _)| r.clock.now_ms());
        self.reformed = Some(Reformed {
            at_ms,
            reason: reason.to_owned(),
            moved,
        });
    }

    /// Seeds the group this node founded (see [`Reformer::seed`]).
    fn try_seed(&mut self, ctx: &mut Context<Self>) {
        let Some((reformer, _)) = &self.reform else {
            self.seed_pending = false;
            return;
        };
        self.busy = true;
        let reformer = reformer.clone();
        ctx.spawn(
            async move { reformer.seed().await }
                .instrument(self.span.clone())
                .into_actor(self)
                .map(|seeded, act, _| {
                    act.busy = false;
                    match seeded {
                        Ok(()) => act.seed_pending = false,
                        Err(e) => tracing::warn!(error = %e, "the new group is not seeded yet"),
                    }
                }),
        );
    }

    /// On a room that verifies identities: only verified peers count when
    /// deciding who starts the group (an impostor's record could otherwise
    /// claim a smaller id, or a group, and keep the room from forming).
    pub fn verifying(mut self, verified: VerifiedPeers, founder: Founder) -> Self {
        self.verified = Some(verified);
        self.founder = Some(founder);
        self
    }

    fn view(&self) -> Option<MembershipView> {
        let m = self.replica.metrics();
        let me = self.replica.id();
        if m.current_leader != Some(me) {
            return None;
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let now = Instant::now();
        let offline_for = voters
            .iter()
            .chain(&learners)
            .filter(|id| !self.online.contains(id))
            .map(|id| {
                let since = self.down_since.get(id).copied().unwrap_or(self.started);
                (*id, now.duration_since(since))
            })
            .collect();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Some(MembershipView {
            leader: me,
            voters,
            learners,
            online: self.online.clone(),
            offline_for,
            leaving: self.replica.leaving(),
            last_index: m.last_log_index.unwrap_or(0),
            matched,
        })
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let initialized = self
            .replica
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some();
        if initialized != self.in_group {
            self.in_group = initialized;
            self.presence.do_send(SetInGroup(initialized));
        }
        metrics::gauge!("skygit_group_epoch", "room" => self.room.clone())
            .set(self.replica.group().epoch as f64);
        if self.try_join(ctx) {
            return;
        }
        if self.seed_pending {
            self.try_seed(ctx);
            return;
        }
        let leaderless_for = self.leaderless_for(initialized);
        if !initialized {
            if self.replica.group().epoch > 0 {
                self.waiting = Some("waiting to be added to the room's group".into());
            } else {
                self.try_bootstrap(ctx);
            }
            return;
        }
        if self.try_reform(ctx, leaderless_for) {
            return;
        }
        self.waiting = None;
        let Some(view) = self.view() else { return };
        // Leave requests of nodes no longer in the membership are done.
        for id in view.leaving.iter() {
            if !view.voters.contains(id) && !view.learners.contains(id) {
                self.replica.forget_leaving(*id);
            }
        }
        let Some(step) = plan(&view, &self.policy) else {
            return;
        };
        self.busy = true;
        let text = format!("{step:?}");
        tracing::info!(step = %text, "membership change");
        metrics::counter!("skygit_membership_changes_total", "room" => self.room.clone())
            .increment(1);
        self.last_step = Some(text);
        let replica = self.replica.clone();
        ctx.spawn(
            async move {
                let raft = replica.raft();
                let work = async {
                    match step {
                        Step::AddLearner(id) => raft
                            .add_learner(id, BasicNode::new(format!("node:{id}")), false)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Step::SetVoters(v) => raft
                            .change_membership(openraft::ChangeMembers::ReplaceAllVoters(v), true)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Step::RemoveLearners(ids) => raft
                            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    }
                };
                match tokio::time::timeout(STEP_TIMEOUT, work).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "membership change failed");
                        false
                    }
                    Err(_) => {
                        tracing::warn!("membership change did not commit in time");
                        false
                    }
                }
            }
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|done, act, ctx| {
                act.busy = false;
                // A step that committed is followed by the next one at
                // once (a room of five forms in four steps, not four
                // ticks); a failed one waits for the next tick.
                if done {
                    act.tick(ctx);
                }
            }),
        );
    }

    fn try_bootstrap(&mut self, ctx: &mut Context<Self>) {
        let settle = match &self.bootstrap {
            Bootstrap::Refuse(reason) => {
                if self.waiting.as_deref() != Some(reason) {
                    tracing::warn!(reason = %reason, "waiting for a member of the room's group to come online");
                    self.waiting = Some(reason.clone());
                }
                return;
            }
            Bootstrap::After(d) => *d,
        };
        if self.started.elapsed() < settle {
            return;
        }
        self.busy = true;
        let me = self.replica.id();
        let presence = self.presence.clone();
        ctx.spawn(
            async move { presence.send(PossiblePeers).await.ok().flatten() }
                .into_actor(self)
                .map(move |peers, act, ctx| {
                    act.busy = false;
                    let Some(mut peers) = peers else {
                        act.waiting = Some("reading the room's presence".into());
                        return;
                    };
                    if let Some(verified) = &act.verified {
                        let verified = verified.read().unwrap_or_else(|e| e.into_inner());
                        peers.retain(|p| verified.get(&p.node_id) == Some(&p.user));
                    }
                    if peers.iter().any(|p| p.in_group) {
                        let w = "a member of the room's group is online; waiting to be added"
                            .to_owned();
                        if act.waiting.as_ref() != Some(&w) {
                            tracing::info!("{w}");
                            act.waiting = Some(w);
                        }
                        return;
                    }
                    if peers.iter().any(|p| p.node_id < me) {
                        act.waiting = Some("a node with a smaller id starts the group".into());
                        return;
                    }
                    act.busy = true;
                    let replica = act.replica.clone();
                    let repo = act.repo.clone();
                    let founder = act.founder.clone();
                    ctx.spawn(
                        async move {
                            if let Some((repo, clock)) = repo {
                                match claim_founding(repo.as_ref(), me, clock.now_ms() / 1000, founder.as_ref()).await {
                                    Ok(None) => {}
                                    Ok(Some(refusal)) => return Some(refusal),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "could not claim the room's group in the repository; trying again");
                                        return None;
                                    }
                                }
                            }
                            let members =
                                BTreeMap::from([(me, BasicNode::new(format!("node:{me}")))]);
                            match replica.raft().initialize(members).await {
                                Ok(()) => tracing::info!("started the room's raft group"),
                                Err(e) => tracing::warn!(error = %e, "could not start the group"),
                            }
                            None
                        }
                        .instrument(act.span.clone())
                        .into_actor(act)
                        .map(|refused, act, _| {
                            act.busy = false;
                            if let Some(reason) = refused {
                                act.bootstrap = Bootstrap::Refuse(reason);
                            }
                        }),
                    );
                }),
        );
    }
}

/// Whether this node may start a new group: only when the repository has
/// no log yet (a room with history is continued by a member of its group;
/// re-forming a group from the repository alone is not built yet).
pub async fn bootstrap_rule(
    remote: &dyn RepoRemote,
    head: &Result<Option<RepoHead>, RepoError>,
    settle: Duration,
) -> Bootstrap {
    let head = match head {
        Ok(h) => h,
        Err(e) => return Bootstrap::Refuse(format!("cannot read the repository: {e}")),
    };
    let Some(head) = head else {
        return Bootstrap::After(settle);
    };
    match crate::readback::watermark_of(remote, head).await {
        Ok(0) => Bootstrap::After(settle),
        Ok(w) => Bootstrap::Refuse(format!(
            "the repository holds the room's log up to index {w}; only a member of its raft group can continue it"
        )),
        Err(e) => Bootstrap::Refuse(format!("cannot read the repository's watermark: {e}")),
    }
}

/// Commits searched for a founding claim.
const MAX_FOUNDER_SEARCH: usize = 100;

/// Who founds a group on a room that verifies identities: the founding
/// commit is signed, and only a founding signed by a member counts.
#[derive(Clone)]
pub struct Founder {
    pub user: String,
    pub identity: crate::room::RoomIdentity,
}

/// Claims the founding of the room's raft group in the repository, so
/// that two nodes that cannot see each other's presence never both start
/// one: the claim is a commit (no file changes, a `Group-Founder` trailer)
/// made by compare-and-swap on the branch, and only one can win. On a room
/// that verifies identities the claim is signed (`founder`), and a
/// founding commit whose signature does not verify against its user's keys
/// is passed over: a writer with a false name cannot hold the room.
/// `Ok(None)`: this node founds the group; `Ok(Some(why))`: it must not;
/// `Err`: undecided (try again).
pub async fn claim_founding(
    repo: &dyn RepoRemote,
    me: NodeId,
    now_secs: i64,
    founder: Option<&Founder>,
) -> Result<Option<String>, RepoError> {
    let head = match repo.head().await? {
        Some(head) => head,
        None => {
            // An empty branch: create it with the room's default config
            // (as the committer's first flush would) so that the claim
            // below has a head to compare and swap on. Creating it is
            // itself a compare-and-swap (it fails when the branch exists),
            // so of two nodes that find it empty, both then race for the
            // one founding on the same head and only one wins.
            let created = repo
                .commit(CommitRequest {
                    expected_head: None,
                    files: vec![(
                        layout::CONFIG_PATH.to_owned(),
                        layout::RoomConfig::default().to_bytes(),
                    )],
                    message: layout::init_message(),
                    time_secs: now_secs,
                })
                .await;
            match created {
                Ok(_) | Err(RepoError::Conflict | RepoError::Unknown(_)) => {}
                Err(e) => return Err(e),
            }
            match repo.head().await? {
                Some(head) => head,
                // The create did not land (an unknown outcome), or the
                // host does not show it yet: try again on the next tick.
                None => {
                    return Err(RepoError::Unavailable(
                        "the repository's branch is still empty after creating it".into(),
                    ))
                }
            }
        }
    };
    let w = crate::readback::watermark_of(repo, &head).await?;
    if w > 0 {
        return Ok(Some(format!(
            "the repository holds the room's log up to index {w}; only a member of its raft group can continue it"
        )));
    }
    let mut messages = vec![head.message.clone()];
    if layout::founder(&head.message).is_none() || founder.is_some() {
        messages.extend(
            repo.history(&head.commit_sha, MAX_FOUNDER_SEARCH)
                .await?
                .into_iter()
                .map(|c| c.message),
        );
    }
    let mut found = None;
    for m in &messages {
        let Some(f) = layout::founder(m) else {
            continue;
        };
        match founder {
            None => {
                found = Some(f);
                break;
            }
            Some(ours) => match verify_founding(ours, f, m).await? {
                Ok(()) => {
                    found = Some(f);
                    break;
                }
                Err(why) => {
                    tracing::warn!(node = f, reason = %why, "passed over a founding commit whose signature does not verify")
                }
            },
        }
    }
    match found {
        Some(f) if f == me => return Ok(None),
        Some(f) => return Ok(Some(format!("node {f} founded the room's group"))),
        None => {}
    }
    // Only the first group is founded here (the watermark is 0); a later
    // epoch's founding keeps the branch's watermark.
    let epoch = 0;
    let message = match founder {
        None => layout::founding_message(me, epoch, 0, w),
        Some(ours) => {
            let claim = skygit_ports::identity::founding_claim(epoch, 0, me, &ours.user);
            let sig = ours
                .identity
                .key
                .sign(&claim)
                .map_err(|e| RepoError::Invalid(e.to_string()))?;
            layout::signed_founding_message(me, epoch, 0, w, &ours.user, &sig)
        }
    };
    repo.commit(CommitRequest {
        expected_head: Some(head.commit_sha),
        files: Vec::new(),
        message,
        time_secs: now_secs,
    })
    .await?;
    tracing::info!("claimed the founding of the room's group in the repository");
    Ok(None)
}

/// Checks founding commit `message` of node `node` against its user's
/// keys. The outer error: the keys could not be read (undecided).
pub(crate) async fn verify_founding(
    ours: &Founder,
    node: NodeId,
    message: &str,
) -> Result<Result<(), String>, RepoError> {
    let Some((user, sig)) = layout::founder_signature(message) else {
        return Ok(Err("it is not signed".into()));
    };
    let keys = ours
        .identity
        .directory
        .keys_of(user)
        .await
        .map_err(|e| RepoError::Unavailable(e.to_string()))?;
    let claim = skygit_ports::identity::founding_claim(
        layout::group_epoch(message),
        layout::group_base(message),
        node,
        user,
    );
    Ok(
        skygit_ports::identity::verify(user, keys.as_deref(), &claim, Some(&sig))
            .map_err(|e| format!("{user}: {e}")),
    )
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.policy.tick, |act, ctx| act.tick(ctx));
    }
}

impl Handler<LinkChanged> for MembershipActor {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, _ctx: &mut Self::Context) {
        if msg.up {
            // A node that comes back after leaving may be a voter again.
            self.replica.forget_leaving(msg.peer);
            self.online.insert(msg.peer);
            self.down_since.remove(&msg.peer);
        } else {
            self.online.remove(&msg.peer);
            self.down_since.insert(msg.peer, Instant::now());
        }
    }
}

/// Change how many voters this node's controller aims for (it acts on it
/// while this node leads).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetVoters(pub usize);

/// The room's settings changed: a voter count set there becomes the
/// target, unless this node's own configuration pins it.
impl Handler<crate::committer::SettingsChanged> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: crate::committer::SettingsChanged, ctx: &mut Self::Context) {
        let Some(v) = msg.0.voters else {
            return;
        };
        if self.policy.pinned {
            self.span.in_scope(|| {
                tracing::info!(
                    voters = v,
                    pinned = self.policy.voters,
                    "the room's voter count is overridden on this node"
                )
            });
            return;
        }
        ctx.notify(SetVoters(usize::from(v)));
    }
}

impl Handler<SetVoters> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: SetVoters, ctx: &mut Self::Context) {
        self.policy.voters = msg.0.clamp(1, skygit_consensus::membership::MAX_VOTERS);
        self.span
            .in_scope(|| tracing::info!(voters = msg.0, "voter target changed"));
        self.tick(ctx);
    }
}

impl Handler<GetMembershipStatus> for MembershipActor {
    type Result = MessageResult<GetMembershipStatus>;

    fn handle(&mut self, _: GetMembershipStatus, _ctx: &mut Self::Context) -> Self::Result {
        let m = self.replica.metrics();
        let membership = m.membership_config.membership();
        MessageResult(MembershipStatus {
            target_voters: self.policy.voters,
            voters_pinned: self.policy.pinned,
            voters: membership.voter_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            learners: membership.learner_ids().collect(),
            online: self.online.iter().copied().collect(),
            leaving: self.replica.leaving().into_iter().collect(),
            last_step: self.last_step.clone(),
            waiting: self.waiting.clone(),
            epoch: self.replica.group().epoch,
            base: self.replica.group().base,
            reform_waiting: self.reform_waiting.clone(),
            reformed: self.reformed.clone(),
        })
    }
}
