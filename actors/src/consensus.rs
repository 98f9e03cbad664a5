//! The consensus actor: owns a room's raft replica, turns chat commands
//! into proposals, keeps what cannot be proposed now in the durable outbox,
//! and tells subscribers when the leader changes.
//!
//! Acknowledgement rule: a [`Propose`] answers `Committed` once the request
//! is applied on the leader, or `Queued` once it is durably in the outbox.
//! Anything else is an error and the caller still holds the request.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use openraft::async_runtime::WatchReceiver;
use skygit_consensus::model::{ApplyOutcome, ChatRequest, Command, UserId, ValidationError};
use skygit_consensus::replica::{ProposeError, Replica};
use skygit_consensus::NodeId;
use skygit_storage::{RoomStorage, StateMachine, StorageError};
use tracing::Instrument;

use crate::ports::IdGen;

/// How often the outbox is retried while it holds requests.
pub const OUTBOX_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Requests proposed per outbox round.
const OUTBOX_BATCH: usize = 256;

/// What a proposal achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposed {
    /// Applied by the room (or refused by the state machine, see outcome).
    Committed(ApplyOutcome),
    /// No leader was reachable; kept in the outbox and proposed again
    /// until it commits.
    Queued {
        outbox_len: usize,
        /// Why it could not be proposed now (no leader, the leader's link
        /// went down, a timeout).
        reason: String,
    },
}

/// Why a proposal was not accepted at all.
#[derive(Debug, thiserror::Error)]
pub enum ProposeFailure {
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
    #[error("the leader refused the request: {0}")]
    Refused(String),
    #[error("no leader is reachable and the outbox cannot take the request: {0}")]
    Outbox(StorageError),
    #[error("the consensus actor is gone")]
    Stopped,
    #[error("cannot sign the request: {0}")]
    Unsigned(String),
}

/// Propose a prepared request.
#[derive(Message)]
#[rtype(result = "Result<Proposed, ProposeFailure>")]
pub struct Propose(pub ChatRequest);

/// Make a request (fresh id, this node's clock) and propose it.
#[derive(Message)]
#[rtype(result = "Result<(ChatRequest, Proposed), ProposeFailure>")]
pub struct Submit {
    pub sender: UserId,
    pub command: Command,
    /// The request's id: `None` for a fresh one. A call's end has an id
    /// every participant's node derives alike, so it applies once.
    pub id: Option<ulid::Ulid>,
}

/// The room's leader changed as this node sees it.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LeaderChanged {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// True when this node is the leader.
    pub is_self: bool,
}

/// Receive [`LeaderChanged`] from now on (the current state is sent at once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeLeader(pub Recipient<LeaderChanged>);

/// This node's view of the room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsensusStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: String,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub outbox_len: usize,
}

#[derive(Message)]
#[rtype(result = "ConsensusStatus")]
pub struct GetStatus;

/// Propose what the outbox holds (also run by a timer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetryOutbox;

/// Shut raft down and stop the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The consensus actor of one room on one node.
pub struct ConsensusActor {
    replica: Arc<Replica<StateMachine>>,
    storage: RoomStorage,
    ids: IdGen,
    subscribers: Vec<Recipient<LeaderChanged>>,
    last_leader: LeaderChanged,
    retrying: bool,
    /// This node's user's key, on a room that verifies identities.
    signer: Option<Arc<skygit_ports::identity::SigningKey>>,
    span: tracing::Span,
}

impl ConsensusActor {
    pub fn new(
        replica: Arc<Replica<StateMachine>>,
        storage: RoomStorage,
        ids: IdGen,
        room: &str,
    ) -> Self {
        let span = tracing::info_span!("consensus", room, node = replica.id());
        Self {
            last_leader: LeaderChanged {
                leader: None,
                term: 0,
                is_self: false,
            },
            replica,
            storage,
            ids,
            subscribers: Vec::new(),
            retrying: false,
            signer: None,
            span,
        }
    }

    /// Signs every post, edit, delete and conversation this node submits
    /// with its user's key (a room that verifies identities).
    pub fn signing(mut self, key: Arc<skygit_ports::identity::SigningKey>) -> Self {
        self.signer = Some(key);
        self
    }
}

/// Proposes `req`; on a leaderless room puts it in the outbox.
async fn propose(
    replica: Arc<Replica<StateMachine>>,
    storage: RoomStorage,
    req: ChatRequest,
) -> Result<Proposed, ProposeFailure> {
    match replica.propose(req.clone()).await {
        Ok(outcome) => Ok(Proposed::Committed(outcome)),
        Err(ProposeError::Invalid(e)) => Err(ProposeFailure::Invalid(e)),
        Err(ProposeError::Refused(reason)) => Err(ProposeFailure::Refused(reason)),
        Err(e) => {
            tracing::debug!(request = %req.id, error = %e, "proposal queued in the outbox");
            storage
                .outbox
                .put(&req)
                .await
                .map_err(ProposeFailure::Outbox)?;
            Ok(Proposed::Queued {
                outbox_len: storage.outbox.len(),
                reason: e.to_string(),
            })
        }
    }
}

impl Actor for ConsensusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _e = self.span.enter();
        tracing::info!("consensus actor started");
        // Leader changes come from raft's metrics channel, of each raft
        // group the node runs in turn (a re-formed room starts a new one).
        let replica = self.replica.clone();
        let me = self.replica.id();
        let addr = ctx.address();
        let watch = async move {
            let mut groups = replica.group_changes();
            // Metrics change with every applied entry; only a new leader or
            // term is news. Start from the actor's initial view (no leader).
            let mut last = Some((None, 0));
            loop {
                groups.borrow_and_update();
                let mut metrics = replica.raft().metrics();
                loop {
                    let seen = {
                        let m = metrics.borrow_watched();
                        (m.current_leader, m.current_term)
                    };
                    if last != Some(seen) {
                        last = Some(seen);
                        let (leader, term) = seen;
                        addr.do_send(LeaderChanged {
                            leader,
                            term,
                            is_self: leader == Some(me),
                        });
                    }
                    if metrics.changed().await.is_err() {
                        break;
                    }
                }
                // This group's raft stopped: no leader until the next.
                if last != Some((None, 0)) {
                    last = Some((None, 0));
                    addr.do_send(LeaderChanged {
                        leader: None,
                        term: 0,
                        is_self: false,
                    });
                }
                if groups.changed().await.is_err() {
                    return;
                }
            }
        };
        ctx.spawn(watch.instrument(self.span.clone()).into_actor(self));
        ctx.run_interval(OUTBOX_RETRY_INTERVAL, |_, ctx| ctx.notify(RetryOutbox));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _e = self.span.enter();
        tracing::info!("consensus actor stopped");
    }
}

impl Handler<LeaderChanged> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: LeaderChanged, ctx: &mut Self::Context) {
        let _e = self.span.enter();
        tracing::info!(leader = ?msg.leader, term = msg.term, "leader changed");
        self.last_leader = msg.clone();
        // A busy subscriber still gets every change; only a closed one is dropped.
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(msg.clone());
        }
        if msg.leader.is_some() {
            ctx.notify(RetryOutbox);
        }
    }
}

impl Handler<SubscribeLeader> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: SubscribeLeader, _ctx: &mut Self::Context) {
        msg.0.do_send(self.last_leader.clone());
        self.subscribers.push(msg.0);
    }
}

/// A lost link fails the calls still waiting on that peer, so a post
/// forwarded to a leader that just died goes to the outbox at once instead
/// of after the forward timeout.
impl Handler<crate::mesh::LinkChanged> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, msg: crate::mesh::LinkChanged, _ctx: &mut Self::Context) {
        if !msg.up {
            self.replica.link_down(msg.peer);
        }
    }
}

impl Handler<Propose> for ConsensusActor {
    type Result = ResponseFuture<Result<Proposed, ProposeFailure>>;

    fn handle(&mut self, msg: Propose, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!(parent: &self.span, "propose", request = %msg.0.id);
        Box::pin(propose(self.replica.clone(), self.storage.clone(), msg.0).instrument(span))
    }
}

/// Signs `req` with this node's key. A key held by ssh-agent answers over
/// a socket (a forwarded agent over the network, or one that asks its user
/// to confirm), so that signature is made on a blocking thread, never on
/// the arbiter that runs every actor of the node.
async fn sign(
    key: Arc<skygit_ports::identity::SigningKey>,
    mut req: ChatRequest,
) -> Result<ChatRequest, ProposeFailure> {
    if !key.in_agent() {
        key.sign_request(&mut req)
            .map_err(|e| ProposeFailure::Unsigned(e.to_string()))?;
        return Ok(req);
    }
    tokio::task::spawn_blocking(move || key.sign_request(&mut req).map(|()| req))
        .await
        .map_err(|e| ProposeFailure::Unsigned(e.to_string()))?
        .map_err(|e| ProposeFailure::Unsigned(e.to_string()))
}

impl Handler<Submit> for ConsensusActor {
    type Result = ResponseFuture<Result<(ChatRequest, Proposed), ProposeFailure>>;

    fn handle(&mut self, msg: Submit, _ctx: &mut Self::Context) -> Self::Result {
        let mut req = ChatRequest {
            id: msg.id.unwrap_or_else(|| self.ids.next_id()),
            sender: msg.sender,
            at: self.ids.now_ms(),
            command: msg.command,
            signature: None,
        };
        let span = tracing::debug_span!(parent: &self.span, "submit", request = %req.id);
        let (replica, storage) = (self.replica.clone(), self.storage.clone());
        let signer = self.signer.clone();
        Box::pin(
            async move {
                if let Some(key) = signer {
                    req = sign(key, req).await?;
                }
                let p = propose(replica, storage, req.clone()).await?;
                Ok((req, p))
            }
            .instrument(span),
        )
    }
}

impl Handler<RetryOutbox> for ConsensusActor {
    type Result = ();

    fn handle(&mut self, _: RetryOutbox, ctx: &mut Self::Context) {
        if self.retrying || self.storage.outbox.is_empty() {
            return;
        }
        self.retrying = true;
        let (replica, storage) = (self.replica.clone(), self.storage.clone());
        let span = tracing::debug_span!(parent: &self.span, "outbox_retry");
        let round = async move {
            let pending = match storage.outbox.list(OUTBOX_BATCH) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            for req in pending {
                match replica.propose(req.clone()).await {
                    Ok(ApplyOutcome::Rejected { reason, .. }) => {
                        tracing::warn!(request = %req.id, %reason, "queued request refused by the room");
                    }
                    Ok(_) => {}
                    Err(e @ (ProposeError::Invalid(_) | ProposeError::Refused(_))) => {
                        // It can never be accepted; keeping it would block the outbox.
                        tracing::error!(request = %req.id, error = %e, "dropping an invalid request from the outbox");
                    }
                    Err(ProposeError::NoLeader | ProposeError::Forward { .. } | ProposeError::Timeout(_)) => return,
                    Err(e) => {
                        tracing::warn!(request = %req.id, error = %e, "outbox retry failed");
                        return;
                    }
                }
                // The room answered for good: forget the request.
                if let Err(e) = storage.outbox.remove(req.id) {
                    tracing::error!(request = %req.id, error = %e, "cannot clear outbox entry");
                }
            }
        }
        .instrument(span);
        ctx.spawn(round.into_actor(self).map(|_, act, _| act.retrying = false));
    }
}

impl Handler<GetStatus> for ConsensusActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        let m = self.replica.metrics();
        MessageResult(ConsensusStatus {
            node_id: self.replica.id(),
            leader: m.current_leader,
            term: m.current_term,
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            outbox_len: self.storage.outbox.len(),
        })
    }
}

impl Handler<Shutdown> for ConsensusActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let replica = self.replica.clone();
        Box::pin(
            async move { replica.shutdown().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        )
    }
}
