//! The gate in front of the mesh on a room that verifies identities: a
//! peer's presence reaches the mesh's core (and so gets a link) only once
//! its signature has been checked against its user's keys.
//!
//! [`Gate`] is plain state: it remembers, per peer, the claim last seen
//! (session, user, fingerprint, signature) and its verdict. A record with
//! the same claim as a verified one passes at once (heartbeats are not
//! checked again); a new claim is checked once; a refused claim is checked
//! again after [`RECHECK_REFUSED`] (a key may have been added since), one
//! the directory could not answer for after [`RETRY_UNAVAILABLE`]. A
//! verified claim is checked again every [`RECHECK_VERIFIED`] while the
//! peer stays linked, so a member removed from the room (or whose key was)
//! loses the link; a directory outage during that check keeps it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use skygit_consensus::NodeId;
use skygit_ports::identity::{DirectoryError, Refusal};
use tokio::time::Instant;

use crate::ports::PresenceRecord;

/// A refused claim is checked again after this long.
pub const RECHECK_REFUSED: Duration = Duration::from_secs(30);
/// A claim the directory could not answer for is checked again after this.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);
/// A verified claim is checked again after this (the peer stays linked
/// meanwhile).
pub const RECHECK_VERIFIED: Duration = Duration::from_secs(30);

/// The verified user of each peer this node links to, shared with the
/// raft member (whose leader accepts a forwarded request only from the
/// verified user of the link it came through).
pub type VerifiedPeers = Arc<RwLock<BTreeMap<NodeId, String>>>;

/// A peer the mesh will not link to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedPeer {
    pub node_id: NodeId,
    pub user: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    session: String,
    user: String,
    fingerprint: String,
    signature: Option<String>,
}

impl Claim {
    fn of(r: &PresenceRecord) -> Claim {
        Claim {
            session: r.session_id.clone(),
            user: r.user.clone(),
            fingerprint: r.dtls_fingerprint.clone(),
            signature: r.identity.clone(),
        }
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Checking,
    Verified {
        at: Instant,
    },
    /// Verified, and being checked again.
    Rechecking,
    Refused {
        refusal: Refusal,
        at: Instant,
    },
    Unavailable {
        error: String,
        at: Instant,
    },
}

#[derive(Debug)]
struct Entry {
    claim: Claim,
    /// The newest record with this claim.
    record: PresenceRecord,
    verdict: Verdict,
    /// The last refusal of this claim, kept while it is checked again.
    refused: Option<Refusal>,
}

/// What to do with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Verified: give it to the mesh.
    Now(PresenceRecord),
    /// Check this record's signature.
    Check(PresenceRecord),
    /// Being checked, or refused: nothing now.
    Wait,
}

/// What a finished check means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified: give the newest record to the mesh.
    Admit(PresenceRecord),
    /// Refused (the first verdict for this claim, or a verified claim
    /// that no longer verifies: its link must go).
    Refused(Refusal),
    /// The directory did not answer; checked again later.
    Unavailable(String),
    /// A verified claim checked again still verifies: nothing changes.
    Confirmed,
    /// The claim changed while it was checked: the verdict is stale.
    Stale,
}

#[derive(Debug, Default)]
pub struct Gate {
    entries: BTreeMap<NodeId, Entry>,
}

impl Gate {
    /// A peer's record arrived.
    pub fn on_record(&mut self, now: Instant, record: PresenceRecord) -> Admit {
        let claim = Claim::of(&record);
        let id = record.node_id;
        match self.entries.get_mut(&id) {
            Some(e) if e.claim == claim => {
                e.record = record.clone();
                let again = match &e.verdict {
                    Verdict::Verified { .. } | Verdict::Rechecking => return Admit::Now(record),
                    Verdict::Checking => false,
                    Verdict::Refused { at, .. } => now.duration_since(*at) >= RECHECK_REFUSED,
                    Verdict::Unavailable { at, .. } => now.duration_since(*at) >= RETRY_UNAVAILABLE,
                };
                if again {
                    e.verdict = Verdict::Checking;
                    Admit::Check(record)
                } else {
                    Admit::Wait
                }
            }
            _ => {
                self.entries.insert(
                    id,
                    Entry {
                        claim,
                        record: record.clone(),
                        verdict: Verdict::Checking,
                        refused: None,
                    },
                );
                Admit::Check(record)
            }
        }
    }

    /// The check of `checked` finished with `result`.
    pub fn on_verdict(
        &mut self,
        now: Instant,
        checked: &PresenceRecord,
        result: Result<Result<(), Refusal>, DirectoryError>,
    ) -> Outcome {
        let Some(e) = self.entries.get_mut(&checked.node_id) else {
            return Outcome::Stale;
        };
        if e.claim != Claim::of(checked) {
            return Outcome::Stale;
        }
        let rechecked = matches!(e.verdict, Verdict::Rechecking);
        match result {
            Ok(Ok(())) if rechecked => {
                e.verdict = Verdict::Verified { at: now };
                Outcome::Confirmed
            }
            Ok(Ok(())) => {
                e.verdict = Verdict::Verified { at: now };
                e.refused = None;
                Outcome::Admit(e.record.clone())
            }
            // The directory is down: a verified peer keeps its link.
            Err(DirectoryError(error)) if rechecked => {
                e.verdict = Verdict::Verified { at: now };
                Outcome::Unavailable(error)
            }
            Ok(Err(refusal)) => {
                let first = e.refused.as_ref() != Some(&refusal);
                e.refused = Some(refusal.clone());
                e.verdict = Verdict::Refused {
                    refusal: refusal.clone(),
                    at: now,
                };
                if first {
                    Outcome::Refused(refusal)
                } else {
                    Outcome::Stale
                }
            }
            Err(DirectoryError(error)) => {
                e.verdict = Verdict::Unavailable {
                    error: error.clone(),
                    at: now,
                };
                Outcome::Unavailable(error)
            }
        }
    }

    /// Claims due to be checked again (presence hands the mesh a record
    /// only when its session changes, so this runs on a timer): verified
    /// ones every [`RECHECK_VERIFIED`] (marked as being checked; the peer
    /// stays verified meanwhile), refused ones after [`RECHECK_REFUSED`],
    /// ones the directory could not answer for after
    /// [`RETRY_UNAVAILABLE`].
    pub fn due_for_recheck(&mut self, now: Instant) -> Vec<PresenceRecord> {
        self.entries
            .values_mut()
            .filter_map(|e| {
                let next = match e.verdict {
                    Verdict::Verified { at } if now.duration_since(at) >= RECHECK_VERIFIED => {
                        Verdict::Rechecking
                    }
                    Verdict::Refused { at, .. } if now.duration_since(at) >= RECHECK_REFUSED => {
                        Verdict::Checking
                    }
                    Verdict::Unavailable { at, .. }
                        if now.duration_since(at) >= RETRY_UNAVAILABLE =>
                    {
                        Verdict::Checking
                    }
                    _ => return None,
                };
                e.verdict = next;
                Some(e.record.clone())
            })
            .collect()
    }

    /// The peer went offline.
    pub fn forget(&mut self, id: NodeId) {
        self.entries.remove(&id);
    }

    /// The peer's user, when its current claim is verified.
    pub fn verified_user(&self, id: NodeId) -> Option<&str> {
        let e = self.entries.get(&id)?;
        matches!(e.verdict, Verdict::Verified { .. } | Verdict::Rechecking)
            .then_some(e.claim.user.as_str())
    }

    /// Peers refused, or not checked yet because the directory is down.
    pub fn refused(&self) -> Vec<RefusedPeer> {
        self.entries
            .iter()
            .filter_map(|(id, e)| {
                let reason = match (&e.verdict, &e.refused) {
                    (Verdict::Refused { refusal, .. }, _) => refusal.to_string(),
                    (Verdict::Checking, Some(refusal)) => refusal.to_string(),
                    (Verdict::Unavailable { error, .. }, _) => {
                        format!("not verified yet: {error}")
                    }
                    (Verdict::Checking | Verdict::Verified { .. } | Verdict::Rechecking, _) => {
                        return None
                    }
                };
                Some(RefusedPeer {
                    node_id: *id,
                    user: e.claim.user.clone(),
                    reason,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: NodeId, session: &str, sig: &str) -> PresenceRecord {
        PresenceRecord {
            version: crate::ports::PRESENCE_VERSION,
            user: "bob".into(),
            node_id: id,
            session_id: session.into(),
            last_seen: 1,
            dtls_fingerprint: "fp".into(),
            in_group: false,
            signals: Vec::new(),
            identity: Some(sig.into()),
        }
    }

    #[test]
    fn a_claim_is_checked_once_and_heartbeats_pass_after_it_verified() {
        let mut g = Gate::default();
        let t = Instant::now();
        let r = rec(2, "s1", "sig");
        assert_eq!(g.on_record(t, r.clone()), Admit::Check(r.clone()));
        // While it is checked, later heartbeats wait.
        let mut beat = r.clone();
        beat.last_seen = 2;
        assert_eq!(g.on_record(t, beat.clone()), Admit::Wait);
        assert_eq!(g.verified_user(2), None);
        // The verdict admits the newest record.
        assert_eq!(
            g.on_verdict(t, &r, Ok(Ok(()))),
            Outcome::Admit(beat.clone())
        );
        assert_eq!(g.verified_user(2), Some("bob"));
        assert_eq!(g.on_record(t, beat.clone()), Admit::Now(beat));
        // A new session is a new claim: checked again, not admitted.
        let r2 = rec(2, "s2", "sig2");
        assert_eq!(g.on_record(t, r2.clone()), Admit::Check(r2.clone()));
        assert_eq!(g.verified_user(2), None);
        // The old session's verdict arriving late is stale.
        assert_eq!(g.on_verdict(t, &r, Ok(Ok(()))), Outcome::Stale);
        assert_eq!(g.verified_user(2), None);
    }

    #[test]
    fn a_refused_claim_is_reported_once_and_checked_again_later() {
        let mut g = Gate::default();
        let t = Instant::now();
        let r = rec(3, "s1", "sig");
        assert_eq!(g.on_record(t, r.clone()), Admit::Check(r.clone()));
        let no = Refusal::NotMember { user: "bob".into() };
        assert_eq!(
            g.on_verdict(t, &r, Ok(Err(no.clone()))),
            Outcome::Refused(no.clone())
        );
        assert_eq!(g.refused()[0].reason, "bob is not a member of the room");
        assert_eq!(
            g.on_record(t + Duration::from_secs(1), r.clone()),
            Admit::Wait
        );
        let later = t + RECHECK_REFUSED;
        // The timer finds it due (presence sends no new record for the
        // same session).
        assert_eq!(g.due_for_recheck(later), vec![r.clone()]);
        assert_eq!(g.on_record(later, r.clone()), Admit::Wait);
        // The same refusal again is not reported again.
        assert_eq!(g.on_verdict(later, &r, Ok(Err(no))), Outcome::Stale);
        assert_eq!(g.verified_user(3), None);
        g.forget(3);
        assert!(g.refused().is_empty());
    }

    #[test]
    fn a_verified_claim_is_checked_again_and_loses_its_link_when_refused() {
        let mut g = Gate::default();
        let t = Instant::now();
        let r = rec(5, "s1", "sig");
        g.on_record(t, r.clone());
        assert_eq!(g.on_verdict(t, &r, Ok(Ok(()))), Outcome::Admit(r.clone()));
        assert_eq!(
            g.on_record(t + Duration::from_secs(1), r.clone()),
            Admit::Now(r.clone())
        );
        assert!(g.due_for_recheck(t + Duration::from_secs(1)).is_empty());
        // Due again: still admitted while it is checked, and verified.
        let due = t + RECHECK_VERIFIED;
        assert_eq!(g.due_for_recheck(due), vec![r.clone()]);
        assert!(g.due_for_recheck(due).is_empty(), "checked once at a time");
        assert_eq!(g.on_record(due, r.clone()), Admit::Now(r.clone()));
        assert_eq!(g.verified_user(5), Some("bob"));
        assert!(g.refused().is_empty());
        assert_eq!(g.on_verdict(due, &r, Ok(Ok(()))), Outcome::Confirmed);
        assert_eq!(g.due_for_recheck(due + RECHECK_VERIFIED), vec![r.clone()]);
        // A directory outage keeps it verified.
        assert_eq!(
            g.on_verdict(due, &r, Err(DirectoryError("503".into()))),
            Outcome::Unavailable("503".into())
        );
        assert_eq!(g.verified_user(5), Some("bob"));
        assert_eq!(g.on_record(due, r.clone()), Admit::Now(r.clone()));
        // Removed from the room since: refused, and no longer verified.
        let later = due + RECHECK_VERIFIED;
        assert_eq!(g.due_for_recheck(later), vec![r.clone()]);
        let no = Refusal::NotMember { user: "bob".into() };
        assert_eq!(
            g.on_verdict(later, &r, Ok(Err(no.clone()))),
            Outcome::Refused(no)
        );
        assert_eq!(g.verified_user(5), None);
        assert_eq!(g.on_record(later, r.clone()), Admit::Wait);
        assert_eq!(g.refused()[0].node_id, 5);
    }

    #[test]
    fn a_directory_outage_is_retried_soon_and_shown() {
        let mut g = Gate::default();
        let t = Instant::now();
        let r = rec(4, "s1", "sig");
        g.on_record(t, r.clone());
        assert_eq!(
            g.on_verdict(t, &r, Err(DirectoryError("503".into()))),
            Outcome::Unavailable("503".into())
        );
        assert!(g.refused()[0].reason.contains("not verified yet"));
        assert_eq!(
            g.on_record(t + Duration::from_secs(1), r.clone()),
            Admit::Wait
        );
        assert_eq!(
            g.on_record(t + RETRY_UNAVAILABLE, r.clone()),
            Admit::Check(r.clone())
        );
        assert_eq!(g.on_verdict(t, &r, Ok(Ok(()))), Outcome::Admit(r));
    }
}
