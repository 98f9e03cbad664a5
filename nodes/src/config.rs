//! The node's configuration: defaults, then a TOML file, then environment
//! variables, then command-line flags (each overrides the one before).
//! Environment variables and flags are declared on the clap arguments in
//! `main.rs`; this module holds the file format, the merge and the checks.

use skygit_actors::ice::{IceKind, IceServer};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use skygit_actors::layout::{MAX_COMMIT_INTERVAL_SECS, MIN_COMMIT_INTERVAL_SECS};
use skygit_consensus::model::{RoomId, UserId};
use skygit_remotes::RemoteOptions;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The configuration file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub user: Option<String>,
    /// The user's SSH key file: a private key, or a public key whose
    /// private half is in ssh-agent (signs this node's presence and posts).
    pub ssh_key: Option<PathBuf>,
    pub repo: Option<String>,
    /// The log branch (default `main`).
    pub branch: Option<String>,
    /// GitHub API base URL (GitHub Enterprise, tests).
    pub github_api: Option<String>,
    /// GitHub token; `GITHUB_TOKEN` overrides it. Keep the file private.
    pub github_token: Option<String>,
    /// Overrides the room's commit interval on this node, in seconds.
    pub commit_interval_secs: Option<u64>,
    /// STUN and TURN server URLs, replacing the room's list (`[]`: none).
    pub ice_servers: Option<Vec<String>>,
    /// TURN user name and credential for TURN servers named without any.
    pub turn_username: Option<String>,
    pub turn_credential: Option<String>,
    /// TURN REST-API shared secret (coturn's `static-auth-secret`):
    /// time-limited credentials for TURN servers named without any.
    pub turn_secret: Option<String>,
    /// Credentials for the room's S3-compatible attachment storage
    /// (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` override them). Never
    /// in the repository. Keep the file private.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
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
#[derive(Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub user: Option<String>,
    pub ssh_key: Option<PathBuf>,
    pub repo: Option<String>,
    pub remote: RemoteOverrides,
    pub ice: IceOverrides,
}

/// This node's own STUN and TURN settings (flags, environment, file).
#[derive(Default, Clone)]
pub struct IceOverrides {
    /// Replaces the room's list when set (`none` alone: no servers).
    pub servers: Option<Vec<String>>,
    pub turn_username: Option<String>,
    pub turn_credential: Option<String>,
    pub turn_secret: Option<String>,
}

impl std::fmt::Debug for IceOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceOverrides")
            .field("servers", &self.servers)
            .field(
                "turn_username",
                &self.turn_username.as_ref().map(|_| "<set>"),
            )
            .field(
                "turn_credential",
                &self.turn_credential.as_ref().map(|_| "<set>"),
            )
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The STUN and TURN settings a node runs with, resolved against the
/// room's list when the room opens ([`NodeIce::servers`]).
#[derive(Clone, Default)]
pub struct NodeIce {
    /// This node's own list (it wins over the room's).
    pub servers: Option<Vec<IceServer>>,
    /// Static TURN credentials for TURN servers named without any.
    pub turn_username: Option<String>,
    pub turn_credential: Option<String>,
    /// The TURN REST-API secret.
    pub turn_secret: Option<String>,
}

impl std::fmt::Debug for NodeIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIce")
            .field("servers", &self.servers)
            .field("turn_credentials", &self.turn_username.is_some())
            .field("turn_secret", &self.turn_secret.is_some())
            .finish()
    }
}

impl NodeIce {
    /// The servers this node uses in a room whose `config.json` names
    /// `room` (absent: the public STUN servers), with this node's static
    /// TURN credentials filled in where a TURN server has none.
    pub fn servers(&self, room: Option<&[IceServer]>) -> Vec<IceServer> {
        let mut list = match (&self.servers, room) {
            (Some(own), _) => own.clone(),
            (None, Some(r)) => r.to_vec(),
            (None, None) => IceServer::defaults(),
        };
        if let (Some(u), Some(c)) = (&self.turn_username, &self.turn_credential) {
            for s in &mut list {
                if s.kind() == IceKind::Turn && s.username.is_none() && s.credential.is_none() {
                    s.username = Some(u.clone());
                    s.credential = Some(c.clone());
                }
            }
        }
        list
    }
}

fn resolve_ice(file: &FileConfig, over: IceOverrides) -> anyhow::Result<NodeIce> {
    let urls = over.servers.or_else(|| file.ice_servers.clone());
    let servers = urls.map(|urls| {
        urls.into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty() && u != "none")
            .map(IceServer::url)
            .collect::<Vec<_>>()
    });
    if let Some(list) = &servers {
        skygit_actors::ice::validate(list).map_err(|e| anyhow::anyhow!("ICE servers: {e}"))?;
    }
    let ice = NodeIce {
        servers,
        turn_username: over.turn_username.or_else(|| file.turn_username.clone()),
        turn_credential: over
            .turn_credential
            .or_else(|| file.turn_credential.clone()),
        turn_secret: over.turn_secret.or_else(|| file.turn_secret.clone()),
    };
    if ice.turn_username.is_some() != ice.turn_credential.is_some() {
        bail!("give both a TURN user name and a TURN credential, or neither");
    }
    for v in [&ice.turn_username, &ice.turn_credential, &ice.turn_secret]
        .into_iter()
        .flatten()
    {
        if v.is_empty()
            || v.len() > skygit_actors::ice::MAX_ICE_FIELD_BYTES
            || v.chars().any(char::is_control)
        {
            bail!("a TURN user name, credential or secret is empty, too long or holds control characters");
        }
    }
    Ok(ice)
}

/// How to reach the repository, from flags and the environment.
#[derive(Default, Clone)]
pub struct RemoteOverrides {
    pub branch: Option<String>,
    pub github_api: Option<String>,
    pub token: Option<String>,
    pub commit_interval_secs: Option<u64>,
}

/// The checked configuration a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub user: UserId,
    /// The user was named (flag, environment or file), not `$USER`'s default.
    pub user_given: bool,
    /// The user's SSH private key file.
    pub ssh_key: Option<PathBuf>,
    pub room: RoomId,
    pub raft: openraft::Config,
    /// How to reach the repository (its `Debug` hides the token).
    pub remote: RemoteOptions,
    pub commit_interval: Option<std::time::Duration>,
    /// STUN and TURN (its `Debug` hides the credentials).
    pub ice: NodeIce,
    /// S3 credentials for attachments (its `Debug` hides the secret).
    pub s3: Option<skygit_remotes::media::s3::S3Credentials>,
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

/// `~/.local/share/skygit`, or `.skygit` without a home directory.
pub fn default_data_dir() -> PathBuf {
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

fn check_interval(secs: u64) -> anyhow::Result<std::time::Duration> {
    if !(MIN_COMMIT_INTERVAL_SECS..=MAX_COMMIT_INTERVAL_SECS).contains(&secs) {
        bail!(
            "commit interval {secs} s is outside {MIN_COMMIT_INTERVAL_SECS}..={MAX_COMMIT_INTERVAL_SECS}"
        );
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn file_remote(file: &FileConfig) -> RemoteOverrides {
    RemoteOverrides {
        branch: file.branch.clone(),
        github_api: file.github_api.clone(),
        token: file.github_token.clone(),
        commit_interval_secs: file.commit_interval_secs,
    }
}

/// Merges the repository settings: flags and environment over the file.
pub fn resolve_remote(
    file: &RemoteOverrides,
    over: RemoteOverrides,
) -> anyhow::Result<RemoteOptions> {
    let branch = over.branch.or_else(|| file.branch.clone());
    if let Some(b) = &branch {
        if b.is_empty() || b.len() > 200 || b.starts_with('-') || b.contains("..") {
            bail!("invalid branch name {b:?}");
        }
    }
    let github_api = over.github_api.or_else(|| file.github_api.clone());
    if let Some(api) = &github_api {
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            bail!("the GitHub API URL must start with https:// or http://, not {api:?}");
        }
    }
    let api = github_api
        .clone()
        .unwrap_or_else(|| skygit_remotes::github::DEFAULT_API.to_owned());
    Ok(RemoteOptions {
        branch,
        github_api,
        token: over
            .token
            .or_else(|| file.token.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| crate::auth::stored_token(&api)),
    })
}

/// Merges file and overrides over the defaults and checks the result.
pub fn resolve(file: FileConfig, over: Overrides) -> anyhow::Result<NodeConfig> {
    let file_remote = file_remote(&file);
    let s3 = resolve_s3(&file)?;
    let ice = resolve_ice(&file, over.ice)?;
    let user_given = over.user.is_some() || file.user.is_some();
    let ssh_key = over.ssh_key.or(file.ssh_key);
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
    let commit_interval = over
        .remote
        .commit_interval_secs
        .or(file.commit_interval_secs)
        .map(check_interval)
        .transpose()?;
    let remote = resolve_remote(&file_remote, over.remote)?;
    Ok(NodeConfig {
        data_dir,
        user,
        user_given,
        ssh_key,
        room,
        raft,
        remote,
        commit_interval,
        ice,
        s3,
    })
}

/// S3 credentials: the environment's (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) over the file's.
fn resolve_s3(
    file: &FileConfig,
) -> anyhow::Result<Option<skygit_remotes::media::s3::S3Credentials>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let id = env("AWS_ACCESS_KEY_ID").or_else(|| file.s3_access_key_id.clone());
    let secret = env("AWS_SECRET_ACCESS_KEY").or_else(|| file.s3_secret_access_key.clone());
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Some(skygit_remotes::media::s3::S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: env("AWS_SESSION_TOKEN"),
            }))
        }
        (None, None) => Ok(None),
        _ => bail!("S3 credentials need both an access key id and a secret access key"),
    }
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
    fn ice_servers_come_from_the_node_then_the_room_then_the_defaults() {
        let room = vec![IceServer::url("turn:10.0.0.1:3478")];
        let none = NodeIce::default();
        assert_eq!(none.servers(None), IceServer::defaults());
        assert_eq!(none.servers(Some(&room)), room);
        assert!(none.servers(Some(&[])).is_empty(), "the room disabled them");
        let file = FileConfig::parse(
            "repo = \"./a.git\"\nice_servers = [\"stun:10.0.0.2:3478\"]\n\
             turn_username = \"ana\"\nturn_credential = \"pw\"\n",
        )
        .unwrap();
        let cfg = resolve(file, Overrides::default()).unwrap();
        assert_eq!(
            cfg.ice.servers(Some(&room)),
            vec![IceServer::url("stun:10.0.0.2:3478")],
            "the node's list wins"
        );
        let flags = Overrides {
            repo: Some("./a.git".into()),
            ice: IceOverrides {
                servers: Some(vec!["none".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = resolve(FileConfig::default(), flags).unwrap();
        assert!(cfg.ice.servers(Some(&room)).is_empty(), "--ice-server none");
        // Static credentials fill TURN servers named without any, and no
        // Debug output shows them.
        let file = FileConfig::parse(
            "repo = \"./a.git\"\nturn_username = \"ana\"\nturn_credential = \"hunter2\"\n",
        )
        .unwrap();
        let cfg = resolve(file, Overrides::default()).unwrap();
        let filled = cfg.ice.servers(Some(&room));
        assert_eq!(filled[0].credential.as_deref(), Some("hunter2"));
        assert!(!format!("{cfg:?} {filled:?}").contains("hunter2"));
        for bad in [
            "repo = \"a\"\nice_servers = [\"http://x\"]\n",
            "repo = \"a\"\nturn_username = \"ana\"\n",
            "repo = \"a\"\nturn_secret = \"\"\n",
        ] {
            let file = FileConfig::parse(bad).unwrap();
            assert!(resolve(file, Overrides::default()).is_err(), "{bad}");
        }
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

    #[test]
    fn repository_settings_merge_and_the_token_stays_hidden() {
        let file = FileConfig::parse(
            "repo = \"github:acme/chat\"\ngithub_token = \"ghp_fromfile\"\nbranch = \"chat\"\ncommit_interval_secs = 60\n",
        )
        .unwrap();
        let cfg = resolve(
            file,
            Overrides {
                remote: RemoteOverrides {
                    github_api: Some("http://127.0.0.1:9".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.remote.token.as_deref(), Some("ghp_fromfile"));
        assert_eq!(cfg.remote.branch.as_deref(), Some("chat"));
        assert_eq!(
            cfg.commit_interval,
            Some(std::time::Duration::from_secs(60))
        );
        assert!(!format!("{cfg:?}").contains("ghp_fromfile"));
        let bad = |text: &str| resolve(FileConfig::parse(text).unwrap(), Overrides::default());
        assert!(bad("repo = \"r\"\ncommit_interval_secs = 0\n").is_err());
        assert!(bad("repo = \"r\"\ngithub_api = \"ftp://x\"\n").is_err());
        assert!(bad("repo = \"r\"\nbranch = \"a..b\"\n").is_err());
    }
}
