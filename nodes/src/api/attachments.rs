//! `POST /attachments` (a file's bytes, streamed into the node's store)
//! and `GET /attachments/{sha256}` (its bytes, with range requests,
//! fetched from a peer first when this node has not got them).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use skygit_actors::media::{FetchError, StoreError, Transfers};
use skygit_api::{Attachment, DownloadQuery, ErrorBody, UploadQuery};
use skygit_consensus::model::ContentHash;
use tower::ServiceExt;

use super::{query, ApiError, Served, Shared};

/// How long a download waits for the bytes from a peer.
const FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The policy of a file's bytes: whatever they are, never a page that
/// runs anything (an uploaded HTML or SVG file stays inert).
const FILE_CSP: &str = "default-src 'none'; sandbox";

fn transfers(room: &Served) -> Result<&Transfers, ApiError> {
    room.handle.attachments.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node keeps no attachments for the room",
        )
    })
}

/// An attachment name as the API bounds it (in characters).
fn check_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if chars > skygit_api::limits::MAX_ATTACHMENT_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "the name is {chars} characters; the limit is {}",
            skygit_api::limits::MAX_ATTACHMENT_NAME_CHARS
        )));
    }
    skygit_consensus::attachment::check_name(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The media type a request's `Content-Type` names, without parameters;
/// `application/octet-stream` when it names none.
fn media_type_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let t = v
        .to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    skygit_consensus::attachment::check_media_type(&t)
        .map_err(|e| ApiError::bad_request(format!("Content-Type: {e}")))?;
    Ok(t)
}

#[utoipa::path(post, path = "/attachments", tag = "attachments", params(UploadQuery),
    request_body(content = Vec<u8>, description = "the file's bytes; `Content-Type` is its media type",
                 content_type = "application/octet-stream"),
    responses((status = 201, description = "stored on this node; name it in a post's `attachments`", body = Attachment),
              (status = 400, body = ErrorBody), (status = 403, description = "the room takes no attachments", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 413, description = "larger than the room's `media.max_bytes`", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
/// Stores a file on this node (streamed, hashed while it is written).
pub async fn upload(
    State(s): State<Shared>,
    q: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Attachment>), ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let transfers = transfers(&room)?;
    if !room.media.enabled() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the room's config.json disables attachments",
        ));
    }
    let name = q.name.unwrap_or_else(|| "file".into());
    check_name(&name)?;
    let media_type = media_type_of(&headers)?;
    let max = room.media.max_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file is larger than this room's limit of {max} bytes"),
        )
    };
    // Refused before a byte is read when the length says so.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let store_err = |e: StoreError| match e {
        StoreError::TooLarge { .. } => too_large(),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut w = transfers.store().writer(max).await.map_err(store_err)?;
    let mut stream = body.into_data_stream();
    while let Some(part) = stream.next().await {
        let part = part.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        w.write(&part).await.map_err(store_err)?;
    }
    if w.is_empty() {
        return Err(ApiError::bad_request("the file is empty"));
    }
    let (hash, size) = w.finish(None).await.map_err(store_err)?;
    metrics::counter!("skygit_attachment_uploaded_bytes_total", "room" => room.spec.clone())
        .increment(size);
    tracing::info!(%hash, size, "attachment uploaded");
    Ok((
        StatusCode::CREATED,
        Json(Attachment {
            sha256: hash.to_string(),
            size,
            name,
            media_type,
        }),
    ))
}

#[utoipa::path(get, path = "/attachments/{sha256}", tag = "attachments",
    params(("sha256" = String, Path, description = "The file's SHA-256 (64 lower-case hex digits)", pattern = r"^[0-9a-f]{64}$"), DownloadQuery),
    responses((status = 200, description = "the bytes, as `application/octet-stream`", content_type = "application/octet-stream"),
              (status = 206, description = "the range asked for (`Range: bytes=...`)", content_type = "application/octet-stream"),
              (status = 400, body = ErrorBody),
              (status = 404, description = "neither this node nor a peer has it", body = ErrorBody),
              (status = 416, description = "a range outside the file"),
              (status = 503, body = ErrorBody)))]
/// A file's bytes (fetched from a peer, or else from the room's storage,
/// when this node has not got them).
pub async fn download(
    State(s): State<Shared>,
    Path(hash): Path<String>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let room: Arc<Served> = s.room(q.repo.as_deref()).await?;
    let transfers = transfers(&room)?;
    let hash = ContentHash::new(hash).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if q.size
        .is_some_and(|s| s == 0 || s > skygit_consensus::attachment::MAX_ATTACHMENT_SIZE)
    {
        return Err(ApiError::bad_request("size is outside 1 to 4 GiB"));
    }
    match tokio::time::timeout(FETCH_WAIT, transfers.fetch(&hash, q.size)).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ FetchError::NotFound { .. })) => {
            // No peer has it: the room's storage may.
            let from_storage = match &room.handle.media_staging {
                Some(m) => m.fetch_from_storage(&room.media, &hash, q.size).await,
                None => Err("this node reaches no attachment storage".into()),
            };
            if let Err(why) = from_storage {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no attachment {hash} here: {e}; from the room's storage: {why}"),
                ));
            }
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("attachment {hash} is still on its way; ask again"),
            ))
        }
    }
    let path = transfers.store().path(&hash);
    let served = tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut resp = served.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    // Content-addressed: the bytes under this name never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(resp)
}

/// Whether this node has a file's bytes (a file-system check, cheap).
pub fn is_local(room: &Served, a: &skygit_consensus::model::Attachment) -> bool {
    room.handle.attachments.as_ref().is_some_and(|t| {
        std::fs::metadata(t.store().path(&a.sha256)).is_ok_and(|m| m.len() == a.size)
    })
}

/// The files a post names, checked: each uploaded to this node first.
pub async fn posted(
    room: &Served,
    files: Vec<Attachment>,
) -> Result<Vec<skygit_consensus::model::Attachment>, ApiError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let transfers = transfers(room)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let sha256 = ContentHash::new(f.sha256)
            .map_err(|e| ApiError::bad_request(format!("attachments: {e}")))?;
        check_name(&f.name)?;
        if transfers.store().size(&sha256).await != Some(f.size) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                "attachments: no file {sha256} of {} bytes on this node (upload it with POST /attachments first)",
                    f.size
                ),
            ));
        }
        out.push(skygit_consensus::model::Attachment {
            sha256,
            size: f.size,
            name: f.name,
            media_type: f.media_type,
        });
    }
    skygit_consensus::attachment::validate_all(&out)
        .map_err(|e| ApiError::bad_request(format!("attachments: {e}")))?;
    Ok(out)
}
