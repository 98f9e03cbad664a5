//! Fault injection for the process tests (`--fault-api` only): close a
//! link as if it failed, never link to a peer, or send a peer raw bytes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use skygit_api::faults::{Blocked, Dropped, Sent};

use super::{gone, ApiError, Shared};

fn enabled(s: &Shared) -> Result<(), ApiError> {
    if s.faults {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "fault injection is off",
        ))
    }
}

pub async fn drop_link(
    State(s): State<Shared>,
    Path(peer): Path<u64>,
) -> Result<Json<Dropped>, ApiError> {
    enabled(&s)?;
    let room = s.room(None).await?;
    match room
        .handle
        .mesh
        .send(skygit_actors::mesh::DropLink(peer))
        .await
        .map_err(gone)?
    {
        true => Ok(Json(Dropped { dropped: peer })),
        false => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("no open link to {peer}"),
        )),
    }
}

pub async fn block(
    State(s): State<Shared>,
    Path(peer): Path<u64>,
) -> Result<Json<Blocked>, ApiError> {
    enabled(&s)?;
    let room = s.room(None).await?;
    room.handle
        .mesh
        .send(skygit_actors::mesh::BlockPeer(peer))
        .await
        .map_err(gone)?;
    Ok(Json(Blocked { blocked: peer }))
}

/// Sends `body` to a peer as it is: `wire` as one raw data-channel message
/// (below the mesh's framing), `frame` as one frame (below the envelope
/// codec). Tests use it to play a peer that sends garbage.
pub async fn send_raw(
    State(s): State<Shared>,
    Path((peer, layer)): Path<(u64, String)>,
    body: Bytes,
) -> Result<Json<Sent>, ApiError> {
    enabled(&s)?;
    let room = s.room(None).await?;
    let Some(mesh) = &room.mesh else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this node has no mesh",
        ));
    };
    let sent = match layer.as_str() {
        "wire" => mesh.send_raw(peer, &body).await.map_err(|e| e.to_string()),
        "frame" => {
            use skygit_consensus::ports::PeerLink;
            mesh.send(peer, body.to_vec())
                .await
                .map_err(|e| e.to_string())
        }
        other => return Err(ApiError::bad_request(format!("unknown layer {other:?}"))),
    };
    sent.map(|()| {
        Json(Sent {
            sent: body.len() as u64,
        })
    })
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}
