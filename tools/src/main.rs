//! `skygit-tools`: the demos and benchmarks of skygit, kept apart from the
//! node that ships. They drive real nodes: `demo` and `bench mesh` start
//! `skygit node` processes (the `skygit` binary next to this one, or
//! `SKYGIT_BIN`); `demo --in-process`, `bench raft` and `bench api` run
//! rooms in this process; `bench commit` flushes into a `git daemon` and
//! the GitHub test server on loopback. Benchmarks print numbers (and a
//! JSON line with `--json`); they assert nothing.

mod bench;
mod bench_api;
mod bench_attach;
mod bench_call;
mod bench_commit;
mod bench_mesh;
mod bench_nat;
mod bench_reform;
mod bench_verify;
mod demo;
mod demo_procs;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc, as the node uses it, so the benchmarks measure what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skygit-tools",
    version,
    about = "skygit's demos and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A room of node processes on an embedded repository: they meet over
    /// WebRTC, post, lose their leader to kill -9, recover, commit, and the
    /// repository's history is checked against the room's log.
    Demo(demo::DemoArgs),
    /// Benchmarks (they print numbers; they assert nothing).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Raft throughput and latency over RocksDB and the in-process transport.
    Raft(bench::RaftBenchArgs),
    /// One flush of many messages through each repository backend.
    Commit(bench_commit::CommitBenchArgs),
    /// Node processes over real WebRTC on loopback.
    Mesh(bench_mesh::MeshBenchArgs),
    /// `GET /messages` latency and throughput on a room of a million messages.
    Api(bench_api::ApiBenchArgs),
    /// Link set-up time between two homes behind NAT routers (network
    /// namespaces; root): through STUN or a TURN relay.
    Nat(bench_nat::NatBenchArgs),
    /// `skygit verify` on a room of many signed messages.
    Verify(bench_verify::VerifyBenchArgs),
    /// Five node processes lose two of three voters: time from the loss to
    /// the survivors' first committed post, over several runs.
    Reform(bench_reform::ReformBenchArgs),
    /// A file posted on one of three node processes: time to every node
    /// over the mesh, to the room's storage (Git LFS, S3), and chat latency
    /// during the transfer.
    Attach(bench_attach::AttachBenchArgs),
    /// Calls between two headless Chromium pages of a room of three node
    /// processes: click to first decoded remote frame, direct and with the
    /// signalling relayed by the third node.
    Call(bench_call::CallBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    skygit::init_tracing(skygit::NODE_LOG);
    skygit::node_system().block_on(async move {
        match cli.command {
            Command::Demo(a) => demo::run(a).await,
            Command::Bench(BenchCommand::Raft(a)) => bench::raft(a).await,
            Command::Bench(BenchCommand::Commit(a)) => bench_commit::commit(a).await,
            Command::Bench(BenchCommand::Mesh(a)) => bench_mesh::mesh(a).await,
            Command::Bench(BenchCommand::Api(a)) => bench_api::api(a).await,
            Command::Bench(BenchCommand::Nat(a)) => bench_nat::nat(a).await,
            Command::Bench(BenchCommand::Verify(a)) => bench_verify::verify(a).await,
            Command::Bench(BenchCommand::Reform(a)) => bench_reform::reform(a).await,
            Command::Bench(BenchCommand::Attach(a)) => bench_attach::attach(a).await,
            Command::Bench(BenchCommand::Call(a)) => bench_call::call(a).await,
        }
    })
}

/// The `skygit` binary the node processes run: `SKYGIT_BIN`, or the one
/// next to this binary (cargo builds both into the same directory).
pub fn skygit_binary() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("SKYGIT_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("cannot find this binary's path")?
            .with_file_name("skygit"),
    };
    if !bin.is_file() {
        anyhow::bail!(
            "no skygit binary at {} (build it with `cargo build -p skygit`, the same profile as this one, or set SKYGIT_BIN)",
            bin.display()
        );
    }
    Ok(bin)
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
