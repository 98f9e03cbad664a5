//! Git on loopback for tests: the `git daemon` server (from
//! `skygit-github-server`, shared with the benchmark) and reading a
//! repository back with the real `git` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

pub use skygit_github_server::git_daemon::GitDaemon;

use skygit_actors::layout;
use skygit_consensus::model::Change;

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

/// The text of every post in the bare repository at `repo`, in the
/// order of the batch files, read with the real git (cloned to `scratch`).
pub fn repo_posts(repo: &Path, scratch: &Path) -> Vec<String> {
    clone_and_read(&format!("file://{}", repo.display()), scratch)
        .changes
        .into_iter()
        .filter_map(|c| match c.kind {
            skygit_consensus::model::ChangeKind::Post { content, .. } => Some(content),
            _ => None,
        })
        .collect()
}

/// Waits until the bare repository at `repo` holds as many posts as
/// `sent` (polling with the real git, cloning to `scratch`), then checks
/// it holds each of them exactly once.
pub async fn assert_repo_holds_each_once(
    repo: &Path,
    scratch: &Path,
    sent: &std::collections::BTreeSet<String>,
    timeout: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let posts = loop {
        let posts = repo_posts(repo, scratch);
        if posts.len() >= sent.len() || tokio::time::Instant::now() >= deadline {
            break posts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let unique: std::collections::BTreeSet<String> = posts.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        posts.len(),
        "a message is in the repository twice"
    );
    assert_eq!(
        &unique, sent,
        "the repository's messages are not the ones acknowledged"
    );
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
    for path in listed
        .lines()
        .filter(|p| *p != layout::CONFIG_PATH && skygit_actors::ports::media::classify(p).is_none())
    {
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
