//! The media actor: call signalling over the mesh and attachments.
//!
//! This issue defines its messages; calls and attachments (Git LFS or
//! external storage) come with their own issue, and until then every
//! request is refused with [`MediaError::NotBuilt`].

use actix::prelude::*;
use skygit_consensus::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("calls and attachments are not built yet")]
    NotBuilt,
}

/// Call signalling addressed to a peer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), MediaError>")]
pub enum CallSignal {
    Invite { to: NodeId, call_id: String },
    Accept { to: NodeId, call_id: String },
    Hangup { to: NodeId, call_id: String },
}

pub struct MediaActor {
    span: tracing::Span,
}

impl MediaActor {
    pub fn new(room: &str, node: NodeId) -> Self {
        Self {
            span: tracing::info_span!("media", room, node),
        }
    }
}

impl Actor for MediaActor {
    type Context = Context<Self>;
}

impl Handler<CallSignal> for MediaActor {
    type Result = Result<(), MediaError>;
    fn handle(&mut self, msg: CallSignal, _ctx: &mut Self::Context) -> Self::Result {
        let _e = self.span.enter();
        tracing::debug!(?msg, "call signalling is not built yet");
        Err(MediaError::NotBuilt)
    }
}
