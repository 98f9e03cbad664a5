//! The raft network over peer links: openraft's `RaftNetworkV2` on the
//! client side, [`RaftService`] on the serving side.
//!
//! Every raft RPC is one [`RpcMux`] call of kind [`EnvelopeKind::Raft`].
//! Snapshots are sent as a sequence of [`SnapshotChunk`] calls, each framed
//! into at most [`MAX_CHUNK_FRAME_BYTES`] (the WebRTC data-channel message
//! limit) and acknowledged before the next is sent; the last chunk installs
//! the snapshot. The receiver reassembles at most [`MAX_SNAPSHOT_BYTES`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, RPCTypes, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Envelope, EnvelopeKind};
use crate::rpc::{RpcError, RpcFrame, RpcMux};
use crate::types::{
    Entry, LogId, NodeId, Raft, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote,
};

/// Largest frame a snapshot chunk may take on the wire.
pub const MAX_CHUNK_FRAME_BYTES: usize = 64 * 1024;
/// Largest snapshot a node accepts from a peer.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// A half-received snapshot idle this long is dropped.
pub const SNAPSHOT_ASSEMBLY_IDLE: Duration = Duration::from_secs(60);

/// Most entries an AppendEntries may carry on the wire: four times what
/// this node's raft sends, checked while decoding so a frame of tiny
/// entries cannot inflate into a huge allocation.
pub const MAX_WIRE_ENTRIES: usize = 4 * crate::config::MAX_PAYLOAD_ENTRIES as usize;

/// AppendEntries as it travels: openraft's fields, with the entry count
/// bounded by [`MAX_WIRE_ENTRIES`] during decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendWire {
    pub vote: Vote,
    pub prev_log_id: Option<LogId>,
    #[serde(deserialize_with = "bounded_entries")]
    pub entries: Vec<Entry>,
    pub leader_commit: Option<LogId>,
}

impl From<AppendEntriesRequest<TypeConfig>> for AppendWire {
    fn from(r: AppendEntriesRequest<TypeConfig>) -> Self {
        Self {
            vote: r.vote,
            prev_log_id: r.prev_log_id,
            entries: r.entries,
            leader_commit: r.leader_commit,
        }
    }
}

impl From<AppendWire> for AppendEntriesRequest<TypeConfig> {
    fn from(w: AppendWire) -> Self {
        Self {
            vote: w.vote,
            prev_log_id: w.prev_log_id,
            entries: w.entries,
            leader_commit: w.leader_commit,
        }
    }
}

fn bounded_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<Entry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {MAX_WIRE_ENTRIES} log entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Entry>, A::Error> {
            let n = seq.size_hint().unwrap_or(0);
            if n > MAX_WIRE_ENTRIES {
                return Err(serde::de::Error::invalid_length(n, &self));
            }
            let mut out = Vec::with_capacity(n);
            while let Some(e) = seq.next_element()? {
                if out.len() == MAX_WIRE_ENTRIES {
                    return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
}

/// A raft RPC.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(AppendWire),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    SnapshotChunk(SnapshotChunk),
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    ChunkAccepted,
    SnapshotInstalled(SnapshotResponse<TypeConfig>),
    /// The serving node could not handle the request.
    Error(String),
}

/// One piece of a snapshot. Pieces are sent in order, one at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub total: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Splits a snapshot into chunks whose frames (from `from` to `to`) each fit
/// in [`MAX_CHUNK_FRAME_BYTES`].
pub fn snapshot_chunks(
    vote: &Vote,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<Vec<SnapshotChunk>, codec::CodecError> {
    let total = data.len() as u64;
    let empty = SnapshotChunk {
        vote: *vote,
        meta: meta.clone(),
        offset: total,
        total,
        data: Vec::new(),
    };
    // Frame overhead of a chunk with no data, with room for the largest
    // varints of the ids, timestamp and lengths that wrap it.
    let overhead = frame_len(&RaftRequest::SnapshotChunk(empty))? + 64;
    let budget = MAX_CHUNK_FRAME_BYTES.saturating_sub(overhead).max(1);
    let mut chunks = Vec::with_capacity(data.len() / budget + 1);
    let mut offset = 0usize;
    loop {
        let end = (offset + budget).min(data.len());
        chunks.push(SnapshotChunk {
            vote: *vote,
            meta: meta.clone(),
            offset: offset as u64,
            total,
            data: data[offset..end].to_vec(),
        });
        offset = end;
        if offset >= data.len() {
            return Ok(chunks);
        }
    }
}

/// The size of the frame that carries `req` as a call (worst-case ids).
pub fn frame_len(req: &RaftRequest) -> Result<usize, codec::CodecError> {
    let rpc = RpcFrame {
        id: u64::MAX,
        response: false,
        body: codec::to_bytes(req)?,
    };
    Ok(codec::encode_frame(&Envelope {
        kind: EnvelopeKind::Raft,
        from: u64::MAX,
        to: u64::MAX,
        epoch: u64::MAX,
        timestamp: i64::MIN,
        payload: codec::to_bytes(&rpc)?,
    })?
    .len())
}

/// Creates [`PeerNetwork`] clients for openraft.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    mux: Arc<RpcMux>,
}

impl PeerNetworkFactory {
    pub fn new(mux: Arc<RpcMux>) -> Self {
        Self { mux }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            mux: self.mux.clone(),
            target,
        }
    }
}

/// openraft's client to one peer.
pub struct PeerNetwork {
    mux: Arc<RpcMux>,
    target: NodeId,
}

fn rpc_error(e: RpcError, action: RPCTypes, id: NodeId, target: NodeId) -> RPCError<TypeConfig> {
    match e {
        RpcError::Timeout { after, .. } => RPCError::Timeout(Timeout {
            action,
            id,
            target,
            timeout: after,
        }),
        RpcError::Link(e) => RPCError::Unreachable(Unreachable::new(&e)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn unexpected(got: &RaftResponse) -> RPCError<TypeConfig> {
    let msg = match got {
        RaftResponse::Error(e) => format!("remote error: {e}"),
        other => format!("unexpected answer: {other:?}"),
    };
    RPCError::Network(NetworkError::from_string(msg))
}

impl PeerNetwork {
    async fn call(
        &self,
        req: &RaftRequest,
        timeout: Duration,
        action: RPCTypes,
    ) -> Result<RaftResponse, RPCError<TypeConfig>> {
        let local = self.mux.local_id();
        let body = codec::to_bytes(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .mux
            .call(EnvelopeKind::Raft, self.target, body, timeout)
            .await
            .map_err(|e| rpc_error(e, action, local, self.target))?;
        codec::from_bytes(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl PeerNetwork {
    async fn call_vote(
        &self,
        req: RaftRequest,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&req, option.hard_ttl(), RPCTypes::Vote).await? {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                &RaftRequest::Append(rpc.into()),
                option.hard_ttl(),
                RPCTypes::AppendEntries,
            )
            .await?
        {
            RaftResponse::Append(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call_vote(RaftRequest::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call_vote(RaftRequest::PreVote(rpc), option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let chunks = snapshot_chunks(&vote, &snapshot.meta, &data)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let count = chunks.len();
        tracing::debug!(
            target_node = self.target,
            bytes = data.len(),
            chunks = count,
            "sending snapshot"
        );
        let mut cancel = std::pin::pin!(cancel);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let req = RaftRequest::SnapshotChunk(chunk);
            let call = self.call(&req, option.hard_ttl(), RPCTypes::InstallSnapshot);
            let answer = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                answer = call => answer,
            };
            let answer = answer.map_err(|e| match e {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => {
                    StreamingError::Network(NetworkError::from_string(r.to_string()))
                }
            })?;
            match answer {
                RaftResponse::ChunkAccepted if i + 1 < count => {}
                RaftResponse::SnapshotInstalled(r) if i + 1 == count => return Ok(r),
                other => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "snapshot chunk {i}/{count}: unexpected answer {other:?}"
                    ))))
                }
            }
        }
        Err(StreamingError::Network(NetworkError::from_string(
            "snapshot had no chunks",
        )))
    }
}

/// A snapshot being received from one peer.
struct Assembly {
    meta: SnapshotMeta,
    total: u64,
    data: Vec<u8>,
    last_chunk: tokio::time::Instant,
}

/// Serves raft RPCs that arrive over peer links.
pub struct RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    raft: Raft<SM>,
    assemblies: Mutex<BTreeMap<NodeId, Assembly>>,
}

impl<SM> RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    pub fn new(raft: Raft<SM>) -> Self {
        Self {
            raft,
            assemblies: Mutex::new(BTreeMap::new()),
        }
    }

    /// Handles one encoded [`RaftRequest`] from `from`; the answer is always
    /// an encodable [`RaftResponse`], errors included.
    pub async fn handle(&self, from: NodeId, body: &[u8]) -> RaftResponse {
        let req: RaftRequest = match codec::from_bytes(body) {
            Ok(r) => r,
            Err(e) => return RaftResponse::Error(format!("bad raft request: {e}")),
        };
        match req {
            RaftRequest::Append(r) => match self.raft.append_entries(r.into()).await {
                Ok(a) => RaftResponse::Append(a),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::Vote(r) => match self.raft.vote(r).await {
                Ok(v) => RaftResponse::Vote(v),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::PreVote(r) => match self.raft.pre_vote(r).await {
                Ok(v) => RaftResponse::Vote(v),
                Err(e) => RaftResponse::Error(e.to_string()),
            },
            RaftRequest::SnapshotChunk(c) => self.on_chunk(from, c).await,
        }
    }

    async fn on_chunk(&self, from: NodeId, chunk: SnapshotChunk) -> RaftResponse {
        let done = {
            let mut all = self.assemblies.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            // A sender that vanished mid-transfer must not pin its buffer.
            all.retain(|_, a| now.duration_since(a.last_chunk) < SNAPSHOT_ASSEMBLY_IDLE);
            if chunk.total > MAX_SNAPSHOT_BYTES {
                all.remove(&from);
                return RaftResponse::Error(format!(
                    "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                    chunk.total
                ));
            }
            if chunk.offset == 0 {
                all.insert(
                    from,
                    Assembly {
                        meta: chunk.meta.clone(),
                        total: chunk.total,
                        // The first chunk's size bounds the first allocation.
                        data: Vec::with_capacity(chunk.data.len()),
                        last_chunk: now,
                    },
                );
            }
            let Some(a) = all.get_mut(&from) else {
                return RaftResponse::Error("snapshot chunk without a start".into());
            };
            if a.meta != chunk.meta
                || a.total != chunk.total
                || a.data.len() as u64 != chunk.offset
                || chunk.offset + chunk.data.len() as u64 > a.total
            {
                all.remove(&from);
                return RaftResponse::Error("snapshot chunk out of sequence".into());
            }
            a.data.extend_from_slice(&chunk.data);
            a.last_chunk = now;
            if (a.data.len() as u64) < a.total {
                return RaftResponse::ChunkAccepted;
            }
            all.remove(&from)
        };
        let Some(a) = done else {
            return RaftResponse::Error("snapshot assembly vanished".into());
        };
        let snapshot = Snapshot {
            meta: a.meta,
            snapshot: std::io::Cursor::new(a.data),
        };
        match self.raft.install_full_snapshot(chunk.vote, snapshot).await {
            Ok(r) => RaftResponse::SnapshotInstalled(r),
            Err(e) => RaftResponse::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::vote::RaftLeaderId;

    fn blank(i: u64) -> Entry {
        use openraft::entry::RaftEntry;
        let leader = openraft::vote::leader_id_adv::CommittedLeaderId::new(1, 1);
        Entry::new_blank(openraft::LogId::new(leader, i))
    }

    fn append_with(n: u64) -> RaftRequest {
        RaftRequest::Append(AppendWire {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: (1..=n).map(blank).collect(),
            leader_commit: None,
        })
    }

    #[test]
    fn appends_beyond_the_entry_bound_do_not_decode() {
        let ok = codec::to_bytes(&append_with(MAX_WIRE_ENTRIES as u64)).unwrap();
        assert!(matches!(
            codec::from_bytes::<RaftRequest>(&ok),
            Ok(RaftRequest::Append(a)) if a.entries.len() == MAX_WIRE_ENTRIES
        ));
        let too_many = codec::to_bytes(&append_with(MAX_WIRE_ENTRIES as u64 + 1)).unwrap();
        assert!(codec::from_bytes::<RaftRequest>(&too_many).is_err());
    }

    #[test]
    fn snapshot_chunk_frames_fit_a_data_channel_message() {
        let vote = Vote::new(3, 1);
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::vote::leader_id_adv::CommittedLeaderId::new(3, 1),
                1234,
            )),
            last_membership: Default::default(),
        };
        for len in [0usize, 1, 1000, 64 * 1024, 200_000, 1_000_003] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let chunks = snapshot_chunks(&vote, &meta, &data).unwrap();
            let mut joined = Vec::new();
            for c in &chunks {
                let size = frame_len(&RaftRequest::SnapshotChunk(c.clone())).unwrap();
                assert!(size <= MAX_CHUNK_FRAME_BYTES, "frame of {size} bytes");
                assert_eq!(c.offset as usize, joined.len());
                joined.extend_from_slice(&c.data);
            }
            assert_eq!(joined, data);
        }
    }
}
