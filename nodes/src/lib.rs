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
pub mod client;
pub mod config;
pub mod local_node;
pub mod metrics;
pub mod node;
pub mod repo;
pub mod sim;
pub mod transport;

use anyhow::Context;

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
