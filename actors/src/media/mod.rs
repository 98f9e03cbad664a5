//! The media actor: attachments moved between peers, and calls.
//!
//! An attachment is content-addressed ([`store`]); raft carries only its
//! metadata inside the post. The bytes move over the mesh on demand
//! ([`transfer`]): a node that shows or stores a file it has not got asks
//! its peers, and the actor fetches small files eagerly as their posts
//! apply, so they are on every node before anyone asks.
//!
//! Calls ([`calls`]): the actor keeps each call's state in a pure core,
//! sends its frames over the mesh (media frames of their own, next to the
//! attachments' chunks), tells the API's event streams what changed and
//! what the peers' browsers signalled, and proposes the calls' history
//! entries through raft.

pub mod calls;
pub mod store;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use skygit_consensus::call::CallEntry;
use skygit_consensus::model::{Command, ConversationId, UserId};
use skygit_consensus::ports::WallClock;
use skygit_consensus::NodeId;
use skygit_storage::AppliedEvent;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::consensus::{ConsensusActor, Submit};
use crate::mesh::LinkChanged;
pub use calls::{Call, CallError, CallFrame, WireSignal};
pub use store::{BlobStore, StoreError};
pub use transfer::{FetchError, MediaFrame, TransferStats, Transfers};

/// Files up to this size are fetched as soon as their post applies.
pub const EAGER_FETCH_BYTES: u64 = 8 * 1024 * 1024;
/// Call notices an event stream may fall behind by before it is told it
/// lagged.
const CALL_NOTICES: usize = 256;
/// Call frames queued for the actor before more are dropped.
const CALL_FRAMES: usize = 256;

/// What happened to calls, for the API's event streams.
#[derive(Debug, Clone)]
pub enum CallNotice {
    /// The call's state now.
    Changed(Box<Call>),
    /// A signal for this node's browser.
    Signal {
        call: ulid::Ulid,
        from: NodeId,
        signal: WireSignal,
    },
}

/// A request of this node's user (through the API); answers the call's
/// state after it.
#[derive(Message, Debug)]
#[rtype(result = "Result<Call, CallError>")]
pub struct CallRequest(pub calls::Input);

/// The calls this node knows.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Call>")]
pub struct ListCalls;

/// Where the actor's calls reach the rest of the node.
pub struct CallPorts {
    pub user: UserId,
    pub consensus: Addr<ConsensusActor>,
    pub clock: Arc<dyn WallClock>,
    pub notices: broadcast::Sender<CallNotice>,
    /// Each linked peer's verified user, on a room that verifies
    /// identities: an invite must name its caller's node with that user.
    pub verified: Option<crate::mesh::identity::VerifiedPeers>,
}

/// A sender for [`CallNotice`]s, bounded.
pub fn call_notices() -> broadcast::Sender<CallNotice> {
    broadcast::channel(CALL_NOTICES).0
}

pub struct MediaActor {
    span: tracing::Span,
    room: String,
    transfers: Option<Transfers>,
    applied: Option<broadcast::Receiver<Arc<AppliedEvent>>>,
    calls: calls::Calls,
    ports: CallPorts,
    /// The monotonic clock the calls' timeouts run on.
    started: std::time::Instant,
}

impl MediaActor {
    /// `transfers` is `None` where a room keeps no attachments (the
    /// simulator); calls then have no way to their peers.
    pub fn new(
        room: &str,
        node: NodeId,
        transfers: Option<Transfers>,
        applied: broadcast::Receiver<Arc<AppliedEvent>>,
        ports: CallPorts,
    ) -> Self {
        let seq_base = u64::try_from(ports.clock.now_ms()).unwrap_or(0);
        Self {
            span: tracing::info_span!("media", room, node),
            room: room.to_owned(),
            applied: transfers.as_ref().map(|_| applied),
            transfers,
            calls: calls::Calls::new(node, seq_base),
            ports,
            started: std::time::Instant::now(),
        }
    }

    /// Feeds the call core and carries out what it answers.
    fn feed(&mut self, input: calls::Input) -> Result<(), CallError> {
        let now = calls::Now {
            mono: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            wall: self.ports.clock.now_ms(),
        };
        let actions = self.calls.on(now, input)?;
        let mut changed = Vec::new();
        for a in actions {
            match a {
                calls::Action::Send { via, frame } => self.send_frame(via, frame),
                calls::Action::Changed(id) => {
                    if !changed.contains(&id) {
                        changed.push(id);
                    }
                }
                calls::Action::Signal { call, from, signal } => {
                    // Nobody listening is fine: the browser re-asks.
                    let _ = self
                        .ports
                        .notices
                        .send(CallNotice::Signal { call, from, signal });
                }
                calls::Action::History {
                    conversation,
                    entry,
                    request,
                } => self.propose(conversation, entry, request),
                calls::Action::Refused { from, reason } => {
                    metrics::counter!("skygit_call_frames_refused_total", "room" => self.room.clone())
                        .increment(1);
                    tracing::warn!(from, reason, "refused a call frame");
                }
            }
        }
        for id in changed {
            if let Some(c) = self.calls.get(id) {
                let _ = self
                    .ports
                    .notices
                    .send(CallNotice::Changed(Box::new(c.clone())));
            }
        }
        Ok(())
    }

    fn send_frame(&self, via: NodeId, frame: CallFrame) {
        let Some(t) = self.transfers.clone() else {
            tracing::debug!(via, "no media frames here: a call frame is not sent");
            return;
        };
        // A frame of another node's is one this node relays.
        if frame.hops > 0 {
            metrics::counter!("skygit_call_frames_relayed_total", "room" => self.room.clone())
                .increment(1);
        } else {
            metrics::counter!("skygit_call_frames_sent_total", "room" => self.room.clone())
                .increment(1);
        }
        let task = async move {
            if let Err(e) = t.send(via, &MediaFrame::Call(Box::new(frame))).await {
                tracing::debug!(via, error = %e, "call frame not sent");
            }
        };
        actix::spawn(task.instrument(self.span.clone()));
    }

    /// Proposes a history entry; kept in the outbox like any post when no
    /// leader is reachable.
    fn propose(&self, conversation: ConversationId, entry: CallEntry, request: Option<ulid::Ulid>) {
        let submit = Submit {
            sender: self.ports.user.clone(),
            command: Command::Call {
                conversation,
                entry: entry.clone(),
            },
            id: request,
        };
        let consensus = self.ports.consensus.clone();
        let task = async move {
            match consensus.send(submit).await {
                Ok(Ok(_)) => {
                    tracing::debug!(call = %entry.call, event = ?entry.event, "call entry proposed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(call = %entry.call, error = %e, "call entry not proposed")
                }
                Err(e) => tracing::warn!(error = %e, "call entry not proposed: consensus is gone"),
            }
        };
        actix::spawn(task.instrument(self.span.clone()));
    }
}

impl Actor for MediaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            let _e = act.span.clone().entered();
            let _ = act.feed(calls::Input::Tick);
        });
        if let Some(t) = &self.transfers {
            let (tx, rx) = mpsc::channel(CALL_FRAMES);
            t.route_calls(tx);
            ctx.add_stream(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            }));
        }
        let (Some(transfers), Some(mut applied)) = (self.transfers.clone(), self.applied.take())
        else {
            return;
        };
        // Small files follow their posts onto this node.
        let task = async move {
            loop {
                let ev = match applied.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(
                            missed = n,
                            "eager fetching skipped posts; they are fetched on demand"
                        );
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(rec) = &ev.message else { continue };
                for a in &rec.message.attachments {
                    if a.size <= EAGER_FETCH_BYTES {
                        let t = transfers.clone();
                        let (hash, size) = (a.sha256.clone(), a.size);
                        tokio::spawn(
                            async move {
                                if let Err(e) = t.fetch(&hash, Some(size)).await {
                                    tracing::debug!(%hash, error = %e, "eager fetch did not succeed; fetched on demand");
                                }
                            }
                            .in_current_span(),
                        );
                    }
                }
            }
        };
        ctx.spawn(actix::fut::wrap_future(task.instrument(self.span.clone())));
    }
}

impl Handler<LinkChanged> for MediaActor {
    type Result = ();
    fn handle(&mut self, msg: LinkChanged, _ctx: &mut Self::Context) {
        if let Some(t) = &self.transfers {
            t.set_peer(msg.peer, msg.up);
        }
        let _ = self.feed(calls::Input::Link {
            peer: msg.peer,
            up: msg.up,
        });
    }
}

impl StreamHandler<(NodeId, CallFrame)> for MediaActor {
    fn handle(&mut self, (from, frame): (NodeId, CallFrame), _ctx: &mut Self::Context) {
        let _e = self.span.clone().entered();
        if let Some(reason) = self.impostor(from, &frame) {
            metrics::counter!("skygit_call_frames_refused_total", "room" => self.room.clone())
                .increment(1);
            tracing::warn!(from, reason, "refused a call frame");
            return;
        }
        let _ = self.feed(calls::Input::Frame { from, frame });
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl MediaActor {
    /// Why an invite straight from its caller's node is refused: on a
    /// room that verifies identities, it must name that node with the
    /// user the node proved to be (nobody rings as someone else).
    fn impostor(&self, from: NodeId, frame: &CallFrame) -> Option<&'static str> {
        let calls::CallBody::Invite { participants, .. } = &frame.body else {
            return None;
        };
        let verified = self.ports.verified.as_ref()?;
        if frame.hops != 0 {
            return None;
        }
        let proved = verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .cloned();
        let claimed = participants
            .iter()
            .find(|(n, _)| *n == from)
            .map(|(_, u)| u.as_str());
        match proved {
            Some(u) if Some(u.as_str()) == claimed => None,
            Some(_) => Some("an invite naming its caller as another user"),
            None => Some("an invite from a node with no verified identity"),
        }
    }
}

impl Handler<CallRequest> for MediaActor {
    type Result = Result<Call, CallError>;
    fn handle(&mut self, msg: CallRequest, _ctx: &mut Self::Context) -> Self::Result {
        let _e = self.span.clone().entered();
        let id = match &msg.0 {
            calls::Input::Start { call, .. } | calls::Input::Signal { call, .. } => *call,
            calls::Input::Accept(id)
            | calls::Input::Decline(id)
            | calls::Input::Hangup(id)
            | calls::Input::Recording(id, _)
            | calls::Input::Alive(id) => *id,
            calls::Input::Frame { .. } | calls::Input::Link { .. } | calls::Input::Tick => {
                tracing::error!(input = ?msg.0, "not a request of the user");
                return Err(CallError::Unknown(ulid::Ulid::nil()));
            }
        };
        self.feed(msg.0)?;
        self.calls.get(id).cloned().ok_or(CallError::Unknown(id))
    }
}

impl Handler<ListCalls> for MediaActor {
    type Result = Vec<Call>;
    fn handle(&mut self, _: ListCalls, _ctx: &mut Self::Context) -> Self::Result {
        self.calls.all().cloned().collect()
    }
}
