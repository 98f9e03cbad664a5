//! skygit's deterministic simulator: whole rooms of real actors on
//! simulated ports, with faults, reproducible from a seed.
//!
//! - [`clock`]: each node's wall clock, skewed, on tokio's paused time.
//! - [`trace`]: the run's event trace and its digest.
//! - [`net`]: the seeded network model (links, latency, partitions).
//! - [`repo`]: the simulated repository host (commits, presence, faults).
//! - [`world`]: one run: nodes, workload, faults, invariants, report.

#[cfg(not(tokio_unstable))]
compile_error!(
    "the simulator needs tokio's rng_seed: build with --cfg tokio_unstable \
     (.cargo/config.toml sets it; a RUSTFLAGS variable overrides that file)"
);

pub mod clock;
pub mod net;
pub mod repo;
pub mod trace;
pub mod world;

pub use clock::SimClock;
pub use trace::{derive_seed, Trace};
