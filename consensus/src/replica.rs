//! One node's member of a room's raft group: the openraft instance, its
//! network over a peer link, the loop that serves incoming frames, and
//! proposals (written locally on the leader, forwarded to it otherwise).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::codec::{self, EnvelopeKind};
use crate::model::{ApplyOutcome, ChatRequest, GroupStart};
use crate::network::{PeerNetworkFactory, RaftService};
use crate::ports::{IncomingFrame, PeerLink, WallClock};
use crate::rpc::{FrameError, IncomingRequest, RpcError, RpcMux};
use crate::types::{NodeId, Raft, SnapshotData, TypeConfig};

/// Most incoming requests served at once; further frames wait in the link.
pub const MAX_CONCURRENT_REQUESTS: usize = 512;
/// How long a follower waits for the leader to answer a forwarded proposal.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a local write may wait to commit (a leader that lost its
/// quorum would otherwise hold it forever). The entry may still commit
/// later; the caller keeps the request and proposes it again.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarding hops before a proposal gives up (leadership moving under it).
const MAX_FORWARD_HOPS: usize = 3;
/// How often a peer still in an older group epoch is told of ours.
const EPOCH_NOTICE_EVERY: Duration = Duration::from_secs(1);
/// Peers whose last notice time is kept (then the table starts over).
const MAX_NOTIFIED_PEERS: usize = 1024;

/// A proposal forwarded to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChatRpcRequest {
    Propose(ChatRequest),
    /// The sender is shutting down and asks the leader to take it out of
    /// the voters first.
    Leave,
    /// Write the committed log to the repository now (`POST /push` on a
    /// follower).
    Flush,
}

/// What a flush asked of the leader did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushSummary {
    pub head: Option<String>,
    pub up_to_index: u64,
    pub changes: u64,
    pub commits: u64,
    pub remote_calls: u64,
}

/// Runs a flush on this node (set by the room: the committer is above
/// this crate). Answers an error text when the flush failed.
pub type FlushHook = Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, Result<FlushSummary, String>> + Send + Sync,
>;

/// Decides whether a request proposed through a peer may enter the log:
/// `(peer, request)`, an error text when it may not (set by a room that
/// verifies identities: the sender must be the peer's verified user, and
/// the author's signature must verify).
pub type RequestCheck = Arc<
    dyn Fn(NodeId, ChatRequest) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// Why a flush asked of the leader did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FlushRequestError {
    #[error("no leader is reachable")]
    NoLeader,
    #[error("leader {leader} did not flush: {reason}")]
    Failed { leader: NodeId, reason: String },
}

/// Why a call to the leader got no answer.
enum LeaderCallError {
    /// No leader is known (or this node is named, though not leading).
    NoLeader,
    /// The call to `leader` failed.
    Call { leader: NodeId, error: RpcError },
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChatRpcResponse {
    Outcome(ApplyOutcome),
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The leader noted a node's wish to leave.
    Leaving,
    /// The leader flushed.
    Flushed(FlushSummary),
    /// The request breaks a bound; it will never be accepted.
    Invalid(String),
    Failed(String),
}

/// Why a proposal did not commit. The request may still commit later (a
/// forwarded call can time out after the leader accepted it), which is why
/// callers keep it in the outbox and propose it again: the state machine
/// applies its id once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("invalid request: {0}")]
    Invalid(#[from] crate::model::ValidationError),
    #[error("the leader refused the request: {0}")]
    Refused(String),
    #[error("no leader is reachable")]
    NoLeader,
    #[error("forwarding to leader {leader} failed: {reason}")]
    Forward { leader: NodeId, reason: String },
    #[error("raft refused the proposal: {0}")]
    Raft(String),
    #[error("the proposal did not commit in time: {0}")]
    Timeout(String),
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
}

struct Inner<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    id: NodeId,
    group: GroupStart,
    /// What every group of this replica shares.
    shared: Arc<Shared>,
    raft: Raft<SM>,
    mux: Arc<RpcMux>,
    service: RaftService<SM>,
    /// Nodes that asked this node, as leader, to take them out of the
    /// voters (read by the membership controller).
    leaving: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
}

/// What a replica keeps from one raft group to the next.
struct Shared {
    config: Arc<openraft::Config>,
    link: Arc<dyn PeerLink>,
    clock: Arc<dyn WallClock>,
    /// The newest epoch a peer's frame named, when newer than ours (a hint:
    /// whoever acts on it checks the repository first).
    newer_epoch: watch::Sender<Option<u64>>,
    /// The group running now.
    group: watch::Sender<GroupStart>,
    /// How this node flushes when a follower asks it to.
    flush: std::sync::Mutex<Option<FlushHook>>,
    /// Who may propose what through a peer link.
    senders: std::sync::Mutex<Option<RequestCheck>>,
}

/// A running member of a room's raft group. The group can be replaced
/// in place ([`Replica::stop_group`], then [`Replica::start_group`]): the
/// room re-formed, and everyone holding the replica follows.
pub struct Replica<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    current: watch::Sender<Arc<Inner<SM>>>,
    serve: JoinHandle<()>,
}

impl<SM> Replica<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    /// Starts raft on `log_store` and `state_machine` (whose state belongs
    /// to `group`), talking over `link`, and serves the frames arriving on
    /// `incoming`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start<LS>(
        id: NodeId,
        group: GroupStart,
        config: openraft::Config,
        link: Arc<dyn PeerLink>,
        incoming: mpsc::Receiver<IncomingFrame>,
        clock: Arc<dyn WallClock>,
        log_store: LS,
        state_machine: SM,
    ) -> Result<Self, StartError>
    where
        LS: RaftLogStorage<TypeConfig>,
    {
        let shared = Arc::new(Shared {
            config: Arc::new(config.validate()?),
            link,
            clock,
            newer_epoch: watch::Sender::new(None),
            group: watch::Sender::new(group),
            flush: Default::default(),
            senders: Default::default(),
        });
        let inner = Inner::start(id, group, shared, log_store, state_machine).await?;
        let current = watch::Sender::new(inner);
        let serve = tokio::spawn(serve(current.subscribe(), incoming));
        Ok(Self { current, serve })
    }

    /// The group running now.
    fn inner(&self) -> Arc<Inner<SM>> {
        self.current.borrow().clone()
    }

    /// Shuts the current group's raft down (its log and state machine are
    /// released once every call on it ended); until [`Self::start_group`]
    /// this node proposes and serves nothing (callers queue).
    pub async fn stop_group(&self) {
        let inner = self.inner();
        if let Err(e) = inner.raft.shutdown().await {
            tracing::warn!(node = inner.id, error = %e, "raft shutdown");
        }
    }

    /// Starts raft for the group `group` on `log_store` and
    /// `state_machine` (empty of any earlier group's log), in place of the
    /// stopped one: hooks stay, leave requests and epoch hints are
    /// forgotten.
    pub async fn start_group<LS>(
        &self,
        group: GroupStart,
        log_store: LS,
        state_machine: SM,
    ) -> Result<(), StartError>
    where
        LS: RaftLogStorage<TypeConfig>,
    {
        let old = self.inner();
        old.shared.newer_epoch.send_replace(None);
        let inner =
            Inner::start(old.id, group, old.shared.clone(), log_store, state_machine).await?;
        self.current.send_replace(inner);
        old.shared.group.send_replace(group);
        Ok(())
    }

    /// The running group, and each change of it (a new raft after a
    /// re-formation: watchers of raft's metrics subscribe again on each).
    pub fn group_changes(&self) -> watch::Receiver<GroupStart> {
        self.inner().shared.group.subscribe()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner().id
    }

    /// A copy of raft's current metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.inner().raft.metrics().borrow_watched().clone()
    }

    /// The raft group this replica runs: its epoch and base.
    pub fn group(&self) -> GroupStart {
        self.inner().group
    }

    /// The newest group epoch a peer's frame has named, when it is newer
    /// than this replica's: a hint that the room re-formed without this
    /// node (frames of other epochs are never delivered).
    pub fn newer_epoch_seen(&self) -> watch::Receiver<Option<u64>> {
        self.inner().shared.newer_epoch.subscribe()
    }

    /// Waits until this node has applied room index `index`, at most
    /// `timeout`; returns whether it has (an index of an earlier group has
    /// been). Woken by each change of raft's data metrics, so an answer
    /// goes out as soon as the entry is applied here.
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        use openraft::async_runtime::WatchReceiver;
        let inner = self.inner();
        let Some(index) = inner.group.raft_index(index) else {
            return true;
        };
        let mut rx = inner.raft.data_metrics();
        let applied = |rx: &openraft::type_config::alias::WatchReceiverOf<
            TypeConfig,
            openraft::metrics::RaftDataMetrics<TypeConfig>,
        >| {
            rx.borrow_watched()
                .last_applied
                .as_ref()
                .is_some_and(|l| l.index >= index)
        };
        let wait = async {
            loop {
                if applied(&rx) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// The link to `peer` went down: calls waiting for its answers (a
    /// forwarded post, a flush request, raft's own) fail now instead of
    /// waiting out their timeouts.
    pub fn link_down(&self, peer: NodeId) {
        let inner = self.inner();
        let failed = inner.mux.link_down(peer);
        if failed > 0 {
            tracing::info!(
                node = inner.id,
                peer,
                failed,
                "failed the calls waiting on a lost link"
            );
        }
    }

    /// The voters of the membership this node currently follows.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The openraft handle of the running group (metrics, membership,
    /// initialization).
    pub fn raft(&self) -> Raft<SM> {
        self.inner().raft.clone()
    }

    /// Proposes `req`: on the leader it is written here, otherwise it is
    /// forwarded to the leader. Returns when it is applied on the leader.
    pub async fn propose(&self, req: ChatRequest) -> Result<ApplyOutcome, ProposeError> {
        req.validate()?;
        let leader = match write_local(&self.inner().raft, req.clone()).await {
            Ok(outcome) => return Ok(outcome),
            Err(Local::NotLeader(l)) => l,
            Err(Local::Timeout(e)) => return Err(ProposeError::Timeout(e)),
            Err(Local::Failed(e)) => return Err(ProposeError::Raft(e)),
        };
        let ask = ChatRpcRequest::Propose(req);
        match self.ask_leader(leader, &ask, FORWARD_TIMEOUT).await {
            Ok((_, ChatRpcResponse::Outcome(o))) => Ok(o),
            Ok((_, ChatRpcResponse::Invalid(reason))) => Err(ProposeError::Refused(reason)),
            Ok((leader, ChatRpcResponse::Failed(reason))) => {
                Err(ProposeError::Forward { leader, reason })
            }
            Ok((leader, _)) => Err(ProposeError::Forward {
                leader,
                reason: "unexpected answer to a proposal".into(),
            }),
            Err(LeaderCallError::NoLeader) => Err(ProposeError::NoLeader),
            Err(LeaderCallError::Call { leader, error }) => Err(ProposeError::Forward {
                leader,
                reason: error.to_string(),
            }),
        }
    }

    /// Sends `ask` to the leader (`leader` first, another node than this
    /// one) and answers who answered and what, following `NotLeader`
    /// answers at most [`MAX_FORWARD_HOPS`] times.
    async fn ask_leader(
        &self,
        mut leader: Option<NodeId>,
        ask: &ChatRpcRequest,
        timeout: Duration,
    ) -> Result<(NodeId, ChatRpcResponse), LeaderCallError> {
        let inner = self.inner();
        for _ in 0..MAX_FORWARD_HOPS {
            let Some(to) = leader.filter(|l| *l != inner.id) else {
                return Err(LeaderCallError::NoLeader);
            };
            let call = async {
                let body = codec::to_bytes(ask)?;
                let answer = inner
                    .mux
                    .call(EnvelopeKind::Chat, to, body, timeout)
                    .await?;
                Ok::<ChatRpcResponse, RpcError>(codec::from_bytes(&answer)?)
            };
            match call.await {
                Ok(ChatRpcResponse::NotLeader { leader: next }) => leader = next,
                Ok(answer) => return Ok((to, answer)),
                Err(error) => return Err(LeaderCallError::Call { leader: to, error }),
            }
        }
        Err(LeaderCallError::NoLeader)
    }

    /// Sets how this node flushes when, as leader, a follower asks it to.
    pub fn set_flush_hook(&self, hook: FlushHook) {
        *self
            .inner()
            .shared
            .flush
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Checks every request proposed through a peer with `check` before it
    /// reaches the log.
    pub fn set_request_check(&self, check: RequestCheck) {
        *self
            .inner()
            .shared
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(check);
    }

    /// Asks the leader (another node) to flush to the repository now and
    /// waits for its answer, following leadership at most a few hops.
    pub async fn request_flush(
        &self,
        timeout: Duration,
    ) -> Result<(NodeId, FlushSummary), FlushRequestError> {
        let leader = self.metrics().current_leader;
        match self
            .ask_leader(leader, &ChatRpcRequest::Flush, timeout)
            .await
        {
            Ok((to, ChatRpcResponse::Flushed(summary))) => Ok((to, summary)),
            Ok((to, ChatRpcResponse::Failed(reason) | ChatRpcResponse::Invalid(reason))) => {
                Err(FlushRequestError::Failed { leader: to, reason })
            }
            Ok((to, other)) => Err(FlushRequestError::Failed {
                leader: to,
                reason: format!("unexpected answer {other:?}"),
            }),
            Err(LeaderCallError::NoLeader) => Err(FlushRequestError::NoLeader),
            Err(LeaderCallError::Call { leader, error }) => Err(FlushRequestError::Failed {
                leader,
                reason: error.to_string(),
            }),
        }
    }

    /// Nodes that asked to leave the voters (this node included when it
    /// asked while leading).
    pub fn leaving(&self) -> std::collections::BTreeSet<NodeId> {
        self.inner().lock_leaving().clone()
    }

    /// Forgets a leave request (the node came back or left the membership).
    pub fn forget_leaving(&self, id: NodeId) {
        self.inner().lock_leaving().remove(&id);
    }

    /// Asks the leader to take this node out of the voters and waits until
    /// the membership no longer lists it as a voter, or `wait` passes.
    /// Returns whether it left the voters.
    pub async fn leave_voters(&self, wait: Duration) -> bool {
        let me = self.id();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.voters().contains(&me) {
                return true;
            }
            let leader = self.metrics().current_leader;
            match leader {
                Some(l) if l == me => {
                    self.inner().lock_leaving().insert(me);
                }
                Some(l) => {
                    let ask = async {
                        let body = codec::to_bytes(&ChatRpcRequest::Leave)?;
                        let answer = self
                            .inner()
                            .mux
                            .call(EnvelopeKind::Chat, l, body, Duration::from_secs(2))
                            .await?;
                        Ok::<ChatRpcResponse, RpcError>(codec::from_bytes(&answer)?)
                    };
                    if let Err(e) = ask.await {
                        tracing::debug!(node = me, leader = l, error = %e, "leave request not delivered");
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return !self.voters().contains(&me);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops serving and shuts raft down.
    pub async fn shutdown(&self) {
        self.serve.abort();
        self.stop_group().await;
    }
}

impl<SM> Drop for Replica<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    fn drop(&mut self) {
        self.serve.abort();
    }
}

impl<SM> Inner<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    async fn start<LS>(
        id: NodeId,
        group: GroupStart,
        shared: Arc<Shared>,
        log_store: LS,
        state_machine: SM,
    ) -> Result<Arc<Self>, StartError>
    where
        LS: RaftLogStorage<TypeConfig>,
    {
        let mux = Arc::new(RpcMux::in_epoch(
            shared.link.clone(),
            shared.clock.clone(),
            group.epoch,
        ));
        let network = PeerNetworkFactory::new(mux.clone());
        let raft = Raft::new(id, shared.config.clone(), network, log_store, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(Arc::new(Self {
            id,
            group,
            shared,
            service: RaftService::new(raft.clone()),
            raft,
            mux,
            leaving: Default::default(),
        }))
    }

    fn lock_leaving(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<NodeId>> {
        self.leaving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `peer` may propose `request`.
    async fn check_request(&self, peer: NodeId, request: &ChatRequest) -> Result<(), String> {
        let check = self
            .shared
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(check) = check else {
            return Ok(());
        };
        check(peer, request.clone()).await.inspect_err(|reason| {
            tracing::warn!(node = self.id, peer, sender = %request.sender, %reason, "refused a request proposed through a peer");
        })
    }
}

enum Local {
    NotLeader(Option<NodeId>),
    Timeout(String),
    Failed(String),
}

async fn write_local<SM>(raft: &Raft<SM>, req: ChatRequest) -> Result<ApplyOutcome, Local>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let write = tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(req));
    let Ok(result) = write.await else {
        return Err(Local::Timeout(format!(
            "not committed within {PROPOSE_TIMEOUT:?}"
        )));
    };
    match result {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(Local::NotLeader(f.leader_id))
        }
        Err(e) => Err(Local::Failed(e.to_string())),
    }
}

async fn serve<SM>(
    current: watch::Receiver<Arc<Inner<SM>>>,
    mut incoming: mpsc::Receiver<IncomingFrame>,
) where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut notified: BTreeMap<NodeId, tokio::time::Instant> = BTreeMap::new();
    while let Some(frame) = incoming.recv().await {
        let inner = current.borrow().clone();
        let peer = frame.peer;
        let req = match inner.mux.on_frame(frame) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(FrameError::OtherEpoch {
                from,
                theirs,
                ours,
                kind,
                call,
            }) => {
                if theirs > ours {
                    inner.shared.newer_epoch.send_if_modified(|seen| {
                        let newer = seen.is_none_or(|s| theirs > s);
                        if newer {
                            tracing::info!(
                                node = inner.id,
                                peer = from,
                                epoch = theirs,
                                "a peer is in a newer group epoch"
                            );
                            *seen = Some(theirs);
                        }
                        newer
                    });
                } else if let Some(id) = call {
                    // Tell a caller still in an older group, at most once
                    // a second: the answer carries this node's epoch.
                    let now = tokio::time::Instant::now();
                    if notified.len() >= MAX_NOTIFIED_PEERS {
                        notified.clear();
                    }
                    let due = notified
                        .get(&from)
                        .is_none_or(|t| now.duration_since(*t) >= EPOCH_NOTICE_EVERY);
                    if due {
                        notified.insert(from, now);
                        let mux = inner.mux.clone();
                        tokio::spawn(async move {
                            // Best effort: the caller times out either way.
                            let _ = mux.respond(kind, from, id, Vec::new()).await;
                        });
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(node = inner.id, peer, error = %e, "dropped a bad frame");
                continue;
            }
        };
        // Never wait here: answers to this node's own calls come through
        // this loop, and handlers may be waiting for them.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(
                node = inner.id,
                peer,
                kind = ?req.kind,
                "overloaded: {MAX_CONCURRENT_REQUESTS} requests in service; request dropped, the caller will time out and retry"
            );
            continue;
        };
        let inner = inner.clone();
        let span = tracing::debug_span!("serve", node = inner.id, from = req.from, kind = ?req.kind, call = req.id);
        tokio::spawn(
            async move {
                handle(&inner, req).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn handle<SM>(inner: &Inner<SM>, req: IncomingRequest)
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    let answer = match req.kind {
        EnvelopeKind::Raft => codec::to_bytes(&inner.service.handle(req.from, &req.body).await),
        EnvelopeKind::Chat => {
            let answer = match codec::from_bytes::<ChatRpcRequest>(&req.body) {
                // A peer's request is checked before it reaches the log: an
                // oversized entry could not be replicated at all.
                // A room that verifies identities also checks its sender.
                Ok(ChatRpcRequest::Propose(p)) => match match p.validate() {
                    Ok(()) => inner.check_request(req.from, &p).await,
                    Err(e) => Err(e.to_string()),
                } {
                    Err(e) => ChatRpcResponse::Invalid(e),
                    Ok(()) => match write_local(&inner.raft, p).await {
                        Ok(o) => ChatRpcResponse::Outcome(o),
                        Err(Local::NotLeader(leader)) => ChatRpcResponse::NotLeader { leader },
                        Err(Local::Timeout(e) | Local::Failed(e)) => ChatRpcResponse::Failed(e),
                    },
                },
                Ok(ChatRpcRequest::Flush) => {
                    use openraft::async_runtime::WatchReceiver;
                    let leader = inner.raft.metrics().borrow_watched().current_leader;
                    let hook = inner
                        .shared
                        .flush
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    match (leader == Some(inner.id), hook) {
                        (false, _) => ChatRpcResponse::NotLeader { leader },
                        (true, None) => {
                            ChatRpcResponse::Failed("this node has no committer".into())
                        }
                        (true, Some(flush)) => match flush().await {
                            Ok(summary) => ChatRpcResponse::Flushed(summary),
                            Err(e) => ChatRpcResponse::Failed(e),
                        },
                    }
                }
                Ok(ChatRpcRequest::Leave) => {
                    use openraft::async_runtime::WatchReceiver;
                    let leader = inner.raft.metrics().borrow_watched().current_leader;
                    if leader == Some(inner.id) {
                        tracing::info!(
                            node = inner.id,
                            peer = req.from,
                            "peer asked to leave the voters"
                        );
                        inner.lock_leaving().insert(req.from);
                        ChatRpcResponse::Leaving
                    } else {
                        ChatRpcResponse::NotLeader { leader }
                    }
                }
                Err(e) => ChatRpcResponse::Failed(format!("bad chat request: {e}")),
            };
            codec::to_bytes(&answer)
        }
        other => {
            // Signalling is taken out of the frame stream before it gets
            // here (the room's demultiplexer); presence and media calls
            // have no handler yet and are refused, not ignored.
            tracing::debug!(node = inner.id, kind = ?other, "no handler for call");
            codec::to_bytes(&ChatRpcResponse::Failed(format!(
                "no handler for {other:?}"
            )))
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(node = inner.id, error = %e, "cannot encode an answer");
            return;
        }
    };
    if let Err(e) = inner.mux.respond(req.kind, req.from, req.id, answer).await {
        tracing::debug!(node = inner.id, to = req.from, error = %e, "answer not sent");
    }
}
