//! `skygit`: serverless team chat stored in a git repository.
//!
//! The binary's edge: command-line parsing, configuration, logging, the
//! runtime and signal handling. The work happens in `skygit-actors`.

mod api;
mod bench;
mod bench_api;
mod bench_commit;
mod bench_mesh;
mod client;
mod config;
mod demo;
mod demo_procs;
mod mesh_node;
mod metrics;
mod node;
mod repo;
mod sim;
mod transport;

use std::path::{Path, PathBuf};

/// mimalloc: the node allocates many small, short-lived buffers (frames,
/// entries) across threads, where it measured faster than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skygit",
    version,
    about = "Serverless team chat stored in a git repository"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this node's member of a room; lines typed on standard input are
    /// posted, messages print as they commit.
    Node(NodeArgs),
    /// A room of node processes on an embedded repository: they meet over
    /// WebRTC, post, lose their leader to kill -9, recover, commit, and the
    /// repository's history is checked against the room's log.
    Demo(demo::DemoArgs),
    /// Make a repository a skygit room: write `.messages/config.json`.
    Init(repo::InitArgs),
    /// Ask the running node to commit its room to the repository now
    /// (`--offline`: commit a stopped node's room from its data directory).
    Push(PushArgs),
    /// Post a message through the running node.
    Send(client::SendArgs),
    /// Print recent messages from the running node (`--follow`: and keep
    /// printing them as they commit).
    Tail(client::TailArgs),
    /// Print the running node's status: raft, repository, peers.
    Status(client::StatusArgs),
    /// Print a room's messages read back from its repository alone.
    History(repo::HistoryArgs),
    /// Simulate a whole room with faults, reproducibly from a seed, and
    /// check that no acknowledged message is lost or duplicated.
    Sim(sim::SimArgs),
    /// Benchmarks (they print numbers; they assert nothing).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Raft throughput and latency, send to applied on every node, over
    /// durable RocksDB storage and the in-process transport.
    Raft(bench::RaftBenchArgs),
    /// One flush of many messages through each repository backend: a
    /// git server on loopback and the GitHub-compatible test server.
    Commit(bench_commit::CommitBenchArgs),
    /// Node processes over real WebRTC on loopback: channel set-up, first
    /// commit, latency at a light load and sustained throughput.
    Mesh(bench_mesh::MeshBenchArgs),
    /// GET /messages latency and throughput on a room of a million messages.
    Api(bench_api::ApiBenchArgs),
}

#[derive(Args)]
struct NodeArgs {
    /// The room's repository (`github:owner/name`, a git URL or a path;
    /// a path that does not exist becomes a new bare repository). The
    /// token for GitHub comes from `GITHUB_TOKEN` or the config file.
    #[arg(long, env = "SKYGIT_REPO")]
    repo: Option<String>,
    /// Commit to the repository every this many seconds, overriding the
    /// room's `commit_interval_secs`.
    #[arg(long, env = "SKYGIT_COMMIT_INTERVAL")]
    commit_interval: Option<u64>,
    #[command(flatten)]
    remote: repo::RemoteArgs,
    /// Your user name in the room.
    #[arg(long, env = "SKYGIT_USER")]
    user: Option<String>,
    /// Where the node keeps its state.
    #[arg(long, env = "SKYGIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (flags and environment override it).
    #[arg(long, env = "SKYGIT_CONFIG")]
    config: Option<PathBuf>,
    /// Run this many raft members in this process over the in-process
    /// transport (2 to 5) instead of joining the room's WebRTC mesh.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5))]
    local_nodes: Option<u64>,
    #[command(flatten)]
    mesh: mesh_node::MeshArgs,
}

#[derive(Args)]
struct PushArgs {
    /// Commit a stopped node's room from its data directory instead of
    /// asking the running node.
    #[arg(long)]
    offline: bool,
    /// The running node's API address (default: what it recorded in its
    /// data directory).
    #[arg(long = "api-url", env = "SKYGIT_API_URL")]
    api_url: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
}

impl NodeArgs {
    /// The node's configuration: defaults, file, environment, flags.
    fn resolve(self) -> anyhow::Result<config::NodeConfig> {
        let file = match &self.config {
            Some(p) => config::FileConfig::load(p)?,
            None => config::FileConfig::default(),
        };
        let mut remote = self.remote.overrides();
        remote.commit_interval_secs = self.commit_interval;
        config::resolve(
            file,
            config::Overrides {
                data_dir: self.data_dir,
                user: self.user,
                repo: self.repo,
                remote,
            },
        )
        .context("configuration")
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Sim(a) = cli.command {
        // Simulated nodes log what real ones do, thousands of times per
        // simulated hour: the run's report says what matters.
        init_tracing("off");
        return sim::run(a);
    }
    init_tracing("warn,skygit=info,openraft=error,rtc_dtls=error,rtc_ice=error,rtc=error");
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("skygit-rt")
            .build()
            .expect("the tokio runtime starts")
    });
    system.block_on(async move {
        match cli.command {
            Command::Node(a) => match a.local_nodes {
                Some(nodes) => {
                    let api = a.mesh.api;
                    node::run(a.resolve()?, nodes, api).await
                }
                None => {
                    let mesh = a.mesh.clone();
                    mesh_node::run(a.resolve()?, mesh).await
                }
            },
            Command::Push(a) if a.offline => {
                let nodes = a.node.local_nodes.unwrap_or(1);
                repo::push(a.node.resolve()?, nodes).await
            }
            Command::Push(a) => {
                client::push(client::ClientArgs {
                    data_dir: a.node.data_dir,
                    api_url: a.api_url,
                    repo: a.node.repo,
                })
                .await
            }
            Command::Send(a) => client::send(a).await,
            Command::Tail(a) => client::tail(a).await,
            Command::Status(a) => client::status(a).await,
            Command::Init(a) => repo::init(a).await,
            Command::History(a) => repo::history(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Sim(_) => anyhow::bail!("the simulator runs outside the node's runtime"),
            Command::Bench(BenchCommand::Raft(a)) => bench::raft(a).await,
            Command::Bench(BenchCommand::Commit(a)) => bench_commit::commit(a).await,
            Command::Bench(BenchCommand::Mesh(a)) => bench_mesh::mesh(a).await,
            Command::Bench(BenchCommand::Api(a)) => bench_api::api(a).await,
        }
    })
}

/// A command's working directory: the one given, or a temporary one that
/// is removed when this value drops.
pub struct WorkDir {
    pub path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// Keeps `keep` (a path inside this directory) after this value drops:
    /// a temporary directory loses everything else and stays on disk, so
    /// what the user is told to open still exists. Returns where it is.
    pub fn keep_only(mut self, keep: &Path) -> anyhow::Result<PathBuf> {
        if let Some(t) = self._temp.take() {
            let dir = t.keep();
            for entry in std::fs::read_dir(&dir).context("cannot list the demo's directory")? {
                let path = entry?.path();
                if path != keep {
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.with_context(|| format!("cannot remove {}", path.display()))?;
                }
            }
        }
        Ok(keep.to_path_buf())
    }
}

pub fn work_dir(given: Option<PathBuf>) -> anyhow::Result<WorkDir> {
    Ok(match given {
        Some(path) => WorkDir { path, _temp: None },
        None => {
            let t = tempfile::tempdir().context("cannot make a temporary directory")?;
            WorkDir {
                path: t.path().to_path_buf(),
                _temp: Some(t),
            }
        }
    })
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
