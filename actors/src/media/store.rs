//! A node's local attachment store: content-addressed files on disk.
//!
//! A blob lives at `<dir>/<h[0:2]>/<h[2:4]>/<h>` where `h` is the hex
//! SHA-256 of its bytes. Bytes arrive through a [`BlobWriter`], which
//! hashes as it writes into a temporary file, bounds the size, fsyncs and
//! only then renames the file into place: a blob in the store is always
//! whole and always matches its name. Names never come from a file name
//! a person or a peer chose.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skygit_consensus::model::ContentHash;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Why bytes could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the file is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the bytes hash to {found}, not {expected}")]
    HashMismatch {
        expected: ContentHash,
        found: ContentHash,
    },
    #[error("the bytes are {found} long, not {expected}")]
    SizeMismatch { expected: u64, found: u64 },
    #[error("attachment store: {0}")]
    Io(#[from] io::Error),
}

/// The content-addressed files of one node.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store at `dir` and removes what interrupted
    /// writes left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { dir })
    }

    /// Where a blob lives (whether or not it is there).
    pub fn path(&self, h: &ContentHash) -> PathBuf {
        let s = h.as_str();
        self.dir.join(&s[0..2]).join(&s[2..4]).join(s)
    }

    /// The blob's size, when the store has it.
    pub async fn size(&self, h: &ContentHash) -> Option<u64> {
        tokio::fs::metadata(self.path(h))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Starts writing a blob of at most `max` bytes.
    pub async fn writer(&self, max: u64) -> Result<BlobWriter, StoreError> {
        let tmp = self.temp_path();
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
            max,
        })
    }

    /// The blob's size and up to `len` of its bytes from `offset` (fewer
    /// at its end).
    pub async fn read(
        &self,
        h: &ContentHash,
        offset: u64,
        len: usize,
    ) -> io::Result<(u64, Vec<u8>)> {
        let mut f = tokio::fs::File::open(self.path(h)).await?;
        let total = f.metadata().await?.len();
        f.seek(io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf).await?;
        Ok((total, buf))
    }

    /// A new temporary file name in the store's folder (same file system
    /// as the blobs; cleared when the store opens).
    pub fn temp_path(&self) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{}.part", ulid::Ulid::new()))
    }

    /// Stores a file that is already on disk (`skygit send --attach`,
    /// tests), copying it through a writer.
    pub async fn put_file(&self, src: &Path, max: u64) -> Result<(ContentHash, u64), StoreError> {
        self.copy_in(src, max).await?.finish(None).await
    }

    /// A writer holding a copy of the file at `src`.
    async fn copy_in(&self, src: &Path, max: u64) -> Result<BlobWriter, StoreError> {
        let mut f = tokio::fs::File::open(src).await?;
        let mut w = self.writer(max).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).await?;
        }
        Ok(w)
    }
}

impl BlobStore {
    /// Stores a file on disk only if its bytes hash to `hash` (and are
    /// `size` long, when given): bytes from outside never land under
    /// another name.
    pub async fn put_file_checked(
        &self,
        src: &Path,
        hash: &ContentHash,
        size: Option<u64>,
        max: u64,
    ) -> Result<(), StoreError> {
        let len = tokio::fs::metadata(src).await?.len();
        if let Some(s) = size {
            if s != len {
                return Err(StoreError::SizeMismatch {
                    expected: s,
                    found: len,
                });
            }
        }
        self.copy_in(src, max)
            .await?
            .finish(Some((hash, len)))
            .await
            .map(drop)
    }
}

/// Bytes on their way into the store.
pub struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
    max: u64,
}

impl BlobWriter {
    /// Appends bytes; refuses (and forgets the file) past the limit.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = self.len + bytes.len() as u64;
        if len > self.max {
            self.discard().await;
            return Err(StoreError::TooLarge { max: self.max });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("the writer was discarded").into());
        };
        if let Err(e) = file.write_all(bytes).await {
            self.discard().await;
            return Err(e.into());
        }
        self.hasher.update(bytes);
        self.len = len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable and puts it in place; with `expected`, only
    /// when the bytes hash to it (otherwise they are forgotten).
    pub async fn finish(
        mut self,
        expected: Option<(&ContentHash, u64)>,
    ) -> Result<(ContentHash, u64), StoreError> {
        let found = ContentHash::from_digest(self.hasher.clone().finalize().into());
        if let Some((h, size)) = expected {
            if self.len != size {
                self.discard().await;
                return Err(StoreError::SizeMismatch {
                    expected: size,
                    found: self.len,
                });
            }
            if *h != found {
                self.discard().await;
                return Err(StoreError::HashMismatch {
                    expected: h.clone(),
                    found,
                });
            }
        }
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("the writer was discarded").into());
        };
        let placed = async {
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            let dest = self.store.path(&found);
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&self.tmp, &dest).await?;
            if let Some(parent) = dest.parent() {
                // The rename is durable once its directory is.
                tokio::fs::File::open(parent).await?.sync_all().await?;
            }
            Ok::<_, io::Error>(())
        }
        .await;
        if let Err(e) = placed {
            self.discard().await;
            return Err(e.into());
        }
        Ok((found, self.len))
    }

    async fn discard(&mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(bytes: &[u8]) -> ContentHash {
        ContentHash::from_digest(Sha256::digest(bytes).into())
    }

    #[tokio::test]
    async fn bytes_go_in_under_their_hash_and_come_out_by_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("opens");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = store.writer(1 << 20).await.expect("writer");
        for part in bytes.chunks(7000) {
            w.write(part).await.expect("writes");
        }
        let (h, n) = w.finish(None).await.expect("finishes");
        assert_eq!(h, hash_of(&bytes));
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(store.size(&h).await, Some(n));
        assert_eq!(
            store.read(&h, 1000, 500).await.expect("reads"),
            (n, bytes[1000..1500].to_vec())
        );
        assert_eq!(
            store.read(&h, 199_990, 500).await.expect("reads"),
            (n, bytes[199_990..].to_vec())
        );
        // Nothing is left in the temporary folder.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn too_large_or_wrong_bytes_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("opens");
        let mut w = store.writer(10).await.expect("writer");
        w.write(b"12345").await.expect("fits");
        assert!(matches!(
            w.write(b"678901").await,
            Err(StoreError::TooLarge { max: 10 })
        ));
        let expected = hash_of(b"right");
        let mut w = store.writer(100).await.expect("writer");
        w.write(b"wrong").await.expect("writes");
        assert!(matches!(
            w.finish(Some((&expected, 5))).await,
            Err(StoreError::HashMismatch { .. })
        ));
        assert_eq!(store.size(&hash_of(b"wrong")).await, None);
        assert_eq!(store.size(&expected).await, None);
        // An abandoned writer leaves nothing either.
        let mut w = store.writer(100).await.expect("writer");
        w.write(b"half").await.expect("writes");
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
