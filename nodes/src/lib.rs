//! The skygit node as a library: the binary (`main.rs`) and the developer
//! tools (`skygit-tools`: demos and benchmarks) build on it.
//!
//! [`node`] runs a node on the room's WebRTC mesh; [`local_node`] runs a
//! room's members in this process (`--local-nodes`); [`api`] is the HTTP API, web UI and
//! dashboard; [`client`] the `send`/`tail`/`status`/`push` commands;
//! [`repo`] `init`, `push --offline` and `history`; [`sim`] the simulator
//! command; [`config`] the layered configuration; [`metrics`] the
//! Prometheus exporter; [`transport`] WebRTC as the actors' transport port.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod local_node;
pub mod members;
pub mod metrics;
pub mod node;
pub mod repo;
pub mod sim;
pub mod transport;
pub mod verify;

use anyhow::Context;

/// The node's log filter unless `RUST_LOG` says otherwise (the WebRTC
/// crates only at `error`).
pub const NODE_LOG: &str = "warn,skygit=info,openraft=error,rtc_dtls=error,rtc_ice=error,rtc=error";

/// The actix system on a multi-threaded tokio runtime that a node (and
/// the tools that run rooms) work in.
pub fn node_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("skygit-rt")
            .build()
            .expect("the tokio runtime starts")
    })
}

/// Logs to standard error, filtered by `RUST_LOG` or else `default`.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
