//! Attachments' bytes between peers: asked for chunk by chunk, verified
//! against their hash, stored whole or not at all.
//!
//! The receiver drives the flow: it keeps at most [`WINDOW`] requests of
//! at most [`CHUNK_BYTES`] outstanding per transfer, so a peer's send queue
//! never holds more than about half a megabyte of one transfer and raft
//! and chat frames queued behind it wait milliseconds, not the length of
//! the file. A peer answers each request from its store, or says it has
//! not got the blob. A transfer that stalls, is refused or delivers bytes
//! that do not match the hash moves on to the next peer; the store only
//! ever holds verified blobs ([`super::store`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skygit_consensus::codec::{self, Envelope, EnvelopeKind};
use skygit_consensus::model::ContentHash;
use skygit_consensus::ports::{PeerLink, WallClock};
use skygit_consensus::NodeId;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::store::{BlobStore, StoreError};

/// Largest piece of a blob in one frame: with the envelope around it, a
/// frame stays inside one 64 KiB data-channel message.
pub const CHUNK_BYTES: usize = 60 * 1024;
/// Requests a transfer keeps outstanding with its peer.
pub const WINDOW: usize = 8;
/// How long a transfer waits for its peer's next chunk.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued for one peer's server before more are dropped (the
/// asker times out and moves on).
const SERVE_QUEUE: usize = 4 * WINDOW;
/// A peer's server stops after this long without a request.
const SERVE_IDLE: Duration = Duration::from_secs(60);
/// The largest blob fetched by hash alone until the room says otherwise.
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Most transfers this node runs at once; the others wait their turn.
const MAX_FETCHES: usize = 4;

/// One message of the attachment protocol (an [`EnvelopeKind::Media`]
/// envelope's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaFrame {
    /// Send `len` bytes of `hash` from `offset`.
    Want {
        req: u64,
        hash: ContentHash,
        offset: u64,
        len: u32,
    },
    /// Bytes of the blob a `Want` asked for, and the blob's whole size.
    Chunk {
        req: u64,
        offset: u64,
        total: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// This node has not got the blob.
    Missing { req: u64 },
    /// Call signalling ([`super::calls`]), never an attachment's.
    Call(Box<super::calls::CallFrame>),
}

impl MediaFrame {
    fn req(&self) -> u64 {
        match self {
            MediaFrame::Want { req, .. }
            | MediaFrame::Chunk { req, .. }
            | MediaFrame::Missing { req } => *req,
            MediaFrame::Call(_) => 0,
        }
    }
}

/// Why a blob could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no peer has it ({tried} asked)")]
    NotFound { tried: usize },
    #[error("cannot store it: {0}")]
    Store(String),
}

/// Why one peer did not deliver a blob.
#[derive(Debug, thiserror::Error)]
enum PeerFailure {
    #[error("it has not got it")]
    Missing,
    #[error("no chunk within {CHUNK_TIMEOUT:?}")]
    Timeout,
    #[error("cannot reach it: {0}")]
    Link(String),
    #[error("it answered out of turn: {0}")]
    Protocol(String),
    #[error("its bytes do not match: {0}")]
    BadBytes(StoreError),
    #[error("storing: {0}")]
    Store(StoreError),
}

/// Counts of what this node moved (for status and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransferStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub fetched: u64,
    pub failed_peers: u64,
    pub bad_bytes: u64,
    pub dropped_requests: u64,
}

type FetchResult = Option<Result<(), FetchError>>;
/// A chunk request waiting for a peer's server: (req, hash, offset, len).
type ServeRequest = (u64, ContentHash, u64, u32);

struct Session {
    peer: NodeId,
    tx: mpsc::Sender<MediaFrame>,
}

struct Inner {
    room: String,
    me: NodeId,
    link: Arc<dyn PeerLink>,
    clock: Arc<dyn WallClock>,
    store: BlobStore,
    peers: Mutex<BTreeSet<NodeId>>,
    next_req: AtomicU64,
    sessions: Mutex<HashMap<u64, Session>>,
    fetching: Mutex<HashMap<ContentHash, watch::Receiver<FetchResult>>>,
    servers: Mutex<HashMap<NodeId, mpsc::Sender<ServeRequest>>>,
    slots: tokio::sync::Semaphore,
    max_bytes: AtomicU64,
    stats: Mutex<TransferStats>,
    /// Where call frames go (the media actor).
    calls: std::sync::OnceLock<mpsc::Sender<(NodeId, super::calls::CallFrame)>>,
}

/// The attachment transfers of one room on one node.
#[derive(Clone)]
pub struct Transfers {
    inner: Arc<Inner>,
}

impl Transfers {
    pub fn new(
        room: &str,
        me: NodeId,
        link: Arc<dyn PeerLink>,
        clock: Arc<dyn WallClock>,
        store: BlobStore,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                room: room.to_owned(),
                me,
                link,
                clock,
                store,
                peers: Mutex::new(BTreeSet::new()),
                next_req: AtomicU64::new(1),
                sessions: Mutex::new(HashMap::new()),
                fetching: Mutex::new(HashMap::new()),
                servers: Mutex::new(HashMap::new()),
                slots: tokio::sync::Semaphore::new(MAX_FETCHES),
                max_bytes: AtomicU64::new(DEFAULT_MAX_BYTES),
                stats: Mutex::new(TransferStats::default()),
                calls: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The node's attachment store.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// What this node moved so far.
    pub fn stats(&self) -> TransferStats {
        *lock(&self.inner.stats)
    }

    /// A link to `peer` opened or closed.
    pub fn set_peer(&self, peer: NodeId, up: bool) {
        let mut peers = lock(&self.inner.peers);
        if up {
            peers.insert(peer);
        } else {
            peers.remove(&peer);
            lock(&self.inner.servers).remove(&peer);
        }
    }

    /// The peers a transfer may ask now.
    pub fn peers(&self) -> Vec<NodeId> {
        lock(&self.inner.peers).iter().copied().collect()
    }

    /// A media frame from `peer` (the demultiplexer checked that the
    /// envelope is from that peer and to this node).
    pub fn on_envelope(&self, peer: NodeId, env: &Envelope) {
        let frame: MediaFrame = match codec::from_bytes(&env.payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(peer, error = %e, "dropped a bad media frame");
                return;
            }
        };
        match frame {
            MediaFrame::Want {
                req,
                hash,
                offset,
                len,
            } => self.serve(peer, req, hash, offset, len),
            MediaFrame::Call(frame) => match self.inner.calls.get() {
                Some(tx) => {
                    if tx.try_send((peer, *frame)).is_err() {
                        tracing::warn!(peer, "dropped a call frame: the media actor is behind");
                    }
                }
                None => tracing::debug!(peer, "dropped a call frame: calls are not running"),
            },
            answer => {
                let sessions = lock(&self.inner.sessions);
                match sessions.get(&answer.req()) {
                    Some(s) if s.peer == peer => {
                        if s.tx.try_send(answer).is_err() {
                            tracing::debug!(peer, "dropped a chunk the transfer had no room for");
                        }
                    }
                    _ => tracing::debug!(peer, "dropped a chunk of no transfer of ours"),
                }
            }
        }
    }

    fn serve(&self, peer: NodeId, req: u64, hash: ContentHash, offset: u64, len: u32) {
        // A server that stopped (idle) is replaced before it is asked.
        let tx = {
            let mut servers = lock(&self.inner.servers);
            match servers.get(&peer) {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let s = self.start_server(peer);
                    servers.insert(peer, s.clone());
                    s
                }
            }
        };
        if tx.try_send((req, hash, offset, len)).is_err() {
            lock(&self.inner.stats).dropped_requests += 1;
            metrics::counter!("skygit_attachment_requests_dropped_total", "room" => self.inner.room.clone())
                .increment(1);
            tracing::debug!(
                peer,
                "dropped a chunk request: the peer asks faster than it reads"
            );
        }
    }

    fn start_server(&self, peer: NodeId) -> mpsc::Sender<ServeRequest> {
        let (tx, mut rx) = mpsc::channel::<ServeRequest>(SERVE_QUEUE);
        let this = self.clone();
        let span = tracing::debug_span!("media-serve", room = %self.inner.room, node = self.inner.me, peer);
        tokio::spawn(
            async move {
                loop {
                    let next = tokio::time::timeout(SERVE_IDLE, rx.recv()).await;
                    let Ok(Some((req, hash, offset, len))) = next else {
                        break;
                    };
                    let len = (len as usize).min(CHUNK_BYTES);
                    let answer = match this.inner.store.read(&hash, offset, len).await {
                        Ok((total, data)) => MediaFrame::Chunk {
                            req,
                            offset,
                            total,
                            data,
                        },
                        Err(_) => MediaFrame::Missing { req },
                    };
                    let sent = match &answer {
                        MediaFrame::Chunk { data, .. } => data.len() as u64,
                        _ => 0,
                    };
                    if this.send(peer, &answer).await.is_err() {
                        break;
                    }
                    lock(&this.inner.stats).bytes_sent += sent;
                    metrics::counter!("skygit_attachment_sent_bytes_total", "room" => this.inner.room.clone())
                        .increment(sent);
                }
                drop(rx);
                let mut servers = lock(&this.inner.servers);
                if servers.get(&peer).is_some_and(|s| s.is_closed()) {
                    servers.remove(&peer);
                }
            }
            .instrument(span),
        );
        tx
    }

    /// Sends call frames that arrive to `tx` from now on (once).
    pub fn route_calls(&self, tx: mpsc::Sender<(NodeId, super::calls::CallFrame)>) {
        if self.inner.calls.set(tx).is_err() {
            tracing::warn!("call frames already go elsewhere");
        }
    }

    /// Sends one media frame over the link to `peer`.
    pub async fn send(&self, peer: NodeId, frame: &MediaFrame) -> Result<(), String> {
        let payload = codec::to_bytes(frame).map_err(|e| e.to_string())?;
        let env = Envelope {
            kind: EnvelopeKind::Media,
            from: self.inner.me,
            to: peer,
            epoch: 0,
            timestamp: self.inner.clock.now_ms(),
            payload,
        };
        let bytes = codec::encode_frame(&env).map_err(|e| e.to_string())?;
        self.inner
            .link
            .send(peer, bytes)
            .await
            .map_err(|e| e.to_string())
    }

    /// Makes sure the store has the blob: fetched from the linked peers
    /// one after another until one delivers bytes that match. Concurrent
    /// calls for one blob share one transfer. Without its `size` (a
    /// download by hash alone), the first peer's answer tells it, bounded
    /// by the room's largest upload.
    pub async fn fetch(&self, hash: &ContentHash, size: Option<u64>) -> Result<(), FetchError> {
        match (self.inner.store.size(hash).await, size) {
            (Some(have), Some(want)) if have == want => return Ok(()),
            (Some(_), None) => return Ok(()),
            _ => {}
        }
        let (mine, mut rx) = {
            let mut fetching = lock(&self.inner.fetching);
            match fetching.get(hash) {
                Some(rx) => (None, rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    fetching.insert(hash.clone(), rx.clone());
                    (Some(tx), rx)
                }
            }
        };
        let Some(tx) = mine else {
            let done = rx
                .wait_for(Option::is_some)
                .await
                .map(|r| r.clone())
                .ok()
                .flatten();
            return done.unwrap_or(Err(FetchError::Store("the transfer was abandoned".into())));
        };
        let result = self.fetch_from_peers(hash, size).await;
        lock(&self.inner.fetching).remove(hash);
        let _ = tx.send(Some(result.clone()));
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("skygit_attachment_fetches_total", "room" => self.inner.room.clone(), "result" => label)
            .increment(1);
        result
    }

    async fn fetch_from_peers(
        &self,
        hash: &ContentHash,
        size: Option<u64>,
    ) -> Result<(), FetchError> {
        let _slot = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| FetchError::Store("shutting down".into()))?;
        let peers = self.peers();
        for &peer in &peers {
            match self.fetch_one(peer, hash, size).await {
                Ok(()) => {
                    lock(&self.inner.stats).fetched += 1;
                    tracing::info!(peer, %hash, ?size, "fetched an attachment");
                    return Ok(());
                }
                Err(PeerFailure::Store(e)) => return Err(FetchError::Store(e.to_string())),
                Err(e) => {
                    {
                        let mut st = lock(&self.inner.stats);
                        st.failed_peers += 1;
                        if matches!(e, PeerFailure::BadBytes(_)) {
                            st.bad_bytes += 1;
                        }
                    }
                    if matches!(e, PeerFailure::BadBytes(_)) {
                        metrics::counter!("skygit_attachment_bad_transfers_total", "room" => self.inner.room.clone())
                            .increment(1);
                        tracing::warn!(peer, %hash, error = %e, "a peer sent bytes that do not match the attachment; asking another");
                    } else {
                        tracing::debug!(peer, %hash, error = %e, "a peer did not deliver the attachment");
                    }
                }
            }
        }
        Err(FetchError::NotFound { tried: peers.len() })
    }

    async fn fetch_one(
        &self,
        peer: NodeId,
        hash: &ContentHash,
        known: Option<u64>,
    ) -> Result<(), PeerFailure> {
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(2 * WINDOW);
        lock(&self.inner.sessions).insert(req, Session { peer, tx });
        let _session = SessionGuard {
            inner: &self.inner,
            req,
        };
        let max = self.max_bytes();
        let mut w = self
            .inner
            .store
            .writer(known.unwrap_or(max))
            .await
            .map_err(PeerFailure::Store)?;
        // Unknown size: one chunk first, whose answer tells the size.
        let mut size = known;
        let mut next = 0u64;
        let mut outstanding: VecDeque<(u64, usize)> = VecDeque::new();
        loop {
            let end = size.unwrap_or(CHUNK_BYTES as u64);
            while outstanding.len() < WINDOW && next < end {
                let len = (end - next).min(CHUNK_BYTES as u64) as usize;
                let want = MediaFrame::Want {
                    req,
                    hash: hash.clone(),
                    offset: next,
                    len: len as u32,
                };
                self.send(peer, &want).await.map_err(PeerFailure::Link)?;
                outstanding.push_back((next, len));
                next += len as u64;
            }
            let Some(&(offset, len)) = outstanding.front() else {
                break;
            };
            let answer = tokio::time::timeout(CHUNK_TIMEOUT, rx.recv())
                .await
                .map_err(|_| PeerFailure::Timeout)?
                .ok_or(PeerFailure::Timeout)?;
            match answer {
                MediaFrame::Missing { .. } => return Err(PeerFailure::Missing),
                MediaFrame::Chunk {
                    offset: got,
                    total,
                    data,
                    ..
                } => {
                    match size {
                        Some(s) if s != total => {
                            return Err(PeerFailure::Protocol(format!(
                                "a blob of {total} bytes, not {s}"
                            )))
                        }
                        None if total > max || total == 0 => {
                            return Err(PeerFailure::Protocol(format!(
                                "a blob of {total} bytes (this room takes 1 to {max})"
                            )))
                        }
                        _ => {}
                    }
                    let want = (len as u64).min(total.saturating_sub(offset)) as usize;
                    if got != offset || data.len() != want {
                        return Err(PeerFailure::Protocol(format!(
                            "{} bytes at {got}, asked for {want} at {offset}",
                            data.len()
                        )));
                    }
                    if size.is_none() {
                        size = Some(total);
                        next = data.len() as u64;
                    }
                    w.write(&data).await.map_err(PeerFailure::Store)?;
                    outstanding.pop_front();
                    lock(&self.inner.stats).bytes_received += data.len() as u64;
                    metrics::counter!("skygit_attachment_received_bytes_total", "room" => self.inner.room.clone())
                        .increment(data.len() as u64);
                }
                MediaFrame::Want { .. } | MediaFrame::Call(_) => {
                    return Err(PeerFailure::Protocol("a request as an answer".into()))
                }
            }
        }
        let size = size.unwrap_or(0);
        match w.finish(Some((hash, size))).await {
            Ok(_) => Ok(()),
            Err(e @ (StoreError::HashMismatch { .. } | StoreError::SizeMismatch { .. })) => {
                Err(PeerFailure::BadBytes(e))
            }
            Err(e) => Err(PeerFailure::Store(e)),
        }
    }

    /// The largest blob a download by hash alone accepts.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes.load(Ordering::Relaxed)
    }

    /// Sets the room's largest upload (`config.json`'s `media.max_bytes`).
    pub fn set_max_bytes(&self, max: u64) {
        self.inner.max_bytes.store(max, Ordering::Relaxed);
    }
}

struct SessionGuard<'a> {
    inner: &'a Inner,
    req: u64,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.sessions).remove(&self.req);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
