//! A real git server on loopback for the plain-git backend: `git daemon`
//! with pushes enabled, serving every bare repository below a folder.
//! Also: reading a repository back with the real `git` command line.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skygit_actors::layout;
use skygit_consensus::model::Change;

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

/// Runs `git` with `args` and answers its standard output.
pub fn git(args: &[&str]) -> String {
    let out = Command::new("git").args(args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a clone of the room's repository holds.
pub struct Cloned {
    pub dir: PathBuf,
    /// Every change in the batch files, by index.
    pub changes: Vec<Change>,
    /// `(path, bytes)` of every batch file.
    pub files: Vec<(String, Vec<u8>)>,
    /// Watermarks of the branch's commits, oldest first.
    pub watermarks: Vec<u64>,
    /// Commit ids, oldest first.
    pub commits: Vec<String>,
}

/// Clones `url` into `into` with the real git, parses every batch file and
/// checks that no index appears twice.
pub fn clone_and_read(url: &str, into: &Path) -> Cloned {
    let _ = std::fs::remove_dir_all(into);
    git(&[
        "clone",
        "--quiet",
        "--branch",
        "main",
        url,
        &into.to_string_lossy(),
    ]);
    let dir = into.to_string_lossy().into_owned();
    let log = git(&[
        "-C",
        &dir,
        "log",
        "--first-parent",
        "--reverse",
        "--format=%H%x00%B%x01",
    ]);
    let mut commits = Vec::new();
    let mut watermarks = Vec::new();
    for rec in log.split('\u{1}').filter(|r| !r.trim().is_empty()) {
        let (sha, body) = rec.trim_start().split_once('\0').expect("log record");
        commits.push(sha.to_owned());
        watermarks.push(layout::watermark(body).expect("every commit has a watermark"));
    }
    let listed = git(&["-C", &dir, "ls-files", layout::MESSAGES_DIR]);
    let mut files = Vec::new();
    let mut changes = Vec::new();
    for path in listed.lines().filter(|p| *p != layout::CONFIG_PATH) {
        let bytes = std::fs::read(into.join(path)).expect("file readable");
        changes.extend(layout::parse_batch(path, &bytes).expect("batch file parses"));
        files.push((path.to_owned(), bytes));
    }
    changes.sort_by_key(|c| c.index);
    for w in changes.windows(2) {
        assert_ne!(w[0].index, w[1].index, "index {} written twice", w[0].index);
    }
    Cloned {
        dir: into.to_owned(),
        changes,
        files,
        watermarks,
        commits,
    }
}
