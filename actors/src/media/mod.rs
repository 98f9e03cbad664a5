//! The media actor: attachments moved between peers, and (with its own
//! issue) call signalling.
//!
//! An attachment is content-addressed ([`store`]); raft carries only its
//! metadata inside the post. The bytes move over the mesh on demand
//! ([`transfer`]): a node that shows or stores a file it has not got asks
//! its peers, and the actor fetches small files eagerly as their posts
//! apply, so they are on every node before anyone asks. Call signalling
//! is still refused with [`MediaError::NotBuilt`].

pub mod store;
pub mod transfer;

use std::sync::Arc;

use actix::prelude::*;
use skygit_consensus::NodeId;
use skygit_storage::AppliedEvent;
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::mesh::LinkChanged;
pub use store::{BlobStore, StoreError};
pub use transfer::{FetchError, MediaFrame, TransferStats, Transfers};

/// Files up to this size are fetched as soon as their post applies.
pub const EAGER_FETCH_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("calls are not built yet")]
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
    transfers: Option<Transfers>,
    applied: Option<broadcast::Receiver<Arc<AppliedEvent>>>,
}

impl MediaActor {
    /// `transfers` is `None` where a room keeps no attachments (the
    /// simulator).
    pub fn new(
        room: &str,
        node: NodeId,
        transfers: Option<Transfers>,
        applied: broadcast::Receiver<Arc<AppliedEvent>>,
    ) -> Self {
        Self {
            span: tracing::info_span!("media", room, node),
            applied: transfers.as_ref().map(|_| applied),
            transfers,
        }
    }
}

impl Actor for MediaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
    }
}

impl Handler<CallSignal> for MediaActor {
    type Result = Result<(), MediaError>;
    fn handle(&mut self, msg: CallSignal, _ctx: &mut Self::Context) -> Self::Result {
        let _e = self.span.enter();
        tracing::debug!(?msg, "call signalling is not built yet");
        Err(MediaError::NotBuilt)
    }
}
