//! `GET /events`: the server-sent event stream, its events and a parser
//! for clients.
//!
//! Each event is one `event: <name>` line, one `data: <json>` line and a
//! blank line; a line starting with `:` is a keep-alive comment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::messages::{ConversationInfo, Message};

/// The first event of every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub node_id: u64,
    /// The repository's watermark when the stream opened.
    pub synced_up_to: u64,
    pub at: Option<String>,
}

/// The repository's watermark moved: everything up to `up_to_index` is in
/// commit `git_hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Synced {
    pub up_to_index: u64,
    pub git_hash: Option<String>,
    pub commit_url: Option<String>,
}

/// The room's settings changed: re-read `GET /settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChanged {
    pub commit_interval_secs: Option<u64>,
    pub voters: Option<u8>,
    pub changed_index: u64,
}

/// The client fell behind and missed events: re-read what it shows.
/// `missed` is 0 when the node's state was replaced in bulk (a snapshot
/// from the leader, a catch-up from the repository when the room's group
/// re-formed), with no event per change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lagged {
    pub missed: u64,
}

/// The names of the stream's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    Hello,
    Message,
    Synced,
    Conversation,
    Settings,
    Lagged,
    Call,
    CallSignal,
}

/// One event as any server-sent-events reader sees it: its name and its
/// data, the JSON text of the type the name gives ([`Hello`], `Message`,
/// [`Synced`], `ConversationInfo`, [`SettingsChanged`], [`Lagged`], `CallView`,
/// `CallSignal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    pub event: EventName,
    pub data: String,
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello(Hello),
    /// A message's new state (posted, edited, deleted or synchronized),
    /// with `applied_at_us`.
    Message(Box<Message>),
    Synced(Synced),
    /// A new conversation.
    Conversation(ConversationInfo),
    Settings(SettingsChanged),
    Lagged(Lagged),
    /// A call this node knows changed (started, answered, left, ended).
    Call(Box<crate::calls::CallView>),
    /// Signalling for this node's browser from a peer's browser.
    CallSignal(Box<crate::calls::CallSignal>),
}

/// An event a client could not read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unknown event {0:?}")]
    Unknown(String),
    #[error("event {name:?} does not match the contract: {source}")]
    Data {
        name: String,
        source: serde_json::Error,
    },
    #[error("an event line is over {0} bytes")]
    TooLong(usize),
}

impl Event {
    /// The event's name on the `event:` line.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Hello(_) => "hello",
            Event::Message(_) => "message",
            Event::Synced(_) => "synced",
            Event::Conversation(_) => "conversation",
            Event::Settings(_) => "settings",
            Event::Lagged(_) => "lagged",
            Event::Call(_) => "call",
            Event::CallSignal(_) => "call_signal",
        }
    }

    /// The event as it goes on the wire.
    pub fn frame(&self) -> Vec<u8> {
        let data = match self {
            Event::Hello(e) => serde_json::to_string(e),
            Event::Message(e) => serde_json::to_string(e),
            Event::Synced(e) => serde_json::to_string(e),
            Event::Conversation(e) => serde_json::to_string(e),
            Event::Settings(e) => serde_json::to_string(e),
            Event::Lagged(e) => serde_json::to_string(e),
            Event::Call(e) => serde_json::to_string(e),
            Event::CallSignal(e) => serde_json::to_string(e),
        }
        // These types serialize to JSON objects and cannot fail.
        .unwrap_or_else(|_| "null".to_owned());
        format!("event: {}\ndata: {data}\n\n", self.name()).into_bytes()
    }

    /// Reads one event from its name and data.
    pub fn decode(name: &str, data: &str) -> Result<Self, EventError> {
        fn de<T: serde::de::DeserializeOwned>(name: &str, data: &str) -> Result<T, EventError> {
            serde_json::from_str(data).map_err(|source| EventError::Data {
                name: name.to_owned(),
                source,
            })
        }
        Ok(match name {
            "hello" => Event::Hello(de(name, data)?),
            "message" => Event::Message(Box::new(de(name, data)?)),
            "synced" => Event::Synced(de(name, data)?),
            "conversation" => Event::Conversation(de(name, data)?),
            "call" => Event::Call(Box::new(de(name, data)?)),
            "call_signal" => Event::CallSignal(Box::new(de(name, data)?)),
            "settings" => Event::Settings(de(name, data)?),
            "lagged" => Event::Lagged(de(name, data)?),
            other => return Err(EventError::Unknown(other.to_owned())),
        })
    }
}

/// Splits a byte stream into events: feed it chunks as they arrive.
/// Bounded: a line longer than `max_line` is an error, not a buffer that
/// grows without end.
#[derive(Debug)]
pub struct EventReader {
    buf: Vec<u8>,
    event: String,
    data: String,
    max_line: usize,
}

impl EventReader {
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            event: String::new(),
            data: String::new(),
            max_line,
        }
    }

    /// The events `chunk` completes, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Result<Event, EventError>> {
        self.buf.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        // The lines are read in place and the buffer is compacted once, so
        // a chunk of many lines costs one pass, not one shift per line.
        let mut start = 0;
        while let Some(len) = buf[start..].iter().position(|b| *b == b'\n') {
            let raw = &buf[start..start + len];
            start += len + 1;
            self.line(&String::from_utf8_lossy(raw), &mut out);
        }
        self.buf = buf;
        self.buf.drain(..start);
        if self.buf.len() > self.max_line {
            self.buf.clear();
            out.push(Err(EventError::TooLong(self.max_line)));
        }
        out
    }

    /// Takes one line (without its newline).
    fn line(&mut self, line: &str, out: &mut Vec<Result<Event, EventError>>) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            // The blank line ends an event.
            if !self.data.is_empty() {
                let name = std::mem::take(&mut self.event);
                let data = std::mem::take(&mut self.data);
                out.push(Event::decode(&name, &data));
            }
            self.event.clear();
        } else if line.starts_with(':') {
            // A keep-alive comment.
        } else if let Some(e) = line.strip_prefix("event:") {
            self.event = e.trim_start().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
        if self.data.len() > self.max_line {
            self.data.clear();
            out.push(Err(EventError::TooLong(self.max_line)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_whole_across_chunks() {
        let e = Event::Lagged(Lagged { missed: 7 });
        let s = Event::Synced(Synced {
            up_to_index: 9,
            git_hash: Some("ab".into()),
            commit_url: None,
        });
        let mut wire = e.frame();
        wire.extend_from_slice(b": keep-alive\n\n");
        wire.extend(s.frame());
        let mut r = EventReader::new(1 << 16);
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            got.extend(r.feed(chunk).into_iter().map(|x| x.expect("an event")));
        }
        assert_eq!(got, vec![e, s]);
    }

    #[test]
    fn a_frame_is_one_event_and_one_data_line() {
        let f = Event::Lagged(Lagged { missed: 1 }).frame();
        assert_eq!(f, b"event: lagged\ndata: {\"missed\":1}\n\n".to_vec());
    }

    #[test]
    fn unknown_fields_and_events_are_errors() {
        let mut r = EventReader::new(1 << 16);
        let got =
            r.feed(b"event: lagged\ndata: {\"missed\":1,\"x\":2}\n\nevent: nope\ndata: {}\n\n");
        assert!(matches!(got[0], Err(EventError::Data { .. })), "{got:?}");
        assert!(matches!(got[1], Err(EventError::Unknown(_))), "{got:?}");
    }

    #[test]
    fn an_endless_line_is_refused_and_forgotten() {
        let mut r = EventReader::new(16);
        let got = r.feed(&[b'x'; 40]);
        assert!(matches!(got.as_slice(), [Err(EventError::TooLong(16))]));
        let ok = r.feed(b"\nevent: lagged\ndata: {\"missed\":2}\n\n");
        assert_eq!(
            ok.into_iter()
                .map(|x| x.expect("event"))
                .collect::<Vec<_>>(),
            vec![Event::Lagged(Lagged { missed: 2 })]
        );
    }
}
