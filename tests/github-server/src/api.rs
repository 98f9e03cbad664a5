//! The REST endpoints: routing of `/repos/{owner}/{name}/...` and the git
//! work behind each endpoint. Everything here runs on a blocking thread
//! while holding the repository lock, so each request is atomic with
//! respect to the others.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use git2::{build::TreeUpdateBuilder, Commit, FileMode, ObjectType, Oid, Repository, Tree};
use serde_json::{json, Map, Value};

use crate::server::{Reply, Shared};
use crate::util::{
    base64_decode, base64_lines, check_path, full_oid, iso_utc, lock, parse_date, parse_query,
    percent_decode, percent_encode, unix_now,
};

/// The default branch every repository advertises.
const DEFAULT_BRANCH: &str = "main";
/// Entries listed by a recursive tree listing before it is truncated.
const TREE_LIMIT: usize = 100_000;

/// An error answer: status and the `message` of the JSON body.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub(crate) struct ApiError {
    status: u16,
    message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn not_found() -> ApiError {
        ApiError::new(404, "Not Found")
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, message)
    }

    fn missing(field: &str) -> ApiError {
        ApiError::invalid(format!("Invalid request.\n\n\"{field}\" wasn't supplied."))
    }

    fn internal(e: git2::Error) -> ApiError {
        ApiError::new(500, format!("git error: {}", e.message()))
    }
}

type ApiResult = Result<Reply, ApiError>;

/// `GET /repos/{o}/{r}/collaborators/{user}/permission`: the user's
/// permission on the repository (`none` for a user without access), a 404
/// for a user the server does not know.
fn permission(shared: &Shared, user: &str) -> Reply {
    let set = lock(&shared.permissions).get(user).cloned();
    let has_token = lock(&shared.users).values().any(|u| u == user);
    let permission = match set {
        Some(p) => p,
        None if user.eq_ignore_ascii_case(&shared.owner) => "admin".to_owned(),
        None if has_token => "write".to_owned(),
        None if lock(&shared.ssh_keys).contains_key(user) => "none".to_owned(),
        None => return not_found(),
    };
    Reply::cacheable(serde_json::json!({
        "permission": permission,
        "role_name": permission,
        "user": { "login": user, "type": "User" },
    }))
}

/// Routes one request (path with query) and runs it.
pub(crate) fn dispatch(shared: &Shared, method: &str, path: &str, body: &Value) -> Reply {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    // `split_path` drops a trailing slash, which matters to matching-refs
    // (`heads/a/` matches `heads/a/b` but not `heads/ab`).
    let trailing_slash = path.ends_with('/');
    let query = parse_query(query);
    let Some(segments) = split_path(path) else {
        return not_found();
    };
    if method == "GET" && segments == ["user"] {
        // The token's user: the test server has one, the repository's owner.
        return Reply::json(
            200,
            serde_json::json!({ "login": shared.owner, "type": "User" }),
        );
    }
    let ours = segments.len() >= 3
        && segments[0] == "repos"
        && segments[1].eq_ignore_ascii_case(&shared.owner)
        && segments[2].eq_ignore_ascii_case(&shared.name);
    if !ours {
        return not_found();
    }
    let rest: Vec<&str> = segments[3..].iter().map(String::as_str).collect();
    if let ("GET", ["collaborators", user, "permission"]) = (method, rest.as_slice()) {
        return permission(shared, user);
    }
    let repo = lock(&shared.repo);
    let ctx = Ctx {
        repo: &repo,
        owner: &shared.owner,
        name: &shared.name,
        api: format!("{}/repos/{}/{}", shared.base_url, shared.owner, shared.name),
        html: format!("{}/{}/{}", shared.base_url, shared.owner, shared.name),
    };
    let q = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let result = match (method, rest.as_slice()) {
        ("GET", []) => ctx.get_repo(),
        ("GET", ["git", "ref" | "refs", r @ ..]) if !r.is_empty() => ctx.get_ref(&r.join("/")),
        ("GET", ["git", "matching-refs", r @ ..]) => {
            let mut prefix = r.join("/");
            if trailing_slash && !prefix.is_empty() {
                prefix.push('/');
            }
            ctx.matching_refs(&prefix)
        }
        ("PATCH", ["git", "refs", r @ ..]) if !r.is_empty() => ctx.update_ref(&r.join("/"), body),
        ("DELETE", ["git", "refs", r @ ..]) if !r.is_empty() => ctx.delete_ref(&r.join("/")),
        ("POST", ["git", "refs"]) => ctx.create_ref(body),
        ("GET", ["git", "commits", sha]) => ctx.get_commit(sha),
        ("POST", ["git", "commits"]) => ctx.create_commit(body),
        ("GET", ["git", "trees", r @ ..]) if !r.is_empty() => {
            ctx.get_tree(&r.join("/"), q("recursive").is_some())
        }
        ("POST", ["git", "trees"]) => ctx.create_tree(body),
        ("GET", ["git", "blobs", sha]) => ctx.get_blob(sha),
        ("POST", ["git", "blobs"]) => ctx.create_blob(body),
        ("GET", ["commits"]) => ctx.list_commits(q("sha"), q("per_page"), q("page")),
        ("GET", ["contents", p @ ..]) if !p.is_empty() => ctx.get_contents(&p.join("/"), q("ref")),
        ("PUT", ["contents", p @ ..]) if !p.is_empty() => ctx.put_contents(&p.join("/"), body),
        _ => Err(ApiError::not_found()),
    };
    result.unwrap_or_else(|e| Reply::message(e.status, &e.message))
}

fn not_found() -> Reply {
    Reply::message(404, "Not Found")
}

/// Splits a path into percent-decoded segments (a trailing slash is
/// ignored); `None` if a segment does not decode.
fn split_path(path: &str) -> Option<Vec<String>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').map(|s| percent_decode(s, false)).collect()
}

/// A reference name libgit2 accepts.
fn valid_ref_name(name: &str) -> bool {
    !name.contains('\0') && git2::Reference::is_valid_name(name)
}

/// An optional string field: absent or `null` → `None`.
fn opt_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid request.\n\nFor 'properties/{field}', {other} is not a string."
        ))),
    }
}

/// A required string field.
fn req_str<'a>(body: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    opt_str(body, field)?.ok_or_else(|| ApiError::missing(field))
}

/// A signature as given in a request (or defaulted).
#[derive(Debug, Clone)]
struct SigSpec {
    name: String,
    email: String,
    secs: i64,
    offset_minutes: i32,
}

impl SigSpec {
    fn github_now() -> SigSpec {
        SigSpec {
            name: "GitHub".to_owned(),
            email: "noreply@github.com".to_owned(),
            secs: unix_now(),
            offset_minutes: 0,
        }
    }

    /// Parses `{"name","email","date"?}`; absent or `null` → `None`.
    fn parse(body: &Value, field: &str) -> Result<Option<SigSpec>, ApiError> {
        let v = match body.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        if !v.is_object() {
            return Err(ApiError::invalid(format!(
                "Invalid request.\n\nFor 'properties/{field}', {v} is not an object."
            )));
        }
        let name =
            opt_str(v, "name")?.ok_or_else(|| ApiError::missing(&format!("{field}.name")))?;
        let email =
            opt_str(v, "email")?.ok_or_else(|| ApiError::missing(&format!("{field}.email")))?;
        let (secs, offset_minutes) = match opt_str(v, "date")? {
            None => (unix_now(), 0),
            Some(d) => parse_date(d).ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid request.\n\n{d:?} is not a valid date-time for '{field}.date'."
                ))
            })?,
        };
        Ok(Some(SigSpec {
            name: name.to_owned(),
            email: email.to_owned(),
            secs,
            offset_minutes,
        }))
    }

    fn signature(&self, field: &str) -> Result<git2::Signature<'static>, ApiError> {
        git2::Signature::new(
            &self.name,
            &self.email,
            &git2::Time::new(self.secs, self.offset_minutes),
        )
        .map_err(|e| ApiError::invalid(format!("Invalid {field}: {}", e.message())))
    }
}

/// Maps a tree entry's `mode` / `type` to a file mode and object type.
fn entry_mode(mode: Option<&str>, kind: Option<&str>) -> Result<(FileMode, ObjectType), ApiError> {
    let from_mode = |m: &str| match m {
        "100644" => Some((FileMode::Blob, ObjectType::Blob)),
        "100755" => Some((FileMode::BlobExecutable, ObjectType::Blob)),
        "120000" => Some((FileMode::Link, ObjectType::Blob)),
        "040000" | "40000" => Some((FileMode::Tree, ObjectType::Tree)),
        "160000" => Some((FileMode::Commit, ObjectType::Commit)),
        _ => None,
    };
    let from_kind = |k: &str| match k {
        "blob" => Some((FileMode::Blob, ObjectType::Blob)),
        "tree" => Some((FileMode::Tree, ObjectType::Tree)),
        "commit" => Some((FileMode::Commit, ObjectType::Commit)),
        _ => None,
    };
    let by_mode = mode
        .map(|m| from_mode(m).ok_or_else(|| ApiError::invalid(format!("Invalid tree mode {m:?}"))))
        .transpose()?;
    let by_kind = kind
        .map(|k| from_kind(k).ok_or_else(|| ApiError::invalid(format!("Invalid tree type {k:?}"))))
        .transpose()?;
    match (by_mode, by_kind) {
        (Some(m), Some(k)) if m.1 == k.1 => Ok(m),
        (Some(_), Some(_)) => Err(ApiError::invalid(format!(
            "tree mode {:?} does not match type {:?}",
            mode.unwrap_or_default(),
            kind.unwrap_or_default()
        ))),
        (Some(m), None) | (None, Some(m)) => Ok(m),
        (None, None) => Err(ApiError::missing("tree.mode")),
    }
}

/// What a tree request does with one path.
enum Change {
    Upsert(Oid, FileMode),
    Delete,
}

/// Per-request view of the repository.
struct Ctx<'a> {
    repo: &'a Repository,
    owner: &'a str,
    name: &'a str,
    /// `http://host/repos/O/R`.
    api: String,
    /// `http://host/O/R` (stands in for `https://github.com/O/R`).
    html: String,
}

impl Ctx<'_> {
    // ---- helpers -------------------------------------------------------

    /// 409 when the repository has no references at all.
    fn ensure_not_empty(&self) -> Result<(), ApiError> {
        if self.is_empty()? {
            Err(ApiError::new(409, "Git Repository is empty."))
        } else {
            Ok(())
        }
    }

    fn is_empty(&self) -> Result<bool, ApiError> {
        let mut refs = self.repo.references().map_err(ApiError::internal)?;
        Ok(refs.next().is_none())
    }

    fn node_id(kind: &str, id: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{kind}:{id}"))
    }

    /// Type of an object ("commit", "tree", …), by its header only.
    fn kind_of(&self, oid: Oid) -> Option<ObjectType> {
        let odb = self.repo.odb().ok()?;
        odb.read_header(oid).ok().map(|(_, kind)| kind)
    }

    fn empty_tree(&self) -> Result<Tree<'_>, ApiError> {
        let oid = self
            .repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .map_err(ApiError::internal)?;
        self.repo.find_tree(oid).map_err(ApiError::internal)
    }

    /// A commit sha, branch, tag or full ref name → object.
    fn resolve(&self, rev: &str) -> Option<git2::Object<'_>> {
        if rev.is_empty() || rev.contains('\0') {
            return None;
        }
        if let Some(oid) = full_oid(rev) {
            return self.repo.find_object(oid, None).ok();
        }
        for name in [
            format!("refs/heads/{rev}"),
            format!("refs/tags/{rev}"),
            rev.to_owned(),
        ] {
            if valid_ref_name(&name) {
                if let Ok(obj) = self
                    .repo
                    .find_reference(&name)
                    .and_then(|r| r.peel(ObjectType::Any))
                {
                    return Some(obj);
                }
            }
        }
        self.repo.revparse_single(rev).ok()
    }

    fn sig_json(sig: &git2::Signature<'_>) -> Value {
        json!({
            "name": String::from_utf8_lossy(sig.name_bytes()),
            "email": String::from_utf8_lossy(sig.email_bytes()),
            "date": iso_utc(sig.when().seconds()),
        })
    }

    fn verification() -> Value {
        json!({"verified": false, "reason": "unsigned", "signature": null, "payload": null})
    }

    fn parent_json(&self, id: Oid) -> Value {
        json!({
            "sha": id.to_string(),
            "url": format!("{}/git/commits/{id}", self.api),
            "html_url": format!("{}/commit/{id}", self.html),
        })
    }

    /// The Git Data API commit object.
    fn commit_json(&self, c: &Commit<'_>) -> Value {
        let id = c.id();
        json!({
            "sha": id.to_string(),
            "node_id": Self::node_id("Commit", &id.to_string()),
            "url": format!("{}/git/commits/{id}", self.api),
            "html_url": format!("{}/commit/{id}", self.html),
            "author": Self::sig_json(&c.author()),
            "committer": Self::sig_json(&c.committer()),
            "message": String::from_utf8_lossy(c.message_raw_bytes()),
            "tree": {
                "sha": c.tree_id().to_string(),
                "url": format!("{}/git/trees/{}", self.api, c.tree_id()),
            },
            "parents": c.parent_ids().map(|p| self.parent_json(p)).collect::<Vec<_>>(),
            "verification": Self::verification(),
        })
    }

    fn ref_json(&self, full: &str, oid: Oid) -> Value {
        let kind = self
            .kind_of(oid)
            .and_then(|k| k.str().into())
            .unwrap_or("commit");
        json!({
            "ref": full,
            "node_id": Self::node_id("Ref", full),
            "url": format!("{}/git/{full}", self.api),
            "object": {
                "sha": oid.to_string(),
                "type": kind,
                "url": format!("{}/git/{kind}s/{oid}", self.api),
            },
        })
    }

    fn entry_json(
        &self,
        odb: Option<&git2::Odb<'_>>,
        path: &str,
        e: &git2::TreeEntry<'_>,
    ) -> Value {
        let id = e.id();
        let mut m = Map::new();
        m.insert("path".into(), path.into());
        m.insert("mode".into(), format!("{:06o}", e.filemode()).into());
        match e.kind() {
            Some(ObjectType::Tree) => {
                m.insert("type".into(), "tree".into());
                m.insert("sha".into(), id.to_string().into());
                m.insert("url".into(), format!("{}/git/trees/{id}", self.api).into());
            }
            Some(ObjectType::Commit) => {
                m.insert("type".into(), "commit".into());
                m.insert("sha".into(), id.to_string().into());
            }
            _ => {
                m.insert("type".into(), "blob".into());
                m.insert("sha".into(), id.to_string().into());
                if let Some((size, _)) = odb.and_then(|o| o.read_header(id).ok()) {
                    m.insert("size".into(), size.into());
                }
                m.insert("url".into(), format!("{}/git/blobs/{id}", self.api).into());
            }
        }
        Value::Object(m)
    }

    fn tree_json(&self, tree: &Tree<'_>, recursive: bool) -> Value {
        let odb = self.repo.odb().ok();
        let mut entries = Vec::new();
        let mut truncated = false;
        if recursive {
            let _ = tree.walk(git2::TreeWalkMode::PreOrder, |root, e| {
                if entries.len() >= TREE_LIMIT {
                    truncated = true;
                    return git2::TreeWalkResult::Abort;
                }
                let path = format!("{root}{}", String::from_utf8_lossy(e.name_bytes()));
                entries.push(self.entry_json(odb.as_ref(), &path, e));
                git2::TreeWalkResult::Ok
            });
        } else {
            for e in tree.iter() {
                let path = String::from_utf8_lossy(e.name_bytes()).into_owned();
                entries.push(self.entry_json(odb.as_ref(), &path, &e));
            }
        }
        json!({
            "sha": tree.id().to_string(),
            "url": format!("{}/git/trees/{}", self.api, tree.id()),
            "tree": entries,
            "truncated": truncated,
        })
    }

    // ---- endpoints -----------------------------------------------------

    fn get_repo(&self) -> ApiResult {
        let full_name = format!("{}/{}", self.owner, self.name);
        Ok(Reply::cacheable(json!({
            "id": 1,
            "node_id": Self::node_id("Repository", &full_name),
            "name": self.name,
            "full_name": full_name,
            "owner": {"login": self.owner},
            "private": false,
            "html_url": self.html,
            "url": self.api,
            "default_branch": DEFAULT_BRANCH,
            "size": 0,
        })))
    }

    fn get_ref(&self, rest: &str) -> ApiResult {
        self.ensure_not_empty()?;
        let full = format!("refs/{rest}");
        if !valid_ref_name(&full) {
            return Err(ApiError::not_found());
        }
        let oid = self
            .repo
            .find_reference(&full)
            .and_then(|r| r.resolve())
            .ok()
            .and_then(|r| r.target())
            .ok_or_else(ApiError::not_found)?;
        Ok(Reply::cacheable(self.ref_json(&full, oid)))
    }

    /// `GET /git/matching-refs/{prefix}`: every ref whose full name starts
    /// with `refs/{prefix}`, sorted by name (an empty array when none
    /// does).
    fn matching_refs(&self, prefix: &str) -> ApiResult {
        self.ensure_not_empty()?;
        let full_prefix = format!("refs/{prefix}");
        let mut found: Vec<(String, Oid)> = Vec::new();
        for r in self.repo.references().map_err(ApiError::internal)? {
            let r = r.map_err(ApiError::internal)?;
            let Some(name) = r.name().ok().filter(|n| n.starts_with(&full_prefix)) else {
                continue;
            };
            let name = name.to_owned();
            if let Some(oid) = r.resolve().ok().and_then(|r| r.target()) {
                found.push((name, oid));
            }
        }
        found.sort();
        Ok(Reply::cacheable(Value::Array(
            found
                .iter()
                .map(|(name, oid)| self.ref_json(name, *oid))
                .collect(),
        )))
    }

    fn update_ref(&self, rest: &str, body: &Value) -> ApiResult {
        let sha = req_str(body, "sha")?;
        let force = match body.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid request.\n\nFor 'properties/force', {other} is not a boolean."
                )))
            }
        };
        let full = format!("refs/{rest}");
        let current = if valid_ref_name(&full) {
            self.repo
                .find_reference(&full)
                .ok()
                .and_then(|r| r.target())
        } else {
            None
        };
        let current = current.ok_or_else(|| ApiError::invalid("Reference does not exist"))?;
        let new = full_oid(sha)
            .filter(|oid| self.kind_of(*oid).is_some())
            .ok_or_else(|| ApiError::invalid("Object does not exist"))?;
        let is_commit = self.kind_of(new) == Some(ObjectType::Commit);
        if full.starts_with("refs/heads/") && !is_commit {
            return Err(ApiError::invalid("Object is not a commit"));
        }
        if !force && new != current {
            let fast_forward =
                is_commit && self.repo.graph_descendant_of(new, current).unwrap_or(false);
            if !fast_forward {
                return Err(ApiError::invalid("Update is not a fast forward"));
            }
        }
        self.repo
            .reference_matching(&full, new, true, current, "github test server: update ref")
            .map_err(|e| ApiError::invalid(format!("Reference update failed: {}", e.message())))?;
        Ok(Reply::json(200, self.ref_json(&full, new)))
    }

    fn delete_ref(&self, rest: &str) -> ApiResult {
        let full = format!("refs/{rest}");
        let mut reference = if valid_ref_name(&full) {
            self.repo.find_reference(&full).ok()
        } else {
            None
        }
        .ok_or_else(|| ApiError::invalid("Reference does not exist"))?;
        reference.delete().map_err(ApiError::internal)?;
        Ok(Reply {
            status: 204,
            body: None,
            headers: Vec::new(),
            etag: false,
            raw: None,
        })
    }

    fn create_ref(&self, body: &Value) -> ApiResult {
        let full = req_str(body, "ref")?;
        let sha = req_str(body, "sha")?;
        if !full.starts_with("refs/") || full.matches('/').count() < 2 || !valid_ref_name(full) {
            return Err(ApiError::invalid(
                "Reference name must start with 'refs' and have at least two slashes",
            ));
        }
        self.ensure_not_empty()?;
        let oid = full_oid(sha)
            .filter(|oid| self.kind_of(*oid).is_some())
            .ok_or_else(|| ApiError::invalid("Object does not exist"))?;
        if full.starts_with("refs/heads/") && self.kind_of(oid) != Some(ObjectType::Commit) {
            return Err(ApiError::invalid("Object is not a commit"));
        }
        if self.repo.find_reference(full).is_ok() {
            return Err(ApiError::invalid("Reference already exists"));
        }
        self.repo
            .reference(full, oid, false, "github test server: create ref")
            .map_err(|e| match e.code() {
                git2::ErrorCode::Exists => ApiError::invalid("Reference already exists"),
                _ => ApiError::invalid(format!("Reference creation failed: {}", e.message())),
            })?;
        Ok(Reply::json(201, self.ref_json(full, oid))
            .with_header("location", format!("{}/git/{full}", self.api)))
    }

    fn get_commit(&self, sha: &str) -> ApiResult {
        self.ensure_not_empty()?;
        let commit = full_oid(sha)
            .and_then(|oid| self.repo.find_commit(oid).ok())
            .ok_or_else(ApiError::not_found)?;
        Ok(Reply::cacheable(self.commit_json(&commit)))
    }

    fn create_commit(&self, body: &Value) -> ApiResult {
        self.ensure_not_empty()?;
        let message = req_str(body, "message")?;
        let tree_sha = req_str(body, "tree")?;
        let tree = full_oid(tree_sha)
            .and_then(|oid| self.repo.find_tree(oid).ok())
            .ok_or_else(|| ApiError::invalid("Tree SHA does not exist"))?;
        let parent_shas: Vec<&str> = match body.get("parents") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_str().ok_or_else(|| {
                        ApiError::invalid("Invalid request.\n\nParents must be SHA strings.")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid request.\n\nFor 'properties/parents', {other} is not an array."
                )))
            }
        };
        let parents = parent_shas
            .iter()
            .map(|s| {
                full_oid(s)
                    .and_then(|oid| self.repo.find_commit(oid).ok())
                    .ok_or_else(|| {
                        ApiError::invalid("Parent SHA does not exist or is not a commit object")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let author = SigSpec::parse(body, "author")?.unwrap_or_else(SigSpec::github_now);
        let committer = SigSpec::parse(body, "committer")?.unwrap_or_else(|| author.clone());
        let author = author.signature("author")?;
        let committer = committer.signature("committer")?;
        let parent_refs: Vec<&Commit<'_>> = parents.iter().collect();
        let oid = self
            .repo
            .commit(None, &author, &committer, message, &tree, &parent_refs)
            .map_err(|e| ApiError::invalid(format!("Commit creation failed: {}", e.message())))?;
        let commit = self.repo.find_commit(oid).map_err(ApiError::internal)?;
        Ok(Reply::json(201, self.commit_json(&commit))
            .with_header("location", format!("{}/git/commits/{oid}", self.api)))
    }

    fn create_tree(&self, body: &Value) -> ApiResult {
        let entries = match body.get("tree") {
            Some(Value::Array(list)) => list,
            None | Some(Value::Null) => return Err(ApiError::missing("tree")),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid request.\n\nFor 'properties/tree', {other} is not an array."
                )))
            }
        };
        self.ensure_not_empty()?;
        let base = match opt_str(body, "base_tree")? {
            Some(sha) => full_oid(sha)
                .and_then(|oid| self.repo.find_object(oid, None).ok())
                .and_then(|o| o.peel_to_tree().ok())
                .ok_or_else(|| ApiError::invalid("Invalid tree info"))?,
            None => self.empty_tree()?,
        };

        // Last change of a path wins.
        let mut changes: BTreeMap<String, Change> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let bad =
                |what: &str| ApiError::invalid(format!("Invalid tree info: tree[{i}]: {what}"));
            if !entry.is_object() {
                return Err(bad("entry is not an object"));
            }
            let path = opt_str(entry, "path")?.ok_or_else(|| bad("path is missing"))?;
            check_path(path).map_err(|m| bad(&m))?;
            let mode = opt_str(entry, "mode")?;
            let kind = opt_str(entry, "type")?;
            let change = match (entry.get("sha"), entry.get("content")) {
                (sha, Some(Value::String(text))) => {
                    if !matches!(sha, None | Some(Value::Null)) {
                        return Err(bad("give either sha or content, not both"));
                    }
                    let (mode, kind) = entry_mode(mode, kind.or(Some("blob")))?;
                    if kind != ObjectType::Blob {
                        return Err(bad("content is only allowed for blobs"));
                    }
                    let oid = self
                        .repo
                        .blob(text.as_bytes())
                        .map_err(ApiError::internal)?;
                    Change::Upsert(oid, mode)
                }
                (Some(Value::Null), None | Some(Value::Null)) => Change::Delete,
                (Some(Value::String(sha)), None | Some(Value::Null)) => {
                    let (mode, kind) = entry_mode(mode, kind)?;
                    let oid = full_oid(sha).ok_or_else(|| bad("sha is not a full object id"))?;
                    if kind != ObjectType::Commit && self.kind_of(oid) != Some(kind) {
                        return Err(bad(&format!("{sha} is not a {}", kind.str())));
                    }
                    Change::Upsert(oid, mode)
                }
                (None, None | Some(Value::Null)) => {
                    return Err(bad("either sha or content must be given"))
                }
                _ => return Err(bad("sha and content must be strings")),
            };
            changes.insert(path.to_owned(), change);
        }

        let mut builder = TreeUpdateBuilder::new();
        for (path, change) in &changes {
            match change {
                Change::Upsert(oid, mode) => {
                    builder.upsert(path.as_str(), *oid, *mode);
                }
                // Deleting a path that does not exist is a no-op.
                Change::Delete => {
                    if base.get_path(Path::new(path)).is_ok() {
                        builder.remove(path.as_str());
                    }
                }
            }
        }
        let oid = builder
            .create_updated(self.repo, &base)
            .map_err(|e| ApiError::invalid(format!("Invalid tree info: {}", e.message())))?;
        let tree = self.repo.find_tree(oid).map_err(ApiError::internal)?;
        Ok(Reply::json(201, self.tree_json(&tree, false))
            .with_header("location", format!("{}/git/trees/{oid}", self.api)))
    }

    fn get_tree(&self, rev: &str, recursive: bool) -> ApiResult {
        self.ensure_not_empty()?;
        let tree = self
            .resolve(rev)
            .and_then(|o| o.peel_to_tree().ok())
            .ok_or_else(ApiError::not_found)?;
        Ok(Reply::cacheable(self.tree_json(&tree, recursive)))
    }

    fn get_blob(&self, sha: &str) -> ApiResult {
        self.ensure_not_empty()?;
        let blob = full_oid(sha)
            .and_then(|oid| self.repo.find_blob(oid).ok())
            .ok_or_else(ApiError::not_found)?;
        let id = blob.id();
        Ok(Reply::cacheable(json!({
            "sha": id.to_string(),
            "node_id": Self::node_id("Blob", &id.to_string()),
            "size": blob.size(),
            "url": format!("{}/git/blobs/{id}", self.api),
            "content": base64_lines(blob.content()),
            "encoding": "base64",
        })))
    }

    fn create_blob(&self, body: &Value) -> ApiResult {
        let content = req_str(body, "content")?;
        let data = match opt_str(body, "encoding")?.unwrap_or("utf-8") {
            "utf-8" | "utf8" => content.as_bytes().to_vec(),
            "base64" => base64_decode(content)
                .ok_or_else(|| ApiError::invalid("content is not valid Base64"))?,
            other => {
                return Err(ApiError::invalid(format!(
                    "encoding {other:?} is not supported (use utf-8 or base64)"
                )))
            }
        };
        self.ensure_not_empty()?;
        let oid = self.repo.blob(&data).map_err(ApiError::internal)?;
        Ok(Reply::json(
            201,
            json!({"sha": oid.to_string(), "url": format!("{}/git/blobs/{oid}", self.api)}),
        )
        .with_header("location", format!("{}/git/blobs/{oid}", self.api)))
    }

    fn list_commits(
        &self,
        sha: Option<&str>,
        per_page: Option<&str>,
        page: Option<&str>,
    ) -> ApiResult {
        self.ensure_not_empty()?;
        let start = sha.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_BRANCH);
        let commit = self
            .resolve(start)
            .and_then(|o| o.peel_to_commit().ok())
            .ok_or_else(|| ApiError::new(404, format!("No commit found for SHA: {start}")))?;
        let per_page = per_page
            .and_then(|n| n.trim().parse::<usize>().ok())
            .map(|n| if n == 0 { 30 } else { n.min(100) })
            .unwrap_or(30);
        let page = page
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|&p| p > 0)
            .unwrap_or(1);
        let skip = (page - 1).saturating_mul(per_page);

        let mut items = Vec::new();
        let mut more = false;
        let mut index = 0usize;
        let mut current = Some(commit);
        while let Some(c) = current {
            if index >= skip {
                if items.len() == per_page {
                    more = true;
                    break;
                }
                items.push(self.list_item(&c));
            }
            index += 1;
            current = c.parent(0).ok();
        }
        let mut reply = Reply::cacheable(Value::Array(items));
        if more {
            reply = reply.with_header(
                "link",
                format!(
                    "<{}/commits?sha={}&per_page={per_page}&page={}>; rel=\"next\"",
                    self.api,
                    percent_encode(start),
                    page + 1
                ),
            );
        }
        Ok(reply)
    }

    /// One element of the commit list (`GET /repos/O/R/commits`).
    fn list_item(&self, c: &Commit<'_>) -> Value {
        let id = c.id();
        json!({
            "sha": id.to_string(),
            "node_id": Self::node_id("Commit", &id.to_string()),
            "url": format!("{}/commits/{id}", self.api),
            "html_url": format!("{}/commit/{id}", self.html),
            "commit": {
                "url": format!("{}/git/commits/{id}", self.api),
                "author": Self::sig_json(&c.author()),
                "committer": Self::sig_json(&c.committer()),
                "message": String::from_utf8_lossy(c.message_raw_bytes()),
                "tree": {
                    "sha": c.tree_id().to_string(),
                    "url": format!("{}/git/trees/{}", self.api, c.tree_id()),
                },
                "comment_count": 0,
                "verification": Self::verification(),
            },
            "author": null,
            "committer": null,
            "parents": c.parent_ids().map(|p| self.parent_json(p)).collect::<Vec<_>>(),
        })
    }

    fn file_json(&self, path: &str, blob: Oid, size: usize, reference: &str) -> Value {
        let name = path.rsplit('/').next().unwrap_or(path);
        json!({
            "type": "file",
            "name": name,
            "path": path,
            "sha": blob.to_string(),
            "size": size,
            "url": format!("{}/contents/{path}?ref={}", self.api, percent_encode(reference)),
            "git_url": format!("{}/git/blobs/{blob}", self.api),
            "html_url": format!("{}/blob/{}/{path}", self.html, reference),
            "download_url": null,
        })
    }

    fn get_contents(&self, path: &str, reference: Option<&str>) -> ApiResult {
        if check_path(path).is_err() {
            return Err(ApiError::not_found());
        }
        if self.is_empty()? {
            return Err(ApiError::new(404, "This repository is empty."));
        }
        let reference = reference
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_BRANCH);
        let tree = self
            .resolve(reference)
            .and_then(|o| o.peel_to_tree().ok())
            .ok_or_else(|| {
                ApiError::new(404, format!("No commit found for the ref {reference}"))
            })?;
        let entry = tree
            .get_path(Path::new(path))
            .ok()
            .filter(|e| e.kind() == Some(ObjectType::Blob))
            .ok_or_else(ApiError::not_found)?;
        let blob = self
            .repo
            .find_blob(entry.id())
            .map_err(|_| ApiError::not_found())?;
        let mut body = self.file_json(path, blob.id(), blob.size(), reference);
        if let Value::Object(m) = &mut body {
            m.insert("encoding".into(), "base64".into());
            m.insert("content".into(), base64_lines(blob.content()).into());
        }
        Ok(Reply::cacheable(body))
    }

    fn put_contents(&self, path: &str, body: &Value) -> ApiResult {
        check_path(path).map_err(ApiError::invalid)?;
        let message = req_str(body, "message")?;
        let content = req_str(body, "content")?;
        let content = base64_decode(content)
            .ok_or_else(|| ApiError::invalid("content is not valid Base64"))?;
        let branch = opt_str(body, "branch")?
            .filter(|b| !b.is_empty())
            .unwrap_or(DEFAULT_BRANCH);
        let full = format!("refs/heads/{branch}");
        if !valid_ref_name(&full) {
            return Err(ApiError::invalid(format!("Invalid branch name {branch:?}")));
        }
        let expected = opt_str(body, "sha")?;
        let committer = SigSpec::parse(body, "committer")?.unwrap_or_else(SigSpec::github_now);
        let author = SigSpec::parse(body, "author")?.unwrap_or_else(|| committer.clone());
        let author = author.signature("author")?;
        let committer = committer.signature("committer")?;

        let parent = match self.repo.find_reference(&full) {
            Ok(r) => Some(r.peel_to_commit().map_err(ApiError::internal)?),
            Err(_) => None,
        };
        let base = match &parent {
            Some(c) => c.tree().map_err(ApiError::internal)?,
            None => self.empty_tree()?,
        };
        let mut mode = FileMode::Blob;
        let existing = base.get_path(Path::new(path)).ok();
        if let Some(entry) = &existing {
            if entry.kind() != Some(ObjectType::Blob) {
                return Err(ApiError::invalid(format!("{path} is a directory")));
            }
            match expected {
                None => return Err(ApiError::missing("sha")),
                Some(sha) if !sha.eq_ignore_ascii_case(&entry.id().to_string()) => {
                    return Err(ApiError::new(409, format!("{path} does not match {sha}")))
                }
                Some(_) => {}
            }
            if entry.filemode() == i32::from(FileMode::BlobExecutable) {
                mode = FileMode::BlobExecutable;
            }
        }
        let blob = self.repo.blob(&content).map_err(ApiError::internal)?;
        let tree_oid = TreeUpdateBuilder::new()
            .upsert(path, blob, mode)
            .create_updated(self.repo, &base)
            .map_err(|e| ApiError::invalid(format!("Invalid path {path}: {}", e.message())))?;
        let tree = self.repo.find_tree(tree_oid).map_err(ApiError::internal)?;
        let parents: Vec<&Commit<'_>> = parent.iter().collect();
        let oid = self
            .repo
            .commit(None, &author, &committer, message, &tree, &parents)
            .map_err(|e| ApiError::invalid(format!("Commit creation failed: {}", e.message())))?;
        let log = "github test server: contents";
        match &parent {
            Some(p) => self.repo.reference_matching(&full, oid, true, p.id(), log),
            None => self.repo.reference(&full, oid, false, log),
        }
        .map_err(|e| ApiError::new(409, format!("Branch update failed: {}", e.message())))?;
        let commit = self.repo.find_commit(oid).map_err(ApiError::internal)?;
        let status = if existing.is_some() { 200 } else { 201 };
        Ok(Reply::json(
            status,
            json!({
                "content": self.file_json(path, blob, content.len(), branch),
                "commit": self.commit_json(&commit),
            }),
        ))
    }
}
