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

mod checks;
mod faults;
mod options;
mod settle;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use checks::*;
use faults::*;
pub use options::*;
use settle::*;
use workload::*;

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
    /// What each (group epoch, room index) applied, and where first.
    applied: BTreeMap<(u64, u64), (Ulid, NodeId)>,
    violations: Vec<Violation>,
    workload: WorkloadStats,
    faults: FaultStats,
    leader_changes: u64,
    last_leader: Option<(NodeId, u64)>,
    /// Nodes some fault took down, and when they come back.
    down_until: BTreeMap<NodeId, tokio::time::Instant>,
    /// The last majority loss not yet recovered from: when, and the
    /// newest group epoch then.
    majority_lost: Option<(tokio::time::Instant, u64)>,
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
            attachments: None,
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
                identity: None,
                reform: Some(skygit_consensus::reform::ReformPolicy {
                    after: Duration::from_secs(15),
                    skip_founding_commit: self.opts.canary == Some(Canary::FounderSkipsCas),
                }),
            },
            media_stores: None,
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
                            let at = (ev.epoch, ev.index);
                            match g.applied.get(&at) {
                                Some((req, by)) if *req != ev.request => Some((*req, *by)),
                                Some(_) => None,
                                None => {
                                    g.applied.insert(at, (ev.request, id));
                                    None
                                }
                            }
                        };
                        if let Some((req, by)) = clash {
                            world.violation(
                                "committed-order",
                                format!(
                                    "node {id} applied {} at index {} of epoch {}, node {by} applied {req} there",
                                    ev.request, ev.index, ev.epoch
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
                // A raft stopped on purpose (the node is moving into a
                // new group) is not a failure.
                let fatal = match h.replica.metrics().running_state {
                    Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                    Err(f) => Some(f),
                };
                if let Some(fatal) = fatal {
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
        if let Some((l, _)) = now {
            let epoch = self.handle(l).map_or(0, |h| h.replica.group().epoch);
            let mut g = self.lock();
            if let Some((at, before)) = g.majority_lost {
                if epoch > before {
                    let secs = at.elapsed().as_secs_f64();
                    g.faults.reform_seconds.push(secs);
                    g.majority_lost = None;
                    drop(g);
                    self.trace
                        .event(l, "reformed", format!("epoch {epoch} after {secs:.1}s"));
                }
            }
        }
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
        group_epoch: st.group_epoch,
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
    group_epoch: u64,
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
    let group_epoch = world
        .host
        .head()
        .map_or(0, |(_, message)| layout::group_epoch(&message));
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
            group_epoch,
            net,
            repo,
        },
        trace,
        sim,
    ))
}
