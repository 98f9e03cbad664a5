//! Before a batch is committed, every file its posts name is put where the
//! room's `config.json` says (what `git lfs pre-push` does for a push): a
//! git blob in the commit, a Git LFS object plus its pointer file, or an
//! S3 object. A store that fails delays the commit (the flush fails and is
//! retried; the changes stay in the journal), so the repository never
//! names a file its storage has not got, with one bounded exception: a
//! file no reachable node has got for [`MISSING_GRACE`] after its post is
//! committed without its bytes (counted, logged), so one vanished laptop
//! cannot stop the room's history for good.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skygit_consensus::model::{Attachment, Change, ChangeKind};
use skygit_ports::layout::{MediaConfig, MediaStorage};
use skygit_ports::media::{self as repo_media, MediaStore, MediaStoreError};

use super::CommitterError;
use crate::media::Transfers;

/// How long a committer waits for a file nobody reachable has before it
/// commits the post without the file's bytes.
pub const MISSING_GRACE: Duration = Duration::from_secs(3600);
/// Longest a committer waits for one file from its peers.
const FETCH_WAIT: Duration = Duration::from_secs(300);

/// Opens the store of one kind for a room's media settings (`None`: the
/// kind keeps nothing outside git).
pub type StoreFactory = Arc<
    dyn Fn(&MediaConfig, MediaStorage) -> Result<Option<Arc<dyn MediaStore>>, String> + Send + Sync,
>;

/// A store opened for the media settings it was opened with.
type OpenStore = (MediaConfig, Arc<dyn MediaStore>);

/// What the committer needs to store files.
pub struct MediaStaging {
    room: String,
    transfers: Transfers,
    factory: StoreFactory,
    stores: Mutex<BTreeMap<MediaStorage, OpenStore>>,
    wall_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
}

/// Files staged for one commit: what goes into the tree, and how many
/// files were stored outside it.
#[derive(Debug, Default)]
pub struct Staged {
    pub files: Vec<(String, Vec<u8>)>,
    pub stored: usize,
}

impl MediaStaging {
    pub fn new(
        room: &str,
        transfers: Transfers,
        factory: StoreFactory,
        wall_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> Self {
        Self {
            room: room.to_owned(),
            transfers,
            factory,
            stores: Mutex::new(BTreeMap::new()),
            wall_ms,
        }
    }

    fn store(
        &self,
        config: &MediaConfig,
        kind: MediaStorage,
    ) -> Result<Arc<dyn MediaStore>, CommitterError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, s)) = stores.get(&kind) {
            if c == config {
                return Ok(s.clone());
            }
        }
        let s = (self.factory)(config, kind)
            .map_err(CommitterError::Media)?
            .ok_or_else(|| CommitterError::Media(format!("no {kind:?} store for this room")))?;
        stores.insert(kind, (config.clone(), s.clone()));
        Ok(s)
    }

    /// Stores every file `changes` name; answers the files the commit
    /// adds to the tree.
    pub async fn stage(
        &self,
        config: &MediaConfig,
        changes: &[Change],
    ) -> Result<Staged, CommitterError> {
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut staged = Staged::default();
        let mut seen = std::collections::BTreeSet::new();
        for c in changes {
            let ChangeKind::Post { attachments, .. } = &c.kind else {
                continue;
            };
            for a in attachments {
                if !seen.insert(a.sha256.clone()) {
                    continue;
                }
                let kind = config.storage_for(a.size);
                if kind == MediaStorage::Disabled {
                    continue;
                }
                let Some(path) = self.local(config, kind, a, c.at).await? else {
                    continue;
                };
                match kind {
                    MediaStorage::Git => {
                        let bytes = tokio::fs::read(&path)
                            .await
                            .map_err(|e| CommitterError::Media(format!("{}: {e}", a.sha256)))?;
                        files.insert(repo_media::git_path(&a.sha256), bytes);
                    }
                    MediaStorage::GitLfs => {
                        self.put(config, kind, a, &path).await?;
                        files.insert(
                            repo_media::lfs_path(&a.sha256),
                            repo_media::lfs_pointer(&a.sha256, a.size),
                        );
                        files.insert(
                            repo_media::LFS_ATTRIBUTES_PATH.to_owned(),
                            repo_media::LFS_ATTRIBUTES.as_bytes().to_vec(),
                        );
                        staged.stored += 1;
                    }
                    MediaStorage::External => {
                        self.put(config, kind, a, &path).await?;
                        staged.stored += 1;
                    }
                    MediaStorage::Disabled => {}
                }
            }
        }
        staged.files = files.into_iter().collect();
        Ok(staged)
    }

    async fn put(
        &self,
        config: &MediaConfig,
        kind: MediaStorage,
        a: &Attachment,
        path: &std::path::Path,
    ) -> Result<(), CommitterError> {
        let store = self.store(config, kind)?;
        let started = std::time::Instant::now();
        let result = store.put(&a.sha256, a.size, path).await;
        let label = match &result {
            Ok(()) => "ok",
            Err(MediaStoreError::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        metrics::counter!("skygit_attachment_stores_total", "room" => self.room.clone(), "result" => label)
            .increment(1);
        metrics::histogram!("skygit_attachment_store_duration_seconds", "room" => self.room.clone())
            .record(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            CommitterError::Media(format!("storing {} in {}: {e}", a.sha256, store.describe()))
        })?;
        tracing::info!(hash = %a.sha256, size = a.size, store = %store.describe(), "attachment stored");
        Ok(())
    }

    /// The file's bytes on this node: its store, its peers, or the room's
    /// storage. `None` for a file nobody has past the grace period.
    async fn local(
        &self,
        config: &MediaConfig,
        kind: MediaStorage,
        a: &Attachment,
        posted_at_ms: i64,
    ) -> Result<Option<PathBuf>, CommitterError> {
        let path = self.transfers.store().path(&a.sha256);
        let fetched =
            tokio::time::timeout(FETCH_WAIT, self.transfers.fetch(&a.sha256, Some(a.size)))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::media::FetchError::Store("still on its way".into()))
                });
        if fetched.is_ok() {
            return Ok(Some(path));
        }
        // A predecessor may have stored it before it could commit.
        if let Ok(store) = self.store(config, kind) {
            if self
                .read_back(store.as_ref(), &a.sha256, a.size, Some(a.size))
                .await
                .is_ok()
            {
                return Ok(Some(path));
            }
        }
        let age_ms = (self.wall_ms)().saturating_sub(posted_at_ms);
        if age_ms >= MISSING_GRACE.as_millis() as i64 {
            metrics::counter!("skygit_attachment_missing_total", "room" => self.room.clone())
                .increment(1);
            tracing::warn!(hash = %a.sha256, name = %a.name, "no reachable node has this file an hour after its post: committing the post without it");
            return Ok(None);
        }
        Err(CommitterError::Media(format!(
            "no reachable node has {} ({}) yet: {}",
            a.sha256,
            a.name,
            fetched.err().map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Reads a file back from the store into this node's store, checked
    /// against its hash (and size, when known).
    async fn read_back(
        &self,
        store: &dyn MediaStore,
        hash: &skygit_consensus::model::ContentHash,
        max_bytes: u64,
        size: Option<u64>,
    ) -> Result<(), String> {
        let tmp = self.transfers.store().temp_path();
        let result = match store.get(hash, max_bytes, &tmp).await {
            Ok(()) => self
                .transfers
                .store()
                .put_file_checked(&tmp, hash, size, max_bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    /// Brings a file no peer has from the room's storage (git blobs, Git
    /// LFS, S3) into this node's store.
    pub async fn fetch_from_storage(
        &self,
        config: &MediaConfig,
        hash: &skygit_consensus::model::ContentHash,
        size: Option<u64>,
    ) -> Result<(), String> {
        let kinds: Vec<MediaStorage> = match size {
            Some(s) => vec![config.storage_for(s)],
            None => {
                let mut k = vec![config.storage];
                k.extend(config.small_storage.filter(|s| *s != config.storage));
                k
            }
        };
        let mut last = String::from("the room keeps no files");
        for kind in kinds {
            if kind == MediaStorage::Disabled {
                continue;
            }
            let store = match self.store(config, kind) {
                Ok(s) => s,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match self
                .read_back(store.as_ref(), hash, size.unwrap_or(config.max_bytes), size)
                .await
            {
                Ok(()) => {
                    tracing::info!(%hash, store = %store.describe(), "attachment read back from the room's storage");
                    return Ok(());
                }
                Err(e) => last = format!("{}: {e}", store.describe()),
            }
        }
        Err(last)
    }
}
