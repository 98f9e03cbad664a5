//! The attachment stores the tests run against, on loopback: giftless (a
//! Git LFS server) and moto (an S3-compatible server), from the virtual
//! environment `scripts/setup.sh` makes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The virtual environment's version, as `scripts/setup.sh` names it.
const MEDIA_ENV_VERSION: u32 = 1;

/// The virtual environment with giftless and moto, when installed.
pub fn media_env() -> Option<PathBuf> {
    let tools = std::env::var_os("SKYGIT_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/skygit")))?;
    let env = tools.join(format!("media-servers-{MEDIA_ENV_VERSION}"));
    (env.join("bin/gunicorn").is_file() && env.join("bin/moto_server").is_file()).then_some(env)
}

/// A server process on a loopback port.
pub struct MediaServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl MediaServer {
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let (bin, args) = self.command.split_first().context("no command")?;
        let child = Command::new(bin)
            .args(args)
            .envs(self.env.iter().cloned())
            .current_dir(self.log.parent().unwrap_or(Path::new("/tmp")))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("{bin} did not listen in time (see {})", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops the server (an outage).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.spawn().await
    }
}

/// giftless with anonymous read-write access and local storage under
/// `dir`. A room's LFS URL on it: `{url}/skygit/room.git/info/lfs`.
pub async fn giftless(env: &Path, dir: &Path) -> anyhow::Result<MediaServer> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let config = format!(
        "AUTH_PROVIDERS:\n  - giftless.auth.allow_anon:read_write\nLEGACY_ENDPOINTS: false\n\
         TRANSFER_ADAPTERS:\n  basic:\n    options:\n      storage_options:\n        path: {}\n",
        dir.join("objects").display()
    );
    let config_path = dir.join("giftless.yaml");
    std::fs::write(&config_path, config)?;
    let mut s = MediaServer {
        url: format!("http://127.0.0.1:{port}"),
        port,
        command: vec![
            env.join("bin/gunicorn").to_string_lossy().into_owned(),
            "-w".into(),
            "1".into(),
            "-b".into(),
            format!("127.0.0.1:{port}"),
            "giftless.wsgi_entrypoint:app".into(),
        ],
        env: vec![(
            "GIFTLESS_CONFIG_FILE".into(),
            config_path.to_string_lossy().into_owned(),
        )],
        log: dir.join("giftless.log"),
        child: None,
    };
    s.spawn().await?;
    Ok(s)
}

/// moto's S3 server (state in memory: a restart forgets every bucket).
pub async fn moto(env: &Path, dir: &Path) -> anyhow::Result<MediaServer> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let mut s = MediaServer {
        url: format!("http://127.0.0.1:{port}"),
        port,
        command: vec![
            env.join("bin/moto_server").to_string_lossy().into_owned(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        env: Vec::new(),
        log: dir.join("moto.log"),
        child: None,
    };
    s.spawn().await?;
    Ok(s)
}
