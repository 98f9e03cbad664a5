//! One simulated room from a seed: the nodes, the workload, the faults
//! and the invariants, on one current-thread tokio runtime with paused
//! time inside an actix system.
//!
//! The run has three phases. During `duration` users post, edit, delete
//! and retry while faults are injected. Then the faults stop: partitions
//! heal, the repository comes back, every stopped node restarts. Finally
//! the liveness probe must commit and reach the repository within a
//! bound, and the end-state invariants are checked against every node's
//! storage and the repository's history.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use skygit_actors::committer::{CommitterOptions, Flush, FlushReason};
use skygit_actors::consensus::{Propose, Proposed, Submit};
use skygit_actors::layout::{self, RoomConfig};
use skygit_actors::membership::Bootstrap;
use skygit_actors::mesh::MeshOptions;
use skygit_actors::ports::{CommitRequest, PresenceChannel, RepoRemote, SeededRng};
use skygit_actors::presence::PresenceOptions;
use skygit_actors::readback;
use skygit_actors::room::{start_room, MeshPorts, RoomHandle, RoomPorts, RoomSpec};
use skygit_consensus::membership::MembershipPolicy;
use skygit_consensus::model::{
    ApplyOutcome, ChangeKind, ChatRequest, Command, ConversationId, RoomId, UserId,
};
use skygit_consensus::NodeId;
use skygit_storage::{ApplyMode, Durability, Faults, SimDisk};
use ulid::Ulid;

use crate::net::{LinkModel, SimNet};
use crate::repo::{RepoFaults, SimRepoHost};
use crate::trace::{derive_seed, Trace};
use crate::SimClock;

/// The wall-clock epoch of every run: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
/// The room every run simulates.
pub const ROOM: &str = "sim/room";
/// Lines of trace shown next to a violation.
pub const EXCERPT_LINES: usize = 12;

/// A planted bug, to prove the invariants catch what they claim to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Canary {
    /// The committer's remote force-moves the branch instead of a
    /// compare-and-swap.
    CommitterIgnoresCas,
    /// The state machine applies a request id again when it is retried.
    DuplicateApply,
    /// The raft log acknowledges an append before it is durable.
    AckBeforeDurable,
}

impl Canary {
    pub const ALL: [Canary; 3] = [
        Canary::CommitterIgnoresCas,
        Canary::DuplicateApply,
        Canary::AckBeforeDurable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Canary::CommitterIgnoresCas => "committer-ignores-cas",
            Canary::DuplicateApply => "duplicate-apply",
            Canary::AckBeforeDurable => "ack-before-durable",
        }
    }
}

/// The member of `all` called `s` on the command line, or an error that
/// lists the known names.
fn by_name<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
    s: &str,
) -> Result<T, String> {
    all.iter().copied().find(|c| name(*c) == s).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|c| name(*c)).collect();
        format!("unknown {what} {s:?}; known: {}", names.join(", "))
    })
}

impl std::str::FromStr for Canary {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&Canary::ALL, Canary::name, "canary", s)
    }
}

/// The kinds of fault the injector chooses from (the repository host's
/// error answers, link loss and clock skew come with every faulty run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultClass {
    /// A node's process dies and restarts; its disk keeps everything.
    Crash,
    /// A node loses power: what its disk had not synced is gone.
    PowerLoss,
    /// A node shuts down gracefully (flush, leave) and comes back.
    Leave,
    /// Symmetric and one-way partitions.
    Partition,
    /// One peer link fails (ICE restart).
    LinkFailure,
    /// The repository host is down.
    RepoOutage,
    /// Every node loses power at once.
    PowerCut,
}

impl FaultClass {
    pub const ALL: [FaultClass; 7] = [
        FaultClass::Crash,
        FaultClass::PowerLoss,
        FaultClass::Leave,
        FaultClass::Partition,
        FaultClass::LinkFailure,
        FaultClass::RepoOutage,
        FaultClass::PowerCut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Crash => "crash",
            FaultClass::PowerLoss => "power-loss",
            FaultClass::Leave => "leave",
            FaultClass::Partition => "partition",
            FaultClass::LinkFailure => "link-failure",
            FaultClass::RepoOutage => "repo-outage",
            FaultClass::PowerCut => "power-cut",
        }
    }

    /// Which class a roll of the injector's 100-sided die picks.
    fn of_roll(roll: u32) -> FaultClass {
        match roll {
            0..=17 => FaultClass::Crash,
            18..=33 => FaultClass::PowerLoss,
            34..=39 => FaultClass::Leave,
            40..=64 => FaultClass::Partition,
            65..=77 => FaultClass::LinkFailure,
            94..=99 => FaultClass::PowerCut,
            _ => FaultClass::RepoOutage,
        }
    }
}

impl std::str::FromStr for FaultClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&FaultClass::ALL, FaultClass::name, "fault class", s)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    /// The room's voter count.
    pub voters: usize,
    /// How long users work and faults strike (simulated time).
    pub duration: Duration,
    /// Inject faults (network, repository, crashes); off: a calm run.
    pub faults: bool,
    pub canary: Option<Canary>,
    /// Write every trace line here.
    pub trace_file: Option<PathBuf>,
    pub commit_interval: Duration,
    /// Raft heartbeat; elections time out after 5 to 10 heartbeats.
    pub heartbeat: Duration,
    /// Mean gap between two user requests in the room.
    pub request_every: Duration,
    /// Mean gap between two injected faults.
    pub fault_every: Duration,
    /// After the faults stop: how long the room has to elect a leader,
    /// commit the probe and get it into the repository.
    pub liveness_bound: Duration,
    /// The injected fault kinds (all by default).
    pub fault_classes: std::collections::BTreeSet<FaultClass>,
    /// The repository host's misbehaviour; `None`: [`RepoFaults::default`].
    pub repo_faults: Option<RepoFaults>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 5,
            voters: 3,
            duration: Duration::from_secs(300),
            faults: true,
            canary: None,
            trace_file: None,
            commit_interval: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            request_every: Duration::from_secs(3),
            fault_every: Duration::from_secs(20),
            liveness_bound: Duration::from_secs(120),
            fault_classes: FaultClass::ALL.into_iter().collect(),
            repo_faults: None,
        }
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// Simulated seconds into the run.
    pub at_secs: f64,
    pub invariant: &'static str,
    pub detail: String,
    /// The trace lines that show it.
    pub excerpt: Vec<String>,
}

/// What the workload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkloadStats {
    pub posts: u64,
    pub edits: u64,
    pub deletes: u64,
    pub retries: u64,
    /// Room settings changes (`Configure`).
    pub settings: u64,
    /// Requests the room acknowledged (committed or kept in an outbox).
    pub acked: u64,
    pub queued: u64,
    pub refused: u64,
    pub unanswered: u64,
}

/// What the fault injector did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultStats {
    pub crashes: u64,
    pub power_losses: u64,
    pub lost_wal_bytes: u64,
    pub graceful_leaves: u64,
    pub partitions: u64,
    pub asymmetric_partitions: u64,
    pub link_failures: u64,
    pub repo_outages: u64,
    pub max_clock_skew_ms: i64,
}

/// The outcome of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub digest: String,
    pub ok: bool,
    pub violations: Vec<Violation>,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub speedup: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub nodes: u64,
    pub canary: Option<Canary>,
    pub leader_changes: u64,
    pub repo_commits: u64,
    pub workload: WorkloadStats,
    pub faults: FaultStats,
    pub net: crate::net::NetStats,
    pub repo: crate::repo::RepoStats,
}

/// Why a run could not be set up at all (not an invariant violation).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulation set-up: {0}")]
    Setup(String),
    #[error("trace file: {0}")]
    Trace(#[from] std::io::Error),
}

/// A request the room acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    node: NodeId,
    request: ChatRequest,
    /// Where it took effect, when known (not for queued ones).
    index: Option<u64>,
}

/// One node slot: its disk survives restarts.
struct Slot {
    user: UserId,
    disk: SimDisk,
    handle: Option<RoomHandle>,
    incarnation: u64,
    skew_ms: i64,
    /// Its previous incarnation is still shutting down.
    stopping: bool,
}

#[derive(Default)]
struct State {
    slots: BTreeMap<NodeId, Slot>,
    acked: BTreeMap<Ulid, Acked>,
    /// Each user's acknowledged posts, in acknowledgement order.
    posts_by: BTreeMap<UserId, Vec<Ulid>>,
    /// The first request seen applied at each index, by any node.
    applied: BTreeMap<u64, (Ulid, NodeId)>,
    violations: Vec<Violation>,
    workload: WorkloadStats,
    faults: FaultStats,
    leader_changes: u64,
    last_leader: Option<(NodeId, u64)>,
    /// Nodes some fault took down, and when they come back.
    down_until: BTreeMap<NodeId, tokio::time::Instant>,
}

/// The shared world of a run.
#[derive(Clone)]
struct World {
    opts: Arc<SimOptions>,
    trace: Trace,
    net: SimNet,
    host: SimRepoHost,
    base: PathBuf,
    room: RoomId,
    state: Arc<Mutex<State>>,
    /// When the run started (every node's wall clock counts from it).
    started: tokio::time::Instant,
}

impl State {
    fn ack(&mut self, a: Acked) {
        if self.acked.contains_key(&a.request.id) {
            return;
        }
        if matches!(a.request.command, Command::Post { .. }) {
            self.posts_by
                .entry(a.request.sender.clone())
                .or_default()
                .push(a.request.id);
        }
        self.acked.insert(a.request.id, a);
    }
}

impl World {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn violation(&self, invariant: &'static str, detail: String, needle: Option<&str>) {
        let mut excerpt = match needle {
            Some(n) => self.trace.grep(n, EXCERPT_LINES),
            None => Vec::new(),
        };
        if excerpt.is_empty() {
            excerpt = self.trace.tail(EXCERPT_LINES);
        }
        self.trace
            .event(0, "VIOLATION", format!("{invariant}: {detail}"));
        let at_secs = self.trace.elapsed().as_secs_f64();
        self.lock().violations.push(Violation {
            at_secs,
            invariant,
            detail,
            excerpt,
        });
    }

    fn raft_config(&self) -> openraft::Config {
        let hb = self.opts.heartbeat.as_millis().max(10) as u64;
        let mut c = skygit_consensus::config::raft_config(self.room.as_str(), 500, 100);
        c.heartbeat_interval = hb;
        c.election_timeout_min = hb * 5;
        c.election_timeout_max = hb * 10;
        c
    }

    fn faults(&self) -> Faults {
        Faults {
            durability: match self.opts.canary {
                Some(Canary::AckBeforeDurable) => Durability::AckBeforeDurable,
                _ => Durability::Synced,
            },
            apply: match self.opts.canary {
                Some(Canary::DuplicateApply) => ApplyMode::DuplicateApply,
                _ => ApplyMode::default(),
            },
        }
    }

    fn handle(&self, id: NodeId) -> Option<RoomHandle> {
        self.lock().slots.get(&id).and_then(|s| s.handle.clone())
    }

    fn up_nodes(&self) -> Vec<NodeId> {
        self.lock()
            .slots
            .iter()
            .filter(|(_, s)| s.handle.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts node `id` from whatever its directory holds.
    async fn start_node(&self, id: NodeId) -> Result<(), String> {
        // A node still shutting down is started once it is gone.
        while self.lock().slots.get(&id).is_some_and(|s| s.stopping) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (user, disk, incarnation, skew_ms) = {
            let mut g = self.lock();
            let slot = g.slots.get_mut(&id).ok_or("no such node")?;
            if slot.handle.is_some() {
                return Ok(());
            }
            slot.incarnation += 1;
            (
                slot.user.clone(),
                slot.disk.clone(),
                slot.incarnation,
                slot.skew_ms,
            )
        };
        let nn = self.net.attach(id);
        // The simulator decides bootstrap from a fault-free view of the
        // repository (a real node reads it once at start).
        let bootstrap = match self.host.head() {
            None => Bootstrap::After(Duration::from_secs(3)),
            Some((_, message)) if layout::watermark(&message).unwrap_or(0) == 0 => {
                Bootstrap::After(Duration::from_secs(3))
            }
            Some(_) => Bootstrap::Refuse("the repository holds the room's log".into()),
        };
        let client = self.host.client(id);
        let presence: Arc<dyn PresenceChannel> = Arc::new(client.clone());
        let repo: Arc<dyn RepoRemote> = Arc::new(client);
        let spec = RoomSpec {
            room: self.room.clone(),
            node_id: id,
            user,
            data_dir: self.base.join(format!("node-{id}")),
            raft: self.raft_config(),
            faults: self.faults(),
            committer: CommitterOptions {
                interval: Some(self.opts.commit_interval),
                call_timeout: Duration::from_secs(60),
            },
            disk: Some(disk),
            room_config: None,
        };
        let seed = self.opts.seed;
        let ports = RoomPorts {
            link: nn.link,
            incoming: nn.incoming,
            clock: Arc::new(SimClock::since(self.started, EPOCH_MS, skew_ms)),
            rng: Box::new(SeededRng::from_seed(derive_seed(
                seed,
                &format!("ids-{id}-{incarnation}"),
            ))),
            presence,
            repo: Some(repo),
            mesh: MeshPorts {
                transport: nn.transport,
                events: nn.events,
                presence: PresenceOptions {
                    heartbeat: Duration::from_secs(60),
                    fast_poll: Duration::from_secs(1),
                    slow_poll: Duration::from_secs(30),
                },
                mesh: MeshOptions::default(),
                policy: MembershipPolicy {
                    voters: self.opts.voters,
                    ..Default::default()
                },
                bootstrap,
                rng: Box::new(SeededRng::from_seed(derive_seed(
                    seed,
                    &format!("mesh-{id}-{incarnation}"),
                ))),
            },
        };
        let handle = start_room(spec, ports)
            .await
            .map_err(|e| format!("node {id} did not start: {e}"))?;
        self.watch_applied(id, &handle);
        self.trace
            .event(id, "node.start", format!("incarnation {incarnation}"));
        if let Some(slot) = self.lock().slots.get_mut(&id) {
            slot.handle = Some(handle);
        }
        Ok(())
    }

    /// Checks each applied entry against what other nodes applied at the
    /// same index, as it happens.
    fn watch_applied(&self, id: NodeId, handle: &RoomHandle) {
        let mut rx = handle.storage.state_machine.subscribe();
        let world = self.clone();
        actix_rt::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        world
                            .trace
                            .event(id, "apply", format!("{} {}", ev.index, ev.request));
                        let clash = {
                            let mut g = world.lock();
                            match g.applied.get(&ev.index) {
                                Some((req, by)) if *req != ev.request => Some((*req, *by)),
                                Some(_) => None,
                                None => {
                                    g.applied.insert(ev.index, (ev.request, id));
                                    None
                                }
                            }
                        };
                        if let Some((req, by)) = clash {
                            world.violation(
                                "committed-order",
                                format!(
                                    "node {id} applied {} at index {}, node {by} applied {req} there",
                                    ev.request, ev.index
                                ),
                                Some(&format!("apply {} ", ev.index)),
                            );
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        world
                            .trace
                            .event(id, "apply.lagged", format!("{n} events skipped"));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Takes node `id` down: `power_loss` also loses what its disk had
    /// not made durable; `graceful` lets it flush and leave first.
    async fn stop_node(&self, id: NodeId, power_loss: bool, graceful: bool) {
        let (handle, disk) = {
            let mut g = self.lock();
            let Some(slot) = g.slots.get_mut(&id) else {
                return;
            };
            if slot.handle.is_some() {
                slot.stopping = true;
            }
            (slot.handle.take(), slot.disk.clone())
        };
        let Some(handle) = handle else { return };
        if graceful {
            self.trace.event(id, "node.leave", "graceful shutdown");
            handle.shutdown().await;
            self.net.detach(id);
            self.trace.event(id, "node.left", "");
            self.stopped(id);
            return;
        }
        self.net.detach(id);
        disk.crash(power_loss);
        self.trace.event(
            id,
            "node.crash",
            if power_loss { "power loss" } else { "process" },
        );
        let db = handle.storage.db.clone();
        handle.stop().await;
        // The dead incarnation's last tasks (a proposal waiting for its
        // timeout, say) still hold the database: wait until they let go,
        // then cut the disk back to what the crash kept.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while db.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if db.handles() > 1 {
            self.violation(
                "storage-recovers",
                format!("node {id}: its crashed instance still holds the database after 300 s"),
                None,
            );
        }
        drop(db);
        match skygit_storage::recover(&disk) {
            Ok(lost) => {
                // The byte count stays out of the trace: which obsolete
                // WAL files still exist depends on RocksDB's background
                // threads.
                self.trace.event(id, "disk.recovered", "");
                self.lock().faults.lost_wal_bytes += lost;
            }
            Err(e) => self.violation(
                "storage-recovers",
                format!("node {id}: could not cut its disk back after the crash: {e}"),
                None,
            ),
        }
        self.stopped(id);
    }

    fn stopped(&self, id: NodeId) {
        if let Some(slot) = self.lock().slots.get_mut(&id) {
            slot.stopping = false;
        }
    }

    /// The leader most up nodes agree on, with its term.
    fn leader(&self) -> Option<(NodeId, u64)> {
        let mut votes: BTreeMap<(NodeId, u64), usize> = BTreeMap::new();
        for id in self.up_nodes() {
            if let Some(h) = self.handle(id) {
                let m = h.replica.metrics();
                if let Some(l) = m.current_leader {
                    if self.handle(l).is_some() {
                        *votes.entry((l, m.current_term)).or_default() += 1;
                    }
                }
            }
        }
        votes
            .into_iter()
            .max_by_key(|(k, n)| (*n, k.1))
            .map(|(k, _)| k)
    }

    /// Notes leader changes, panics and nodes whose raft stopped on its
    /// own.
    fn observe(&self) {
        for p in take_panics() {
            self.violation("no-panic", p, None);
        }
        for id in self.up_nodes() {
            if let Some(h) = self.handle(id) {
                if let Err(fatal) = h.replica.metrics().running_state {
                    self.violation(
                        "no-panic",
                        format!("node {id}: raft stopped: {fatal}"),
                        Some(&format!("n{id} ")),
                    );
                    // Report it once: take the node out of the run.
                    if let Some(slot) = self.lock().slots.get_mut(&id) {
                        slot.handle = None;
                    }
                    self.net.detach(id);
                }
            }
        }
        let now = self.leader();
        let changed = {
            let mut g = self.lock();
            if now.is_some() && now != g.last_leader {
                g.last_leader = now;
                g.leader_changes += 1;
                true
            } else {
                false
            }
        };
        if changed {
            if let Some((l, t)) = now {
                self.trace.event(l, "leader", format!("term {t}"));
            }
        }
    }
}

thread_local! {
    /// Panics on this thread since the last look (a run owns its thread).
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

static PANIC_HOOK: std::sync::Once = std::sync::Once::new();

/// Records every panic for the run on the panicking thread, then lets the
/// previous hook print it.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

fn take_panics() -> Vec<String> {
    PANICS
        .try_with(|p| std::mem::take(&mut *p.borrow_mut()))
        .unwrap_or_default()
}

fn exp_gap(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    // Exponential gaps: -mean * ln(U), U in (0, 1].
    let u: f64 = rng.random_range(f64::EPSILON..=1.0);
    let g = -mean.as_secs_f64() * u.ln();
    Duration::from_secs_f64(g.clamp(0.001, mean.as_secs_f64() * 20.0))
}

/// Users posting, editing, deleting and retrying.
async fn workload(world: World, until: tokio::time::Instant) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(world.opts.seed, "workload"));
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(exp_gap(&mut rng, world.opts.request_every)).await;
        let up = world.up_nodes();
        if up.is_empty() {
            continue;
        }
        let node = up[rng.random_range(0..up.len())];
        let Some(h) = world.handle(node) else {
            continue;
        };
        n += 1;
        let roll: f64 = rng.random_range(0.0..1.0);
        // The requests this node's user may edit, delete or retry.
        let pick = {
            let g = world.lock();
            match g.posts_by.get(&h.user) {
                Some(mine) if !mine.is_empty() => {
                    let id = mine[rng.random_range(0..mine.len())];
                    g.acked.get(&id).cloned()
                }
                _ => None,
            }
        };
        let conversation = format!("c{}", rng.random_range(0..3));
        let command = match (roll, &pick) {
            (r, Some(a)) if r < 0.10 => {
                // A client retrying a request whose answer it lost.
                world.lock().workload.retries += 1;
                let w = world.clone();
                let req = a.request.clone();
                actix_rt::spawn(async move {
                    let res = tokio::time::timeout(
                        Duration::from_secs(30),
                        h.consensus.send(Propose(req.clone())),
                    )
                    .await;
                    w.trace.event(
                        node,
                        "workload.retry",
                        format!("{} -> {}", req.id, answer_label(&res)),
                    );
                });
                continue;
            }
            (r, Some(a)) if r < 0.25 => {
                world.lock().workload.edits += 1;
                Command::Edit {
                    message: a.request.id,
                    content: format!("edit {n} by {}", h.user),
                }
            }
            (r, Some(a)) if r < 0.30 => {
                world.lock().workload.deletes += 1;
                Command::Delete {
                    message: a.request.id,
                }
            }
            (r, _) if (0.30..0.33).contains(&r) => {
                // A user changes the room's settings. The voter count stays
                // the run's (a change would reshape the group mid-run); the
                // committer runs at the run's interval (a node override), so
                // only config.json and the settings themselves change.
                world.lock().workload.settings += 1;
                let voters = u8::try_from(world.opts.voters)
                    .ok()
                    .filter(|v| skygit_consensus::model::VOTER_COUNTS.contains(v));
                Command::Configure {
                    commit_interval_secs: Some(60 + n % 600),
                    voters,
                }
            }
            _ => {
                world.lock().workload.posts += 1;
                let Ok(conversation) = ConversationId::new(conversation) else {
                    continue;
                };
                Command::Post {
                    conversation,
                    content: format!("message {n} from {}", h.user),
                }
            }
        };
        let w = world.clone();
        actix_rt::spawn(async move {
            submit(w, node, h, command).await;
        });
    }
}

fn answer_label<T: std::fmt::Debug, E: std::fmt::Debug>(res: &Result<T, E>) -> String {
    match res {
        Ok(v) => {
            let s = format!("{v:?}");
            s.chars().take(120).collect()
        }
        Err(_) => "no answer in time".into(),
    }
}

/// The incarnation of node `id` now, if it is up.
fn incarnation(world: &World, id: NodeId) -> Option<u64> {
    let g = world.lock();
    g.slots
        .get(&id)
        .filter(|s| s.handle.is_some())
        .map(|s| s.incarnation)
}

async fn submit(world: World, node: NodeId, h: RoomHandle, command: Command) {
    let asked = incarnation(&world, node);
    let kind = match &command {
        Command::Post { .. } => "post",
        Command::Edit { .. } => "edit",
        Command::Delete { .. } => "delete",
        _ => "other",
    };
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        h.consensus.send(Submit {
            sender: h.user.clone(),
            command,
        }),
    )
    .await;
    // An answer from a node that crashed meanwhile never reached the
    // user: a dead process acknowledges nothing.
    let res = if incarnation(&world, node) == asked {
        res
    } else {
        Ok(Err(actix::MailboxError::Closed))
    };
    let mut g = world.lock();
    match res {
        Ok(Ok(Ok((req, Proposed::Committed(outcome))))) => {
            let index = match outcome {
                ApplyOutcome::Applied { index } => Some(index),
                ApplyOutcome::Duplicate { original_index } => Some(original_index),
                ApplyOutcome::Rejected { .. } => None,
            };
            if let Some(index) = index {
                world
                    .trace
                    .event(node, "ack", format!("{kind} {} at {index}", req.id));
                g.workload.acked += 1;
                g.ack(Acked {
                    node,
                    request: req,
                    index: Some(index),
                });
            } else {
                world
                    .trace
                    .event(node, "refused", format!("{kind} {}: {outcome:?}", req.id));
                g.workload.refused += 1;
            }
        }
        Ok(Ok(Ok((req, Proposed::Queued { outbox_len, .. })))) => {
            world.trace.event(
                node,
                "ack.queued",
                format!("{kind} {} outbox {outbox_len}", req.id),
            );
            g.workload.acked += 1;
            g.workload.queued += 1;
            g.ack(Acked {
                node,
                request: req,
                index: None,
            });
        }
        Ok(Ok(Err(e))) => {
            world.trace.event(node, "refused", format!("{kind}: {e}"));
            g.workload.refused += 1;
        }
        Ok(Err(_)) | Err(_) => {
            world.trace.event(node, "unanswered", kind);
            g.workload.unanswered += 1;
        }
    }
}

/// Faults, one at a time, each undone after a while.
async fn faults(world: World, until: tokio::time::Instant) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(world.opts.seed, "faults"));
    let n = world.opts.nodes;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(exp_gap(&mut rng, world.opts.fault_every)).await;
        let now = tokio::time::Instant::now();
        if now >= until {
            break;
        }
        let hold = Duration::from_millis(rng.random_range(2_000..60_000));
        let ids: Vec<NodeId> = (1..=n).collect();
        let a = ids[rng.random_range(0..ids.len())];
        // Half of the node faults strike the leader: that is where a
        // room loses messages if it can.
        let a = match (rng.random_bool(0.5), world.leader()) {
            (true, Some((leader, _))) => leader,
            _ => a,
        };
        if world.opts.fault_classes.is_empty() {
            break;
        }
        // The die is rolled again until it names an enabled class.
        let roll = loop {
            let r = rng.random_range(0..100u32);
            if world.opts.fault_classes.contains(&FaultClass::of_roll(r)) {
                break r;
            }
        };
        match roll {
            // Crashes, power losses and graceful leaves: at most a
            // minority down at once.
            r @ 0..=39 => {
                let down = world.lock().down_until.len() as u64;
                if down + 1 > (n - 1) / 2 || world.handle(a).is_none() {
                    continue;
                }
                let (power, graceful) = match r {
                    0..=17 => (false, false),
                    18..=33 => (true, false),
                    _ => (false, true),
                };
                {
                    let mut g = world.lock();
                    g.down_until.insert(a, now + hold);
                    if graceful {
                        g.faults.graceful_leaves += 1;
                    } else if power {
                        g.faults.power_losses += 1;
                    } else {
                        g.faults.crashes += 1;
                    }
                }
                let w = world.clone();
                actix_rt::spawn(async move {
                    w.stop_node(a, power, graceful).await;
                    tokio::time::sleep(hold).await;
                    if let Err(e) = w.start_node(a).await {
                        w.violation("restart", e, None);
                    }
                    w.lock().down_until.remove(&a);
                });
            }
            // Partitions: one node cut off, or a split; sometimes one way.
            40..=64 => {
                let mut side: Vec<NodeId> = vec![a];
                if n >= 4 && rng.random_bool(0.4) {
                    let b = ids[rng.random_range(0..ids.len())];
                    if b != a {
                        side.push(b);
                    }
                }
                let rest: Vec<NodeId> = ids.iter().copied().filter(|i| !side.contains(i)).collect();
                let oneway = rng.random_bool(0.3);
                if oneway {
                    world.lock().faults.asymmetric_partitions += 1;
                    for s in &side {
                        for r in &rest {
                            world.net.block(*s, *r, true);
                        }
                    }
                } else {
                    world.lock().faults.partitions += 1;
                    world.net.partition(&side, &rest);
                }
                world.trace.event(
                    0,
                    "fault.partition",
                    format!(
                        "{side:?} | {rest:?} oneway={oneway} for {}ms",
                        hold.as_millis()
                    ),
                );
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    w.net.heal();
                    w.trace.event(0, "fault.heal", "");
                });
            }
            // A link fails (ICE restart, NAT rebinding).
            65..=77 => {
                let b = ids[rng.random_range(0..ids.len())];
                if a != b {
                    world.lock().faults.link_failures += 1;
                    world.trace.event(0, "fault.link", format!("{a}-{b}"));
                    world.net.fail_link(a, b);
                }
            }
            // A power cut takes every node down at once (one office, one
            // host): whatever no disk had made durable is gone everywhere.
            94..=99 => {
                let up = world.up_nodes();
                if !world.lock().down_until.is_empty() || up.is_empty() {
                    continue;
                }
                {
                    let mut g = world.lock();
                    g.faults.power_losses += up.len() as u64;
                    for id in &up {
                        g.down_until.insert(*id, now + hold);
                    }
                }
                world.trace.event(
                    0,
                    "fault.power_cut",
                    format!("{up:?} for {}ms", hold.as_millis()),
                );
                for id in &up {
                    world.stop_node(*id, true, false).await;
                }
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    for id in up {
                        if let Err(e) = w.start_node(id).await {
                            w.violation("restart", e, None);
                        }
                        w.lock().down_until.remove(&id);
                    }
                });
            }
            // The repository host is down for a while.
            _ => {
                world.lock().faults.repo_outages += 1;
                world.host.set_outage(true);
                world
                    .trace
                    .event(0, "fault.outage", format!("{}ms", hold.as_millis()));
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    w.host.set_outage(false);
                    w.trace.event(0, "fault.outage_end", "");
                });
            }
        }
    }
}

/// Runs one simulation. Builds its own runtime: call from a plain thread.
pub fn run(opts: SimOptions) -> Result<Report, SimError> {
    let wall = Instant::now();
    let seed = opts.seed;
    install_panic_hook();
    take_panics();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder
        // Time only: no I/O driver to poll on every idle turn.
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let rt = builder
        .build()
        .map_err(|e| SimError::Setup(format!("tokio runtime: {e}")))?;
    skygit_consensus::rt::seed_raft_rng(derive_seed(seed, "raft"));
    let system = actix::System::with_tokio_rt(move || rt);
    let opts = Arc::new(opts);
    let result = system.block_on(simulate(opts.clone()));
    skygit_consensus::rt::unseed_raft_rng();
    let (world_state, trace, sim) = result?;
    let wall_seconds = wall.elapsed().as_secs_f64();
    let sim_seconds = sim.as_secs_f64();
    let events = trace.events();
    let st = world_state;
    Ok(Report {
        seed,
        digest: trace.digest(),
        ok: st.violations.is_empty(),
        violations: st.violations,
        sim_seconds,
        wall_seconds,
        speedup: sim_seconds / wall_seconds.max(1e-9),
        events,
        events_per_sec: events as f64 / wall_seconds.max(1e-9),
        nodes: opts.nodes,
        canary: opts.canary,
        leader_changes: st.leader_changes,
        repo_commits: st.repo_commits,
        workload: st.workload,
        faults: st.faults,
        net: st.net,
        repo: st.repo,
    })
}

/// What a finished run leaves for the report.
struct Finished {
    violations: Vec<Violation>,
    workload: WorkloadStats,
    faults: FaultStats,
    leader_changes: u64,
    repo_commits: u64,
    net: crate::net::NetStats,
    repo: crate::repo::RepoStats,
}

fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    // A disk file system, not tmpfs: RocksDB preallocates its WAL files,
    // which tmpfs pays for by zeroing pages. Nothing is fsynced.
    tempfile::Builder::new().prefix("skygit-sim-").tempdir()
}

async fn simulate(opts: Arc<SimOptions>) -> Result<(Finished, Trace, Duration), SimError> {
    let trace = Trace::new(opts.trace_file.as_deref()).map_err(|e| {
        let path = opts
            .trace_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        SimError::Trace(std::io::Error::new(e.kind(), format!("{path}: {e}")))
    })?;
    let dir = scratch_dir()?;
    let room = RoomId::new(ROOM).map_err(|e| SimError::Setup(format!("room id: {e:?}")))?;
    let host = SimRepoHost::new(
        derive_seed(opts.seed, "repo"),
        RepoFaults::none(),
        trace.clone(),
    );
    host.set_ignore_cas(opts.canary == Some(Canary::CommitterIgnoresCas));
    // `skygit init`: the room's config is the first commit.
    let config = RoomConfig {
        commit_interval_secs: opts.commit_interval.as_secs().max(1),
        voters: opts.voters as u8,
        ..RoomConfig::default()
    };
    host.client(0)
        .commit(CommitRequest {
            expected_head: None,
            files: vec![(layout::CONFIG_PATH.to_owned(), config.to_bytes())],
            message: layout::init_message(),
            time_secs: EPOCH_MS / 1000,
        })
        .await
        .map_err(|e| SimError::Setup(format!("initial commit: {e}")))?;
    if opts.faults {
        host.set_faults(opts.repo_faults.unwrap_or_default());
    }
    let net_model = if opts.faults {
        LinkModel::default()
    } else {
        LinkModel {
            loss: 0.0,
            ..LinkModel::default()
        }
    };
    let net = SimNet::new(derive_seed(opts.seed, "net"), net_model, trace.clone());
    let world = World {
        opts: opts.clone(),
        trace: trace.clone(),
        net,
        host,
        base: dir.path().to_path_buf(),
        room,
        state: Arc::new(Mutex::new(State::default())),
        started: tokio::time::Instant::now(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(opts.seed, "nodes"));
    for id in 1..=opts.nodes {
        let skew_ms: i64 = if opts.faults {
            rng.random_range(-120_000..=120_000)
        } else {
            0
        };
        let user = UserId::new(format!("user{id}"))
            .map_err(|e| SimError::Setup(format!("user name: {e}")))?;
        let mut g = world.lock();
        g.faults.max_clock_skew_ms = g.faults.max_clock_skew_ms.max(skew_ms.abs());
        g.slots.insert(
            id,
            Slot {
                user,
                disk: SimDisk::new(Duration::from_millis(rng.random_range(1..=8))),
                handle: None,
                incarnation: 0,
                skew_ms,
                stopping: false,
            },
        );
    }
    for id in 1..=opts.nodes {
        world.start_node(id).await.map_err(SimError::Setup)?;
    }
    let start = tokio::time::Instant::now();
    let until = start + opts.duration;
    // The operating system writes dirty pages back every 5 s.
    let writeback = {
        let w = world.clone();
        actix_rt::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let disks: Vec<SimDisk> = w.lock().slots.values().map(|s| s.disk.clone()).collect();
                for d in disks {
                    d.writeback();
                }
            }
        })
    };
    let observer = {
        let w = world.clone();
        actix_rt::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                w.observe();
            }
        })
    };
    let load = actix_rt::spawn(workload(world.clone(), until));
    let faulter = opts
        .faults
        .then(|| actix_rt::spawn(faults(world.clone(), until)));
    tokio::time::sleep_until(until).await;
    load.abort();
    if let Some(f) = faulter {
        f.abort();
    }
    settle(&world).await;
    let repo_commits = check_end(&world).await;
    world.observe();
    writeback.abort();
    observer.abort();
    for id in world.up_nodes() {
        let handle = world
            .lock()
            .slots
            .get_mut(&id)
            .and_then(|s| s.handle.take());
        if let Some(h) = handle {
            h.stop().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sim = start.elapsed();
    let net = world.net.stats();
    let repo = world.host.stats();
    let g = std::mem::take(&mut *world.lock());
    if let Err(e) = trace.finish() {
        return Err(SimError::Trace(std::io::Error::other(e)));
    }
    drop(dir);
    Ok((
        Finished {
            violations: g.violations,
            workload: g.workload,
            faults: g.faults,
            leader_changes: g.leader_changes,
            repo_commits,
            net,
            repo,
        },
        trace,
        sim,
    ))
}

/// Faults stop: the network heals, the repository recovers, every node
/// that is down comes back. Then the liveness probe.
async fn settle(world: &World) {
    world.trace.event(0, "faults.stop", "");
    world.net.heal();
    world.host.set_outage(false);
    world.host.set_faults(RepoFaults::none());
    // Nodes a fault took down come back now (their restart task may
    // still be sleeping; starting twice is harmless).
    for id in 1..=world.opts.nodes {
        if world.handle(id).is_none() {
            if let Err(e) = world.start_node(id).await {
                world.violation("restart", e, None);
            }
        }
    }
    let bound = world.opts.liveness_bound;
    let deadline = tokio::time::Instant::now() + bound;
    // A leader.
    let leader = loop {
        world.observe();
        if let Some((l, _)) = world.leader() {
            break Some(l);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(leader) = leader else {
        world.violation(
            "liveness",
            format!("no leader {}s after the faults stopped", bound.as_secs()),
            Some("leader"),
        );
        return;
    };
    // The probe commits...
    let Some(h) = world.handle(leader) else {
        return;
    };
    let probe = loop {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            h.consensus.send(Submit {
                sender: h.user.clone(),
                command: Command::Post {
                    conversation: match ConversationId::new("probe") {
                        Ok(c) => c,
                        Err(_) => return,
                    },
                    content: "liveness probe".into(),
                },
            }),
        )
        .await;
        match res {
            Ok(Ok(Ok((req, Proposed::Committed(ApplyOutcome::Applied { index }))))) => {
                world
                    .trace
                    .event(leader, "probe", format!("{} at {index}", req.id));
                break Some(index);
            }
            other => {
                world
                    .trace
                    .event(leader, "probe.retry", answer_label(&other));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let Some(probe) = probe else {
        world.violation(
            "liveness",
            format!(
                "the probe did not commit {}s after the faults stopped",
                bound.as_secs()
            ),
            Some("probe"),
        );
        return;
    };
    // ...and reaches the repository and every node.
    let deadline = tokio::time::Instant::now() + world.opts.commit_interval + bound;
    loop {
        let in_repo = world
            .host
            .head()
            .and_then(|(_, m)| layout::watermark(&m))
            .unwrap_or(0)
            >= probe;
        let everywhere = world.up_nodes().iter().all(|id| {
            world
                .handle(*id)
                .and_then(|h| h.replica.metrics().last_applied)
                .is_some_and(|l| l.index >= probe)
        });
        if in_repo && everywhere {
            world.trace.event(0, "settled", format!("probe {probe}"));
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            world.violation(
                "liveness",
                format!(
                    "the probe (index {probe}) was not in the repository (in_repo={in_repo}) and on every node (everywhere={everywhere}) within one commit interval plus {}s",
                    bound.as_secs()
                ),
                None,
            );
            break;
        }
        if !in_repo {
            if let Some((l, _)) = world.leader() {
                if let Some(h) = world.handle(l) {
                    let _ = h.committer.send(Flush(FlushReason::OnDemand)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Requests still in flight settle (a forward to a dead leader waits
    // out its timeout, then goes to the outbox), outboxes drain, and a
    // last flush writes what they added.
    tokio::time::sleep(world.opts.commit_interval + Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        let drained = world.up_nodes().iter().all(|id| {
            world
                .handle(*id)
                .is_some_and(|h| h.storage.outbox.is_empty())
        });
        if drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(h) = world.leader().and_then(|(l, _)| world.handle(l)) {
        let _ = h.committer.send(Flush(FlushReason::OnDemand)).await;
    }
}

/// The repository's view: each message's post index, count and final
/// state, from the batch files at the head.
#[derive(Default)]
struct RepoView {
    posts: BTreeMap<Ulid, Vec<u64>>,
    state: BTreeMap<Ulid, (String, bool)>,
    indexes: BTreeMap<u64, Ulid>,
}

fn repo_view(world: &World) -> Result<RepoView, String> {
    let mut changes = Vec::new();
    for (path, bytes) in world.host.files_at_head() {
        if path == layout::CONFIG_PATH || !path.starts_with(layout::MESSAGES_DIR) {
            continue;
        }
        let mut c = layout::parse_batch(&path, &bytes).map_err(|e| format!("{path}: {e}"))?;
        changes.append(&mut c);
    }
    changes.sort_by_key(|c| c.index);
    let mut v = RepoView::default();
    for c in changes {
        if let Some(prev) = v.indexes.insert(c.index, c.request) {
            if prev != c.request {
                return Err(format!(
                    "index {} holds {} and {}",
                    c.index, prev, c.request
                ));
            }
        }
        match c.kind {
            ChangeKind::Post { message, content } => {
                v.posts.entry(message).or_default().push(c.index);
                v.state.insert(message, (content, false));
            }
            ChangeKind::Edit { message, content } => {
                if let Some(s) = v.state.get_mut(&message) {
                    s.0 = content;
                }
            }
            ChangeKind::Delete { message } => {
                if let Some(s) = v.state.get_mut(&message) {
                    s.1 = true;
                }
            }
            ChangeKind::CreateConversation { .. } => {}
        }
    }
    Ok(v)
}

/// The end-state invariants. Answers how many commits the branch has.
async fn check_end(world: &World) -> u64 {
    for v in world.host.check_history() {
        world.violation("repository-history", v, Some("repo.commit"));
    }
    let view = match repo_view(world) {
        Ok(v) => v,
        Err(e) => {
            world.violation("repository-readable", e, None);
            return 0;
        }
    };
    let acked: Vec<Acked> = world.lock().acked.values().cloned().collect();
    // Exactly once in the repository.
    for (id, idx) in &view.posts {
        if idx.len() > 1 {
            world.violation(
                "exactly-once",
                format!(
                    "message {id} is in the repository {} times (indexes {idx:?})",
                    idx.len()
                ),
                Some(&id.to_string()),
            );
        }
    }
    for a in &acked {
        if let Command::Post { .. } = a.request.command {
            if !view.posts.contains_key(&a.request.id) {
                world.violation(
                    "acknowledged-in-repository",
                    format!(
                        "message {} acknowledged by node {} (index {:?}) is not in the repository",
                        a.request.id, a.node, a.index
                    ),
                    Some(&a.request.id.to_string()),
                );
            }
        }
    }
    // Every live node: every acknowledged message once, same order, same
    // final text as the repository, synced records that match it.
    let commits = match world.host.head() {
        Some((head, _)) => {
            let client = world.host.client(0);
            client.history(&head, 1_000_000).await.unwrap_or_default()
        }
        None => Vec::new(),
    };
    let marks: BTreeMap<String, u64> = commits
        .iter()
        .map(|c| (c.sha.clone(), layout::watermark(&c.message).unwrap_or(0)))
        .collect();
    for id in world.up_nodes() {
        let Some(h) = world.handle(id) else { continue };
        let records = match h.storage.reader.all_messages() {
            Ok(r) => r,
            Err(e) => {
                world.violation("storage-readable", format!("node {id}: {e}"), None);
                continue;
            }
        };
        let mut seen: BTreeMap<Ulid, u64> = BTreeMap::new();
        for r in &records {
            let m = &r.message;
            if let Some(prev) = seen.insert(m.id, r.index) {
                world.violation(
                    "exactly-once",
                    format!(
                        "node {id} holds message {} twice (indexes {prev} and {})",
                        m.id, r.index
                    ),
                    Some(&m.id.to_string()),
                );
            }
            if let Some(idx) = view.posts.get(&m.id) {
                if !idx.contains(&r.index) {
                    world.violation(
                        "committed-order",
                        format!(
                            "node {id} has message {} at index {}, the repository at {idx:?}",
                            m.id, r.index
                        ),
                        Some(&m.id.to_string()),
                    );
                }
            }
            if let Some((content, deleted)) = view.state.get(&m.id) {
                // A deleted message's text is gone on the node; the
                // repository keeps its history.
                let same = *deleted == m.deleted && (m.deleted || *content == m.content);
                if !same {
                    world.violation(
                        "synced-matches-repository",
                        format!(
                            "node {id}: message {} is ({:?}, deleted={}) but ({content:?}, deleted={deleted}) in the repository",
                            m.id, m.content, m.deleted
                        ),
                        Some(&m.id.to_string()),
                    );
                }
            }
        }
        for a in &acked {
            if matches!(a.request.command, Command::Post { .. })
                && !seen.contains_key(&a.request.id)
            {
                world.violation(
                    "acknowledged-everywhere",
                    format!(
                        "node {id} lacks acknowledged message {} (acked by node {})",
                        a.request.id, a.node
                    ),
                    Some(&a.request.id.to_string()),
                );
            }
        }
        // The node's synced watermark names a commit of the branch that
        // carries that watermark.
        match h.storage.reader.synced_up_to() {
            Ok(w) if w > 0 => match h.storage.reader.commit_for(w) {
                Ok(Some(sha)) => match marks.get(&sha) {
                    Some(m) if *m == w => {}
                    Some(m) => world.violation(
                        "synced-matches-repository",
                        format!("node {id}: synced up to {w} at {sha}, whose trailer says {m}"),
                        Some(&sha[..sha.len().min(8)]),
                    ),
                    None => world.violation(
                        "synced-matches-repository",
                        format!("node {id}: synced up to {w} at {sha}, which is not on the branch"),
                        Some(&sha[..sha.len().min(8)]),
                    ),
                },
                Ok(None) => world.violation(
                    "synced-matches-repository",
                    format!("node {id}: synced up to {w} without a commit"),
                    None,
                ),
                Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
            },
            Ok(_) => {}
            Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
        }
    }
    check_settings(world).await;
    commits.len() as u64
}

/// The room's settings: every live node that applied the newest change
/// holds the same settings, and the repository's `config.json` has them.
async fn check_settings(world: &World) {
    let mut newest: Option<(NodeId, skygit_consensus::model::RoomSettings)> = None;
    let mut all = Vec::new();
    for id in world.up_nodes() {
        let Some(h) = world.handle(id) else { continue };
        match h.storage.reader.settings() {
            Ok(s) => {
                if newest.is_none_or(|(_, n)| s.changed_index > n.changed_index) {
                    newest = Some((id, s));
                }
                all.push((id, s));
            }
            Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
        }
    }
    let Some((holder, s)) = newest.filter(|(_, s)| s.changed_index > 0) else {
        return;
    };
    for (id, other) in all {
        if other.changed_index == s.changed_index && other != s {
            world.violation(
                "settings-agree",
                format!("node {id} has settings {other:?}, node {holder} {s:?}"),
                None,
            );
        }
    }
    let Some((head, _)) = world.host.head() else {
        world.violation(
            "settings-in-repository",
            "the repository is empty".into(),
            None,
        );
        return;
    };
    let client = world.host.client(0);
    match readback::config_at(&client, &head).await {
        Ok(Some(Ok(c))) => {
            let wanted = c.with_settings(&s);
            if c != wanted {
                world.violation(
                    "settings-in-repository",
                    format!(
                        "config.json has interval {} s and {} voters; the room's settings (index {}) say {:?} and {:?}",
                        c.commit_interval_secs, c.voters, s.changed_index, s.commit_interval_secs, s.voters
                    ),
                    Some(&head[..head.len().min(8)]),
                );
            }
        }
        Ok(Some(Err(e))) => {
            world.violation("settings-in-repository", format!("config.json: {e}"), None)
        }
        Ok(None) => world.violation("settings-in-repository", "no config.json".into(), None),
        Err(e) => world.violation("repository-readable", e.to_string(), None),
    }
}
