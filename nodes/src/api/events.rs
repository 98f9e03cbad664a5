//! `GET /events`: server-sent events as this node applies the room's log.
//!
//! `message` (a message's new state, with `applied_at_us` on this node's
//! clock), `synced` (the repository's new watermark), `conversation` (a
//! new conversation), `settings` (the room's settings changed: re-read
//! `GET /settings`), `call` (a call's state), `call_signal` (SDP or ICE
//! from a peer's browser) and `lagged` (the client fell behind and should
//! re-read). A comment every 15 s keeps proxies and browsers from timing
//! the stream out.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use skygit_api::events::{Event, Hello, Lagged, SettingsChanged, StreamEvent, Synced};
use skygit_api::{ErrorBody, SyncState};
use skygit_consensus::model::Conversation;
use skygit_storage::AppliedEvent;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::messages::{conversation_view, message_view, rfc3339};
use super::{query, ApiError, RepoQuery, Served, Shared, MAX_EVENT_STREAMS};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Conversations a stream remembers having announced.
const MAX_KNOWN_CONVERSATIONS: usize = 10_000;

/// Counts an open stream; the count drops with the stream.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Self> {
        let prev = open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(open.clone());
        (prev < MAX_EVENT_STREAMS).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Stream {
    _slot: Slot,
    rx: Receiver<Arc<AppliedEvent>>,
    /// Calls' changes and signals for this node's browser.
    calls: Receiver<skygit_actors::media::CallNotice>,
    /// The state replaced in bulk (a snapshot, a re-formed group).
    replaced: tokio::sync::watch::Receiver<u64>,
    room: Arc<Served>,
    synced: u64,
    conversations: BTreeSet<String>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Stream {
    /// What one applied entry tells a subscriber.
    async fn frames(&mut self, e: &AppliedEvent) -> Vec<u8> {
        if let Some(m) = &e.message {
            // A post into a conversation that did not exist created it:
            // announce it before its first message.
            let mut out = if self.conversations.contains(m.message.conversation.as_str()) {
                Vec::new()
            } else {
                self.new_conversations().await
            };
            let hash = if m.last_change_index <= self.synced {
                let reader = self.room.handle.storage.reader.clone();
                let at = m.last_change_index;
                super::blocking(move || reader.commit_for(at))
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
            let mut v = message_view(&self.room, m, hash, SyncState::Committed);
            v.applied_at_us = Some(now_us());
            out.extend(Event::Message(Box::new(v)).frame());
            return out;
        }
        if let Some(s) = &e.settings {
            return Event::Settings(SettingsChanged {
                commit_interval_secs: s.commit_interval_secs,
                voters: s.voters,
                changed_index: s.changed_index,
            })
            .frame();
        }
        // Not a message: a synced record or a new conversation (or a
        // refusal). Reading both is cheap and rare.
        let reader = self.room.handle.storage.reader.clone();
        let read = super::blocking(move || {
            let up_to = reader.synced_up_to()?;
            let hash = reader.commit_for(up_to)?;
            Ok((up_to, hash, reader.conversations()?))
        })
        .await;
        let Ok((up_to, hash, convs)) = read else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if up_to > self.synced {
            self.synced = up_to;
            out.extend(
                Event::Synced(Synced {
                    up_to_index: up_to,
                    commit_url: hash.as_deref().and_then(|h| self.room.commit_url(h)),
                    git_hash: hash,
                })
                .frame(),
            );
        }
        out.extend(self.announce(&convs));
        out
    }

    /// Frames for the conversations this stream has not announced yet.
    fn announce(&mut self, convs: &[Conversation]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in convs {
            if self.conversations.len() < MAX_KNOWN_CONVERSATIONS
                && self.conversations.insert(c.id.as_str().to_owned())
            {
                out.extend(Event::Conversation(conversation_view(c, None)).frame());
            }
        }
        out
    }

    async fn new_conversations(&mut self) -> Vec<u8> {
        let reader = self.room.handle.storage.reader.clone();
        match super::blocking(move || reader.conversations()).await {
            Ok(convs) => self.announce(&convs),
            Err(_) => Vec::new(),
        }
    }
}

#[utoipa::path(get, path = "/events", tag = "status", params(RepoQuery),
    responses((status = 200, content_type = "text/event-stream", body = StreamEvent,
               description = "Server-sent events, each `event: <name>` and `data: <JSON>`: `hello` (Hello, first), \
                              `message` (Message, with `applied_at_us`), `synced` (Synced), `conversation` \
                              (ConversationInfo), `settings` (SettingsChanged), `call` (CallView), `call_signal` \
                              (CallSignal) and `lagged` (Lagged); a `:` comment \
                              every 15 s keeps the stream open."),
              (status = 404, body = ErrorBody),
              (status = 503, description = "the node serves its limit of streams", body = ErrorBody)))]
/// Follows the room as this node applies its log.
pub async fn events(
    State(s): State<Shared>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let room = s.room(q.repo.as_deref()).await?;
    let slot = Slot::take(&s.streams).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already serves {MAX_EVENT_STREAMS} event streams"),
        )
    })?;
    let rx = room.handle.storage.state_machine.subscribe();
    let mut replaced = room.handle.storage.state_machine.watch_replaced();
    replaced.borrow_and_update();
    let reader = room.handle.storage.reader.clone();
    let (synced, known) = super::blocking(move || {
        Ok((
            reader.synced_up_to()?,
            reader
                .conversations()?
                .into_iter()
                .map(|c| c.id.as_str().to_owned())
                .collect::<BTreeSet<_>>(),
        ))
    })
    .await?;
    let hello = Event::Hello(Hello {
        node_id: room.handle.node_id,
        synced_up_to: synced,
        at: rfc3339(now_us() as i64 / 1000),
    })
    .frame();
    let state = Stream {
        _slot: slot,
        rx,
        calls: room.handle.call_notices.subscribe(),
        replaced,
        room,
        synced,
        conversations: known,
    };
    let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(hello) });
    let rest = futures::stream::unfold(state, |mut st| async move {
        loop {
            let bytes = tokio::select! {
                next = tokio::time::timeout(KEEP_ALIVE, st.rx.recv()) => match next {
                    Err(_) => b": keep-alive\n\n".to_vec(),
                    Ok(Ok(e)) => st.frames(&e).await,
                    Ok(Err(RecvError::Lagged(n))) => Event::Lagged(Lagged { missed: n }).frame(),
                    Ok(Err(RecvError::Closed)) => return None,
                },
                // The state was replaced: the client re-reads everything.
                Ok(()) = st.replaced.changed() => Event::Lagged(Lagged { missed: 0 }).frame(),
                call = st.calls.recv() => match call {
                    Ok(n) => super::calls::notice_event(n, st.room.handle.node_id).frame(),
                    // A browser that missed call events re-reads `GET /calls`.
                    Err(RecvError::Lagged(n)) => Event::Lagged(Lagged { missed: n }).frame(),
                    Err(RecvError::Closed) => return None,
                },
            };
            if !bytes.is_empty() {
                return Some((Ok(bytes), st));
            }
        }
    });
    use futures::StreamExt;
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(axum::body::Body::from_stream(first.chain(rest)))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        .map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_bounded_and_slots_come_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_EVENT_STREAMS)
            .map(|_| Slot::take(&open).expect("a free slot"))
            .collect();
        assert!(Slot::take(&open).is_none(), "one stream too many");
        assert_eq!(open.load(Ordering::Acquire), MAX_EVENT_STREAMS);
        drop(slots);
        assert_eq!(open.load(Ordering::Acquire), 0);
        assert!(Slot::take(&open).is_some());
    }
}
