//! The in-process peer-link transport: every node of a room in one process,
//! linked by bounded tokio channels.
//!
//! Frames are encoded and decoded exactly as on a real link, so the codec
//! and its limits are exercised. Tests cut nodes off ([`InProcNet::isolate`])
//! and remove them ([`InProcNet::leave`]) to model crashes and partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::ports::{IncomingFrame, LinkError, PeerLink};
use crate::types::NodeId;

/// Frames a node's inbox holds before senders wait.
pub const INBOX_CAPACITY: usize = 4096;

#[derive(Default)]
struct Hub {
    inboxes: BTreeMap<NodeId, mpsc::Sender<IncomingFrame>>,
    isolated: BTreeSet<NodeId>,
}

/// A set of nodes that can reach each other in this process.
#[derive(Clone, Default)]
pub struct InProcNet {
    hub: Arc<Mutex<Hub>>,
}

impl InProcNet {
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects node `id`, replacing an earlier link of the same id; frames
    /// for it arrive on the returned receiver.
    pub fn join(&self, id: NodeId) -> (Arc<InProcLink>, mpsc::Receiver<IncomingFrame>) {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        self.hub().inboxes.insert(id, tx);
        (
            Arc::new(InProcLink {
                id,
                net: self.clone(),
            }),
            rx,
        )
    }

    /// Disconnects node `id` (a crash): frames to it fail as unreachable.
    pub fn leave(&self, id: NodeId) {
        self.hub().inboxes.remove(&id);
    }

    /// Cuts node `id` off from every other node, or heals it.
    pub fn isolate(&self, id: NodeId, isolated: bool) {
        let mut hub = self.hub();
        if isolated {
            hub.isolated.insert(id);
        } else {
            hub.isolated.remove(&id);
        }
    }
}

/// One node's end of an [`InProcNet`].
pub struct InProcLink {
    id: NodeId,
    net: InProcNet,
}

impl PeerLink for InProcLink {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
        let inbox = {
            let hub = self.net.hub();
            if hub.isolated.contains(&to) || hub.isolated.contains(&self.id) {
                None
            } else {
                hub.inboxes.get(&to).cloned()
            }
        };
        let from = self.id;
        Box::pin(async move {
            let inbox = inbox.ok_or(LinkError::Unreachable(to))?;
            inbox
                .send(IncomingFrame { peer: from, frame })
                .await
                .map_err(|_| LinkError::Closed(to))
        })
    }
}
