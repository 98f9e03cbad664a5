//! `skygit login`, `skygit auth status`, `skygit logout`: GitHub logins
//! kept for the node, like `gh auth login`.
//!
//! A login is a token per GitHub API (`https://api.github.com`, or an
//! Enterprise or test server's), stored with the login it belongs to in
//! `hosts.toml` under the config directory (`SKYGIT_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/skygit`, else `~/.config/skygit`). The file is
//! created readable by its owner only and replaced whole; the token is
//! never printed. A GitHub room's token comes from `GITHUB_TOKEN`, then
//! the config file's `github_token`, then the stored login for its API.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use skygit_remotes::github::oauth::{self, DeviceFlow};
use skygit_remotes::github::DEFAULT_API;

/// The login host GitHub's device flow runs on.
pub const DEFAULT_LOGIN_HOST: &str = "https://github.com";
/// The logins file in the config directory.
const HOSTS_FILE: &str = "hosts.toml";
/// Largest logins file read.
const MAX_HOSTS_BYTES: u64 = 64 * 1024;
/// Largest token read from standard input.
const MAX_TOKEN_BYTES: usize = 4096;

/// Where GitHub is: its API and its login host.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// The GitHub API (GitHub Enterprise: `https://HOST/api/v3`).
    #[arg(long, env = "SKYGIT_GITHUB_API", default_value = DEFAULT_API)]
    pub api: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Where the device flow runs (GitHub Enterprise: `https://HOST`).
    #[arg(long, env = "SKYGIT_GITHUB_LOGIN_HOST", default_value = DEFAULT_LOGIN_HOST)]
    pub login_host: String,
    /// The client id of the team's OAuth app, with device flow enabled
    /// (see the README).
    #[arg(long, env = "SKYGIT_OAUTH_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The scopes asked for (`repo` lets the node commit to private repositories).
    #[arg(long, default_value = "repo")]
    pub scope: String,
    /// Read a token from standard input instead of running the device flow.
    #[arg(long)]
    pub with_token: bool,
}

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Whom each stored login belongs to, checked with the API.
    Status(HostArgs),
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub host: HostArgs,
}

/// One stored login.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Login {
    user: String,
    token: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The logins file: one login per API URL.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Hosts {
    #[serde(default)]
    hosts: BTreeMap<String, Login>,
}

/// The config directory.
pub fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SKYGIT_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("skygit"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/skygit"))
}

fn hosts_path() -> anyhow::Result<PathBuf> {
    config_dir()
        .map(|d| d.join(HOSTS_FILE))
        .context("no config directory: set SKYGIT_CONFIG_DIR or HOME")
}

/// The key a login is stored under.
fn key(api: &str) -> String {
    api.trim_end_matches('/').to_owned()
}

fn load() -> anyhow::Result<Hosts> {
    let path = hosts_path()?;
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Hosts::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_HOSTS_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_HOSTS_BYTES {
        bail!("{} is over {MAX_HOSTS_BYTES} bytes", path.display());
    }
    // The error names the file and the place, never the contents.
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid logins file (at {:?}); remove it and log in again",
            path.display(),
            e.span()
        )
    })
}

/// Replaces the logins file whole, owner-only from its creation.
fn save(hosts: &Hosts) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let path = hosts_path()?;
    let dir = path.parent().context("the logins file has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(hosts).context("cannot encode the logins")?;
    crate::api::secret::write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// The stored token for the API at `api`, if any (errors reading the file
/// are logged, not fatal: `GITHUB_TOKEN` may still be given).
pub fn stored_token(api: &str) -> Option<String> {
    match load() {
        Ok(h) => h.hosts.get(&key(api)).map(|l| l.token.clone()),
        Err(e) => {
            tracing::warn!(error = %e, "stored logins unreadable");
            None
        }
    }
}

/// `skygit login`.
pub async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let api = key(&a.host.api);
    let token = if a.with_token {
        read_token_from_stdin()?
    } else {
        let client_id = a.client_id.as_deref().filter(|c| !c.is_empty()).context(
            "no OAuth client id: give --client-id or SKYGIT_OAUTH_CLIENT_ID (the README says how to register the app), or use --with-token",
        )?;
        let flow = DeviceFlow::new(&a.login_host, client_id)?;
        let code = flow.start(&a.scope).await?;
        eprintln!(
            "! First copy your one-time code: {}\nThen open {} in a browser and enter it. Waiting (the code is valid for {} s)...",
            code.user_code,
            code.verification_uri,
            code.lifetime().as_secs()
        );
        flow.wait_for_token(&code, |every| {
            eprintln!("(asked to poll less often: every {} s)", every.as_secs())
        })
        .await?
    };
    let user = oauth::user_of(&api, &token)
        .await
        .context("the token does not work with the API")?;
    let mut hosts = load()?;
    hosts.hosts.insert(
        api.clone(),
        Login {
            user: user.clone(),
            token,
        },
    );
    let path = save(&hosts)?;
    eprintln!(
        "Logged in to {api} as {user} (token kept in {})",
        path.display()
    );
    Ok(())
}

fn read_token_from_stdin() -> anyhow::Result<String> {
    let mut buf = String::new();
    std::io::stdin()
        .take(MAX_TOKEN_BYTES as u64 + 1)
        .read_to_string(&mut buf)
        .context("cannot read the token from standard input")?;
    if buf.len() > MAX_TOKEN_BYTES {
        bail!("the token on standard input is over {MAX_TOKEN_BYTES} bytes");
    }
    let token = buf.trim();
    if token.is_empty() {
        bail!("no token on standard input");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the token on standard input has spaces or control characters in it");
    }
    Ok(token.to_owned())
}

/// `skygit auth status`: exits non-zero when the login is missing or refused.
pub async fn status(a: AuthArgs) -> anyhow::Result<()> {
    let AuthCommand::Status(host) = a.command;
    let api = key(&host.api);
    if std::env::var("GITHUB_TOKEN").is_ok_and(|t| !t.is_empty()) {
        eprintln!("(GITHUB_TOKEN is set: nodes use it before any stored login)");
    }
    let hosts = load()?;
    let Some(login) = hosts.hosts.get(&api) else {
        bail!("not logged in to {api}: run `skygit login`");
    };
    match oauth::user_of(&api, &login.token).await {
        Ok(user) if user == login.user => {
            println!("{api}: logged in as {user}");
            Ok(())
        }
        Ok(user) => bail!(
            "{api}: the stored token now belongs to {user}, not {}; run `skygit login` again",
            login.user
        ),
        Err(e) => bail!("{api}: the login of {} does not work: {e}", login.user),
    }
}

/// `skygit logout`: forgets the stored token (GitHub keeps the grant until
/// it is revoked in the account's settings).
pub fn logout(a: LogoutArgs) -> anyhow::Result<()> {
    let api = key(&a.host.api);
    let mut hosts = load()?;
    match hosts.hosts.remove(&api) {
        Some(login) => {
            save(&hosts)?;
            eprintln!(
                "Logged out of {api} ({}); revoke the app's access on GitHub to end the grant too",
                login.user
            );
            Ok(())
        }
        None => bail!("not logged in to {api}"),
    }
}

/// On a GitHub room the node's user is the token's login: asked of the API
/// at start. A different `--user` is refused; with none given, the login
/// becomes the user.
pub async fn github_user(cfg: &mut crate::config::NodeConfig) -> anyhow::Result<()> {
    let Some(Ok(_)) = skygit_remotes::parse_github_spec(cfg.room.as_str()) else {
        return Ok(());
    };
    let api = cfg
        .remote
        .github_api
        .clone()
        .unwrap_or_else(|| DEFAULT_API.to_owned());
    let token = cfg
        .remote
        .token
        .as_deref()
        .context("a GitHub room needs a token: run `skygit login`, or set GITHUB_TOKEN")?;
    let login = oauth::user_of(&api, token)
        .await
        .with_context(|| format!("cannot tell whose token this is from {api}"))?;
    if cfg.user_given && !cfg.user.as_str().eq_ignore_ascii_case(&login) {
        bail!(
            "the token belongs to GitHub user {login}, so this node is {login} in the room; --user {} is refused (drop it, or log in as that user)",
            cfg.user
        );
    }
    cfg.user = skygit_consensus::model::UserId::new(&login)
        .with_context(|| format!("GitHub login {login:?} is not a valid user name"))?;
    tracing::info!(user = %cfg.user, "the node's user is the token's GitHub login");
    Ok(())
}
