//! Calls: starting, answering and leaving them, the signalling a browser
//! sends its peers' browsers through the nodes, and how the history shows
//! them.
//!
//! Media flows browser to browser; a node keeps each call's state and
//! relays signalling over the room's mesh, never through raft.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest SDP a signal carries, in bytes.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Longest ICE candidate line, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Most participants of a call (the caller included): see
/// `skygit_consensus::call::MAX_CALL_PARTICIPANTS`.
pub const MAX_PARTICIPANTS: usize = 4;

/// A call as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallView {
    /// A ULID.
    pub id: String,
    pub conversation: String,
    /// The caller's node.
    pub initiator: u64,
    /// Whether the caller asked for video (audio always).
    pub video: bool,
    pub state: CallState,
    /// How it ended, once it has.
    pub outcome: Option<CallOutcome>,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// This node.
    pub me: u64,
    pub participants: Vec<CallParticipant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Nobody but the caller has joined yet.
    Ringing,
    /// Two or more are in it.
    Active,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// People talked, then everyone left.
    Ended,
    /// Every invitee declined.
    Declined,
    /// Nobody answered in time.
    Missed,
    /// The caller hung up before anyone answered.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallParticipant {
    pub node_id: u64,
    pub user: String,
    pub state: ParticipantState,
    /// This participant's browser is recording the call.
    pub recording: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Invited,
    Ringing,
    Joined,
    Left,
    Declined,
    Missed,
}

/// `GET /calls`: the live calls and those that ended in the last ten
/// minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Calls {
    pub calls: Vec<CallView>,
}

/// `POST /calls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCall {
    #[schema(pattern = r"^[a-z0-9_-][a-z0-9._-]{0,63}$")]
    pub conversation: String,
    /// The nodes to call (1 to 3, peers of the room; one named twice is
    /// called once).
    #[schema(min_items = 1, max_items = 3)]
    #[serde(deserialize_with = "crate::integral::list")]
    pub peers: Vec<u64>,
    #[serde(default = "yes")]
    pub video: bool,
}

fn yes() -> bool {
    true
}

/// `POST /calls/{id}/recording`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    pub on: bool,
}

/// What one browser tells another (SDP and ICE), through their nodes.
/// The nodes check its size and who may send it, never its meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Ice {
        candidate: String,
        sdp_mid: Option<String>,
        #[schema(minimum = 0, maximum = 65535)]
        #[serde(default, deserialize_with = "crate::integral::option")]
        sdp_mline_index: Option<u16>,
    },
    /// "I (re)loaded: offer to me again."
    Hello,
}

impl Signal {
    /// Checks the size bounds.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Signal::Offer { sdp } | Signal::Answer { sdp } if sdp.len() > MAX_SDP_BYTES => {
                Err(format!(
                    "the SDP is {} bytes; the limit is {MAX_SDP_BYTES}",
                    sdp.len()
                ))
            }
            Signal::Ice {
                candidate, sdp_mid, ..
            } if candidate.len() + sdp_mid.as_deref().map_or(0, str::len) > MAX_CANDIDATE_BYTES => {
                Err(format!("the candidate is over {MAX_CANDIDATE_BYTES} bytes"))
            }
            _ => Ok(()),
        }
    }
}

/// `POST /calls/{id}/signal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    /// The participant's node.
    #[serde(deserialize_with = "crate::integral::whole")]
    pub to: u64,
    pub signal: Signal,
}

/// The `call_signal` event: a signal for this node's browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallSignal {
    pub call: String,
    pub from: u64,
    pub signal: Signal,
}

/// `GET /calls/ice`: the STUN and TURN servers the browsers use, those of
/// the room's mesh, as `RTCPeerConnection`'s `iceServers` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceConfig {
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// A call entry of a conversation (a message with `call` set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallLine {
    pub call: String,
    pub event: CallLineEvent,
    /// For `started`: who was called; for an end: who took part.
    pub participants: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallLineEvent {
    Started,
    Joined,
    Left,
    Ended,
    Declined,
    Missed,
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_as_the_browser_writes_them_and_are_bounded() {
        let s: Signal = serde_json::from_str(r#"{"kind":"hello"}"#).expect("hello");
        assert_eq!(s, Signal::Hello);
        let s: Signal = serde_json::from_str(
            r#"{"kind":"ice","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdp_mid":"0","sdp_mline_index":0}"#,
        )
        .expect("ice");
        assert!(s.check().is_ok());
        let big = Signal::Offer {
            sdp: "v".repeat(MAX_SDP_BYTES + 1),
        };
        assert!(big.check().is_err());
        let big = Signal::Ice {
            candidate: "c".repeat(MAX_CANDIDATE_BYTES + 1),
            sdp_mid: None,
            sdp_mline_index: None,
        };
        assert!(big.check().is_err());
        assert!(serde_json::from_str::<Signal>(r#"{"kind":"bye"}"#).is_err());
        // Integers as JSON Schema reads them.
        let s: SendSignal = serde_json::from_str(
            r#"{"to": 7.0, "signal": {"kind":"ice","candidate":"c","sdp_mid":null,"sdp_mline_index":1.0}}"#,
        )
        .expect("whole numbers");
        assert_eq!(s.to, 7);
        let c: StartCall =
            serde_json::from_str(r#"{"conversation":"general","peers":[4104188270.0]}"#)
                .expect("peers");
        assert_eq!(c.peers, vec![4104188270]);
        assert!(
            serde_json::from_str::<StartCall>(r#"{"conversation":"g","peers":[1.5]}"#).is_err()
        );
    }
}
