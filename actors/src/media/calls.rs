//! Calls as one node sees them: a pure core, `on(now, input) -> actions`.
//!
//! Media flows browser to browser; nodes carry only the call's state and
//! its signalling, over the room's mesh and never through raft. Each
//! participant's state is owned by that participant's node: it alone
//! changes it, and tells every other participant (with a sequence number,
//! so a late frame never undoes a newer one). The views of the nodes thus
//! agree once the frames arrive; where they cannot arrive, timeouts end
//! what is gone:
//!
//! - an invitee that has not answered within [`INVITE_TIMEOUT_MS`] missed
//!   the call (on every node, its own included);
//! - this node's user is out of the call when its browser has not said it
//!   is alive for [`BROWSER_TIMEOUT_MS`] (closed tab, closed laptop);
//! - a joined participant whose node has said nothing (it repeats its
//!   state every [`KEEPALIVE_MS`]) for [`PEER_TIMEOUT_MS`] has left;
//! - a call ends when fewer than two participants are in it or may still
//!   answer.
//!
//! Signalling reaches a participant's node directly when this node has a
//! link to it, otherwise through every linked peer, of which one that has a
//! link to the target forwards it once (see [`CallFrame::hops`]). Frames
//! for unknown calls, from nodes not in the call, over their size bounds
//! or relayed more than once are refused, each with its reason.
//!
//! The history (started, joined, left, how it ended) goes through raft as
//! [`CallEntry`]s: the node that does something proposes it, and the end,
//! which every participant's node sees, has an id they all derive alike
//! ([`CallEntry::end_request_id`]), so it applies once.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use skygit_consensus::call::{CallEntry, CallEvent, MAX_CALL_PARTICIPANTS};
use skygit_consensus::model::{ConversationId, UserId};
use skygit_consensus::NodeId;
use ulid::Ulid;

/// How long an invitee may take to answer.
pub const INVITE_TIMEOUT_MS: i64 = 45_000;
/// How long this node's user stays in a call without its browser.
pub const BROWSER_TIMEOUT_MS: i64 = 30_000;
/// How long a joined participant's node may say nothing.
pub const PEER_TIMEOUT_MS: i64 = 30_000;
/// How often a joined node repeats its state to the others.
pub const KEEPALIVE_MS: i64 = 5_000;
/// How long an ended call stays in the view.
pub const KEEP_ENDED_MS: i64 = 10 * 60_000;
/// Most calls this node keeps (live and recently ended); invites beyond
/// are declined.
pub const MAX_CALLS: usize = 32;
/// Longest SDP one frame carries.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Longest ICE candidate (with its media id) one frame carries.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Relayed frames remembered to drop their duplicates.
const SEEN: usize = 4096;

/// A participant's state, as its own node says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PState {
    Invited,
    Ringing,
    Joined,
    Left,
    Declined,
    Missed,
}

impl PState {
    /// In the call or still able to answer.
    fn live(self) -> bool {
        matches!(self, PState::Invited | PState::Ringing | PState::Joined)
    }
}

/// One browser's message to another's, carried and never read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireSignal {
    Offer(String),
    Answer(String),
    Ice {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    },
    Hello,
}

impl WireSignal {
    fn check(&self) -> Result<(), CallError> {
        let too_big = match self {
            WireSignal::Offer(s) | WireSignal::Answer(s) => s.len() > MAX_SDP_BYTES,
            WireSignal::Ice {
                candidate, sdp_mid, ..
            } => candidate.len() + sdp_mid.as_deref().map_or(0, str::len) > MAX_CANDIDATE_BYTES,
            WireSignal::Hello => false,
        };
        if too_big {
            return Err(CallError::TooBig);
        }
        Ok(())
    }
}

/// What a call frame says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallBody {
    /// The caller's node invites the target into a call.
    Invite {
        conversation: ConversationId,
        video: bool,
        started_at: i64,
        participants: Vec<(NodeId, UserId)>,
    },
    /// The origin's participant is now in `state`.
    State { state: PState, recording: bool },
    /// For the target's browser.
    Signal(WireSignal),
}

/// One call message between two nodes (a media frame of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFrame {
    pub call: Ulid,
    pub origin: NodeId,
    pub target: NodeId,
    /// 0 when the origin sent it; a peer with a link to the target
    /// forwards a hop-0 frame once, as hop 1, and nothing further.
    pub hops: u8,
    /// The origin's counter: orders its states, and names the frame for
    /// dropping duplicates that came through several relays.
    pub seq: u64,
    pub body: CallBody,
}

/// The time of an input: `mono` (milliseconds of a clock that never
/// jumps) for every timeout, `wall` (milliseconds since the Unix epoch)
/// only for the times a call shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: i64,
    pub wall: i64,
}

/// What a node's user or the API asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Start {
        call: Ulid,
        conversation: ConversationId,
        video: bool,
        me: UserId,
        peers: Vec<(NodeId, UserId)>,
    },
    Accept(Ulid),
    Decline(Ulid),
    Hangup(Ulid),
    Recording(Ulid, bool),
    /// The browser says it is still there.
    Alive(Ulid),
    /// A signal from this node's browser for a participant's.
    Signal {
        call: Ulid,
        to: NodeId,
        signal: WireSignal,
    },
    /// A frame that came over the link to `from`.
    Frame {
        from: NodeId,
        frame: CallFrame,
    },
    Link {
        peer: NodeId,
        up: bool,
    },
    Tick,
}

/// What the actor does for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the frame over the link to `via`.
    Send { via: NodeId, frame: CallFrame },
    /// The call changed: tell the browser.
    Changed(Ulid),
    /// A signal for this node's browser.
    Signal {
        call: Ulid,
        from: NodeId,
        signal: WireSignal,
    },
    /// Propose a history entry (`request`: its id, else a fresh one).
    History {
        conversation: ConversationId,
        entry: CallEntry,
        request: Option<Ulid>,
    },
    /// A frame was refused (for logs and metrics).
    Refused { from: NodeId, reason: &'static str },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no call {0}")]
    Unknown(Ulid),
    #[error("this node is already in a call")]
    Busy,
    #[error("a call has 1 to {} others", MAX_CALL_PARTICIPANTS - 1)]
    BadPeers,
    #[error("this node keeps at most {MAX_CALLS} calls")]
    TooMany,
    #[error("the call is not ringing here")]
    NotRinging,
    #[error("this node is not in the call")]
    NotJoined,
    #[error("node {0} is not in the call")]
    NotParticipant(NodeId),
    #[error("the call has ended")]
    Ended,
    #[error("the signal is over its size limit")]
    TooBig,
    #[error("no link reaches node {0}, directly or through a neighbour")]
    NoRoute(NodeId),
}

impl CallError {
    /// True for errors about the request's content (an HTTP 400), false
    /// for conflicts with the call's state (409) and unknown calls (404).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, CallError::BadPeers | CallError::TooBig)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub node: NodeId,
    pub user: UserId,
    pub state: PState,
    pub recording: bool,
    /// When its node was last heard (its own: when its browser was).
    last_heard: i64,
    /// The newest state frame applied from its node.
    seq: u64,
    ever_joined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: Ulid,
    pub conversation: ConversationId,
    pub initiator: NodeId,
    pub video: bool,
    /// Wall-clock times, for people.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<CallEvent>,
    pub participants: Vec<Participant>,
    /// The same on the monotonic clock, for timeouts.
    started: i64,
    ended: Option<i64>,
    /// Since when two or more have been in it.
    talking_since: Option<i64>,
    last_keepalive: i64,
}

impl Call {
    pub fn live(&self) -> bool {
        self.outcome.is_none()
    }

    pub fn joined(&self) -> usize {
        self.participants
            .iter()
            .filter(|p| p.state == PState::Joined)
            .count()
    }

    fn get(&self, node: NodeId) -> Option<&Participant> {
        self.participants.iter().find(|p| p.node == node)
    }

    fn get_mut(&mut self, node: NodeId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.node == node)
    }
}

/// The calls of one room on one node.
pub struct Calls {
    me: NodeId,
    calls: BTreeMap<Ulid, Call>,
    links: BTreeSet<NodeId>,
    seq: u64,
    seen: HashSet<(NodeId, u64)>,
    seen_order: VecDeque<(NodeId, u64)>,
    /// Wall-clock time minus monotonic time at the last input.
    wall_offset: i64,
}

impl Calls {
    /// `seq_base`: where this node's frame counter starts (the clock at
    /// start, so a restarted node's frames are still newer).
    pub fn new(me: NodeId, seq_base: u64) -> Self {
        Self {
            me,
            calls: BTreeMap::new(),
            links: BTreeSet::new(),
            seq: seq_base,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            wall_offset: 0,
        }
    }

    pub fn get(&self, id: Ulid) -> Option<&Call> {
        self.calls.get(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    /// Applies one input; `Err` refuses a request of this node's user.
    pub fn on(&mut self, now: Now, input: Input) -> Result<Vec<Action>, CallError> {
        self.wall_offset = now.wall - now.mono;
        let now = now.mono;
        let mut out = Vec::new();
        match input {
            Input::Start {
                call,
                conversation,
                video,
                me,
                peers,
            } => self.start(now, call, conversation, video, me, peers, &mut out)?,
            Input::Accept(id) => {
                let call = self.live_call(id)?;
                match call.get(self.me).map(|p| p.state) {
                    Some(PState::Ringing | PState::Invited) => {}
                    _ => return Err(CallError::NotRinging),
                }
                if self.in_other_call(id) {
                    return Err(CallError::Busy);
                }
                self.set_mine(now, id, PState::Joined, &mut out);
            }
            Input::Decline(id) => {
                let call = self.live_call(id)?;
                match call.get(self.me).map(|p| p.state) {
                    Some(PState::Ringing | PState::Invited) => {}
                    _ => return Err(CallError::NotRinging),
                }
                self.set_mine(now, id, PState::Declined, &mut out);
            }
            Input::Hangup(id) => {
                let call = self.live_call(id)?;
                let next = match call.get(self.me).map(|p| p.state) {
                    Some(PState::Joined) => PState::Left,
                    Some(PState::Ringing | PState::Invited) => PState::Declined,
                    _ => return Err(CallError::NotJoined),
                };
                self.set_mine(now, id, next, &mut out);
            }
            Input::Recording(id, on) => {
                let me = self.me;
                let call = self.live_call_mut(id)?;
                let p = call
                    .get_mut(me)
                    .filter(|p| p.state == PState::Joined)
                    .ok_or(CallError::NotJoined)?;
                if p.recording != on {
                    p.recording = on;
                    self.broadcast_state(id, &mut out);
                    out.push(Action::Changed(id));
                }
            }
            Input::Alive(id) => {
                let me = self.me;
                let call = self.calls.get_mut(&id).ok_or(CallError::Unknown(id))?;
                let p = call.get_mut(me).ok_or(CallError::NotJoined)?;
                p.last_heard = now;
            }
            Input::Signal { call, to, signal } => {
                signal.check()?;
                let c = self.live_call(call)?;
                if c.get(self.me).map(|p| p.state) != Some(PState::Joined) {
                    return Err(CallError::NotJoined);
                }
                if to == self.me || c.get(to).map(|p| p.state) != Some(PState::Joined) {
                    return Err(CallError::NotParticipant(to));
                }
                if !self.send(call, to, CallBody::Signal(signal), &mut out) {
                    return Err(CallError::NoRoute(to));
                }
            }
            Input::Frame { from, frame } => self.on_frame(now, from, frame, &mut out),
            Input::Link { peer, up } => {
                if up {
                    self.links.insert(peer);
                } else {
                    self.links.remove(&peer);
                }
            }
            Input::Tick => self.tick(now, &mut out),
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        now: i64,
        id: Ulid,
        conversation: ConversationId,
        video: bool,
        me: UserId,
        peers: Vec<(NodeId, UserId)>,
        out: &mut Vec<Action>,
    ) -> Result<(), CallError> {
        let distinct: BTreeSet<NodeId> = peers.iter().map(|(n, _)| *n).collect();
        if peers.is_empty()
            || peers.len() >= MAX_CALL_PARTICIPANTS
            || distinct.len() != peers.len()
            || distinct.contains(&self.me)
        {
            return Err(CallError::BadPeers);
        }
        if self.in_other_call(id) {
            return Err(CallError::Busy);
        }
        if self.calls.contains_key(&id) {
            return Err(CallError::Busy);
        }
        self.make_room()?;
        let mut participants = vec![Participant {
            node: self.me,
            user: me,
            state: PState::Joined,
            recording: false,
            last_heard: now,
            seq: 0,
            ever_joined: true,
        }];
        participants.extend(peers.iter().map(|(node, user)| Participant {
            node: *node,
            user: user.clone(),
            state: PState::Invited,
            recording: false,
            last_heard: now,
            seq: 0,
            ever_joined: false,
        }));
        let call = Call {
            id,
            conversation: conversation.clone(),
            initiator: self.me,
            video,
            started_at: now + self.wall_offset,
            ended_at: None,
            outcome: None,
            participants,
            started: now,
            ended: None,
            talking_since: None,
            last_keepalive: now,
        };
        let everyone: Vec<(NodeId, UserId)> = call
            .participants
            .iter()
            .map(|p| (p.node, p.user.clone()))
            .collect();
        out.push(Action::History {
            conversation: conversation.clone(),
            entry: CallEntry {
                call: id,
                event: CallEvent::Started,
                participants: peers.iter().map(|(_, u)| u.clone()).collect(),
                duration_ms: 0,
            },
            request: Some(id),
        });
        self.calls.insert(id, call);
        for (node, _) in &peers {
            self.send(
                id,
                *node,
                CallBody::Invite {
                    conversation: conversation.clone(),
                    video,
                    started_at: now + self.wall_offset,
                    participants: everyone.clone(),
                },
                out,
            );
        }
        out.push(Action::Changed(id));
        Ok(())
    }

    fn live_call(&self, id: Ulid) -> Result<&Call, CallError> {
        match self.calls.get(&id) {
            None => Err(CallError::Unknown(id)),
            Some(c) if !c.live() => Err(CallError::Ended),
            Some(c) => Ok(c),
        }
    }

    fn live_call_mut(&mut self, id: Ulid) -> Result<&mut Call, CallError> {
        match self.calls.get_mut(&id) {
            None => Err(CallError::Unknown(id)),
            Some(c) if !c.live() => Err(CallError::Ended),
            Some(c) => Ok(c),
        }
    }

    /// This node's user is joined in a live call other than `id`.
    fn in_other_call(&self, id: Ulid) -> bool {
        self.calls.values().any(|c| {
            c.id != id && c.live() && c.get(self.me).map(|p| p.state) == Some(PState::Joined)
        })
    }

    /// Forgets the oldest ended call when the view is full.
    fn make_room(&mut self) -> Result<(), CallError> {
        if self.calls.len() < MAX_CALLS {
            return Ok(());
        }
        let oldest_ended = self
            .calls
            .values()
            .filter(|c| !c.live())
            .min_by_key(|c| c.ended_at)
            .map(|c| c.id);
        match oldest_ended {
            Some(id) => {
                self.calls.remove(&id);
                Ok(())
            }
            None => Err(CallError::TooMany),
        }
    }

    /// This node's participant moves to `state`: the others hear it, the
    /// history records it, and the call may end.
    fn set_mine(&mut self, now: i64, id: Ulid, state: PState, out: &mut Vec<Action>) {
        let me = self.me;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(p) = call.get_mut(me) else { return };
        let was = p.state;
        p.state = state;
        p.last_heard = now;
        if state == PState::Joined {
            p.ever_joined = true;
        }
        if state != PState::Joined {
            p.recording = false;
        }
        let conversation = call.conversation.clone();
        if state == PState::Joined && was != PState::Joined {
            out.push(Action::History {
                conversation: conversation.clone(),
                entry: CallEntry {
                    call: id,
                    event: CallEvent::Joined,
                    participants: Vec::new(),
                    duration_ms: 0,
                },
                request: None,
            });
        }
        self.broadcast_state(id, out);
        self.settle(now, id, out);
        // Leaving a call that goes on is worth a line of its own.
        let goes_on = self.calls.get(&id).is_some_and(Call::live);
        if was == PState::Joined && state == PState::Left && goes_on {
            out.push(Action::History {
                conversation,
                entry: CallEntry {
                    call: id,
                    event: CallEvent::Left,
                    participants: Vec::new(),
                    duration_ms: 0,
                },
                request: None,
            });
        }
        out.push(Action::Changed(id));
    }

    /// Tells every other participant this node's state.
    fn broadcast_state(&mut self, id: Ulid, out: &mut Vec<Action>) {
        let me = self.me;
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let Some(mine) = call.get(me) else { return };
        let body = CallBody::State {
            state: mine.state,
            recording: mine.recording,
        };
        let others: Vec<NodeId> = call
            .participants
            .iter()
            .map(|p| p.node)
            .filter(|n| *n != me)
            .collect();
        for to in others {
            self.send(id, to, body.clone(), out);
        }
    }

    /// Sends a frame of this node's to `target`: directly over a link,
    /// else through every linked peer (one with a link forwards it).
    fn send(&mut self, call: Ulid, target: NodeId, body: CallBody, out: &mut Vec<Action>) -> bool {
        self.seq += 1;
        let frame = CallFrame {
            call,
            origin: self.me,
            target,
            hops: 0,
            seq: self.seq,
            body,
        };
        if self.links.contains(&target) {
            out.push(Action::Send { via: target, frame });
            return true;
        }
        for via in &self.links {
            out.push(Action::Send {
                via: *via,
                frame: frame.clone(),
            });
        }
        !self.links.is_empty()
    }

    /// False when this frame came before (through another relay).
    fn first_time(&mut self, origin: NodeId, seq: u64) -> bool {
        if !self.seen.insert((origin, seq)) {
            return false;
        }
        self.seen_order.push_back((origin, seq));
        if self.seen_order.len() > SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn on_frame(&mut self, now: i64, from: NodeId, frame: CallFrame, out: &mut Vec<Action>) {
        let refuse = |out: &mut Vec<Action>, reason| out.push(Action::Refused { from, reason });
        // A frame straight from its origin names its sender truly; only a
        // relay may carry another node's frame, and only once.
        if frame.hops == 0 && frame.origin != from {
            return refuse(out, "origin is not the sender");
        }
        if frame.hops > 1 {
            return refuse(out, "relayed more than once");
        }
        if frame.origin == self.me {
            return refuse(out, "our own frame came back");
        }
        if frame.target != self.me {
            if frame.hops == 1 {
                return refuse(out, "a relayed frame for another node");
            }
            if !self.links.contains(&frame.target) {
                // Another relay may have the link; nothing to do here.
                return;
            }
            if !self.first_time(frame.origin, frame.seq) {
                return;
            }
            let via = frame.target;
            out.push(Action::Send {
                via,
                frame: CallFrame { hops: 1, ..frame },
            });
            return;
        }
        if !self.first_time(frame.origin, frame.seq) {
            return;
        }
        let id = frame.call;
        match frame.body {
            CallBody::Invite {
                conversation,
                video,
                participants,
                ..
            } => {
                let nodes: BTreeSet<NodeId> = participants.iter().map(|(n, _)| *n).collect();
                if participants.len() > MAX_CALL_PARTICIPANTS
                    || participants.len() < 2
                    || nodes.len() != participants.len()
                    || !nodes.contains(&self.me)
                    || participants.first().map(|(n, _)| *n) != Some(frame.origin)
                {
                    return refuse(out, "an invite with bad participants");
                }
                if self.calls.contains_key(&id) {
                    return;
                }
                let origin = frame.origin;
                if self.in_other_call(id) {
                    // Busy: declined at once, and nothing kept.
                    let busy = CallBody::State {
                        state: PState::Declined,
                        recording: false,
                    };
                    self.send(id, origin, busy, out);
                    return;
                }
                if self.make_room().is_err() {
                    return refuse(out, "too many calls");
                }
                let wall = now + self.wall_offset;
                let call = Call {
                    id,
                    conversation,
                    initiator: origin,
                    video,
                    // The caller's clock says when it started; timeouts
                    // run on this node's.
                    started_at: wall,
                    ended_at: None,
                    outcome: None,
                    started: now,
                    ended: None,
                    participants: participants
                        .into_iter()
                        .map(|(node, user)| Participant {
                            node,
                            user,
                            state: if node == origin {
                                PState::Joined
                            } else {
                                PState::Invited
                            },
                            recording: false,
                            last_heard: now,
                            seq: 0,
                            ever_joined: node == origin,
                        })
                        .collect(),
                    talking_since: None,
                    last_keepalive: now,
                };
                self.calls.insert(id, call);
                self.set_mine(now, id, PState::Ringing, out);
            }
            CallBody::State { state, recording } => {
                let Some(call) = self.calls.get_mut(&id) else {
                    return refuse(out, "a state for an unknown call");
                };
                let live = call.live();
                let Some(p) = call.get_mut(frame.origin) else {
                    return refuse(out, "a state from a node not in the call");
                };
                if frame.seq <= p.seq {
                    return;
                }
                p.seq = frame.seq;
                p.last_heard = now;
                let changed = p.state != state || p.recording != recording;
                if !live {
                    return;
                }
                p.state = state;
                p.recording = recording && state == PState::Joined;
                if state == PState::Joined {
                    p.ever_joined = true;
                }
                if changed {
                    self.settle(now, id, out);
                    out.push(Action::Changed(id));
                }
            }
            CallBody::Signal(signal) => {
                if signal.check().is_err() {
                    return refuse(out, "a signal over its size limit");
                }
                let Some(call) = self.calls.get_mut(&id) else {
                    return refuse(out, "a signal for an unknown call");
                };
                if !call.live() {
                    return refuse(out, "a signal for an ended call");
                }
                let Some(p) = call.get_mut(frame.origin) else {
                    return refuse(out, "a signal from a node not in the call");
                };
                p.last_heard = now;
                out.push(Action::Signal {
                    call: id,
                    from: frame.origin,
                    signal,
                });
            }
        }
    }

    /// Moves the call on after a change: who is talking, and whether it
    /// is over.
    fn settle(&mut self, now: i64, id: Ulid, out: &mut Vec<Action>) {
        let me = self.me;
        let wall_offset = self.wall_offset;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if !call.live() {
            return;
        }
        let joined = call.joined();
        if joined >= 2 && call.talking_since.is_none() {
            call.talking_since = Some(now);
        }
        let live = call.participants.iter().filter(|p| p.state.live()).count();
        if joined >= 1 && live >= 2 {
            return;
        }
        let outcome = if call.talking_since.is_some() {
            CallEvent::Ended
        } else if call
            .get(call.initiator)
            .is_some_and(|p| !p.state.live())
            // The caller's node leaves when the invites time out there;
            // that is a missed call, not a cancelled one.
            && now - call.started < INVITE_TIMEOUT_MS
        {
            CallEvent::Cancelled
        } else if call
            .participants
            .iter()
            .filter(|p| p.node != call.initiator)
            .all(|p| p.state == PState::Declined)
        {
            CallEvent::Declined
        } else {
            CallEvent::Missed
        };
        call.outcome = Some(outcome);
        call.ended_at = Some(now + wall_offset);
        call.ended = Some(now);
        let participants = call
            .participants
            .iter()
            .filter(|p| outcome != CallEvent::Ended || p.ever_joined)
            .map(|p| p.user.clone())
            .collect();
        let duration_ms = call
            .talking_since
            .map_or(0, |t| u64::try_from(now - t).unwrap_or(0));
        let conversation = call.conversation.clone();
        let mine_was_joined = call.get(me).map(|p| p.state) == Some(PState::Joined);
        if let Some(p) = call.get_mut(me) {
            if p.state.live() {
                p.state = if mine_was_joined {
                    PState::Left
                } else {
                    PState::Missed
                };
                p.recording = false;
            }
        }
        // Only a node still in the call writes how it ended: one that left
        // (or was taken out) earlier may judge it from stale views.
        if mine_was_joined {
            out.push(Action::History {
                conversation,
                entry: CallEntry {
                    call: id,
                    event: outcome,
                    participants,
                    duration_ms,
                },
                request: Some(CallEntry::end_request_id(id)),
            });
        }
        if mine_was_joined {
            self.broadcast_state(id, out);
        }
        out.push(Action::Changed(id));
    }

    fn tick(&mut self, now: i64, out: &mut Vec<Action>) {
        let me = self.me;
        let ids: Vec<Ulid> = self.calls.keys().copied().collect();
        for id in ids {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            if !call.live() {
                if call.ended.is_some_and(|t| now - t > KEEP_ENDED_MS) {
                    self.calls.remove(&id);
                }
                continue;
            }
            let unanswered = now - call.started > INVITE_TIMEOUT_MS;
            let mut mine = None;
            let mut others_changed = false;
            for p in &mut call.participants {
                let silent = now - p.last_heard;
                match p.state {
                    PState::Invited | PState::Ringing if unanswered => {
                        if p.node == me {
                            mine = Some(PState::Missed);
                        } else {
                            p.state = PState::Missed;
                            others_changed = true;
                        }
                    }
                    PState::Joined if p.node == me && silent > BROWSER_TIMEOUT_MS => {
                        mine = Some(PState::Left);
                    }
                    PState::Joined if p.node != me && silent > PEER_TIMEOUT_MS => {
                        p.state = PState::Left;
                        p.recording = false;
                        others_changed = true;
                    }
                    _ => {}
                }
            }
            // Ringing is repeated too: a state that overtook its invite
            // (through a relay) was refused as unknown and comes again.
            let keepalive = matches!(
                call.get(me).map(|p| p.state),
                Some(PState::Joined | PState::Ringing)
            ) && now - call.last_keepalive >= KEEPALIVE_MS;
            if keepalive {
                call.last_keepalive = now;
            }
            if let Some(state) = mine {
                self.set_mine(now, id, state, out);
            } else if others_changed {
                self.settle(now, id, out);
                out.push(Action::Changed(id));
            }
            if keepalive && mine.is_none() {
                self.broadcast_state(id, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
