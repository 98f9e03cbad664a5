//! What the room's history says about calls.
//!
//! Calls' media and signalling never go through raft; only their history
//! does: a call started, a participant joined or left, and how it ended,
//! each one entry of the conversation (so `git log` of the room shows who
//! talked when). Everything here can arrive from the network or the
//! repository, so every field is bounded and checked when it is decoded.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::model::{UserId, ValidationError};

/// Most participants of one call: a full mesh of browsers, each sending
/// its video to every other one (at 4, three uplink streams per browser,
/// about what a laptop's uplink carries).
pub const MAX_CALL_PARTICIPANTS: usize = 4;
/// Longest duration a call entry may state: a week.
pub const MAX_CALL_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEvent {
    /// The sender started a call, inviting `participants`.
    Started,
    /// The sender joined the call.
    Joined,
    /// The sender left the call.
    Left,
    /// The call ended after `participants` talked for `duration_ms`.
    Ended,
    /// Every invitee declined.
    Declined,
    /// Nobody answered in time.
    Missed,
    /// The caller hung up before anyone answered.
    Cancelled,
}

impl CallEvent {
    /// True for the events that end a call.
    pub fn is_end(self) -> bool {
        matches!(
            self,
            CallEvent::Ended | CallEvent::Declined | CallEvent::Missed | CallEvent::Cancelled
        )
    }
}

/// One call entry of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallEntry {
    pub call: Ulid,
    pub event: CallEvent,
    /// For `started`: who was invited; for an end: who took part (or was
    /// called); otherwise empty.
    #[serde(default)]
    pub participants: Vec<UserId>,
    /// For an end: from the second participant joining to the call's end.
    #[serde(default)]
    pub duration_ms: u64,
}

impl CallEntry {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.participants.len() > MAX_CALL_PARTICIPANTS {
            return Err(ValidationError::OutOfRange {
                field: "participants",
                allowed: format!("at most {MAX_CALL_PARTICIPANTS}"),
            });
        }
        if self.duration_ms > MAX_CALL_DURATION_MS {
            return Err(ValidationError::OutOfRange {
                field: "duration_ms",
                allowed: format!("at most {MAX_CALL_DURATION_MS}"),
            });
        }
        Ok(())
    }

    /// The request id of the entry saying how `call` ended: the same on
    /// every participant's node, so the entry every one of them proposes
    /// applies once.
    pub fn end_request_id(call: Ulid) -> Ulid {
        // The call's time, and its random part turned over so it differs
        // from the call id itself.
        Ulid::from_parts(call.timestamp_ms(), !call.random() & ((1u128 << 80) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_bounded() {
        let u = |s: &str| UserId::new(s).expect("user");
        let mut e = CallEntry {
            call: Ulid::from_parts(1, 2),
            event: CallEvent::Ended,
            participants: vec![u("a"), u("b"), u("c"), u("d")],
            duration_ms: 1000,
        };
        assert_eq!(e.validate(), Ok(()));
        e.participants.push(u("e"));
        assert!(e.validate().is_err());
        e.participants.pop();
        e.duration_ms = MAX_CALL_DURATION_MS + 1;
        assert!(e.validate().is_err());
    }

    #[test]
    fn the_end_id_is_the_same_everywhere_and_not_the_call_id() {
        let call = Ulid::new();
        assert_eq!(
            CallEntry::end_request_id(call),
            CallEntry::end_request_id(call)
        );
        assert_ne!(CallEntry::end_request_id(call), call);
        assert_eq!(
            CallEntry::end_request_id(call).timestamp_ms(),
            call.timestamp_ms()
        );
    }

    #[test]
    fn unknown_fields_and_events_are_refused() {
        let ok = r#"{"call":"01ARZ3NDEKTSV4RRFFQ69G5FAV","event":"joined"}"#;
        assert!(serde_json::from_str::<CallEntry>(ok).is_ok());
        let extra = r#"{"call":"01ARZ3NDEKTSV4RRFFQ69G5FAV","event":"joined","x":1}"#;
        assert!(serde_json::from_str::<CallEntry>(extra).is_err());
        let bad = r#"{"call":"01ARZ3NDEKTSV4RRFFQ69G5FAV","event":"exploded"}"#;
        assert!(serde_json::from_str::<CallEntry>(bad).is_err());
    }
}
