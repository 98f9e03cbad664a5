//! A real git server on loopback for the plain-git backend: `git daemon`
//! with pushes enabled, serving every bare repository below a folder.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `git daemon` process; killed when dropped.
pub struct GitDaemon {
    child: Child,
    port: u16,
    base: PathBuf,
}

/// Where Debian keeps git's helper programs (`git daemon` among them).
fn git_exec_path() -> Option<String> {
    let out = Command::new("git").arg("--exec-path").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl GitDaemon {
    /// Serves the bare repositories below `base` (created if missing).
    pub fn start(base: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(base)?;
        let base = std::fs::canonicalize(base)?;
        let port = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut cmd = Command::new("git");
        if let Some(p) = git_exec_path() {
            cmd.env("GIT_EXEC_PATH", p);
        }
        let child = cmd
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let d = Self { child, port, base };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("git daemon did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// Creates an empty bare repository `name` and answers its URL.
    pub fn create(&self, name: &str) -> std::io::Result<String> {
        let path = self.base.join(name);
        let status = Command::new("git")
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&path)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("git init failed"));
        }
        Ok(self.url(name))
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
