//! The WebRTC mesh (`skygit-mesh`) as the actors' [`PeerTransport`] port.

use std::sync::Arc;

use futures::future::BoxFuture;
use skygit_actors::ports::{LinkInfo, PeerTransport, TransportEvent};
use skygit_consensus::NodeId;
use skygit_mesh::{LinkState, Mesh, MeshEvent};
use tokio::sync::mpsc;

/// Transport events queued for the mesh actor.
const EVENT_QUEUE: usize = 1024;

pub struct WebRtcTransport {
    pub mesh: Arc<Mesh>,
    /// Fault injection for the refusal test: publish a fingerprint other
    /// than the certificate's, as an impostor would.
    pub wrong_fingerprint: bool,
}

impl PeerTransport for WebRtcTransport {
    fn fingerprint(&self) -> String {
        let real = self.mesh.fingerprint();
        if !self.wrong_fingerprint {
            return real;
        }
        // Same form, other bytes.
        real.chars()
            .map(|c| match c {
                '0' => '1',
                '1' => '0',
                'A' | 'a' => 'B',
                'B' | 'b' => 'A',
                c => c,
            })
            .collect()
    }

    fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.mesh
                .offer(peer, &expected_fingerprint)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn answer(
        &self,
        peer: NodeId,
        offer: String,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.mesh
                .answer(peer, &offer, &expected_fingerprint)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn accept_answer(&self, peer: NodeId, answer: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.mesh
                .accept_answer(peer, &answer)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn close(&self, peer: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(self.mesh.close(peer))
    }

    fn links(&self) -> Vec<LinkInfo> {
        self.mesh
            .status()
            .into_iter()
            .map(|s| LinkInfo {
                peer: s.peer,
                open: s.state == LinkState::Open,
                state: format!("{:?}", s.state),
                rtt_us: s.rtt_us,
                queued_frames: s.queued_frames,
                path: s.path,
            })
            .collect()
    }
}

/// Translates the mesh's events into transport events.
pub fn forward_events(mut events: mpsc::Receiver<MeshEvent>) -> mpsc::Receiver<TransportEvent> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let e = match e {
                MeshEvent::Open(p) => TransportEvent::Open(p),
                MeshEvent::Failed { peer, reason } => TransportEvent::Failed { peer, reason },
                MeshEvent::Closed(p) => TransportEvent::Closed(p),
                MeshEvent::Refused { peer, reason } => TransportEvent::Refused { peer, reason },
                MeshEvent::Misbehaved { peer, reason } => {
                    TransportEvent::Misbehaved { peer, reason }
                }
            };
            if tx.send(e).await.is_err() {
                return;
            }
        }
    });
    rx
}
