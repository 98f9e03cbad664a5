//! One link: a peer connection to one peer, its data channel, and the three
//! tasks that drive it.
//!
//! - The **supervisor** owns the link's lifetime: it takes the webrtc
//!   callbacks (relayed over an unbounded channel so the driver never waits on
//!   us), enforces the connect timeout, turns `PeerConnectionState::Failed`
//!   into [`MeshEvent::Failed`], and tears the connection down when the link
//!   ends for any reason.
//! - The **reader** polls the data channel. At `OnOpen` it checks the
//!   certificate the peer presented in the DTLS handshake, and only then marks
//!   the link open, starts the writer and decodes messages into frames.
//! - The **writer** drains the per-peer frame queue into the data channel,
//!   chunked, with pings every `ping_interval` and pongs squeezed in between
//!   chunks. At each ping it fails a link whose peer has sent nothing for
//!   `silence_timeout` (unless the reader is itself waiting to deliver a
//!   frame, when nothing is read and silence proves nothing). webrtc's send-buffer limit makes its `send` wait while SCTP holds
//!   `send_buffer_bytes`, so a slow peer backs up into its own queue only.
//!
//! A link ends exactly once ([`Inner::end_link`] under the link-table lock);
//! ending sets the stop signal every task watches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use skygit_consensus::ports::IncomingFrame;
use skygit_consensus::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, SettingEngineBuilder,
};

use crate::fingerprint::Fingerprint;
use crate::wire::{self, Inbound, Reassembler};
use crate::{Inner, LinkState, LinkStatus, MeshError, MeshEvent, CHANNEL_LABEL, MAX_FRAME_BYTES};

/// Which side of the offer/answer exchange this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Offerer,
    Answerer,
}

/// Pongs (and other control messages) waiting for the writer.
const CONTROL_QUEUE: usize = 64;
/// How long a graceful close waits for the peer to acknowledge the channel
/// close before the connection is cut.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(1);
/// How long teardown waits for the link's reader to notice the closed connection.
const READER_EXIT: Duration = Duration::from_secs(1);

/// What the webrtc callbacks tell the supervisor.
enum Ctl {
    State(RTCPeerConnectionState),
    Channel(Arc<dyn DataChannel>),
}

/// The webrtc event handler of one link. Runs on the webrtc driver, so it
/// only forwards: an unbounded send and a watch update never wait.
struct Handler {
    ctl: mpsc::UnboundedSender<Ctl>,
    gathered: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.ctl.send(Ctl::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.ctl.send(Ctl::Channel(data_channel));
    }
}

/// One peer connection to one peer. See the module docs.
pub(crate) struct Link {
    pub(crate) peer: NodeId,
    /// Unique per mesh; tells this link from earlier and later ones to the same peer.
    pub(crate) generation: u64,
    pub(crate) role: Role,
    /// The certificate the peer must present.
    pub(crate) expected: Fingerprint,
    pub(crate) pc: Arc<dyn PeerConnection>,
    /// The link's one data channel, once known.
    dc: OnceLock<Arc<dyn DataChannel>>,
    state: AtomicU8,
    was_open: AtomicBool,
    /// The offerer has applied an answer.
    pub(crate) answered: AtomicBool,
    pub(crate) queue_tx: mpsc::Sender<Vec<u8>>,
    control_tx: mpsc::Sender<BytesMut>,
    stop: watch::Sender<bool>,
    torn_down: watch::Sender<bool>,
    sent: AtomicU64,
    received: AtomicU64,
    /// Latest round trip in µs; `u64::MAX` until the first pong.
    rtt_us: AtomicU64,
    /// The selected candidate pair's path, once the link is open.
    path: Mutex<Option<&'static str>>,
    /// When the peer was last heard from (any message), on the ping clock.
    last_heard_us: AtomicU64,
    /// The reader is waiting for the frame consumer, so it reads nothing.
    delivering: AtomicBool,
    pub(crate) span: tracing::Span,
}

impl Link {
    /// Builds the peer connection (and, for the offerer, the data channel) and
    /// starts the supervisor. Returns the link and a watch that turns true when
    /// ICE gathering completes.
    pub(crate) async fn start(
        inner: &Arc<Inner>,
        peer: NodeId,
        generation: u64,
        role: Role,
        expected: Fingerprint,
    ) -> Result<(Arc<Link>, watch::Receiver<bool>), MeshError> {
        let cfg = &inner.cfg;
        let span = tracing::info_span!(parent: &inner.span, "link", peer, generation, ?role);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (gathered_tx, gathered_rx) = watch::channel(false);
        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(cfg.ice_disconnected_timeout),
                Some(cfg.ice_failed_timeout),
                None,
            )
            .build();
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![inner.certificate.clone()])
            .with_ice_servers(crate::ice::for_link(
                &cfg.ice_servers,
                cfg.turn_rest.as_ref(),
            ))
            .build();
        let addrs: Vec<SocketAddr> = cfg
            .bind_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(setting_engine)
            .with_handler(Arc::new(Handler {
                ctl: ctl_tx,
                gathered: gathered_tx,
            }))
            .with_runtime(inner.runtime.clone())
            .with_udp_addrs(addrs)
            .with_data_channel_send_buffer_limit(cfg.send_buffer_bytes)
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let offered_channel = match role {
            Role::Offerer => {
                let init = RTCDataChannelInit {
                    ordered: true,
                    max_retransmits: None,
                    max_packet_life_time: None,
                    ..Default::default()
                };
                match pc.create_data_channel(CHANNEL_LABEL, Some(init)).await {
                    Ok(dc) => Some(dc),
                    Err(e) => {
                        let _ = pc.close().await;
                        return Err(e.into());
                    }
                }
            }
            Role::Answerer => None,
        };

        let (queue_tx, queue_rx) = mpsc::channel(cfg.send_queue_frames);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let link = Arc::new(Link {
            peer,
            generation,
            role,
            expected,
            pc,
            dc: OnceLock::new(),
            state: AtomicU8::new(state_to_u8(LinkState::Connecting)),
            was_open: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            queue_tx,
            control_tx,
            stop: watch::channel(false).0,
            torn_down: watch::channel(false).0,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            rtt_us: AtomicU64::new(u64::MAX),
            path: Mutex::new(None),
            last_heard_us: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
            span: span.clone(),
        });
        tracing::debug!(parent: &span, "link created");
        tokio::spawn(
            supervise(
                inner.clone(),
                link.clone(),
                ctl_rx,
                (queue_rx, control_rx),
                offered_channel,
            )
            .instrument(span),
        );
        Ok((link, gathered_rx))
    }

    /// The local description once ICE gathering completed (or `gather_timeout` passed).
    pub(crate) async fn local_sdp(
        &self,
        mut gathered: watch::Receiver<bool>,
        gather_timeout: Duration,
    ) -> Result<String, MeshError> {
        match tokio::time::timeout(gather_timeout, gathered.wait_for(|done| *done)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(MeshError::WebRtc("peer connection went away".to_owned())),
            // A STUN or TURN server that does not answer costs this wait,
            // not the link: offer what was gathered.
            Err(_) => tracing::warn!(
                ?gather_timeout,
                "ICE gathering not finished; sending the candidates gathered so far"
            ),
        }
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| MeshError::WebRtc("no local description".to_owned()))?;
        Ok(desc.sdp)
    }

    pub(crate) fn state(&self) -> LinkState {
        state_from_u8(self.state.load(Ordering::Acquire))
    }

    /// Only under the link-table lock (see [`Inner::end_link`]).
    pub(crate) fn set_state(&self, state: LinkState) {
        if state == LinkState::Open {
            self.was_open.store(true, Ordering::Release);
        }
        self.state.store(state_to_u8(state), Ordering::Release);
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.state(), LinkState::Failed | LinkState::Closed)
    }

    /// The peer was heard from just now.
    fn heard(&self, inner: &Inner) {
        self.last_heard_us.store(inner.now_us(), Ordering::Relaxed);
    }

    /// How long the peer has been silent, if longer than the silence
    /// timeout and the reader is not itself holding messages back.
    fn silent_for(&self, inner: &Inner) -> Option<Duration> {
        if self.delivering.load(Ordering::Relaxed) {
            return None;
        }
        let silent = Duration::from_micros(
            inner
                .now_us()
                .saturating_sub(self.last_heard_us.load(Ordering::Relaxed)),
        );
        (silent >= inner.cfg.silence_timeout).then_some(silent)
    }

    /// Tells the link's tasks to tear it down.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the supervisor has closed the peer connection.
    pub(crate) async fn wait_torn_down(&self) {
        let mut rx = self.torn_down.subscribe();
        // Err means the supervisor is gone, which also means torn down.
        let _ = rx.wait_for(|done| *done).await;
    }

    pub(crate) fn channel(&self) -> Option<Arc<dyn DataChannel>> {
        self.dc.get().cloned()
    }

    pub(crate) fn status(&self) -> LinkStatus {
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        LinkStatus {
            peer: self.peer,
            state: self.state(),
            rtt_us: (rtt != u64::MAX).then_some(rtt),
            path: *self.path.lock().unwrap_or_else(|e| e.into_inner()),
            queued_frames: self.queue_tx.max_capacity() - self.queue_tx.capacity(),
            sent_frames: self.sent.load(Ordering::Relaxed),
            received_frames: self.received.load(Ordering::Relaxed),
        }
    }
}

fn state_to_u8(s: LinkState) -> u8 {
    match s {
        LinkState::Connecting => 0,
        LinkState::Open => 1,
        LinkState::Failed => 2,
        LinkState::Closed => 3,
    }
}

fn state_from_u8(b: u8) -> LinkState {
    match b {
        0 => LinkState::Connecting,
        1 => LinkState::Open,
        2 => LinkState::Failed,
        _ => LinkState::Closed,
    }
}

/// Resolves once the stop signal is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The returned guard is not `Send`; drop it here rather than in a select!.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The SHA-256 fingerprint of a DER certificate.
pub(crate) fn sha256_fingerprint(
    crypto: &dyn webrtc::peer_connection::crypto::RTCCryptoProvider,
    der: &[u8],
) -> Result<Fingerprint, String> {
    let digest = crypto
        .crypto()
        .hash(webrtc::peer_connection::crypto::HashAlgorithm::Sha256, der)
        .map_err(|e| format!("hashing certificate: {e}"))?;
    Fingerprint::from_digest(&digest).ok_or_else(|| "sha-256 digest is not 32 bytes".to_owned())
}

type WriterParts = (mpsc::Receiver<Vec<u8>>, mpsc::Receiver<BytesMut>);

/// The supervisor task. See the module docs.
async fn supervise(
    inner: Arc<Inner>,
    link: Arc<Link>,
    mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    writer_parts: WriterParts,
    offered_channel: Option<Arc<dyn DataChannel>>,
) {
    let deadline = tokio::time::Instant::now() + inner.cfg.connect_timeout;
    let mut stop_rx = link.stop.subscribe();
    let mut writer_parts = Some(writer_parts);
    let mut reader: Option<JoinHandle<()>> = None;
    if let Some(dc) = offered_channel {
        reader = adopt_channel(&inner, &link, dc, &mut writer_parts);
    }
    let mut ctl_open = true;
    loop {
        let connecting = link.state() == LinkState::Connecting;
        tokio::select! {
            _ = stopped(&mut stop_rx) => break,
            // `connecting` was read before this wait began: the link may have
            // opened since, which `connect_timed_out` checks under the lock.
            _ = tokio::time::sleep_until(deadline), if connecting => {
                if inner.connect_timed_out(&link) {
                    tracing::warn!("connect timeout");
                }
            }
            ctl = ctl_rx.recv(), if ctl_open => match ctl {
                None => ctl_open = false,
                Some(Ctl::State(state)) => {
                    tracing::debug!(?state, "peer connection state");
                    match state {
                        RTCPeerConnectionState::Failed => {
                            inner.end_link(&link, LinkState::Failed, Some(MeshEvent::Failed {
                                peer: link.peer,
                                reason: "peer connection failed (ICE/DTLS)".to_owned(),
                            }), false);
                        }
                        RTCPeerConnectionState::Closed => {
                            inner.end_link(&link, LinkState::Closed, Some(MeshEvent::Closed(link.peer)), false);
                        }
                        _ => {}
                    }
                }
                Some(Ctl::Channel(dc)) => {
                    let label = dc.label().await.unwrap_or_default();
                    if link.role == Role::Answerer && reader.is_none() && label == CHANNEL_LABEL {
                        reader = adopt_channel(&inner, &link, dc, &mut writer_parts);
                    } else {
                        tracing::warn!(%label, "closing an unexpected data channel");
                        let _ = dc.close().await;
                    }
                }
            }
        }
    }
    teardown(&link, reader).await;
}

/// Records `dc` as the link's channel and starts its reader.
fn adopt_channel(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    dc: Arc<dyn DataChannel>,
    writer_parts: &mut Option<WriterParts>,
) -> Option<JoinHandle<()>> {
    let parts = writer_parts.take()?;
    if link.dc.set(dc.clone()).is_err() {
        return None;
    }
    Some(tokio::spawn(
        read_loop(inner.clone(), link.clone(), dc, parts).instrument(link.span.clone()),
    ))
}

/// Signals `torn_down` when dropped, so waiters are released even if the
/// supervisor unwinds.
struct TornDownGuard<'a>(&'a Link);

impl Drop for TornDownGuard<'_> {
    fn drop(&mut self) {
        self.0.torn_down.send_replace(true);
    }
}

/// Closes the channel (gracefully, if the link had been open: the peer then
/// sees the close at once instead of waiting for ICE to fail), then the
/// connection, and signals `torn_down`.
async fn teardown(link: &Link, reader: Option<JoinHandle<()>>) {
    let _guard = TornDownGuard(link);
    let mut reader = reader;
    if let Some(dc) = link.channel() {
        let _ = dc.close().await;
        if link.was_open.load(Ordering::Acquire) {
            if let Some(r) = reader.as_mut() {
                if tokio::time::timeout(GRACEFUL_CLOSE, r).await.is_ok() {
                    // Finished: a JoinHandle must not be polled again.
                    reader = None;
                }
            }
        }
    }
    if let Err(e) = link.pc.close().await {
        tracing::debug!(error = %e, "closing the peer connection");
    }
    if let Some(mut r) = reader {
        if tokio::time::timeout(READER_EXIT, &mut r).await.is_err() {
            r.abort();
        }
    }
    tracing::debug!(state = ?link.state(), "link torn down");
}

/// Checks the certificate the peer presented in the DTLS handshake.
async fn verify_peer(inner: &Inner, link: &Link) -> Result<(), String> {
    let sctp = link
        .pc
        .sctp()
        .await
        .ok_or_else(|| "no SCTP transport".to_owned())?;
    let certs = sctp
        .transport()
        .get_remote_certificates()
        .await
        .map_err(|e| format!("reading the peer's certificate: {e}"))?;
    let der = certs
        .first()
        .ok_or_else(|| "the peer presented no certificate".to_owned())?;
    let presented = sha256_fingerprint(inner.crypto.as_ref(), der)?;
    if presented != link.expected {
        return Err(format!(
            "peer presented certificate {presented}, expected {}",
            link.expected
        ));
    }
    Ok(())
}

/// The reader task. See the module docs.
async fn read_loop(
    inner: Arc<Inner>,
    link: Arc<Link>,
    dc: Arc<dyn DataChannel>,
    parts: WriterParts,
) {
    let mut parts = Some(parts);
    let mut verified = false;
    let mut reassembler = Reassembler::new(MAX_FRAME_BYTES);
    let mut stop_rx = link.stop.subscribe();
    let peer = link.peer;
    while let Some(event) = dc.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                if verified || link.is_ended() {
                    continue;
                }
                match verify_peer(&inner, &link).await {
                    Ok(()) => {
                        verified = true;
                        if inner.mark_open(&link) {
                            let path = selected_path(&link).await;
                            *link.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
                            tracing::info!(path = path.unwrap_or("unknown"), "link open");
                            if let Some(parts) = parts.take() {
                                tokio::spawn(
                                    write_loop(inner.clone(), link.clone(), dc.clone(), parts)
                                        .instrument(link.span.clone()),
                                );
                            }
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "refusing peer");
                        inner.end_link(
                            &link,
                            LinkState::Failed,
                            Some(MeshEvent::Refused { peer, reason }),
                            false,
                        );
                    }
                }
            }
            DataChannelEvent::OnMessage(msg) => {
                if !verified || link.state() != LinkState::Open {
                    continue;
                }
                link.heard(&inner);
                let inbound = if msg.is_string {
                    Err(wire::WireError::Text)
                } else {
                    reassembler.push(&msg.data)
                };
                match inbound {
                    Ok(Inbound::Frame(frame)) => {
                        let delivery = inner.frames_tx.send(IncomingFrame { peer, frame });
                        link.delivering.store(true, Ordering::Relaxed);
                        let _delivered = Delivering(&inner, &link);
                        tokio::select! {
                            sent = delivery => {
                                if sent.is_ok() {
                                    link.received.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ = stopped(&mut stop_rx) => {}
                        }
                    }
                    Ok(Inbound::Partial) => {}
                    Ok(Inbound::Ping(stamp)) => {
                        // A dropped pong only costs one RTT sample.
                        let _ = link.control_tx.try_send(wire::encode_pong(stamp));
                    }
                    Ok(Inbound::Pong(stamp)) => {
                        let rtt = inner.now_us().saturating_sub(stamp);
                        link.rtt_us.store(rtt, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "peer misbehaved; dropping the link");
                        inner.end_link(
                            &link,
                            LinkState::Failed,
                            Some(MeshEvent::Misbehaved {
                                peer,
                                reason: e.to_string(),
                            }),
                            false,
                        );
                    }
                }
            }
            DataChannelEvent::OnClosing | DataChannelEvent::OnClose => {
                tracing::debug!(?event, "data channel closing");
                inner.end_link(
                    &link,
                    LinkState::Closed,
                    Some(MeshEvent::Closed(peer)),
                    false,
                );
                if matches!(event, DataChannelEvent::OnClose) {
                    break;
                }
            }
            DataChannelEvent::OnError => tracing::warn!("data channel error"),
            _ => {}
        }
    }
    // The channel's event stream ended: the connection is closed.
    inner.end_link(
        &link,
        LinkState::Closed,
        Some(MeshEvent::Closed(peer)),
        false,
    );
}

/// The writer task. See the module docs.
async fn write_loop(
    inner: Arc<Inner>,
    link: Arc<Link>,
    dc: Arc<dyn DataChannel>,
    (mut queue_rx, mut control_rx): WriterParts,
) {
    let mut stop_rx = link.stop.subscribe();
    let mut ping = tokio::time::interval(inner.cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The link just opened: the silence clock starts now.
    link.heard(&inner);
    let result: Result<(), String> = async {
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop_rx) => return Ok(()),
                Some(control) = control_rx.recv() => send(&dc, control).await?,
                _ = ping.tick() => {
                    if let Some(silent) = link.silent_for(&inner) {
                        return Err(format!("peer silent for {} ms", silent.as_millis()));
                    }
                    send(&dc, wire::encode_ping(inner.now_us())).await?;
                }
                frame = queue_rx.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    for message in wire::encode_frame(&frame) {
                        send(&dc, message).await?;
                        // Keep pongs timely while a large frame goes out.
                        while let Ok(control) = control_rx.try_recv() {
                            send(&dc, control).await?;
                        }
                    }
                    link.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    .await;
    if let Err(reason) = result {
        if !link.is_ended() {
            tracing::warn!(%reason, "link failed");
        }
        inner.end_link(
            &link,
            LinkState::Failed,
            Some(MeshEvent::Failed {
                peer: link.peer,
                reason,
            }),
            false,
        );
    }
}

/// Sends one message on the data channel.
async fn send(dc: &Arc<dyn DataChannel>, message: BytesMut) -> Result<(), String> {
    dc.send(message)
        .await
        .map_err(|e| format!("send failed: {e}"))
}

/// Clears [`Link::delivering`] when a delivery ends, however it ends.
struct Delivering<'a>(&'a Inner, &'a Link);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        // The messages that queued meanwhile are read next: count the peer
        // as heard so they are not mistaken for silence.
        self.1.heard(self.0);
        self.1.delivering.store(false, Ordering::Relaxed);
    }
}

/// The kind of path the link's selected candidate pair takes.
async fn selected_path(link: &Link) -> Option<&'static str> {
    let sctp = link.pc.sctp().await?;
    let pair = sctp
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok()??;
    Some(crate::ice::path_of(pair.local().typ, pair.remote().typ))
}
