//! What to simulate (options, canaries, fault classes) and what a run reports.

use super::*;

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
    /// A survivor re-forms the group without winning the founding
    /// compare-and-swap on the branch.
    FounderSkipsCas,
}

impl Canary {
    pub const ALL: [Canary; 4] = [
        Canary::CommitterIgnoresCas,
        Canary::DuplicateApply,
        Canary::AckBeforeDurable,
        Canary::FounderSkipsCas,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Canary::CommitterIgnoresCas => "committer-ignores-cas",
            Canary::DuplicateApply => "duplicate-apply",
            Canary::AckBeforeDurable => "ack-before-durable",
            Canary::FounderSkipsCas => "founder-skips-cas",
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
    /// The leader and more voters, a majority, crash at once: for good
    /// (until the faults stop) or back only after the survivors had time
    /// to re-form the group.
    MajorityLoss,
}

impl FaultClass {
    pub const ALL: [FaultClass; 8] = [
        FaultClass::Crash,
        FaultClass::PowerLoss,
        FaultClass::Leave,
        FaultClass::Partition,
        FaultClass::LinkFailure,
        FaultClass::RepoOutage,
        FaultClass::PowerCut,
        FaultClass::MajorityLoss,
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
            FaultClass::MajorityLoss => "majority-loss",
        }
    }

    /// Which class a roll of the injector's 100-sided die picks.
    pub(super) fn of_roll(roll: u32) -> FaultClass {
        match roll {
            0..=17 => FaultClass::Crash,
            18..=33 => FaultClass::PowerLoss,
            34..=39 => FaultClass::Leave,
            40..=64 => FaultClass::Partition,
            65..=77 => FaultClass::LinkFailure,
            78..=84 => FaultClass::MajorityLoss,
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
    /// A majority of the voters crashed at once.
    pub majority_losses: u64,
    /// Seconds from each majority loss until a leader of a newer group
    /// epoch ran (the survivors re-formed), for the losses they did.
    pub reform_seconds: Vec<f64>,
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
    /// The branch's newest group epoch at the end (how many times the
    /// room's group was re-formed, at least).
    pub group_epoch: u64,
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
