//! skygit's real peer transport: one WebRTC data channel per pair of nodes.
//!
//! The nodes of a room form a full mesh of WebRTC peer connections, and raft
//! runs over it. [`Mesh`] is this node's end of that mesh: it implements the
//! consensus crate's [`PeerLink`] port over data channels, so the same actors
//! that the simulator drives over fake links run over real ones.
//!
//! # How a link comes up
//!
//! Signaling is someone else's job (the room's git repository). The mesh only
//! produces and consumes complete SDP (non-trickle ICE: gathering finishes
//! before the SDP is returned):
//!
//! 1. The offerer calls [`Mesh::offer`], which creates one ordered, reliable
//!    data channel labelled [`CHANNEL_LABEL`], and sends the SDP to the peer.
//! 2. The answerer calls [`Mesh::answer`] and sends its SDP back.
//! 3. The offerer calls [`Mesh::accept_answer`].
//!
//! Each side names the DTLS certificate fingerprint it expects from the other
//! (learnt out of band). An SDP declaring another fingerprint is refused before
//! it is applied; once the channel opens, the certificate the peer actually
//! presented in the DTLS handshake is hashed and compared again, and only then
//! is the link [`MeshEvent::Open`] and are its frames delivered.
//!
//! # Invariants
//!
//! - At most one link per peer; a new offer or answer replaces (closes) the
//!   old one, and a link's events carry no weight once it is replaced (each
//!   link has a generation, and only the current one may emit events).
//! - Frames are delivered only from links whose fingerprint check passed, in
//!   the order the peer sent them.
//! - Every queue is bounded: frames per peer ([`MeshConfig::send_queue_frames`]),
//!   the SCTP send buffer ([`MeshConfig::send_buffer_bytes`]), incoming frames
//!   ([`INCOMING_FRAMES`]) and a frame itself (`MAX_FRAME_BYTES`). The one
//!   exception is link events: they are few (a handful per connection attempt)
//!   and must never be lost or block a webrtc callback, so they pass through an
//!   unbounded relay into the bounded receiver handed out by [`Mesh::new`].
//! - A malformed message from one peer drops that link only.
//!
//! # Where to read next
//!
//! The private modules: `wire` is the message format, `link` the per-link tasks
//! (supervisor, reader, writer), `fingerprint` the certificate pinning and
//! `runtime` the socket-buffer tweak.

mod fingerprint;
pub mod ice;
mod link;
mod runtime;
mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use skygit_consensus::ports::{IncomingFrame, LinkError, PeerLink};
use skygit_consensus::NodeId;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use webrtc::peer_connection::{RTCCertificate, RTCSessionDescription};

use crate::fingerprint::Fingerprint;
use crate::link::{Link, Role};

pub use skygit_consensus::codec::MAX_FRAME_BYTES;

/// The label of the one data channel a link carries (mesh wire version 1).
pub const CHANNEL_LABEL: &str = "skygit/1";
/// Capacity of the incoming-frame receiver returned by [`Mesh::new`].
pub const INCOMING_FRAMES: usize = 4096;
/// Capacity of the event receiver returned by [`Mesh::new`].
pub const EVENT_QUEUE: usize = 1024;

/// Tunables of a [`Mesh`].
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// IPs to gather host candidates on (explicit IPs; a wildcard is
    /// every interface's address but loopback). Default [127.0.0.1].
    pub bind_ips: Vec<IpAddr>,
    /// STUN and TURN servers (server-reflexive and relay candidates).
    /// Default none.
    pub ice_servers: Vec<skygit_ports::ice::IceServer>,
    /// TURN REST-API credentials for TURN servers named without any.
    pub turn_rest: Option<ice::TurnRest>,
    /// Frames queued per peer before `send` waits (backpressure per peer). Default 1024.
    pub send_queue_frames: usize,
    /// How long to wait for ICE gathering to complete (non-trickle); a
    /// server that has not answered by then is left out of the offer or
    /// answer, not a failed link. Default 3 s.
    pub gather_timeout: Duration,
    /// How long from offer/answer until the channel must be open, else Failed. Default 20 s.
    pub connect_timeout: Duration,
    /// Interval of ping frames used for RTT and liveness. Default 1 s.
    pub ping_interval: Duration,
    /// An open link whose peer sent nothing (not even a ping) for this long
    /// is failed. A hung or killed peer is noticed in this time rather than
    /// after ICE's disconnected and failed timeouts (15 s). Must exceed
    /// `ping_interval`. Default 4 s.
    pub silence_timeout: Duration,
    /// Bytes a data channel may hold unacknowledged before the link's writer
    /// waits (webrtc's send-buffer limit). Default 4 MiB.
    pub send_buffer_bytes: usize,
    /// UDP socket send and receive buffer size requested from the kernel
    /// (capped by net.core.{r,w}mem_max; 0 leaves the default). Default 4 MiB.
    pub socket_buffer_bytes: usize,
    /// ICE reports Disconnected after this long without traffic. Default 5 s.
    pub ice_disconnected_timeout: Duration,
    /// ICE reports Failed this long after Disconnected; a killed peer is
    /// noticed after the sum of both. Default 10 s.
    pub ice_failed_timeout: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            bind_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ice_servers: Vec::new(),
            turn_rest: None,
            send_queue_frames: 1024,
            gather_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(20),
            ping_interval: Duration::from_secs(1),
            silence_timeout: Duration::from_secs(4),
            send_buffer_bytes: 4 * 1024 * 1024,
            socket_buffer_bytes: 4 * 1024 * 1024,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(10),
        }
    }
}

/// Something that happened to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// The data channel to `peer` is open and its DTLS fingerprint matched.
    Open(NodeId),
    /// The connection to `peer` failed (ICE/DTLS failure, connect timeout, peer
    /// killed: PeerConnectionState::Failed is the failure signal since a killed
    /// peer sends no close). The link is torn down; the caller may reconnect.
    Failed { peer: NodeId, reason: String },
    /// The link to `peer` was closed (by us or by the remote end).
    Closed(NodeId),
    /// The remote DTLS certificate fingerprint did not equal the expected one;
    /// the connection was closed.
    Refused { peer: NodeId, reason: String },
    /// The peer sent a malformed/oversized/wrong-version chunk; the link was dropped.
    Misbehaved { peer: NodeId, reason: String },
}

impl MeshEvent {
    /// The peer the event is about.
    pub fn peer(&self) -> NodeId {
        match self {
            MeshEvent::Open(p) | MeshEvent::Closed(p) => *p,
            MeshEvent::Failed { peer, .. }
            | MeshEvent::Refused { peer, .. }
            | MeshEvent::Misbehaved { peer, .. } => *peer,
        }
    }
}

/// Where a link is in its life. Refused and Misbehaved links end `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LinkState {
    Connecting,
    Open,
    Failed,
    Closed,
}

/// A snapshot of one link, for status pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub peer: NodeId,
    pub state: LinkState,
    pub rtt_us: Option<u64>,
    /// `host`, `srflx` or `relay`: the selected candidate pair's path.
    pub path: Option<&'static str>,
    pub queued_frames: usize,
    pub sent_frames: u64,
    pub received_frames: u64,
}

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("bad fingerprint: {0}")]
    BadFingerprint(String),
    #[error("peer {peer} refused: {reason}")]
    Refused { peer: NodeId, reason: String },
    #[error("no pending offer to node {0}")]
    NoSuchOffer(NodeId),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("the mesh is shut down")]
    Closed,
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

impl From<webrtc::error::Error> for MeshError {
    fn from(e: webrtc::error::Error) -> Self {
        MeshError::WebRtc(e.to_string())
    }
}

/// State shared by the [`Mesh`] handle and every link task.
pub(crate) struct Inner {
    pub(crate) local_id: NodeId,
    pub(crate) cfg: MeshConfig,
    pub(crate) certificate: RTCCertificate,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) crypto: Arc<dyn webrtc::peer_connection::crypto::RTCCryptoProvider>,
    pub(crate) runtime: Arc<dyn webrtc::runtime::Runtime>,
    /// The current link to each peer (including ended ones, until replaced or
    /// closed, so [`Mesh::status`] can show them).
    links: Mutex<BTreeMap<NodeId, Arc<Link>>>,
    next_generation: AtomicU64,
    pub(crate) frames_tx: mpsc::Sender<IncomingFrame>,
    events_tx: mpsc::UnboundedSender<MeshEvent>,
    shut: AtomicBool,
    /// Zero of the ping clock.
    epoch: Instant,
    /// What the last offer or answer carried.
    gathered: Mutex<Option<ice::Gathered>>,
    pub(crate) span: tracing::Span,
}

impl Inner {
    fn links(&self) -> MutexGuard<'_, BTreeMap<NodeId, Arc<Link>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/remove/read), so poisoning
        // is ignored.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Microseconds on the ping clock.
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn emit(&self, event: MeshEvent) {
        tracing::debug!(parent: &self.span, ?event, "mesh event");
        // The relay only goes away with the last `Inner`, so this cannot fail
        // while anyone holds `self`; an error would mean nobody listens.
        let _ = self.events_tx.send(event);
    }

    fn is_current(links: &BTreeMap<NodeId, Arc<Link>>, link: &Link) -> bool {
        links
            .get(&link.peer)
            .is_some_and(|l| l.generation == link.generation)
    }

    /// Refuses new links and ends every link, announcing each closed;
    /// returns them (their tasks are told to tear down).
    fn close_all(&self) -> Vec<Arc<Link>> {
        self.shut.store(true, Ordering::Release);
        let links: Vec<_> = self.links().values().cloned().collect();
        for link in &links {
            self.end_link(
                link,
                LinkState::Closed,
                Some(MeshEvent::Closed(link.peer)),
                true,
            );
        }
        links
    }

    /// Marks `link` open and announces it, unless it already ended. Returns
    /// whether it is open now.
    pub(crate) fn mark_open(&self, link: &Link) -> bool {
        let links = self.links();
        if link.state() != LinkState::Connecting {
            return false;
        }
        link.set_state(LinkState::Open);
        if Self::is_current(&links, link) {
            self.emit(MeshEvent::Open(link.peer));
        }
        true
    }

    /// Ends `link` in `state`, emitting `event` if the link is still the
    /// current one for its peer, and tells its tasks to tear it down. Does
    /// nothing for a link that already ended. With `remove`, the link also
    /// leaves the table.
    pub(crate) fn end_link(
        &self,
        link: &Link,
        state: LinkState,
        event: Option<MeshEvent>,
        remove: bool,
    ) -> bool {
        self.end_locked(self.links(), link, state, event, remove)
    }

    /// Fails `link` for not opening within the connect timeout, unless it
    /// opened meanwhile: checked under the table lock, like [`Self::mark_open`],
    /// so a link that opens at the deadline is never cut.
    pub(crate) fn connect_timed_out(&self, link: &Link) -> bool {
        let links = self.links();
        if link.state() != LinkState::Connecting {
            return false;
        }
        let reason = format!("channel not open within {:?}", self.cfg.connect_timeout);
        let event = MeshEvent::Failed {
            peer: link.peer,
            reason,
        };
        self.end_locked(links, link, LinkState::Failed, Some(event), false)
    }

    fn end_locked(
        &self,
        mut links: MutexGuard<'_, BTreeMap<NodeId, Arc<Link>>>,
        link: &Link,
        state: LinkState,
        event: Option<MeshEvent>,
        remove: bool,
    ) -> bool {
        debug_assert!(matches!(state, LinkState::Failed | LinkState::Closed));
        let current = Self::is_current(&links, link);
        if current && remove {
            links.remove(&link.peer);
        }
        if link.is_ended() {
            return false;
        }
        link.set_state(state);
        if current {
            if let Some(event) = event {
                self.emit(event);
            }
        }
        drop(links);
        link.stop();
        true
    }

    /// Makes `link` the current link to its peer and returns the one it replaced.
    fn install(&self, link: Arc<Link>) -> Option<Arc<Link>> {
        let old = self.links().insert(link.peer, link);
        if let Some(old) = &old {
            // Superseded: it ends silently, since its peer now has a new link.
            if !old.is_ended() {
                old.set_state(LinkState::Closed);
                old.stop();
            }
        }
        old
    }

    fn get(&self, peer: NodeId) -> Option<Arc<Link>> {
        self.links().get(&peer).cloned()
    }
}

/// This node's end of the room's WebRTC mesh. See the crate docs.
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("local_id", &self.inner.local_id)
            .field("fingerprint", &self.inner.fingerprint)
            .finish()
    }
}

type NewMesh = (
    Arc<Mesh>,
    mpsc::Receiver<IncomingFrame>,
    mpsc::Receiver<MeshEvent>,
);

impl Mesh {
    /// A mesh endpoint for node `local_id` with a fresh DTLS certificate.
    ///
    /// Incoming frames (reassembled, from open links only) arrive on the first
    /// receiver (bounded by [`INCOMING_FRAMES`]; a full receiver stalls the
    /// links' readers and so, through SCTP flow control, the senders). Link
    /// events arrive on the second, bounded by [`EVENT_QUEUE`] and fed by an
    /// unbounded relay, so no event is ever dropped and no webrtc callback
    /// ever blocks on a slow consumer.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn new(local_id: NodeId, cfg: MeshConfig) -> Result<NewMesh, MeshError> {
        if cfg.bind_ips.is_empty() {
            return Err(MeshError::Config("bind_ips is empty"));
        }
        if cfg.send_queue_frames == 0 {
            return Err(MeshError::Config("send_queue_frames is 0"));
        }
        if cfg.ping_interval.is_zero() {
            return Err(MeshError::Config("ping_interval is 0"));
        }
        if cfg.silence_timeout <= cfg.ping_interval {
            return Err(MeshError::Config(
                "silence_timeout must exceed ping_interval",
            ));
        }
        let span = tracing::info_span!("mesh", node = local_id);
        let crypto = webrtc::peer_connection::crypto::default_provider()
            .map_err(|e| MeshError::WebRtc(format!("no crypto provider: {e}")))?;
        let params =
            rtc::peer_connection::certificate::CertificateParams::new(vec!["skygit".to_owned()])
                .map_err(|e| MeshError::WebRtc(format!("certificate parameters: {e}")))?;
        let certificate = RTCCertificate::generate(
            crypto.crypto(),
            webrtc::peer_connection::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )?;
        let fingerprint = own_fingerprint(&certificate, crypto.as_ref())?;

        let (frames_tx, frames_rx) = mpsc::channel(INCOMING_FRAMES);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (relay_tx, mut relay_rx) = mpsc::unbounded_channel::<MeshEvent>();
        tokio::spawn(
            async move {
                while let Some(event) = relay_rx.recv().await {
                    if events_tx.send(event).await.is_err() {
                        // Nobody listens any more; keep draining so senders never notice.
                        continue;
                    }
                }
            }
            .instrument(span.clone()),
        );

        let runtime: Arc<dyn webrtc::runtime::Runtime> =
            Arc::new(runtime::MeshRuntime::new(cfg.socket_buffer_bytes));
        tracing::info!(parent: &span, %fingerprint, "mesh endpoint created");
        let inner = Arc::new(Inner {
            local_id,
            cfg,
            certificate,
            fingerprint,
            crypto,
            runtime,
            links: Mutex::new(BTreeMap::new()),
            next_generation: AtomicU64::new(1),
            frames_tx,
            events_tx: relay_tx,
            shut: AtomicBool::new(false),
            epoch: Instant::now(),
            gathered: Mutex::new(None),
            span,
        });
        Ok((Arc::new(Mesh { inner }), frames_rx, events_rx))
    }

    /// `link`'s local description once gathered (bounded), recorded for
    /// the status.
    async fn local_sdp(
        &self,
        link: &Link,
        gathered: watch::Receiver<bool>,
    ) -> Result<String, MeshError> {
        let sdp = link
            .local_sdp(gathered, self.inner.cfg.gather_timeout)
            .await?;
        self.gathered(&sdp);
        Ok(sdp)
    }

    /// Records what a local description carried; a TURN server that gave
    /// no relay candidate is logged.
    fn gathered(&self, sdp: &str) {
        let g = ice::Gathered::of_sdp(sdp);
        let cfg = &self.inner.cfg;
        if let Some(p) = ice::problem(&cfg.ice_servers, cfg.turn_rest.as_ref(), &g) {
            tracing::warn!(parent: &self.inner.span, host = g.host, srflx = g.srflx, "{p}");
        }
        *self
            .inner
            .gathered
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(g);
    }

    /// The STUN and TURN servers and what the last gathering found.
    pub fn ice_status(&self) -> ice::IceStatus {
        let cfg = &self.inner.cfg;
        let last = *self
            .inner
            .gathered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ice::IceStatus {
            servers: cfg
                .ice_servers
                .iter()
                .flat_map(|s| s.urls.iter().cloned())
                .collect(),
            problem: last.and_then(|g| ice::problem(&cfg.ice_servers, cfg.turn_rest.as_ref(), &g)),
            last_gathered: last,
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    /// This node's DTLS certificate fingerprint as "sha-256 AB:CD:..." (the
    /// form SDP's a=fingerprint uses).
    pub fn fingerprint(&self) -> String {
        self.inner.fingerprint.to_string()
    }

    fn check_open(&self) -> Result<(), MeshError> {
        if self.inner.shut.load(Ordering::Acquire) {
            Err(MeshError::Closed)
        } else {
            Ok(())
        }
    }

    /// Closes the current link to `peer` (silently: the caller is replacing
    /// it) and waits until it is torn down.
    async fn retire(&self, peer: NodeId) {
        let old = self.inner.links().remove(&peer);
        if let Some(old) = old {
            if !old.is_ended() {
                old.set_state(LinkState::Closed);
                old.stop();
            }
            old.wait_torn_down().await;
        }
    }

    /// Replaces any link to `peer` with a new one of the next generation
    /// in `role`; returns it with the watch that turns true when its ICE
    /// gathering completes.
    async fn new_link(
        &self,
        peer: NodeId,
        role: Role,
        expected: Fingerprint,
    ) -> Result<(Arc<Link>, watch::Receiver<bool>), MeshError> {
        self.retire(peer).await;
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let (link, gathered) = Link::start(&self.inner, peer, generation, role, expected).await?;
        if let Some(old) = self.inner.install(link.clone()) {
            old.wait_torn_down().await;
        }
        Ok((link, gathered))
    }

    /// Starts a connection to `peer` as the offerer (replacing any earlier link
    /// to it) and returns the complete offer SDP (ICE gathering finished:
    /// non-trickle). The peer's certificate must have fingerprint
    /// `expected_fingerprint`.
    pub async fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: &str,
    ) -> Result<String, MeshError> {
        self.check_open()?;
        let expected =
            Fingerprint::parse(expected_fingerprint).map_err(MeshError::BadFingerprint)?;
        let (link, gathered) = self.new_link(peer, Role::Offerer, expected).await?;
        let result = async {
            let offer = link.pc.create_offer(None).await?;
            link.pc.set_local_description(offer).await?;
            self.local_sdp(&link, gathered).await
        }
        .instrument(link.span.clone())
        .await;
        self.settle(&link, result).await
    }

    /// Answers `peer`'s offer (replacing any earlier link to it) and returns
    /// the complete answer SDP.
    ///
    /// An offer declaring another certificate than `expected_fingerprint` is
    /// refused before anything is applied: [`MeshEvent::Refused`] is emitted,
    /// an error returned, and any earlier link to `peer` is left alone.
    pub async fn answer(
        &self,
        peer: NodeId,
        offer_sdp: &str,
        expected_fingerprint: &str,
    ) -> Result<String, MeshError> {
        self.check_open()?;
        let expected =
            Fingerprint::parse(expected_fingerprint).map_err(MeshError::BadFingerprint)?;
        if let Err(reason) = fingerprint::check_sdp(offer_sdp, &expected) {
            tracing::warn!(parent: &self.inner.span, peer, %reason, "refusing offer");
            self.inner.emit(MeshEvent::Refused {
                peer,
                reason: reason.clone(),
            });
            return Err(MeshError::Refused { peer, reason });
        }
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned())
            .map_err(|e| MeshError::BadSdp(e.to_string()))?;
        let (link, gathered) = self.new_link(peer, Role::Answerer, expected).await?;
        let result = async {
            link.pc
                .set_remote_description(offer)
                .await
                .map_err(|e| MeshError::BadSdp(e.to_string()))?;
            let answer = link.pc.create_answer(None).await?;
            link.pc.set_local_description(answer).await?;
            self.local_sdp(&link, gathered).await
        }
        .instrument(link.span.clone())
        .await;
        self.settle(&link, result).await
    }

    /// On error, ends `link` silently (the caller gets the error) and waits
    /// for its teardown.
    async fn settle<T>(
        &self,
        link: &Arc<Link>,
        result: Result<T, MeshError>,
    ) -> Result<T, MeshError> {
        if let Err(e) = &result {
            tracing::warn!(parent: &link.span, error = %e, "link setup failed");
            self.inner.end_link(link, LinkState::Failed, None, true);
            link.wait_torn_down().await;
        }
        result
    }

    /// Completes this node's pending offer to `peer` with its answer.
    ///
    /// An answer declaring another certificate than the one expected at
    /// [`offer`](Self::offer) ends the link with [`MeshEvent::Refused`] and an
    /// error.
    pub async fn accept_answer(&self, peer: NodeId, answer_sdp: &str) -> Result<(), MeshError> {
        self.check_open()?;
        let link = self
            .inner
            .get(peer)
            .filter(|l| l.role == Role::Offerer && l.state() == LinkState::Connecting)
            .ok_or(MeshError::NoSuchOffer(peer))?;
        if link.answered.swap(true, Ordering::AcqRel) {
            return Err(MeshError::NoSuchOffer(peer));
        }
        if let Err(reason) = fingerprint::check_sdp(answer_sdp, &link.expected) {
            tracing::warn!(parent: &link.span, %reason, "refusing answer");
            self.inner.end_link(
                &link,
                LinkState::Failed,
                Some(MeshEvent::Refused {
                    peer,
                    reason: reason.clone(),
                }),
                false,
            );
            link.wait_torn_down().await;
            return Err(MeshError::Refused { peer, reason });
        }
        let result = async {
            let answer = RTCSessionDescription::answer(answer_sdp.to_owned())
                .map_err(|e| MeshError::BadSdp(e.to_string()))?;
            link.pc
                .set_remote_description(answer)
                .await
                .map_err(|e| MeshError::BadSdp(e.to_string()))
        }
        .instrument(link.span.clone())
        .await;
        self.settle(&link, result).await
    }

    /// Closes the link to `peer` (if any): emits [`MeshEvent::Closed`], closes
    /// the data channel so the peer learns of it at once, and waits for the
    /// teardown.
    pub async fn close(&self, peer: NodeId) {
        if let Some(link) = self.inner.get(peer) {
            self.inner.end_link(
                &link,
                LinkState::Closed,
                Some(MeshEvent::Closed(peer)),
                true,
            );
            link.wait_torn_down().await;
        }
    }

    /// Whether the link to `peer` is open (fingerprint verified).
    pub fn is_open(&self, peer: NodeId) -> bool {
        self.inner
            .get(peer)
            .is_some_and(|l| l.state() == LinkState::Open)
    }

    /// A snapshot of every link, sorted by peer id.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.inner.links().values().map(|l| l.status()).collect()
    }

    /// Closes every link and refuses new ones.
    pub async fn shutdown(&self) {
        for link in &self.inner.close_all() {
            link.wait_torn_down().await;
        }
    }

    /// Test hook: sends `bytes` as one raw data-channel message to `peer`,
    /// bypassing framing, so tests can play a misbehaving peer.
    #[doc(hidden)]
    pub async fn send_raw(&self, peer: NodeId, bytes: &[u8]) -> Result<(), MeshError> {
        let dc = self
            .inner
            .get(peer)
            .and_then(|l| l.channel())
            .ok_or(MeshError::NoSuchOffer(peer))?;
        dc.send(bytes::BytesMut::from(bytes)).await?;
        Ok(())
    }

    async fn send_frame(&self, to: NodeId, frame: Vec<u8>) -> Result<(), LinkError> {
        if frame.len() > MAX_FRAME_BYTES {
            // LinkError has no "too large"; the consensus codec never produces
            // such a frame, so this is a caller bug: refuse loudly.
            tracing::error!(
                parent: &self.inner.span,
                to,
                len = frame.len(),
                "refusing to send a frame larger than MAX_FRAME_BYTES"
            );
            return Err(LinkError::Unreachable(to));
        }
        let queue = self
            .inner
            .get(to)
            .filter(|l| l.state() == LinkState::Open)
            .map(|l| l.queue_tx.clone())
            .ok_or(LinkError::Unreachable(to))?;
        queue.send(frame).await.map_err(|_| LinkError::Closed(to))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Tasks hold `Inner`, not `Mesh`: stop them so a dropped mesh does not
        // keep its connections alive.
        self.inner.close_all();
    }
}

impl PeerLink for Mesh {
    fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    /// Queues `frame` for `to`: `Unreachable` without an open link (or for a
    /// frame over `MAX_FRAME_BYTES`), `Closed` if the link ends while waiting.
    /// Waits while that peer's queue is full; other peers are unaffected.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(self.send_frame(to, frame))
    }
}

fn own_fingerprint(
    certificate: &RTCCertificate,
    crypto: &dyn webrtc::peer_connection::crypto::RTCCryptoProvider,
) -> Result<Fingerprint, MeshError> {
    let der = certificate
        .dtls_certificate
        .certificate
        .first()
        .ok_or_else(|| MeshError::WebRtc("generated certificate has no DER".to_owned()))?;
    link::sha256_fingerprint(crypto, der.as_ref()).map_err(MeshError::WebRtc)
}
