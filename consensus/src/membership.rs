//! The membership controller's decisions, as a pure function of what the
//! leader sees: the current voters and learners, which nodes are online,
//! how far each has replicated, and since when a voter has been gone.
//!
//! The leader runs [`plan`] on a timer and carries out one step at a time
//! (openraft allows one membership change in flight):
//!
//! 1. an online node that is not a member becomes a learner;
//! 2. a voter gone longer than [`MembershipPolicy::voter_grace`] is replaced
//!    by a caught-up online learner (one joint change, so quorum is never
//!    narrower than before); with no replacement it stays, because removing
//!    it would not make the group more available;
//! 3. while there are fewer voters than the room's voter count, caught-up
//!    online learners are promoted;
//! 4. a voter that asked to leave (graceful shutdown) is replaced or removed;
//! 5. a learner gone longer than [`MembershipPolicy::learner_grace`] is
//!    dropped from the membership.
//!
//! The leader itself is never demoted here, except when it asked to leave.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::types::NodeId;

/// Most voters a room may ask for.
pub const MAX_VOTERS: usize = 5;
/// Voters a room has unless its config says otherwise.
pub const DEFAULT_VOTERS: usize = 3;

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipPolicy {
    /// The room's voter count (1 to [`MAX_VOTERS`]).
    pub voters: usize,
    /// How long a voter may be unreachable before it is replaced.
    pub voter_grace: Duration,
    /// How long a learner may be unreachable before it is dropped.
    pub learner_grace: Duration,
    /// A learner within this many entries of the leader's log is caught up.
    pub caught_up_lag: u64,
    /// `voters` was set for this node alone (its command line): the room's
    /// settings do not change it.
    pub pinned: bool,
    /// How often the controller looks at the room (and, on a node without
    /// a group, whether to start one).
    pub tick: Duration,
}

impl Default for MembershipPolicy {
    fn default() -> Self {
        Self {
            voters: DEFAULT_VOTERS,
            voter_grace: Duration::from_secs(5),
            learner_grace: Duration::from_secs(600),
            caught_up_lag: 1_000,
            pinned: false,
            tick: Duration::from_secs(1),
        }
    }
}

/// What the leader knows when it plans.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    pub leader: NodeId,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Nodes the leader can reach now (itself included).
    pub online: BTreeSet<NodeId>,
    /// How long each unreachable member has been unreachable.
    pub offline_for: BTreeMap<NodeId, Duration>,
    /// Nodes that asked to leave the voters (graceful shutdown).
    pub leaving: BTreeSet<NodeId>,
    /// The leader's last log index.
    pub last_index: u64,
    /// The last index each follower or learner has matched.
    pub matched: BTreeMap<NodeId, u64>,
}

/// One membership step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddLearner(NodeId),
    /// Set the voters to exactly this set (a joint change).
    SetVoters(BTreeSet<NodeId>),
    /// Drop these non-voters from the membership.
    RemoveLearners(BTreeSet<NodeId>),
}

impl MembershipView {
    fn caught_up(&self, id: NodeId, policy: &MembershipPolicy) -> bool {
        let matched = self.matched.get(&id).copied().unwrap_or(0);
        self.last_index.saturating_sub(matched) <= policy.caught_up_lag
    }

    fn gone(&self, id: NodeId, grace: Duration) -> bool {
        !self.online.contains(&id) && self.offline_for.get(&id).is_some_and(|d| *d >= grace)
    }

    /// Online, caught-up learners that may become voters, lowest id first
    /// (a stable choice every leader makes the same way).
    fn candidates(&self, policy: &MembershipPolicy) -> Vec<NodeId> {
        self.learners
            .iter()
            .copied()
            .filter(|id| {
                self.online.contains(id)
                    && !self.leaving.contains(id)
                    && self.caught_up(*id, policy)
            })
            .collect()
    }
}

/// The next membership step, if any.
pub fn plan(view: &MembershipView, policy: &MembershipPolicy) -> Option<Step> {
    let target = policy.voters.clamp(1, MAX_VOTERS);
    // 1. Newcomers become learners, lowest id first.
    if let Some(id) = view.online.iter().find(|id| {
        !view.voters.contains(id) && !view.learners.contains(id) && !view.leaving.contains(id)
    }) {
        return Some(Step::AddLearner(*id));
    }
    let mut candidates = view.candidates(policy).into_iter();
    // 2 and 4. Voters that left or asked to leave are swapped out.
    let departing: Vec<NodeId> = view
        .voters
        .iter()
        .copied()
        .filter(|id| {
            view.leaving.contains(id) || (*id != view.leader && view.gone(*id, policy.voter_grace))
        })
        .collect();
    if !departing.is_empty() {
        let mut next: BTreeSet<NodeId> = view.voters.clone();
        let mut changed = false;
        for id in departing {
            if let Some(replacement) = candidates.next() {
                next.remove(&id);
                next.insert(replacement);
                changed = true;
            } else if view.leaving.contains(&id) && next.len() > 1 {
                // Asked to leave with nobody to take its place: a smaller
                // group of nodes that are all present is still a group.
                next.remove(&id);
                changed = true;
            }
        }
        if changed && !next.is_empty() {
            return Some(Step::SetVoters(next));
        }
    }
    // 3. Grow to the room's voter count.
    if view.voters.len() < target {
        let add: Vec<NodeId> = candidates.take(target - view.voters.len()).collect();
        if !add.is_empty() {
            let mut next = view.voters.clone();
            next.extend(add);
            return Some(Step::SetVoters(next));
        }
    }
    // 5. Long-gone learners are dropped.
    let stale: BTreeSet<NodeId> = view
        .learners
        .iter()
        .copied()
        .filter(|id| {
            view.gone(*id, policy.learner_grace)
                || view.leaving.contains(id) && !view.online.contains(id)
        })
        .collect();
    if !stale.is_empty() {
        return Some(Step::RemoveLearners(stale));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn view(voters: &[NodeId], learners: &[NodeId], online: &[NodeId]) -> MembershipView {
        MembershipView {
            leader: voters[0],
            voters: set(voters),
            learners: set(learners),
            online: set(online),
            last_index: 100,
            matched: voters.iter().chain(learners).map(|id| (*id, 100)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn newcomers_become_learners_then_voters_up_to_the_count() {
        let p = MembershipPolicy::default();
        let v = view(&[1], &[], &[1, 2, 3, 4]);
        assert_eq!(plan(&v, &p), Some(Step::AddLearner(2)));
        let v = view(&[1], &[2, 3, 4], &[1, 2, 3, 4]);
        assert_eq!(plan(&v, &p), Some(Step::SetVoters(set(&[1, 2, 3]))));
        let v = view(&[1, 2, 3], &[4], &[1, 2, 3, 4]);
        assert_eq!(plan(&v, &p), None);
    }

    #[test]
    fn a_lagging_learner_is_not_promoted() {
        let p = MembershipPolicy::default();
        let mut v = view(&[1], &[2], &[1, 2]);
        v.matched.insert(2, 0);
        v.last_index = 5_000;
        assert_eq!(plan(&v, &p), None);
    }

    #[test]
    fn a_gone_voter_is_replaced_only_after_the_grace_and_only_by_a_caught_up_learner() {
        let p = MembershipPolicy::default();
        let mut v = view(&[1, 2, 3], &[4], &[1, 2, 4]);
        v.offline_for.insert(3, Duration::from_secs(1));
        assert_eq!(plan(&v, &p), None);
        v.offline_for.insert(3, Duration::from_secs(6));
        assert_eq!(plan(&v, &p), Some(Step::SetVoters(set(&[1, 2, 4]))));
        v.learners.clear();
        v.online.remove(&4);
        assert_eq!(plan(&v, &p), None, "no replacement: the voter stays");
    }

    #[test]
    fn leaving_voters_are_swapped_or_removed() {
        let p = MembershipPolicy::default();
        let mut v = view(&[1, 2, 3], &[4, 5], &[1, 2, 3, 4, 5]);
        v.leaving = set(&[2, 3]);
        assert_eq!(plan(&v, &p), Some(Step::SetVoters(set(&[1, 4, 5]))));
        let mut v = view(&[1, 2, 3], &[], &[1, 2, 3]);
        v.leaving = set(&[1]);
        assert_eq!(plan(&v, &p), Some(Step::SetVoters(set(&[2, 3]))));
    }

    #[test]
    fn the_voter_count_is_bounded() {
        let p = MembershipPolicy {
            voters: 9,
            ..Default::default()
        };
        let all: Vec<NodeId> = (2..=8).collect();
        let v = view(&[1], &all, &(1..=8).collect::<Vec<_>>());
        let Some(Step::SetVoters(next)) = plan(&v, &p) else {
            panic!("expected a promotion")
        };
        assert_eq!(next.len(), MAX_VOTERS);
    }

    #[test]
    fn long_gone_learners_are_dropped() {
        let p = MembershipPolicy::default();
        let mut v = view(&[1, 2, 3], &[4], &[1, 2, 3]);
        v.offline_for.insert(4, Duration::from_secs(601));
        assert_eq!(plan(&v, &p), Some(Step::RemoveLearners(set(&[4]))));
    }
}
