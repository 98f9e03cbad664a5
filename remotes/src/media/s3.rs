//! An S3-compatible store through `object_store`: objects
//! `<prefix><sha256>`, uploaded in 8 MiB parts, retried with backoff by
//! `object_store`'s own retry policy (bounded here).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use skygit_ports::layout::S3Location;
use skygit_ports::media::{ContentHash, MediaStore, MediaStoreError};
use tokio::io::AsyncReadExt;

/// Part size of a multipart upload (S3 refuses parts under 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// A node's S3 credentials: from its environment or config file, never
/// from the repository.
#[derive(Clone, Default)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// A room's files in an S3-compatible bucket.
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
}

impl S3Store {
    pub fn new(location: &S3Location, creds: &S3Credentials) -> Result<Self, MediaStoreError> {
        let mut b = AmazonS3Builder::new()
            .with_endpoint(location.endpoint.trim_end_matches('/'))
            .with_allow_http(location.endpoint.starts_with("http://"))
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(300),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(t) = &creds.session_token {
            b = b.with_token(t);
        }
        let store = b
            .build()
            .map_err(|e| MediaStoreError::Refused(format!("S3 settings: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            location: location.clone(),
        })
    }

    fn key(&self, h: &ContentHash) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}{h}", self.location.prefix))
    }
}

fn mapped(e: object_store::Error) -> MediaStoreError {
    match e {
        object_store::Error::NotFound { path, .. } => MediaStoreError::NotFound(path),
        e @ (object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. }) => MediaStoreError::Refused(e.to_string()),
        e => MediaStoreError::Unavailable(e.to_string()),
    }
}

impl MediaStore for S3Store {
    fn describe(&self) -> String {
        format!(
            "S3 bucket {} at {} (prefix {:?})",
            self.location.bucket, self.location.endpoint, self.location.prefix
        )
    }

    fn put<'a>(
        &'a self,
        hash: &'a ContentHash,
        size: u64,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async move {
            let key = self.key(hash);
            match self.store.head(&key).await {
                Ok(meta) if meta.size == size => return Ok(()),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(mapped(e)),
            }
            let upload = self.store.put_multipart(&key).await.map_err(mapped)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut f = tokio::fs::File::open(path)
                .await
                .map_err(|e| MediaStoreError::Io(e.to_string()))?;
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(MediaStoreError::Io(e.to_string()));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(2).await {
                    return Err(mapped(e));
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map(drop).map_err(mapped)
        })
    }

    fn get<'a>(
        &'a self,
        hash: &'a ContentHash,
        max_bytes: u64,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), MediaStoreError>> {
        Box::pin(async move {
            let r = self.store.get(&self.key(hash)).await.map_err(mapped)?;
            if r.meta.size > max_bytes {
                return Err(MediaStoreError::Refused(format!(
                    "{hash} is {} bytes, over {max_bytes}",
                    r.meta.size
                )));
            }
            super::lfs::write_bounded(r.into_stream(), max_bytes, dest).await
        })
    }
}
