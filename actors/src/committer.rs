//! The committer actor: on the leader only, writes the committed log into
//! the repository through [`RepoRemote`](crate::ports::RepoRemote).
//!
//! This issue wires it to leader changes and defines its messages. The
//! rendering, the flush schedule and the `synced` records come with the
//! committer issue; until then a flush answers
//! [`CommitterError::NotBuilt`] instead of pretending to write.

use actix::prelude::*;

use crate::consensus::LeaderChanged;

/// Why a flush did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitterError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("the repository committer is not built yet")]
    NotBuilt,
}

/// Why a flush was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Interval,
    BecameLeader,
    Shutdown,
    OnDemand,
}

/// Write the committed log prefix to the repository now.
#[derive(Message)]
#[rtype(result = "Result<u64, CommitterError>")]
pub struct Flush(pub FlushReason);

pub struct CommitterActor {
    leader: Option<LeaderChanged>,
    span: tracing::Span,
}

impl CommitterActor {
    pub fn new(room: &str, node: u64) -> Self {
        Self {
            leader: None,
            span: tracing::info_span!("committer", room, node),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.is_self)
    }
}

impl Actor for CommitterActor {
    type Context = Context<Self>;
}

impl Handler<LeaderChanged> for CommitterActor {
    type Result = ();
    fn handle(&mut self, msg: LeaderChanged, ctx: &mut Self::Context) {
        let was = self.is_leader();
        self.leader = Some(msg);
        if self.is_leader() && !was {
            let _e = self.span.enter();
            tracing::info!("became leader; committer active");
            ctx.notify(Flush(FlushReason::BecameLeader));
        }
    }
}

impl Handler<Flush> for CommitterActor {
    type Result = Result<u64, CommitterError>;
    fn handle(&mut self, msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let _e = self.span.enter();
        if !self.is_leader() {
            return Err(CommitterError::NotLeader);
        }
        tracing::debug!(reason = ?msg.0, "flush requested; repository committer not built yet");
        Err(CommitterError::NotBuilt)
    }
}
