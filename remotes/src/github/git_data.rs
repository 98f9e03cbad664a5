//! The Git Data API calls of the GitHub remote: reading the head and
//! commits, committing (three calls, or the contents API on an empty
//! repository), history, listings and blobs, and their wire types.

use super::*;

impl GithubRemote {
    pub(super) async fn commit_obj(&self, sha: &str) -> Result<CommitObj, RepoError> {
        check_sha(sha)?;
        if let Some(c) = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha)
        {
            return Ok(c.clone());
        }
        let a = self
            .get(
                &format!("{}/git/commits/{sha}", self.repo_path()),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => {
                return Err(RepoError::NotFound(format!("commit {sha}")))
            }
            s => return Err(unexpected("read commit", s, &a)),
        }
        let c: GitCommit = a.json("commit")?;
        check_sha(&c.tree.sha)?;
        let obj = CommitObj {
            tree: c.tree.sha,
            message: c.message,
        };
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha.to_owned(), obj.clone());
        Ok(obj)
    }

    pub(super) async fn head_impl(&self) -> Result<Option<RepoHead>, RepoError> {
        let a = self
            .get(
                &format!(
                    "{}/git/ref/heads/{}",
                    self.repo_path(),
                    encode_path(&self.cfg.branch)
                ),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            // 409: an empty repository; 404: no such branch yet.
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(unexpected("read branch", s, &a)),
        }
        let r: GitRef = a.json("ref")?;
        check_sha(&r.object.sha)?;
        let c = self.commit_obj(&r.object.sha).await?;
        Ok(Some(RepoHead {
            commit_sha: r.object.sha,
            message: c.message,
        }))
    }

    /// The first commit of an empty repository: one file through the
    /// contents API (the Git Data API answers 409 there).
    pub(super) async fn bootstrap(&self, req: &CommitRequest) -> Result<String, RepoError> {
        let [(path, bytes)] = req.files.as_slice() else {
            return Err(RepoError::Invalid(
                "the first commit of an empty GitHub repository holds exactly one file".into(),
            ));
        };
        let body = json!({
            "message": req.message,
            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
            "branch": self.cfg.branch,
            "author": signature(req.time_secs),
            "committer": signature(req.time_secs),
        });
        let a = self
            .write(
                Method::Put,
                &format!("{}/contents/{}", self.repo_path(), encode_path(path)),
                &body,
                false,
            )
            .await?;
        match a.status {
            StatusCode::OK | StatusCode::CREATED => {}
            // The file (so the branch) exists already: another writer won.
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                return Err(RepoError::Conflict)
            }
            s => return Err(unexpected("create the first commit", s, &a)),
        }
        let created: ContentsAnswer = a.json("contents answer")?;
        check_sha(&created.commit.sha)?;
        if let Some(tree) = created.commit.tree.filter(|t| check_sha(&t.sha).is_ok()) {
            // Known now: the next commit on it needs no read.
            self.commits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    created.commit.sha.clone(),
                    CommitObj {
                        tree: tree.sha,
                        message: req.message.clone(),
                    },
                );
        }
        Ok(created.commit.sha)
    }

    pub(super) async fn commit_impl(&self, req: CommitRequest) -> Result<String, RepoError> {
        let Some(parent) = req.expected_head.clone() else {
            return self.bootstrap(&req).await;
        };
        let base = match self.commit_obj(&parent).await {
            Ok(c) => c,
            Err(RepoError::NotFound(_)) => return Err(RepoError::Conflict),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::with_capacity(req.files.len());
        for (path, bytes) in &req.files {
            match std::str::from_utf8(bytes) {
                Ok(text) => entries.push(json!({
                    "path": path, "mode": "100644", "type": "blob", "content": text,
                })),
                Err(_) => {
                    let sha = self.create_blob(bytes).await?;
                    entries.push(json!({
                        "path": path, "mode": "100644", "type": "blob", "sha": sha,
                    }));
                }
            }
        }
        let repo = self.repo_path();
        let a = self
            .write(
                Method::Post,
                &format!("{repo}/git/trees"),
                &json!({ "base_tree": base.tree, "tree": entries }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create tree", a.status, &a));
        }
        let tree: Sha = a.json("tree answer")?;
        check_sha(&tree.sha)?;
        let a = self
            .write(
                Method::Post,
                &format!("{repo}/git/commits"),
                &json!({
                    "message": req.message,
                    "tree": tree.sha,
                    "parents": [parent],
                    "author": signature(req.time_secs),
                    "committer": signature(req.time_secs),
                }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create commit", a.status, &a));
        }
        let commit: Sha = a.json("commit answer")?;
        check_sha(&commit.sha)?;
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                commit.sha.clone(),
                CommitObj {
                    tree: tree.sha,
                    message: req.message.clone(),
                },
            );
        let a = self
            .write(
                Method::Patch,
                &format!("{repo}/git/refs/heads/{}", encode_path(&self.cfg.branch)),
                &json!({ "sha": commit.sha, "force": false }),
                false,
            )
            .await?;
        match a.status {
            StatusCode::OK => Ok(commit.sha),
            // "Update is not a fast forward", or the ref vanished.
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => Err(RepoError::Conflict),
            s => Err(unexpected("update branch", s, &a)),
        }
    }

    pub(super) async fn create_blob(&self, bytes: &[u8]) -> Result<String, RepoError> {
        let a = self
            .write(
                Method::Post,
                &format!("{}/git/blobs", self.repo_path()),
                &json!({
                    "content": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "encoding": "base64",
                }),
                true,
            )
            .await?;
        if a.status != StatusCode::CREATED {
            return Err(unexpected("create blob", a.status, &a));
        }
        let s: Sha = a.json("blob answer")?;
        check_sha(&s.sha)?;
        Ok(s.sha)
    }

    pub(super) async fn history_impl(
        &self,
        from: &str,
        max: usize,
    ) -> Result<Vec<CommitInfo>, RepoError> {
        check_sha(from)?;
        let mut out = Vec::new();
        let mut page = 1usize;
        while out.len() < max {
            let a = self
                .get(
                    &format!(
                        "{}/commits?sha={from}&per_page={HISTORY_PAGE}&page={page}",
                        self.repo_path()
                    ),
                    MAX_ANSWER_BYTES,
                )
                .await?;
            if a.status != StatusCode::OK {
                return Err(unexpected("list commits", a.status, &a));
            }
            let list: Vec<ListedCommit> = a.json("commit list")?;
            let n = list.len();
            for c in list.into_iter().take(max - out.len()) {
                check_sha(&c.sha)?;
                out.push(CommitInfo {
                    sha: c.sha,
                    message: c.commit.message,
                });
            }
            if n < HISTORY_PAGE {
                break;
            }
            page += 1;
        }
        Ok(out)
    }

    pub(super) async fn tree(&self, sha: &str, recursive: bool) -> Result<GitTree, RepoError> {
        check_sha(sha)?;
        let q = if recursive { "?recursive=1" } else { "" };
        let a = self
            .get(
                &format!("{}/git/trees/{sha}{q}", self.repo_path()),
                MAX_ANSWER_BYTES,
            )
            .await?;
        match a.status {
            StatusCode::OK => a.json("tree"),
            StatusCode::NOT_FOUND => Err(RepoError::NotFound(format!("tree {sha}"))),
            s => Err(unexpected("read tree", s, &a)),
        }
    }

    pub(super) async fn list_impl(
        &self,
        commit: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<TreeEntry>, RepoError> {
        let mut tree = self.commit_obj(commit).await?.tree;
        let prefix = prefix.trim_end_matches('/');
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            let t = self.tree(&tree, false).await?;
            match t.tree.into_iter().find(|e| e.path == part) {
                Some(e) if e.kind == "tree" => tree = e.sha,
                Some(_) => return Err(RepoError::Invalid(format!("{prefix} is not a folder"))),
                None => return Ok(Vec::new()),
            }
        }
        let t = self.tree(&tree, true).await?;
        if t.truncated {
            return Err(RepoError::Invalid(format!(
                "{prefix} holds more entries than GitHub lists in one tree"
            )));
        }
        let mut out = Vec::new();
        for e in t.tree {
            if e.kind == "tree" {
                continue;
            }
            if out.len() >= max {
                return Err(RepoError::Invalid(format!(
                    "{prefix} holds more than {max} files"
                )));
            }
            let kind = match (e.kind.as_str(), e.mode.as_str()) {
                ("blob", "100644" | "100755") => EntryKind::File,
                _ => EntryKind::Other,
            };
            out.push(TreeEntry {
                path: format!("{prefix}/{}", e.path),
                kind,
                id: e.sha,
                size: e.size,
            });
        }
        Ok(out)
    }

    pub(crate) async fn read_blob_impl(
        &self,
        id: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, RepoError> {
        check_sha(id)?;
        // base64 with line breaks, plus the JSON around it.
        let limit = max_bytes.saturating_mul(2).saturating_add(64 * 1024);
        let a = self
            .call(
                Method::Get,
                &format!("{}/git/blobs/{id}", self.repo_path()),
                None,
                true,
                limit,
            )
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(RepoError::NotFound(format!("blob {id}"))),
            s => return Err(unexpected("read blob", s, &a)),
        }
        let b: GitBlob = a.json("blob")?;
        if b.size > max_bytes as u64 {
            return Err(RepoError::Invalid(format!(
                "blob {id} is {} bytes, more than the limit of {max_bytes}",
                b.size
            )));
        }
        if b.encoding != "base64" {
            return Err(RepoError::Invalid(format!(
                "blob {id} has encoding {:?}",
                b.encoding
            )));
        }
        let clean: String = b.content.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map_err(|e| RepoError::Invalid(format!("blob {id}: {e}")))?;
        if bytes.len() > max_bytes {
            return Err(RepoError::Invalid(format!(
                "blob {id} is more than the limit of {max_bytes} bytes"
            )));
        }
        Ok(bytes)
    }
}

#[derive(Deserialize)]
pub(super) struct Sha {
    pub(super) sha: String,
}

#[derive(Deserialize)]
pub(super) struct GitRef {
    pub(super) object: Sha,
}

#[derive(Deserialize)]
pub(super) struct GitCommit {
    pub(super) message: String,
    pub(super) tree: Sha,
}

#[derive(Deserialize)]
pub(super) struct ContentsCommit {
    pub(super) sha: String,
    #[serde(default)]
    pub(super) tree: Option<Sha>,
}

#[derive(Deserialize)]
pub(super) struct ContentsAnswer {
    pub(super) commit: ContentsCommit,
}

#[derive(Deserialize)]
pub(super) struct ListedCommitBody {
    pub(super) message: String,
}

#[derive(Deserialize)]
pub(super) struct ListedCommit {
    pub(super) sha: String,
    pub(super) commit: ListedCommitBody,
}

#[derive(Deserialize)]
pub(super) struct GitTreeEntry {
    pub(super) path: String,
    pub(super) mode: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) sha: String,
    #[serde(default)]
    pub(super) size: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct GitTree {
    pub(super) tree: Vec<GitTreeEntry>,
    #[serde(default)]
    pub(super) truncated: bool,
}

#[derive(Deserialize)]
pub(super) struct GitBlob {
    pub(super) content: String,
    pub(super) encoding: String,
    pub(super) size: u64,
}

impl RepoRemote for GithubRemote {
    fn describe(&self) -> String {
        format!(
            "github:{}/{} ({}) via {}",
            self.cfg.owner, self.cfg.name, self.cfg.branch, self.cfg.api
        )
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        Box::pin(self.head_impl())
    }

    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        Box::pin(self.commit_impl(req))
    }

    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        Box::pin(self.history_impl(from, max))
    }

    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        Box::pin(self.list_impl(commit, prefix, max))
    }

    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        Box::pin(self.read_blob_impl(id, max_bytes))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn write_budget(&self) -> Option<skygit_ports::WriteBudget> {
        let now = Instant::now();
        let w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let within = |d: Duration| w.iter().filter(|t| now.duration_since(**t) < d).count() as u64;
        Some(skygit_ports::WriteBudget {
            writes_last_minute: within(Duration::from_secs(60)),
            writes_last_hour: within(Duration::from_secs(3600)),
            limit_minute: WRITES_PER_MINUTE as u64,
            limit_hour: WRITES_PER_HOUR as u64,
        })
    }
}
