//! Starting and stopping one room on one node: its storage namespace, its
//! raft replica and its actors. A node serves any number of rooms, each
//! with its own raft group, storage and actors ([`Rooms`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use skygit_consensus::model::{RoomId, UserId};
use skygit_consensus::ports::{IncomingFrame, PeerLink, WallClock};
use skygit_consensus::replica::{Replica, StartError};
use skygit_consensus::NodeId;
use skygit_storage::{Faults, RoomStorage, SimDisk, StateMachine, StorageError};
use tokio::sync::mpsc;

use crate::committer::{
    CommitterActor, CommitterError, CommitterOptions, Flush, FlushReason, Flusher, SettingsChanged,
    StopCommitter,
};
use crate::consensus::{ConsensusActor, Shutdown, SubscribeLeader};
use crate::media::MediaActor;
use crate::membership::{Bootstrap, MembershipActor};
use crate::mesh::identity::VerifiedPeers;
use crate::mesh::{MeshActor, MeshIdentity, MeshOptions, RelayFrame, SubscribeLinks};
use crate::ports::{IdGen, PresenceChannel, PresenceRecord, RandomSource, RepoRemote};
use crate::ports::{PeerTransport, TransportEvent};
use crate::presence::{PresenceActor, PresenceOptions, SubscribePeers, SubscribeSignals};
use skygit_consensus::membership::MembershipPolicy;
use tracing::Instrument;

/// How long a restarting room waits for the previous instance to release
/// its database lock.
const REOPEN_WAIT: Duration = Duration::from_secs(10);
/// Longest a graceful shutdown waits to be replaced as a voter.
pub const LEAVE_WAIT: Duration = Duration::from_secs(10);
/// Longest a graceful shutdown waits for the leader's last flush.
pub const SHUTDOWN_FLUSH_WAIT: Duration = Duration::from_secs(30);

/// What a room needs to start on a node.
pub struct RoomSpec {
    pub room: RoomId,
    pub node_id: NodeId,
    pub user: UserId,
    /// The node's data directory; the room lives in `rooms/<key>` below it.
    pub data_dir: PathBuf,
    pub raft: openraft::Config,
    pub faults: Faults,
    pub committer: CommitterOptions,
    /// The simulator's disk model; `None` on a real node.
    pub disk: Option<SimDisk>,
    /// The room's `config.json` when the caller has read it already;
    /// `None`: the committer reads it when it starts.
    pub room_config: Option<crate::layout::RoomConfig>,
    /// The node's attachment store; `None` keeps no attachments (the
    /// simulator): media frames from peers are dropped.
    pub attachments: Option<crate::media::BlobStore>,
}

/// The ports a room talks through.
pub struct RoomPorts {
    pub link: Arc<dyn PeerLink>,
    pub incoming: mpsc::Receiver<IncomingFrame>,
    pub clock: Arc<dyn WallClock>,
    pub rng: Box<dyn RandomSource>,
    pub presence: Arc<dyn PresenceChannel>,
    /// The room's repository; `None` runs the room without committing.
    pub repo: Option<Arc<dyn RepoRemote>>,
    /// Opens the stores of attachments outside git (Git LFS, S3) for the
    /// committer; `None`: files stored as git blobs only, the others are
    /// refused by the committer (the flush fails and is retried).
    pub media_stores: Option<crate::committer::media::StoreFactory>,
    /// The peer transport with its event stream, for the mesh and
    /// membership actors: every room forms and grows its group through
    /// them.
    pub mesh: MeshPorts,
}

/// What a room's mesh needs: WebRTC on a real node, the simulator's
/// network there, channels in one process.
pub struct MeshPorts {
    pub transport: Arc<dyn PeerTransport>,
    pub events: mpsc::Receiver<TransportEvent>,
    pub presence: PresenceOptions,
    pub mesh: MeshOptions,
    pub policy: MembershipPolicy,
    pub bootstrap: Bootstrap,
    /// Seeds the mesh actor's backoff jitter.
    pub rng: Box<dyn RandomSource>,
    /// Set on a room that verifies identities.
    pub identity: Option<RoomIdentity>,
    /// Re-form the group when its majority is gone for good (with a
    /// repository only: the founding is a commit on its branch).
    pub reform: Option<skygit_consensus::reform::ReformPolicy>,
}

/// How a room that verifies identities signs this node's presence and
/// checks its peers'.
#[derive(Clone)]
pub struct RoomIdentity {
    pub key: Arc<skygit_ports::identity::SigningKey>,
    pub directory: Arc<dyn skygit_ports::identity::KeyDirectory>,
}

/// Why a room could not start.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("room storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot sign this node's presence: {0}")]
    Identity(String),
    #[error("room {0} is already open on this node")]
    AlreadyOpen(RoomId),
    #[error("invalid user name: {0}")]
    User(skygit_consensus::model::ValidationError),
    #[error("the room did not form: {0}")]
    NotFormed(String),
    #[error(transparent)]
    Attachments(#[from] crate::media::StoreError),
}

/// A room running on this node.
#[derive(Clone)]
pub struct RoomHandle {
    pub room: RoomId,
    pub node_id: NodeId,
    pub user: UserId,
    pub consensus: Addr<ConsensusActor>,
    pub presence: Addr<PresenceActor>,
    pub committer: Addr<CommitterActor>,
    pub media: Addr<MediaActor>,
    /// Calls' changes and signals for this node's browser.
    pub call_notices: tokio::sync::broadcast::Sender<crate::media::CallNotice>,
    /// Attachments' bytes between this node and its peers.
    pub attachments: Option<crate::media::Transfers>,
    /// The room's attachment storage outside git, as the committer reaches
    /// it (also read when no peer has a file).
    pub media_staging: Option<Arc<crate::committer::media::MediaStaging>>,
    pub mesh: Addr<MeshActor>,
    pub membership: Addr<MembershipActor>,
    pub replica: Arc<Replica<StateMachine>>,
    pub storage: RoomStorage,
}

/// The directory of a room's storage below a node's data directory.
pub fn room_dir(data_dir: &Path, room: &RoomId) -> PathBuf {
    data_dir.join("rooms").join(room.storage_key())
}

async fn open_storage(
    dir: &Path,
    faults: Faults,
    disk: Option<&SimDisk>,
) -> Result<RoomStorage, StorageError> {
    let deadline = tokio::time::Instant::now() + REOPEN_WAIT;
    loop {
        let opened = match disk {
            None => RoomStorage::open_with(dir, faults),
            Some(d) => RoomStorage::open_sim(dir, faults, d.clone()),
        };
        match opened {
            Ok(s) => return Ok(s),
            // The previous instance of this room may still be closing.
            Err(StorageError::Rocks(e))
                if e.to_string().contains("lock") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the room's storage, starts its raft replica and its actors.
pub async fn start_room(spec: RoomSpec, ports: RoomPorts) -> Result<RoomHandle, RoomError> {
    let dir = room_dir(&spec.data_dir, &spec.room);
    let storage = open_storage(&dir, spec.faults, spec.disk.as_ref()).await?;
    let room = spec.room.as_str();
    let session_id = format!("{}-{}", spec.node_id, ports.clock.now_ms());
    let mut me = PresenceRecord {
        user: spec.user.to_string(),
        node_id: spec.node_id,
        session_id: session_id.clone(),
        last_seen: ports.clock.now_ms(),
        dtls_fingerprint: ports.mesh.transport.fingerprint(),
        in_group: false,
        signals: Vec::new(),
        version: crate::ports::PRESENCE_VERSION,
        identity: None,
    };
    let m = ports.mesh;
    if let Some(identity) = &m.identity {
        identity
            .key
            .sign_presence(&mut me)
            .map_err(|e| RoomError::Identity(e.to_string()))?;
    }
    let presence_opts = m.presence;
    let presence =
        PresenceActor::with_options(me, ports.presence, ports.clock.clone(), room, presence_opts)
            .start();
    // Signalling frames are taken out of the incoming stream before raft
    // sees it.
    let mesh = MeshActor::new(
        room,
        spec.node_id,
        session_id,
        m.transport,
        ports.link.clone(),
        presence.clone(),
        ports.clock.clone(),
        m.rng,
        m.mesh,
    );
    let verified: VerifiedPeers = Default::default();
    let mesh = match &m.identity {
        Some(identity) => mesh.verifying(MeshIdentity {
            directory: identity.directory.clone(),
            verified: verified.clone(),
        }),
        None => mesh,
    }
    .start();
    presence.do_send(SubscribePeers(mesh.clone().recipient()));
    presence.do_send(SubscribeSignals(mesh.clone().recipient()));
    let transfers = spec.attachments.clone().map(|store| {
        crate::media::Transfers::new(
            room,
            spec.node_id,
            ports.link.clone(),
            ports.clock.clone(),
            store,
        )
    });
    let incoming = demux(
        spec.node_id,
        ports.incoming,
        mesh.clone(),
        transfers.clone(),
    );
    pump_events(m.events, mesh.clone());
    let replica = Arc::new(
        Replica::start(
            spec.node_id,
            storage.group().start,
            spec.raft,
            ports.link,
            incoming,
            ports.clock.clone(),
            storage.log.clone(),
            storage.state_machine.clone(),
        )
        .await?,
    );
    let ids = IdGen::new(ports.clock.clone(), ports.rng);
    let consensus = ConsensusActor::new(replica.clone(), storage.clone(), ids, room);
    let consensus = match &m.identity {
        Some(identity) => consensus.signing(identity.key.clone()),
        None => consensus,
    }
    .start();
    let repo_for_bootstrap = ports.repo.clone().map(|r| (r, ports.clock.clone()));
    let repo_for_reform = ports.repo.clone();
    let no_stores: crate::committer::media::StoreFactory =
        Arc::new(|_, kind| Err(format!("this node has no {kind:?} store")));
    let staging = transfers.clone().map(|t| {
        let clock = ports.clock.clone();
        Arc::new(crate::committer::media::MediaStaging::new(
            room,
            t,
            ports.media_stores.clone().unwrap_or(no_stores),
            Arc::new(move || clock.now_ms()),
        ))
    });
    let flusher = ports.repo.map(|remote| {
        let f = Flusher::new(
            remote,
            storage.reader.clone(),
            consensus.clone(),
            spec.user.clone(),
            spec.committer.call_timeout,
        );
        Arc::new(match staging.clone() {
            Some(m) => f.with_media(m),
            None => f,
        })
    });
    let committer = CommitterActor::new(
        room,
        spec.node_id,
        flusher,
        spec.committer,
        spec.room_config,
    )
    .start();
    consensus.do_send(SubscribeLeader(committer.clone().recipient()));
    replica.set_flush_hook(flush_hook(committer.clone()));
    if let Some(identity) = &m.identity {
        replica.set_request_check(request_check(
            verified.clone(),
            identity.directory.clone(),
            room,
        ));
    }
    let membership = MembershipActor::new(
        room,
        replica.clone(),
        presence.clone(),
        m.policy,
        m.bootstrap,
        repo_for_bootstrap,
    );
    let founder = m
        .identity
        .as_ref()
        .map(|identity| crate::membership::Founder {
            user: spec.user.to_string(),
            identity: identity.clone(),
        });
    let membership = match &founder {
        Some(f) => membership.verifying(verified.clone(), f.clone()),
        None => membership,
    };
    let membership = match (m.reform, repo_for_reform) {
        (Some(policy), Some(repo)) => membership.reforming(
            crate::reform::Reformer {
                replica: replica.clone(),
                storage: storage.clone(),
                repo,
                clock: ports.clock.clone(),
                founder,
                skip_founding_commit: policy.skip_founding_commit,
            },
            policy,
        ),
        _ => membership,
    }
    .start();
    mesh.do_send(SubscribeLinks(membership.clone().recipient()));
    mesh.do_send(SubscribeLinks(consensus.clone().recipient()));
    follow_settings(
        storage.state_machine.watch_settings(),
        vec![
            committer.clone().recipient(),
            membership.clone().recipient(),
        ],
        spec.node_id,
    );
    let call_notices = crate::media::call_notices();
    let media = MediaActor::new(
        room,
        spec.node_id,
        transfers.clone(),
        storage.state_machine.subscribe(),
        crate::media::CallPorts {
            user: spec.user.clone(),
            consensus: consensus.clone(),
            clock: ports.clock.clone(),
            notices: call_notices.clone(),
            verified: m.identity.as_ref().map(|_| verified.clone()),
        },
    )
    .start();
    mesh.do_send(SubscribeLinks(media.clone().recipient()));
    Ok(RoomHandle {
        room: spec.room,
        node_id: spec.node_id,
        user: spec.user,
        consensus,
        presence,
        committer,
        media,
        call_notices,
        attachments: transfers,
        media_staging: staging,
        mesh,
        membership,
        replica,
        storage,
    })
}

/// A leader accepts a request proposed through a peer only when its sender
/// is the peer's verified user and its signature verifies against the
/// sender's keys: a node with a valid identity cannot post, edit or delete
/// as somebody else, nor put an unsigned change into the history.
fn request_check(
    verified: VerifiedPeers,
    directory: Arc<dyn skygit_ports::identity::KeyDirectory>,
    room: &str,
) -> skygit_consensus::replica::RequestCheck {
    let room = room.to_owned();
    Arc::new(move |peer, request| {
        let user = verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned();
        let (directory, room) = (directory.clone(), room.clone());
        Box::pin(async move {
            let refused = |reason: String| {
                metrics::counter!("skygit_forged_requests_total", "room" => room.clone())
                    .increment(1);
                Err(reason)
            };
            let sender = request.sender.as_str();
            let signed = skygit_ports::identity::request_statement(&request).is_some()
                && request.signature.is_some();
            match user {
                Some(u) if u == sender => {}
                // A request its author signed may come through anyone: a
                // node carrying what a re-formed group may not have
                // proposes its peers' requests again, unchanged.
                Some(_) if signed => {}
                Some(u) => {
                    return refused(format!(
                        "node {peer} is {u}'s; it cannot propose as {sender}"
                    ))
                }
                None => return refused(format!("node {peer} has no verified identity")),
            }
            if skygit_ports::identity::request_statement(&request).is_none() {
                return Ok(());
            }
            let keys = directory
                .keys_of(sender)
                .await
                .map_err(|e| format!("cannot check the signature now: {e}"))?;
            match skygit_ports::identity::verify_request(keys.as_deref(), &request) {
                Ok(()) => Ok(()),
                Err(e) => refused(format!("{sender}'s request {}: {e}", request.id)),
            }
        })
    })
}

/// Frames a room's inbox holds before the transport waits.
const DEMUX_CAPACITY: usize = 4096;

/// How this node's raft member flushes when a follower asks it to (`POST
/// /push` on another node): through the committer, one flush at a time.
fn flush_hook(committer: Addr<CommitterActor>) -> skygit_consensus::replica::FlushHook {
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    Arc::new(move || {
        let (committer, gate) = (committer.clone(), one_at_a_time.clone());
        Box::pin(async move {
            let _one = gate.lock().await;
            match committer.send(Flush(FlushReason::OnDemand)).await {
                Ok(Ok(r)) => Ok(r.into()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the committer is gone: {e}")),
            }
        })
    })
}

/// Routes signalling frames to the mesh actor, media frames to the
/// attachment transfers and everything else to raft.
fn demux(
    me: NodeId,
    mut incoming: mpsc::Receiver<IncomingFrame>,
    mesh: Addr<MeshActor>,
    media: Option<crate::media::Transfers>,
) -> mpsc::Receiver<IncomingFrame> {
    let (tx, rx) = mpsc::channel(DEMUX_CAPACITY);
    let task = async move {
        while let Some(f) = incoming.recv().await {
            if skygit_consensus::codec::peek_kind(&f.frame)
                == Some(skygit_consensus::codec::EnvelopeKind::Media)
            {
                match (skygit_consensus::codec::decode_frame(&f.frame), &media) {
                    (Ok(env), Some(m)) if env.from == f.peer && env.to == me => {
                        m.on_envelope(f.peer, &env)
                    }
                    (Ok(_), None) => {
                        tracing::debug!(peer = f.peer, "dropped a media frame: no attachments here")
                    }
                    (Ok(env), Some(_)) => tracing::warn!(
                        peer = f.peer,
                        claimed = env.from,
                        to = env.to,
                        "dropped a misaddressed media frame"
                    ),
                    (Err(e), _) => {
                        tracing::warn!(peer = f.peer, error = %e, "dropped a bad media frame")
                    }
                }
                continue;
            }
            if skygit_consensus::codec::peek_kind(&f.frame)
                == Some(skygit_consensus::codec::EnvelopeKind::Signal)
            {
                match skygit_consensus::codec::decode_frame(&f.frame) {
                    Ok(env) if env.from == f.peer && env.to == me => mesh.do_send(RelayFrame(env)),
                    Ok(env) => tracing::warn!(
                        peer = f.peer,
                        claimed = env.from,
                        to = env.to,
                        "dropped a misaddressed signalling frame"
                    ),
                    Err(e) => {
                        tracing::warn!(peer = f.peer, error = %e, "dropped a bad signalling frame")
                    }
                }
                continue;
            }
            if tx.send(f).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(task.instrument(tracing::debug_span!("demux", node = me)));
    rx
}

/// Tells the committer and the membership controller the room's settings
/// as applied now (when the log ever set them) and every change after,
/// until the state machine goes away.
fn follow_settings(
    mut settings: tokio::sync::watch::Receiver<skygit_consensus::model::RoomSettings>,
    targets: Vec<Recipient<SettingsChanged>>,
    me: NodeId,
) {
    let task = async move {
        loop {
            let s = *settings.borrow_and_update();
            if s.changed_index > 0 {
                tracing::info!(
                    interval = ?s.commit_interval_secs,
                    voters = ?s.voters,
                    index = s.changed_index,
                    "room settings"
                );
                for t in &targets {
                    t.do_send(SettingsChanged(s));
                }
            }
            if settings.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(task.instrument(tracing::debug_span!("settings", node = me)));
}

/// Hands the transport's events to the mesh actor.
fn pump_events(mut events: mpsc::Receiver<TransportEvent>, mesh: Addr<MeshActor>) {
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if mesh.send(crate::mesh::FromTransport(e)).await.is_err() {
                return;
            }
        }
    });
}

impl RoomHandle {
    /// Leaves the room gracefully: flushes to the repository when this
    /// node leads, asks to be replaced as a voter, then stops raft and the
    /// actors. The storage stays on disk.
    pub async fn shutdown(self) {
        self.flush_before_stop().await;
        let voters = self.replica.voters();
        if voters.contains(&self.node_id) && voters.len() > 1 {
            let left = self.replica.leave_voters(LEAVE_WAIT).await;
            tracing::info!(room = %self.room, left, "asked the leader to replace this voter");
        }
        self.stop().await;
    }

    /// Stops with the whole room (every node is going): flushes when this
    /// node leads, then stops, without asking to be replaced as a voter.
    pub async fn flush_and_stop(self) {
        self.flush_before_stop().await;
        self.stop().await;
    }

    async fn flush_before_stop(&self) {
        match tokio::time::timeout(
            SHUTDOWN_FLUSH_WAIT,
            self.committer.send(Flush(FlushReason::Shutdown)),
        )
        .await
        {
            Ok(Ok(Ok(r))) if r.commits > 0 => {
                tracing::info!(room = %self.room, up_to_index = r.up_to_index, "flushed before shutdown");
            }
            Ok(Ok(Err(CommitterError::NotLeader | CommitterError::NoRepository))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(room = %self.room, error = %e, "the flush before shutdown failed; the next leader writes it");
            }
            Err(_) => {
                tracing::warn!(room = %self.room, "the flush before shutdown timed out; the next leader writes it");
            }
            _ => {}
        }
    }

    /// Stops raft and the actors at once, without a last flush (what a
    /// crash leaves behind, short of losing unsynced writes).
    pub async fn stop(self) {
        // Stopping the committer drops any flush in progress.
        let _ = self.committer.send(StopCommitter).await;
        self.mesh.do_send(crate::mesh::StopMesh);
        self.membership.do_send(StopActor);
        self.presence.do_send(StopActor);
        self.media.do_send(StopActor);
        if self.consensus.send(Shutdown).await.is_err() {
            // The actor is already gone; stop raft directly.
            self.replica.shutdown().await;
        }
    }
}

/// Stops an actor that has nothing to finish (presence, membership,
/// media): a room's [`RoomHandle::stop`] sends it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopActor;

macro_rules! stop_on_request {
    ($($actor:ty),*) => {$(
        impl Handler<StopActor> for $actor {
            type Result = ();
            fn handle(&mut self, _: StopActor, ctx: &mut Self::Context) {
                ctx.stop();
            }
        }
    )*};
}

stop_on_request!(PresenceActor, MembershipActor, MediaActor);

/// The rooms a node serves.
#[derive(Default)]
pub struct Rooms {
    rooms: BTreeMap<RoomId, RoomHandle>,
}

impl Rooms {
    pub fn add(&mut self, handle: RoomHandle) -> Result<(), RoomError> {
        if self.rooms.contains_key(&handle.room) {
            return Err(RoomError::AlreadyOpen(handle.room.clone()));
        }
        self.rooms.insert(handle.room.clone(), handle);
        Ok(())
    }

    pub fn get(&self, room: &RoomId) -> Option<&RoomHandle> {
        self.rooms.get(room)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RoomHandle> {
        self.rooms.values()
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Removes a room from this node and stops it.
    pub async fn close(&mut self, room: &RoomId) -> bool {
        match self.rooms.remove(room) {
            Some(h) => {
                h.shutdown().await;
                true
            }
            None => false,
        }
    }

    /// Stops every room (graceful shutdown).
    pub async fn shutdown_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.rooms) {
            h.shutdown().await;
        }
    }
}
