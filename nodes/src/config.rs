//! The node's configuration: defaults, then a TOML file, then environment
//! variables, then command-line flags (each overrides the one before).
//! Environment variables and flags are declared on the clap arguments in
//! `main.rs`; this module holds the file format, the merge and the checks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use skygit_consensus::model::{RoomId, UserId};

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The configuration file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub user: Option<String>,
    pub repo: Option<String>,
    #[serde(default)]
    pub raft: RaftFileConfig,
}

/// Raft timing in the configuration file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RaftFileConfig {
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
}

/// Values given on the command line or in the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub user: Option<String>,
    pub repo: Option<String>,
}

/// The checked configuration a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub user: UserId,
    pub room: RoomId,
    pub raft: openraft::Config,
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            bail!(
                "config file {} is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/skygit"),
        None => PathBuf::from(".skygit"),
    }
}

fn default_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| UserId::new(u.as_str()).is_ok())
        .unwrap_or_else(|| "me".to_owned())
}

/// Merges file and overrides over the defaults and checks the result.
pub fn resolve(file: FileConfig, over: Overrides) -> anyhow::Result<NodeConfig> {
    let user = over.user.or(file.user).unwrap_or_else(default_user);
    let user = UserId::new(user.as_str()).with_context(|| format!("invalid user name {user:?}"))?;
    let repo = over
        .repo
        .or(file.repo)
        .context("no repository given: use --repo, SKYGIT_REPO or `repo` in the config file")?;
    let room =
        RoomId::new(repo.as_str()).with_context(|| format!("invalid repository {repo:?}"))?;
    let data_dir = over
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(default_data_dir);
    let mut raft = skygit_consensus::config::raft_config(
        room.as_str(),
        file.raft
            .snapshot_every
            .unwrap_or(skygit_consensus::config::DEFAULT_SNAPSHOT_EVERY),
        skygit_consensus::config::DEFAULT_KEEP_AFTER_SNAPSHOT,
    );
    if let Some(h) = file.raft.heartbeat_ms {
        raft.heartbeat_interval = h;
    }
    if let Some(m) = file.raft.election_min_ms {
        raft.election_timeout_min = m;
    }
    if let Some(m) = file.raft.election_max_ms {
        raft.election_timeout_max = m;
    }
    let raft = raft.validate().context("invalid [raft] settings")?;
    Ok(NodeConfig {
        data_dir,
        user,
        room,
        raft,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file =
            FileConfig::parse("user = \"ana\"\nrepo = \"./a.git\"\n[raft]\nheartbeat_ms = 50\n")
                .unwrap();
        let cfg = resolve(
            file,
            Overrides {
                repo: Some("./b.git".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.user.as_str(), "ana");
        assert_eq!(cfg.room.as_str(), "./b.git");
        assert_eq!(cfg.raft.heartbeat_interval, 50);
        assert_eq!(cfg.raft.enable_pre_vote, Some(true));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(FileConfig::parse("colour = \"blue\"").is_err());
        assert!(FileConfig::parse("user = 3").is_err());
        assert!(FileConfig::parse("[raft\n").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let e = resolve(
            FileConfig::default(),
            Overrides {
                user: Some("a b".into()),
                repo: Some("r".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("invalid user name"), "{e:#}");
        let e = resolve(FileConfig::default(), Overrides::default()).unwrap_err();
        assert!(format!("{e:#}").contains("no repository"), "{e:#}");
        let file = FileConfig::parse(
            "repo = \"r\"\n[raft]\nelection_min_ms = 900\nelection_max_ms = 100\n",
        )
        .unwrap();
        assert!(resolve(file, Overrides::default()).is_err());
    }
}
