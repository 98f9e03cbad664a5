//! `skygit`: serverless team chat stored in a git repository.
//!
//! The binary's edge: command-line parsing, configuration, logging, the
//! runtime and signal handling. The work happens in `skygit-actors`.

use std::path::PathBuf;

use skygit::{auth, client, config, local_node, members, node, repo, sim};

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
    /// The room's members and their SSH public keys (plain git remotes):
    /// `.messages/allowed_signers`, as `ssh-keygen -Y verify` reads it.
    Members(members::MembersArgs),
    /// Check every line of a room's history against its author's SSH keys.
    Verify(skygit::verify::VerifyArgs),
    /// Log in to GitHub with the OAuth device flow, like `gh auth login`
    /// (`--with-token`: read a token from standard input); the token is
    /// kept owner-only in the config directory.
    Login(auth::LoginArgs),
    /// Check the stored GitHub login (`skygit auth status`).
    Auth(auth::AuthArgs),
    /// Forget the stored GitHub login.
    Logout(auth::LogoutArgs),
    /// Print the node API's OpenAPI description (what `GET /openapi.json`
    /// serves), generated from the API's types.
    Openapi,
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
    /// Your SSH key: signs this node's presence and posts on a room that
    /// verifies identities (a GitHub room, or one with a members file). An
    /// unencrypted OpenSSH private key signs by itself; a passphrase-protected
    /// one, or a public key file, signs through ssh-agent (SSH_AUTH_SOCK).
    /// Without it, the agent's first key the room lists for you signs.
    #[arg(long, env = "SKYGIT_SSH_KEY")]
    ssh_key: Option<PathBuf>,
    /// A TOML configuration file (flags and environment override it).
    #[arg(long, env = "SKYGIT_CONFIG")]
    config: Option<PathBuf>,
    /// Run this many raft members in this process over the in-process
    /// transport (2 to 5) instead of joining the room's WebRTC mesh.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=5))]
    local_nodes: Option<u64>,
    #[command(flatten)]
    mesh: node::MeshArgs,
    #[command(flatten)]
    ice: IceArgs,
}

/// STUN and TURN: this node's own servers and TURN credentials. Prefer
/// the environment or the config file for secrets (a flag shows in `ps`).
#[derive(Args)]
struct IceArgs {
    /// A STUN or TURN server (`stun:host:port`, `turn:host:port`),
    /// repeatable; replaces the room's list (`none`: no servers, host
    /// candidates only). Default: the room's `ice_servers`, else public
    /// STUN servers.
    #[arg(long = "ice-server", env = "SKYGIT_ICE_SERVERS", value_delimiter = ',')]
    ice_servers: Vec<String>,
    /// TURN user name for TURN servers named without one.
    #[arg(long, env = "SKYGIT_TURN_USERNAME")]
    turn_username: Option<String>,
    /// TURN password for TURN servers named without one.
    #[arg(long, env = "SKYGIT_TURN_CREDENTIAL", hide_env_values = true)]
    turn_credential: Option<String>,
    /// TURN REST-API shared secret (coturn's `static-auth-secret`): this
    /// node makes time-limited credentials from it.
    #[arg(long, env = "SKYGIT_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
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
                ssh_key: self.ssh_key,
                repo: self.repo,
                remote,
                ice: config::IceOverrides {
                    servers: (!self.ice.ice_servers.is_empty()).then_some(self.ice.ice_servers),
                    turn_username: self.ice.turn_username,
                    turn_credential: self.ice.turn_credential,
                    turn_secret: self.ice.turn_secret,
                },
            },
        )
        .context("configuration")
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", skygit::api::openapi::json());
        return Ok(());
    }
    if let Command::Sim(a) = cli.command {
        // Simulated nodes log what real ones do, thousands of times per
        // simulated hour: the run's report says what matters.
        skygit::init_tracing("off");
        return sim::run(a);
    }
    skygit::init_tracing(skygit::NODE_LOG);
    skygit::node_system().block_on(async move {
        match cli.command {
            Command::Node(a) => match a.local_nodes {
                Some(nodes) => {
                    let api = a.mesh.api;
                    local_node::run(a.resolve()?, nodes, api).await
                }
                None => {
                    let mesh = a.mesh.clone();
                    node::run(a.resolve()?, mesh).await
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
            Command::Members(a) => members::run(a).await,
            Command::Verify(a) => skygit::verify::run(a).await,
            Command::Login(a) => auth::login(a).await,
            Command::Auth(a) => auth::status(a).await,
            Command::Logout(a) => auth::logout(a),
            Command::History(a) => repo::history(a).await,
            Command::Sim(_) | Command::Openapi => {
                anyhow::bail!("this command runs outside the node's runtime")
            }
        }
    })
}
