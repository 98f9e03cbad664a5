//! Attachments in the repository: where their files go in the tree, Git
//! LFS pointer files, and the port of the stores that hold their bytes
//! outside git (a Git LFS server, git-lfs's standalone layout in a local
//! repository, an S3-compatible service).
//!
//! - `git` storage: the bytes are a blob at `.messages/attachments/<sha256>`.
//! - `git-lfs`: a pointer file at `.messages/lfs/<sha256>`, which
//!   `.messages/lfs/.gitattributes` marks as LFS, and the object in the
//!   LFS store; `git clone` then `git lfs pull` gets the bytes.
//! - `external`: the object `<prefix><sha256>` in the S3 bucket; the tree
//!   holds nothing (the batch line names the file).

use std::path::Path;

use futures::future::BoxFuture;
pub use skygit_consensus::model::ContentHash;

/// Folder of attachments stored as git blobs.
pub const ATTACHMENTS_DIR: &str = ".messages/attachments";
/// Folder of Git LFS pointer files.
pub const LFS_DIR: &str = ".messages/lfs";
/// The attributes file that makes the pointer files LFS files (only
/// names of hex digits: the attributes file itself is not one).
pub const LFS_ATTRIBUTES_PATH: &str = ".messages/lfs/.gitattributes";
/// Its contents.
pub const LFS_ATTRIBUTES: &str = "[0-9a-f]* filter=lfs diff=lfs merge=lfs -text\n";
/// Largest pointer file read back (the spec allows 1024 bytes).
pub const MAX_POINTER_BYTES: usize = 1024;

/// The blob path of an attachment stored in git.
pub fn git_path(h: &ContentHash) -> String {
    format!("{ATTACHMENTS_DIR}/{h}")
}

/// The pointer file path of an attachment stored in Git LFS.
pub fn lfs_path(h: &ContentHash) -> String {
    format!("{LFS_DIR}/{h}")
}

/// What a path under the attachment folders is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPath {
    /// A file stored as a blob (`git` storage).
    Blob(ContentHash),
    /// A Git LFS pointer file.
    Pointer(ContentHash),
    /// `.messages/lfs/.gitattributes`.
    Attributes,
}

/// Reads a path of the tree (untrusted): `None` when it is outside the
/// attachment folders, an error for a name there that skygit never writes.
pub fn classify(path: &str) -> Option<Result<MediaPath, BadPointer>> {
    if path == LFS_ATTRIBUTES_PATH {
        return Some(Ok(MediaPath::Attributes));
    }
    let (name, pointer) =
        if let Some(n) = path.strip_prefix(LFS_DIR).and_then(|r| r.strip_prefix('/')) {
            (n, true)
        } else if let Some(n) = path
            .strip_prefix(ATTACHMENTS_DIR)
            .and_then(|r| r.strip_prefix('/'))
        {
            (n, false)
        } else {
            return None;
        };
    Some(
        ContentHash::new(name)
            .map(|h| {
                if pointer {
                    MediaPath::Pointer(h)
                } else {
                    MediaPath::Blob(h)
                }
            })
            .map_err(|e| BadPointer(format!("{path}: the name is not a SHA-256: {e}"))),
    )
}

/// A Git LFS pointer file (spec v1: version first, then the keys in
/// order, each line ending in a newline).
pub fn lfs_pointer(h: &ContentHash, size: u64) -> Vec<u8> {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{h}\nsize {size}\n")
        .into_bytes()
}

/// Why a pointer file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Git LFS pointer: {0}")]
pub struct BadPointer(pub String);

/// Reads a pointer file from the repository (untrusted): its oid and size.
pub fn parse_lfs_pointer(bytes: &[u8]) -> Result<(ContentHash, u64), BadPointer> {
    if bytes.len() > MAX_POINTER_BYTES {
        return Err(BadPointer(format!("{} bytes", bytes.len())));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| BadPointer("not UTF-8".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some("version https://git-lfs.github.com/spec/v1") {
        return Err(BadPointer("no spec v1 version line".into()));
    }
    let (mut oid, mut size) = (None, None);
    for line in lines {
        match line.split_once(' ') {
            Some(("oid", v)) => {
                let hex = v
                    .strip_prefix("sha256:")
                    .ok_or_else(|| BadPointer("an oid that is not sha256".into()))?;
                oid = Some(ContentHash::new(hex).map_err(|e| BadPointer(e.to_string()))?);
            }
            Some(("size", v)) => {
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| BadPointer(format!("size {v:?}")))?,
                );
            }
            Some((_, _)) => {}
            None => return Err(BadPointer(format!("line {line:?}"))),
        }
    }
    match (oid, size) {
        (Some(o), Some(s)) if s <= skygit_consensus::attachment::MAX_ATTACHMENT_SIZE => Ok((o, s)),
        (Some(_), Some(s)) => Err(BadPointer(format!("size {s} is over the limit"))),
        _ => Err(BadPointer("no oid or no size".into())),
    }
}

/// Why a store did not take or give an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaStoreError {
    /// The store has no such object.
    #[error("not in the store: {0}")]
    NotFound(String),
    /// Worth retrying (a 5xx, a timeout, a refused connection).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying until something changes (credentials, a
    /// bucket that does not exist, an answer this build does not accept).
    #[error("the store refused: {0}")]
    Refused(String),
    #[error("local file: {0}")]
    Io(String),
}

/// A store of attachments' bytes outside git. Objects are named by their
/// SHA-256; a store never vouches for bytes (a reader verifies them).
pub trait MediaStore: Send + Sync + 'static {
    /// Where it points, for logs and status (never a secret).
    fn describe(&self) -> String;
    /// Uploads the file at `path` (whose bytes hash to `hash` and are
    /// `size` long) unless the store has the object already.
    fn put<'a>(
        &'a self,
        hash: &'a ContentHash,
        size: u64,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>>;
    /// Writes the object's bytes into the new file `dest`, at most
    /// `max_bytes` of them.
    fn get<'a>(
        &'a self,
        hash: &'a ContentHash,
        max_bytes: u64,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>>;
}

/// Most entries listed when looking a blob up in the attachments folder.
const MAX_LISTED: usize = 100_000;

/// The files of `git` storage, read back through the repository port
/// (storing them is the commit itself: `put` has nothing to do).
pub struct RepoBlobs {
    remote: std::sync::Arc<dyn crate::RepoRemote>,
}

impl RepoBlobs {
    pub fn new(remote: std::sync::Arc<dyn crate::RepoRemote>) -> Self {
        Self { remote }
    }
}

fn from_repo(e: crate::RepoError) -> MediaStoreError {
    use crate::RepoError as E;
    match e {
        E::NotFound(m) => MediaStoreError::NotFound(m),
        e @ (E::Unavailable(_) | E::RateLimited { .. } | E::Unknown(_) | E::Conflict) => {
            MediaStoreError::Unavailable(e.to_string())
        }
        e => MediaStoreError::Refused(e.to_string()),
    }
}

impl MediaStore for RepoBlobs {
    fn describe(&self) -> String {
        format!("git blobs in {}", self.remote.describe())
    }

    fn put<'a>(
        &'a self,
        _hash: &'a ContentHash,
        _size: u64,
        _path: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(
        &'a self,
        hash: &'a ContentHash,
        max_bytes: u64,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async move {
            let head = self
                .remote
                .head()
                .await
                .map_err(from_repo)?
                .ok_or_else(|| MediaStoreError::NotFound("an empty branch".into()))?;
            let want = git_path(hash);
            let entry = self
                .remote
                .list(&head.commit_sha, ATTACHMENTS_DIR, MAX_LISTED)
                .await
                .map_err(from_repo)?
                .into_iter()
                .find(|e| e.path == want && e.kind == crate::EntryKind::File)
                .ok_or_else(|| MediaStoreError::NotFound(want.clone()))?;
            let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
            let bytes = self
                .remote
                .read_blob(&entry.id, max)
                .await
                .map_err(from_repo)?;
            tokio::fs::write(dest, bytes)
                .await
                .map_err(|e| MediaStoreError::Io(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_written_as_git_lfs_does_and_hostile_ones_refused() {
        let h = ContentHash::from_digest([0x5a; 32]);
        let p = lfs_pointer(&h, 12345);
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{h}\nsize 12345\n")
        );
        assert_eq!(parse_lfs_pointer(&p), Ok((h.clone(), 12345)));
        let text = String::from_utf8(p).unwrap();
        for bad in [
            text.replace("sha256:5a", "sha256:ZZ"),
            text.replace("sha256:", "md5:"),
            text.replace("12345", "-1"),
            text.replace("12345", "99999999999999999999"),
            text.replace("12345", "9999999999999"),
            text.replace("spec/v1", "spec/v9"),
            text.replace("size 12345\n", ""),
            "x".repeat(2000),
        ] {
            assert!(
                parse_lfs_pointer(bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(parse_lfs_pointer(&[0xff, 0xfe]).is_err());
        assert_eq!(git_path(&h), format!(".messages/attachments/{h}"));
        assert_eq!(
            classify(&git_path(&h)),
            Some(Ok(MediaPath::Blob(h.clone())))
        );
        assert_eq!(
            classify(&lfs_path(&h)),
            Some(Ok(MediaPath::Pointer(h.clone())))
        );
        assert_eq!(
            classify(LFS_ATTRIBUTES_PATH),
            Some(Ok(MediaPath::Attributes))
        );
        assert!(matches!(classify(".messages/lfs/evil.sh"), Some(Err(_))));
        assert!(matches!(
            classify(".messages/attachments/../x"),
            Some(Err(_))
        ));
        assert_eq!(classify(".messages/general/2025/11/22/1-2.jsonl"), None);
        assert_eq!(lfs_path(&h), format!(".messages/lfs/{h}"));
    }
}
