//! Raft timing and size settings for a room.

use openraft::{Config, SnapshotPolicy};

/// Entries per append RPC: with messages of at most 16 KiB this keeps an
/// append well under the codec's 8 MiB frame limit.
pub const MAX_PAYLOAD_ENTRIES: u64 = 256;

/// Entries between snapshots by default. A snapshot holds the whole state
/// machine, so its cost grows with the room; 50,000 entries keeps it rare.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 50_000;
/// Log entries kept behind a snapshot by default, for peers that lag.
pub const DEFAULT_KEEP_AFTER_SNAPSHOT: u64 = 1_000;

/// Raft settings for a room. `snapshot_every` is how many applied entries
/// trigger a new snapshot; the log keeps `keep_after_snapshot` entries
/// behind it for peers that lag a little.
pub fn raft_config(room: &str, snapshot_every: u64, keep_after_snapshot: u64) -> Config {
    Config {
        cluster_name: room.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 5_000,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: keep_after_snapshot,
        // A laptop waking up must not depose a healthy leader.
        enable_pre_vote: Some(true),
        ..Default::default()
    }
}
