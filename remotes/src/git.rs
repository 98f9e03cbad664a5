//! Any git remote through libgit2: a local path (created as a bare
//! repository when missing), `git://`, `http(s)://` or `ssh://`.
//!
//! The adapter keeps a bare cache repository of its own. A commit is built
//! there (blobs, trees, the commit object) and pushed to the log branch.
//! The push is not forced, so a remote that moved to a commit that is not
//! an ancestor of ours rejects it: that rejection is the compare-and-swap.
//!
//! libgit2 blocks, so every operation runs on tokio's blocking pool, one at
//! a time (the cache repository is not shared between threads).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use git2::{
    build::TreeUpdateBuilder, Cred, CredentialType, Direction, ErrorCode, FetchOptions, FileMode,
    ObjectType, Oid, PushOptions, RemoteCallbacks, Repository, Signature, Time, TreeWalkMode,
    TreeWalkResult,
};
use skygit_ports::layout::{COMMITTER_EMAIL, COMMITTER_NAME};
use skygit_ports::{
    CommitInfo, CommitRequest, EntryKind, RepoError, RepoHead, RepoRemote, TreeEntry,
};

/// Attempts of the credential callback before libgit2 gives up.
const MAX_CREDENTIAL_ATTEMPTS: usize = 3;
/// The local ref under which fetched heads are kept.
const TRACKING_REF: &str = "refs/skygit/remote-head";
/// Blobs larger than this are packed without delta search.
const NO_DELTA_ABOVE_BYTES: i64 = 512 * 1024;
/// The local ref a commit is pushed from.
const PUSH_REF: &str = "refs/skygit/push";

/// A git remote reached through libgit2.
pub struct GitRemote {
    url: String,
    branch: String,
    cache: PathBuf,
    repo: Arc<Mutex<Option<Repository>>>,
    calls: Arc<AtomicU64>,
}

impl GitRemote {
    /// A remote at `url` (a URL or a path), committing to `branch`, with
    /// its cache repository at `cache_dir`. A local path that does not
    /// exist is created as a bare repository.
    pub fn open(url: &str, branch: &str, cache_dir: &Path) -> Result<Self, RepoError> {
        set_timeouts();
        let head = format!("refs/heads/{branch}");
        if !git2::Reference::is_valid_name(&head) {
            return Err(RepoError::Invalid(format!(
                "{branch:?} is not a valid branch name"
            )));
        }
        let url = if is_url(url) {
            url.to_owned()
        } else {
            let path = Path::new(url);
            if !path.exists() {
                Repository::init_bare(path).map_err(|e| {
                    RepoError::Unavailable(format!("creating {}: {}", path.display(), e.message()))
                })?;
                tracing::info!(path = %path.display(), "created a bare repository for the room");
            }
            point_unborn_head(path, &head);
            std::fs::canonicalize(path)
                .map_err(|e| RepoError::Unavailable(format!("{}: {e}", path.display())))?
                .to_string_lossy()
                .into_owned()
        };
        {
            let repo = match Repository::open_bare(cache_dir) {
                Ok(r) => r,
                Err(_) => Repository::init_bare(cache_dir).map_err(|e| {
                    RepoError::Unavailable(format!(
                        "cache repository {}: {}",
                        cache_dir.display(),
                        e.message()
                    ))
                })?,
            };
            if let Ok(mut config) = repo.config() {
                // Batch files are new text, never close to an older blob:
                // searching deltas between them is wasted work (a
                // 100,000-message push took 6.9 s with it, 0.5 s without).
                // libgit2 1.9 reads its no-delta size threshold from
                // `pack.deltaCacheSize` (pack-objects.c); git's own key is
                // `core.bigFileThreshold`. Set both.
                let _ = config.set_i64("pack.deltaCacheSize", NO_DELTA_ABOVE_BYTES);
                let _ = config.set_i64("core.bigFileThreshold", NO_DELTA_ABOVE_BYTES);
            }
            Ok(Self {
                url,
                branch: branch.to_owned(),
                cache: cache_dir.to_owned(),
                repo: Arc::new(Mutex::new(Some(repo))),
                calls: Arc::new(AtomicU64::new(0)),
            })
        }
    }

    /// Runs `f` with the cache repository on the blocking pool.
    fn with_repo<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, RepoError>>
    where
        T: Send + 'static,
        F: FnOnce(&Ctx<'_>) -> Result<T, RepoError> + Send + 'static,
    {
        let repo = self.repo.clone();
        let url = self.url.clone();
        let branch = self.branch.clone();
        let calls = self.calls.clone();
        let cache = self.cache.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let guard = repo.lock().unwrap_or_else(|e| e.into_inner());
                let Some(repo) = guard.as_ref() else {
                    return Err(RepoError::Unavailable(format!(
                        "cache repository {} is closed",
                        cache.display()
                    )));
                };
                f(&Ctx {
                    repo,
                    url: &url,
                    branch: &branch,
                    calls: &calls,
                })
            })
            .await
            .map_err(|e| RepoError::Unavailable(format!("git task failed: {e}")))?
        })
    }
}

/// Points a local repository's HEAD at the log branch when HEAD names a
/// branch that does not exist (a new bare repository's `master`), so that
/// a plain `git clone` of the room checks the log out. A HEAD that names
/// an existing branch is the owner's choice and stays.
fn point_unborn_head(path: &Path, head: &str) {
    let Ok(repo) = Repository::open(path) else {
        return;
    };
    let unborn = matches!(
        repo.head(),
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch || e.code() == git2::ErrorCode::NotFound
    );
    if unborn {
        if let Err(e) = repo.set_head(head) {
            tracing::warn!(path = %path.display(), error = %e.message(), "cannot point HEAD at the log branch");
        }
    }
}

/// Whether `s` names a remote by URL rather than by local path.
pub(crate) fn is_url(s: &str) -> bool {
    s.contains("://") || (s.contains('@') && s.contains(':') && !s.starts_with('/'))
}

/// libgit2's own network timeouts, so a dead server cannot hang a flush.
pub(crate) fn set_timeouts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called once, before any other libgit2 network operation
        // of this process, as libgit2's options require.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(10_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(60_000);
        }
    });
}

struct Ctx<'a> {
    repo: &'a Repository,
    url: &'a str,
    branch: &'a str,
    calls: &'a AtomicU64,
}

fn net_error(what: &str, e: git2::Error) -> RepoError {
    let http_401 = matches!(e.class(), git2::ErrorClass::Http | git2::ErrorClass::Ssh)
        && e.message().contains("401");
    if e.code() == ErrorCode::Auth || http_401 {
        RepoError::Denied(format!("{what}: {}", e.message()))
    } else {
        RepoError::Unavailable(format!("{what}: {}", e.message()))
    }
}

fn local_error(what: &str, e: git2::Error) -> RepoError {
    RepoError::Unavailable(format!("{what}: {}", e.message()))
}

/// Pushes `refspec` to `remote` with the shared callbacks; returns the
/// remote's refusal of the ref update, if it refused one.
pub(crate) fn push_refspec(
    remote: &mut git2::Remote<'_>,
    refspec: &str,
) -> Result<Option<String>, git2::Error> {
    let mut rejected: Option<String> = None;
    {
        let mut cb = callbacks();
        cb.push_update_reference(|_, status| {
            if let Some(s) = status {
                rejected = Some(s.to_owned());
            }
            Ok(())
        });
        let mut po = PushOptions::new();
        po.remote_callbacks(cb);
        remote.push(&[refspec], Some(&mut po))?;
    }
    Ok(rejected)
}

pub(crate) fn callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut attempts = 0usize;
    cb.credentials(move |url, username, allowed| {
        attempts += 1;
        if attempts > MAX_CREDENTIAL_ATTEMPTS {
            return Err(git2::Error::from_str("credentials refused"));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            return Cred::ssh_key_from_agent(username.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let config = git2::Config::open_default()?;
            return Cred::credential_helper(&config, url, username);
        }
        Cred::default()
    });
    cb
}

impl Ctx<'_> {
    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn remote(&self) -> Result<git2::Remote<'_>, RepoError> {
        self.repo
            .remote_anonymous(self.url)
            .map_err(|e| local_error("remote", e))
    }

    /// The remote branch's commit id (one round trip).
    fn remote_head(&self) -> Result<Option<Oid>, RepoError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut remote = self.remote()?;
        remote
            .connect_auth(Direction::Fetch, Some(callbacks()), None)
            .map_err(|e| net_error("connect", e))?;
        let want = self.branch_ref();
        let found = remote
            .list()
            .map_err(|e| net_error("list refs", e))?
            .iter()
            .find(|h| h.name() == want)
            .map(|h| h.oid());
        let _ = remote.disconnect();
        Ok(found)
    }

    /// Makes sure commit `oid` (the remote branch's head) is in the cache.
    fn ensure_local(&self, oid: Oid) -> Result<(), RepoError> {
        if self.repo.find_commit(oid).is_ok() {
            return Ok(());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut remote = self.remote()?;
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(callbacks());
        let spec = format!("+{}:{TRACKING_REF}", self.branch_ref());
        remote
            .fetch(&[&spec], Some(&mut fo), None)
            .map_err(|e| net_error("fetch", e))?;
        self.repo.find_commit(oid).map(|_| ()).map_err(|_| {
            RepoError::Conflict // the branch moved between listing and fetching
        })
    }

    fn head(&self) -> Result<Option<RepoHead>, RepoError> {
        let Some(oid) = self.remote_head()? else {
            return Ok(None);
        };
        self.ensure_local(oid)?;
        let commit = self
            .repo
            .find_commit(oid)
            .map_err(|e| local_error("head commit", e))?;
        Ok(Some(RepoHead {
            commit_sha: oid.to_string(),
            message: String::from_utf8_lossy(commit.message_bytes()).into_owned(),
        }))
    }

    /// Builds the commit in the cache repository (no network).
    fn build(&self, req: &CommitRequest) -> Result<Oid, RepoError> {
        let parent = match &req.expected_head {
            Some(sha) => {
                let oid = Oid::from_str(sha)
                    .map_err(|_| RepoError::Invalid(format!("{sha:?} is not a commit id")))?;
                Some(
                    self.repo
                        .find_commit(oid)
                        .map_err(|_| RepoError::Conflict)?,
                )
            }
            None => None,
        };
        let base = match &parent {
            Some(p) => p.tree().map_err(|e| local_error("base tree", e))?,
            None => {
                let empty = self
                    .repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(|e| local_error("empty tree", e))?;
                self.repo
                    .find_tree(empty)
                    .map_err(|e| local_error("empty tree", e))?
            }
        };
        let mut update = TreeUpdateBuilder::new();
        for (path, bytes) in &req.files {
            let blob = self
                .repo
                .blob(bytes)
                .map_err(|e| local_error("write blob", e))?;
            update.upsert(path.as_str(), blob, FileMode::Blob);
        }
        let tree_id = update
            .create_updated(self.repo, &base)
            .map_err(|e| local_error("write tree", e))?;
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| local_error("tree", e))?;
        let sig = Signature::new(
            COMMITTER_NAME,
            COMMITTER_EMAIL,
            &Time::new(req.time_secs, 0),
        )
        .map_err(|e| local_error("signature", e))?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(None, &sig, &sig, &req.message, &tree, &parents)
            .map_err(|e| local_error("write commit", e))
    }

    fn push(&self, oid: Oid) -> Result<(), RepoError> {
        self.repo
            .reference(PUSH_REF, oid, true, "skygit push")
            .map_err(|e| local_error("push ref", e))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut remote = self.remote()?;
        let result = push_refspec(&mut remote, &format!("{PUSH_REF}:{}", self.branch_ref()));
        match result {
            Err(e) if e.code() == ErrorCode::NotFastForward => Err(RepoError::Conflict),
            Err(e)
                if e.message().contains("fast-forward") || e.message().contains("fetch first") =>
            {
                Err(RepoError::Conflict)
            }
            // The pack may or may not have been applied when the connection
            // broke: the caller re-reads the head.
            Err(e) => Err(RepoError::Unknown(format!("push: {}", e.message()))),
            Ok(rejected) => match rejected {
                None => Ok(()),
                Some(s)
                    if s.contains("fast-forward")
                        || s.contains("fetch first")
                        || s.contains("stale")
                        || s.contains("failed to update ref")
                        || s.contains("failed to lock") =>
                {
                    Err(RepoError::Conflict)
                }
                Some(s) => Err(RepoError::Unavailable(format!("push rejected: {s}"))),
            },
        }
    }

    fn commit(&self, req: &CommitRequest) -> Result<String, RepoError> {
        if let Some(sha) = &req.expected_head {
            let oid = Oid::from_str(sha)
                .map_err(|_| RepoError::Invalid(format!("{sha:?} is not a commit id")))?;
            if self.repo.find_commit(oid).is_err() {
                // Not seen yet: it must be the remote's head to be expected.
                match self.remote_head()? {
                    Some(h) if h == oid => self.ensure_local(oid)?,
                    _ => return Err(RepoError::Conflict),
                }
            }
        }
        let started = std::time::Instant::now();
        let oid = self.build(req)?;
        let built = started.elapsed();
        if req.expected_head.is_none() {
            // A push creating the branch does not fail when another writer
            // created it first with an unrelated root; check it is absent.
            if self.remote_head()?.is_some() {
                return Err(RepoError::Conflict);
            }
        }
        self.push(oid)?;
        tracing::debug!(
            files = req.files.len(),
            build_ms = built.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "committed and pushed"
        );
        Ok(oid.to_string())
    }

    fn history(&self, from: &str, max: usize) -> Result<Vec<CommitInfo>, RepoError> {
        let oid = Oid::from_str(from)
            .map_err(|_| RepoError::Invalid(format!("{from:?} is not a commit id")))?;
        let mut out = Vec::new();
        let mut next = Some(
            self.repo
                .find_commit(oid)
                .map_err(|_| RepoError::NotFound(format!("commit {from}")))?,
        );
        while let Some(c) = next {
            if out.len() >= max {
                break;
            }
            out.push(CommitInfo {
                sha: c.id().to_string(),
                message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
            });
            next = c.parents().next();
        }
        Ok(out)
    }

    fn list(&self, commit: &str, prefix: &str, max: usize) -> Result<Vec<TreeEntry>, RepoError> {
        let oid = Oid::from_str(commit)
            .map_err(|_| RepoError::Invalid(format!("{commit:?} is not a commit id")))?;
        let root = self
            .repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|_| RepoError::NotFound(format!("commit {commit}")))?;
        let prefix = prefix.trim_end_matches('/');
        let tree = match root.get_path(Path::new(prefix)) {
            Ok(e) if e.kind() == Some(ObjectType::Tree) => self
                .repo
                .find_tree(e.id())
                .map_err(|e| local_error("tree", e))?,
            Ok(_) => {
                return Err(RepoError::Invalid(format!("{prefix} is not a folder")));
            }
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let mut overflow = false;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(ObjectType::Tree) {
                return TreeWalkResult::Ok;
            }
            if out.len() >= max {
                overflow = true;
                return TreeWalkResult::Abort;
            }
            let name = String::from_utf8_lossy(entry.name_bytes());
            let kind = match entry.filemode() {
                0o100644 | 0o100755 => EntryKind::File,
                _ => EntryKind::Other,
            };
            out.push(TreeEntry {
                path: format!("{prefix}/{dir}{name}"),
                kind,
                id: entry.id().to_string(),
                size: None,
            });
            TreeWalkResult::Ok
        })
        .map_err(|e| local_error("walk tree", e))?;
        if overflow {
            return Err(RepoError::Invalid(format!(
                "{prefix} holds more than {max} files"
            )));
        }
        Ok(out)
    }

    fn read_blob(&self, id: &str, max_bytes: usize) -> Result<Vec<u8>, RepoError> {
        let oid = Oid::from_str(id)
            .map_err(|_| RepoError::Invalid(format!("{id:?} is not a blob id")))?;
        let odb = self.repo.odb().map_err(|e| local_error("odb", e))?;
        let (size, kind) = odb
            .read_header(oid)
            .map_err(|_| RepoError::NotFound(format!("blob {id}")))?;
        if kind != ObjectType::Blob {
            return Err(RepoError::Invalid(format!("{id} is not a blob")));
        }
        if size > max_bytes {
            return Err(RepoError::Invalid(format!(
                "blob {id} is {size} bytes, more than the limit of {max_bytes}"
            )));
        }
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|e| local_error("read blob", e))?;
        Ok(blob.content().to_vec())
    }
}

impl RepoRemote for GitRemote {
    fn describe(&self) -> String {
        format!("git {} ({})", redact(&self.url), self.branch)
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        self.with_repo(|ctx| ctx.head())
    }

    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        self.with_repo(move |ctx| ctx.commit(&req))
    }

    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        let from = from.to_owned();
        self.with_repo(move |ctx| ctx.history(&from, max))
    }

    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        let (commit, prefix) = (commit.to_owned(), prefix.to_owned());
        self.with_repo(move |ctx| ctx.list(&commit, &prefix, max))
    }

    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        let id = id.to_owned();
        self.with_repo(move |ctx| ctx.read_blob(&id, max_bytes))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A URL without any password or token in it.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact("https://user:ghp_secret@example.com/a/b.git"),
            "https://***@example.com/a/b.git"
        );
        assert_eq!(
            redact("git://127.0.0.1/room.git"),
            "git://127.0.0.1/room.git"
        );
        assert_eq!(redact("/tmp/room.git"), "/tmp/room.git");
    }

    #[test]
    fn paths_and_urls_are_told_apart() {
        assert!(is_url("git://h/r.git"));
        assert!(is_url("git@github.com:a/b.git"));
        assert!(!is_url("./room.git"));
        assert!(!is_url("/srv/room.git"));
    }
}
