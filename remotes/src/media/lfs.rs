//! Git LFS: the batch API with the basic transfer adapter for a server
//! (`http(s)://`, GitHub), and git-lfs's standalone layout for a
//! repository on a local path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use skygit_ports::media::{ContentHash, MediaStore, MediaStoreError};
use tokio::io::AsyncWriteExt;

/// The media type of the batch API.
pub const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";
/// Largest batch answer read.
const MAX_BATCH_ANSWER: usize = 1024 * 1024;
/// One call's timeout (an upload of 100 MiB on a slow uplink takes long).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Tries of a call that failed in a way worth retrying.
const TRIES: usize = 4;

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(300))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(TRIES - 1)
        .with_jitter()
}

#[derive(Debug, Serialize)]
struct BatchRequest<'a> {
    operation: &'a str,
    transfers: [&'a str; 1],
    objects: [ObjectSpec<'a>; 1],
    hash_algo: &'a str,
}

#[derive(Debug, Serialize)]
struct ObjectSpec<'a> {
    oid: &'a str,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    transfer: Option<String>,
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    authenticated: Option<bool>,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Debug, Deserialize)]
struct Actions {
    #[serde(default)]
    upload: Option<Action>,
    #[serde(default)]
    verify: Option<Action>,
    #[serde(default)]
    download: Option<Action>,
}

#[derive(Debug, Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ObjectError {
    code: i64,
    message: String,
}

/// A Git LFS server reached through its batch API.
pub struct LfsHttp {
    endpoint: String,
    /// Basic credentials (a token as the password), sent to the endpoint's
    /// own host only.
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

impl LfsHttp {
    /// `endpoint` is the LFS URL (`https://host/owner/repo.git/info/lfs`).
    pub fn new(endpoint: &str, auth: Option<(String, String)>) -> Result<Self, MediaStoreError> {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| MediaStoreError::Refused(format!("LFS URL {endpoint:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(MediaStoreError::Refused(format!(
                "LFS URL {endpoint:?} is not http(s)"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| MediaStoreError::Refused(format!("HTTP client: {e}")))?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            auth,
            http,
        })
    }

    /// The LFS URL git-lfs derives from a remote's URL
    /// (`https://host/owner/repo(.git)` → `https://host/owner/repo.git/info/lfs`).
    pub fn derive_endpoint(remote_url: &str) -> Option<String> {
        let url = reqwest::Url::parse(remote_url).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        let base = remote_url.trim_end_matches('/');
        Some(if base.ends_with(".git") {
            format!("{base}/info/lfs")
        } else {
            format!("{base}.git/info/lfs")
        })
    }

    fn same_host(&self, href: &str) -> bool {
        let (Ok(a), Ok(b)) = (
            reqwest::Url::parse(&self.endpoint),
            reqwest::Url::parse(href),
        ) else {
            return false;
        };
        a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port() == b.port()
    }

    fn with_auth(
        &self,
        rb: reqwest::RequestBuilder,
        href: &str,
        authenticated: bool,
    ) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((user, pass)) if !authenticated && self.same_host(href) => {
                rb.basic_auth(user, Some(pass))
            }
            _ => rb,
        }
    }

    fn with_headers(rb: reqwest::RequestBuilder, a: &Action) -> reqwest::RequestBuilder {
        a.header.iter().fold(rb, |rb, (k, v)| rb.header(k, v))
    }

    async fn batch(
        &self,
        operation: &str,
        hash: &ContentHash,
        size: u64,
    ) -> Result<BatchObject, MediaStoreError> {
        let url = format!("{}/objects/batch", self.endpoint);
        let body = BatchRequest {
            operation,
            transfers: ["basic"],
            objects: [ObjectSpec {
                oid: hash.as_str(),
                size,
            }],
            hash_algo: "sha256",
        };
        let rb = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, LFS_MEDIA_TYPE)
            .header(reqwest::header::CONTENT_TYPE, LFS_MEDIA_TYPE)
            .json(&body);
        let r = self
            .with_auth(rb, &url, false)
            .send()
            .await
            .map_err(unavailable)?;
        let status = r.status();
        let text = read_bounded(r, MAX_BATCH_ANSWER).await?;
        if status == reqwest::StatusCode::NOT_FOUND && operation == "download" {
            return Err(MediaStoreError::NotFound(format!(
                "{hash}: {}",
                snippet(&text)
            )));
        }
        check_status(status, &text, "the batch call")?;
        let answer: BatchAnswer = serde_json::from_slice(&text).map_err(|e| {
            MediaStoreError::Refused(format!("a batch answer this build does not read: {e}"))
        })?;
        if answer.transfer.as_deref().is_some_and(|t| t != "basic") {
            return Err(MediaStoreError::Refused(format!(
                "the server picked transfer {:?}, not basic",
                answer.transfer
            )));
        }
        let obj = answer
            .objects
            .into_iter()
            .find(|o| o.oid == hash.as_str())
            .ok_or_else(|| MediaStoreError::Refused(format!("the batch answer lacks {hash}")))?;
        if obj.size.is_some_and(|s| s != size) && operation == "upload" {
            return Err(MediaStoreError::Refused(format!(
                "the server names {hash} with size {:?}, not {size}",
                obj.size
            )));
        }
        if let Some(e) = &obj.error {
            let what = format!("{hash}: {} {}", e.code, e.message);
            return Err(match e.code {
                404 | 410 => MediaStoreError::NotFound(what),
                c if c >= 500 || c == 429 => MediaStoreError::Unavailable(what),
                _ => MediaStoreError::Refused(what),
            });
        }
        Ok(obj)
    }

    async fn put_once(
        &self,
        hash: &ContentHash,
        size: u64,
        path: &Path,
    ) -> Result<(), MediaStoreError> {
        let obj = self.batch("upload", hash, size).await?;
        let authenticated = obj.authenticated.unwrap_or(false);
        let Some(actions) = obj.actions else {
            // The server has it.
            return Ok(());
        };
        if let Some(up) = &actions.upload {
            let f = tokio::fs::File::open(path).await.map_err(io)?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
            let rb = Self::with_headers(self.http.put(&up.href), up)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(body);
            self.transfer(rb, &up.href, authenticated, "the upload")
                .await?;
        }
        if let Some(v) = &actions.verify {
            let rb = Self::with_headers(self.http.post(&v.href), v)
                .header(reqwest::header::ACCEPT, LFS_MEDIA_TYPE)
                .header(reqwest::header::CONTENT_TYPE, LFS_MEDIA_TYPE)
                .body(
                    serde_json::to_vec(&ObjectSpec {
                        oid: hash.as_str(),
                        size,
                    })
                    .map_err(|e| MediaStoreError::Io(e.to_string()))?,
                );
            self.transfer(rb, &v.href, authenticated, "the verify call")
                .await?;
        }
        Ok(())
    }

    /// Sends one action's request and checks its answer.
    async fn transfer(
        &self,
        rb: reqwest::RequestBuilder,
        href: &str,
        authenticated: bool,
        what: &str,
    ) -> Result<(), MediaStoreError> {
        let r = self
            .with_auth(rb, href, authenticated)
            .send()
            .await
            .map_err(unavailable)?;
        let status = r.status();
        let text = read_bounded(r, MAX_BATCH_ANSWER).await?;
        check_status(status, &text, what)
    }

    async fn get_once(
        &self,
        hash: &ContentHash,
        max_bytes: u64,
        dest: &Path,
    ) -> Result<(), MediaStoreError> {
        // The size is not known to a reader by hash: ask with the bound
        // (servers answer with the object's own size).
        let obj = self.batch("download", hash, max_bytes).await?;
        let authenticated = obj.authenticated.unwrap_or(false);
        let down = obj
            .actions
            .and_then(|a| a.download)
            .ok_or_else(|| MediaStoreError::NotFound(format!("{hash}: no download action")))?;
        let rb = Self::with_headers(self.http.get(&down.href), &down);
        let r = self
            .with_auth(rb, &down.href, authenticated)
            .send()
            .await
            .map_err(unavailable)?;
        let status = r.status();
        if !status.is_success() {
            let text = read_bounded(r, MAX_BATCH_ANSWER).await?;
            check_status(status, &text, "the download")?;
            return Err(MediaStoreError::Refused(format!(
                "the download answered {status}"
            )));
        }
        write_bounded(r.bytes_stream(), max_bytes, dest).await
    }
}

impl MediaStore for LfsHttp {
    fn describe(&self) -> String {
        format!("Git LFS at {}", self.endpoint)
    }

    fn put<'a>(
        &'a self,
        hash: &'a ContentHash,
        size: u64,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(
            (move || self.put_once(hash, size, path))
                .retry(retry_policy())
                .when(|e| matches!(e, MediaStoreError::Unavailable(_))),
        )
    }

    fn get<'a>(
        &'a self,
        hash: &'a ContentHash,
        max_bytes: u64,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(
            (move || self.get_once(hash, max_bytes, dest))
                .retry(retry_policy())
                .when(|e| matches!(e, MediaStoreError::Unavailable(_))),
        )
    }
}

/// git-lfs's standalone layout in a repository on a local path:
/// `<git dir>/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>`. A `git clone` of
/// the path followed by `git lfs pull` reads it with no server.
pub struct LfsLocal {
    git_dir: PathBuf,
}

impl LfsLocal {
    /// The store of the repository at `path` (bare, or a work tree with a
    /// `.git` folder); `None` when `path` is no local repository.
    pub fn for_path(path: &Path) -> Option<Self> {
        let bare = path.join("HEAD").is_file() && path.join("objects").is_dir();
        let git_dir = if bare {
            path.to_owned()
        } else {
            path.join(".git")
        };
        git_dir.join("objects").is_dir().then_some(Self { git_dir })
    }

    fn object(&self, h: &ContentHash) -> PathBuf {
        let s = h.as_str();
        self.git_dir
            .join("lfs/objects")
            .join(&s[0..2])
            .join(&s[2..4])
            .join(s)
    }
}

impl MediaStore for LfsLocal {
    fn describe(&self) -> String {
        format!("Git LFS objects in {}", self.git_dir.display())
    }

    fn put<'a>(
        &'a self,
        hash: &'a ContentHash,
        size: u64,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async move {
            let dest = self.object(hash);
            if tokio::fs::metadata(&dest)
                .await
                .is_ok_and(|m| m.len() == size)
            {
                return Ok(());
            }
            let tmp_dir = self.git_dir.join("lfs/tmp");
            tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
            let tmp = tmp_dir.join(format!("{hash}.{}", std::process::id()));
            tokio::fs::copy(path, &tmp).await.map_err(io)?;
            tokio::fs::File::open(&tmp)
                .await
                .map_err(io)?
                .sync_all()
                .await
                .map_err(io)?;
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io)?;
            }
            tokio::fs::rename(&tmp, &dest).await.map_err(io)
        })
    }

    fn get<'a>(
        &'a self,
        hash: &'a ContentHash,
        max_bytes: u64,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async move {
            let src = self.object(hash);
            let meta = match tokio::fs::metadata(&src).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(MediaStoreError::NotFound(hash.to_string()))
                }
                Err(e) => return Err(io(e)),
            };
            if meta.len() > max_bytes {
                return Err(MediaStoreError::Refused(format!(
                    "{hash} is {} bytes, over {max_bytes}",
                    meta.len()
                )));
            }
            tokio::fs::copy(&src, dest).await.map(drop).map_err(io)
        })
    }
}

fn io(e: std::io::Error) -> MediaStoreError {
    MediaStoreError::Io(e.to_string())
}

fn unavailable(e: reqwest::Error) -> MediaStoreError {
    MediaStoreError::Unavailable(e.without_url().to_string())
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

fn check_status(
    status: reqwest::StatusCode,
    body: &[u8],
    what: &str,
) -> Result<(), MediaStoreError> {
    if status.is_success() {
        return Ok(());
    }
    let msg = format!("{what} answered {status}: {}", snippet(body));
    Err(
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            MediaStoreError::Unavailable(msg)
        } else {
            MediaStoreError::Refused(msg)
        },
    )
}

/// A body read whole, refused past `max` bytes.
async fn read_bounded(r: reqwest::Response, max: usize) -> Result<Vec<u8>, MediaStoreError> {
    let mut out = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(part) = s.next().await {
        let part = part.map_err(unavailable)?;
        if out.len() + part.len() > max {
            return Err(MediaStoreError::Refused(format!(
                "an answer over {max} bytes"
            )));
        }
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// Streams a body into the new file `dest`, refused past `max` bytes.
pub(crate) async fn write_bounded<S, B, E>(
    mut s: S,
    max: u64,
    dest: &Path,
) -> Result<(), MediaStoreError>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let mut f = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut n = 0u64;
    while let Some(part) = s.next().await {
        let part = part.map_err(|e| MediaStoreError::Unavailable(e.to_string()))?;
        let part = part.as_ref();
        n += part.len() as u64;
        if n > max {
            drop(f);
            let _ = tokio::fs::remove_file(dest).await;
            return Err(MediaStoreError::Refused(format!(
                "an object over {max} bytes"
            )));
        }
        f.write_all(part).await.map_err(io)?;
    }
    f.flush().await.map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_derived_as_git_lfs_does() {
        assert_eq!(
            LfsHttp::derive_endpoint("https://example.com/o/r.git").as_deref(),
            Some("https://example.com/o/r.git/info/lfs")
        );
        assert_eq!(
            LfsHttp::derive_endpoint("https://example.com/o/r").as_deref(),
            Some("https://example.com/o/r.git/info/lfs")
        );
        assert_eq!(LfsHttp::derive_endpoint("git://example.com/o/r"), None);
        assert_eq!(LfsHttp::derive_endpoint("/srv/r.git"), None);
    }
}
