//! The call core rule by rule, on a small network of cores whose frames
//! are delivered over the links the test lays.

use super::*;

const ANA: NodeId = 1;
const BO: NodeId = 2;
const CY: NodeId = 3;
const DEE: NodeId = 4;

fn user(n: NodeId) -> UserId {
    UserId::new(["", "ana", "bo", "cy", "dee", "eve"][n as usize]).expect("user")
}

fn general() -> ConversationId {
    ConversationId::general()
}

/// Cores joined by links; frames are delivered until none is left.
struct Net {
    now: i64,
    cores: BTreeMap<NodeId, Calls>,
    history: Vec<(NodeId, CallEntry, Option<Ulid>)>,
    signals: Vec<(NodeId, NodeId, WireSignal)>,
    refused: Vec<(NodeId, &'static str)>,
    delivered: usize,
}

impl Net {
    fn new(nodes: &[NodeId], links: &[(NodeId, NodeId)]) -> Net {
        let mut net = Net {
            now: 1_000_000,
            cores: nodes.iter().map(|n| (*n, Calls::new(*n, 0))).collect(),
            history: Vec::new(),
            signals: Vec::new(),
            refused: Vec::new(),
            delivered: 0,
        };
        for (a, b) in links {
            net.input(*a, Input::Link { peer: *b, up: true })
                .expect("link");
            net.input(*b, Input::Link { peer: *a, up: true })
                .expect("link");
        }
        net
    }

    /// The monotonic clock is the test's; the wall clock runs an hour
    /// ahead of it.
    fn at(&self) -> Now {
        Now {
            mono: self.now,
            wall: self.now + 3_600_000,
        }
    }

    fn input(&mut self, node: NodeId, input: Input) -> Result<(), CallError> {
        let at = self.at();
        let actions = self.cores.get_mut(&node).expect("node").on(at, input)?;
        self.run(node, actions);
        Ok(())
    }

    fn run(&mut self, node: NodeId, actions: Vec<Action>) {
        let mut queue: VecDeque<(NodeId, Action)> =
            actions.into_iter().map(|a| (node, a)).collect();
        while let Some((at, a)) = queue.pop_front() {
            match a {
                Action::Send { via, frame } => {
                    // A frame only crosses a link the sender has.
                    let linked = self.cores[&at].links.contains(&via);
                    assert!(linked, "{at} sent over a link it has not got, to {via}");
                    self.delivered += 1;
                    let at_now = self.at();
                    let next = self
                        .cores
                        .get_mut(&via)
                        .expect("peer")
                        .on(at_now, Input::Frame { from: at, frame })
                        .expect("frames are never refused with an error");
                    queue.extend(next.into_iter().map(|a| (via, a)));
                }
                Action::History { entry, request, .. } => self.history.push((at, entry, request)),
                Action::Signal { from, signal, .. } => self.signals.push((at, from, signal)),
                Action::Refused { reason, .. } => self.refused.push((at, reason)),
                Action::Changed(_) => {}
            }
        }
    }

    fn tick(&mut self, ms: i64) {
        let step = 1_000;
        let mut left = ms;
        while left > 0 {
            self.now += step.min(left);
            left -= step;
            let nodes: Vec<NodeId> = self.cores.keys().copied().collect();
            for n in nodes {
                self.input(n, Input::Tick).expect("tick");
            }
        }
    }

    /// Keeps `nodes`' browsers alive while time passes.
    fn tick_alive(&mut self, ms: i64, call: Ulid, nodes: &[NodeId]) {
        let mut left = ms;
        while left > 0 {
            for n in nodes {
                let _ = self.input(*n, Input::Alive(call));
            }
            self.tick(5_000.min(left));
            left -= 5_000;
        }
    }

    fn state(&self, at: NodeId, call: Ulid, of: NodeId) -> Option<PState> {
        self.cores[&at]
            .get(call)
            .and_then(|c| c.participants.iter().find(|p| p.node == of))
            .map(|p| p.state)
    }

    fn outcome(&self, at: NodeId, call: Ulid) -> Option<CallEvent> {
        self.cores[&at].get(call).and_then(|c| c.outcome)
    }

    fn start(&mut self, from: NodeId, peers: &[NodeId]) -> Result<Ulid, CallError> {
        let call = Ulid::from_parts(self.now as u64, from as u128 * 1000 + peers.len() as u128);
        self.input(
            from,
            Input::Start {
                call,
                conversation: general(),
                video: true,
                me: user(from),
                peers: peers.iter().map(|p| (*p, user(*p))).collect(),
            },
        )?;
        Ok(call)
    }

    fn events(&self, call: Ulid) -> Vec<(NodeId, CallEvent)> {
        self.history
            .iter()
            .filter(|(_, e, _)| e.call == call)
            .map(|(n, e, _)| (*n, e.event))
            .collect()
    }
}

#[test]
fn a_one_to_one_call_rings_is_answered_and_ends_on_both_with_its_history() {
    let mut net = Net::new(&[ANA, BO], &[(ANA, BO)]);
    let call = net.start(ANA, &[BO]).expect("starts");
    assert_eq!(net.state(BO, call, BO), Some(PState::Ringing));
    assert_eq!(net.state(ANA, call, BO), Some(PState::Ringing));
    net.input(BO, Input::Accept(call)).expect("accepts");
    assert_eq!(net.state(ANA, call, BO), Some(PState::Joined));
    assert_eq!(net.cores[&ANA].get(call).map(Call::joined), Some(2));
    // Signalling goes browser to browser, through the nodes.
    net.input(
        ANA,
        Input::Signal {
            call,
            to: BO,
            signal: WireSignal::Offer("v=0".into()),
        },
    )
    .expect("signals");
    assert_eq!(
        net.signals,
        vec![(BO, ANA, WireSignal::Offer("v=0".into()))]
    );
    net.tick_alive(61_000, call, &[ANA, BO]);
    assert_eq!(net.outcome(ANA, call), None, "keep-alives hold the call");
    net.input(BO, Input::Hangup(call)).expect("hangs up");
    assert_eq!(net.outcome(ANA, call), Some(CallEvent::Ended));
    assert_eq!(net.outcome(BO, call), Some(CallEvent::Ended));
    assert_eq!(
        net.events(call),
        vec![
            (ANA, CallEvent::Started),
            (BO, CallEvent::Joined),
            (ANA, CallEvent::Ended)
        ],
        "bo left first: only ana, still in the call, writes its end"
    );
    // Both ends have one id (so the log keeps one), and a duration.
    let ends: Vec<_> = net
        .history
        .iter()
        .filter(|(_, e, _)| e.event == CallEvent::Ended)
        .collect();
    assert!(ends
        .iter()
        .all(|(_, _, id)| *id == Some(CallEntry::end_request_id(call))));
    assert!(
        ends.iter().all(|(_, e, _)| e.duration_ms >= 61_000),
        "{ends:?}"
    );
    // Times for people are on the wall clock, timeouts on the monotonic.
    let c = net.cores[&ANA].get(call).expect("call");
    assert_eq!(c.started_at, 1_000_000 + 3_600_000);
    assert!(
        c.ended_at.is_some_and(|t| t - c.started_at >= 61_000),
        "{c:?}"
    );
    assert_eq!(ends[0].1.participants, vec![user(ANA), user(BO)]);
    // The started entry's id is the call's.
    assert_eq!(net.history[0].2, Some(call));
    // Nothing more may be said in an ended call.
    assert_eq!(net.input(ANA, Input::Hangup(call)), Err(CallError::Ended));
}

#[test]
fn a_declined_and_an_unanswered_call_end_cleanly() {
    let mut net = Net::new(&[ANA, BO], &[(ANA, BO)]);
    let call = net.start(ANA, &[BO]).expect("starts");
    net.input(BO, Input::Decline(call)).expect("declines");
    assert_eq!(net.outcome(ANA, call), Some(CallEvent::Declined));
    assert_eq!(net.outcome(BO, call), Some(CallEvent::Declined));
    // Only the caller's node (which took part) writes the end.
    assert_eq!(
        net.events(call),
        vec![(ANA, CallEvent::Started), (ANA, CallEvent::Declined)]
    );

    net.tick(1_000);
    let call = net.start(ANA, &[BO]).expect("starts again");
    net.tick_alive(INVITE_TIMEOUT_MS - 5_000, call, &[ANA]);
    assert_eq!(net.outcome(ANA, call), None, "still ringing");
    net.tick_alive(10_000, call, &[ANA]);
    assert_eq!(net.outcome(ANA, call), Some(CallEvent::Missed));
    assert_eq!(net.outcome(BO, call), Some(CallEvent::Missed));
    assert_eq!(net.state(BO, call, BO), Some(PState::Missed));
    assert_eq!(
        net.events(call),
        vec![(ANA, CallEvent::Started), (ANA, CallEvent::Missed)]
    );
    assert_eq!(net.input(BO, Input::Accept(call)), Err(CallError::Ended));
}

#[test]
fn the_caller_hanging_up_before_an_answer_cancels() {
    let mut net = Net::new(&[ANA, BO], &[(ANA, BO)]);
    let call = net.start(ANA, &[BO]).expect("starts");
    net.input(ANA, Input::Hangup(call)).expect("hangs up");
    assert_eq!(net.outcome(BO, call), Some(CallEvent::Cancelled));
    assert_eq!(net.outcome(ANA, call), Some(CallEvent::Cancelled));
}

#[test]
fn signalling_between_unlinked_nodes_goes_through_a_relay_once() {
    // ana - bo - cy, and ana - dee - cy: two relays, no direct link.
    let mut net = Net::new(
        &[ANA, BO, CY, DEE],
        &[(ANA, BO), (BO, CY), (ANA, DEE), (DEE, CY)],
    );
    let call = net.start(ANA, &[CY]).expect("starts");
    assert_eq!(net.state(CY, call, CY), Some(PState::Ringing));
    assert_eq!(net.state(ANA, call, CY), Some(PState::Ringing));
    net.input(CY, Input::Accept(call)).expect("accepts");
    assert_eq!(net.state(ANA, call, CY), Some(PState::Joined));
    for i in 0..3 {
        net.input(
            ANA,
            Input::Signal {
                call,
                to: CY,
                signal: WireSignal::Ice {
                    candidate: format!("candidate:{i}"),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                },
            },
        )
        .expect("signals");
    }
    // Both relays forwarded; cy's browser hears each candidate once.
    let at_cy: Vec<_> = net.signals.iter().filter(|(at, ..)| *at == CY).collect();
    assert_eq!(at_cy.len(), 3, "{at_cy:?}");
    // The relays are not in the call and were told nothing of it.
    assert!(net.cores[&BO].get(call).is_none());
    assert!(net.cores[&DEE].get(call).is_none());
}

#[test]
fn bad_frames_are_refused_with_their_reason() {
    let mut net = Net::new(&[ANA, BO, CY], &[(ANA, BO), (BO, CY), (ANA, CY)]);
    let call = net.start(ANA, &[BO]).expect("starts");
    net.input(BO, Input::Accept(call)).expect("accepts");
    let frame = |origin, target, hops, seq, body| CallFrame {
        call,
        origin,
        target,
        hops,
        seq,
        body,
    };
    let feed = |net: &mut Net, at: NodeId, from: NodeId, f: CallFrame| {
        net.refused.clear();
        net.input(at, Input::Frame { from, frame: f })
            .expect("frame");
        net.refused.clone()
    };
    let offer = || CallBody::Signal(WireSignal::Offer("v=0".into()));
    // cy is not in the call.
    assert_eq!(
        feed(&mut net, BO, CY, frame(CY, BO, 0, 10, offer())),
        vec![(BO, "a signal from a node not in the call")]
    );
    // cy claims to be ana, directly.
    assert_eq!(
        feed(&mut net, BO, CY, frame(ANA, BO, 0, 11, offer())),
        vec![(BO, "origin is not the sender")]
    );
    // Relayed twice.
    assert_eq!(
        feed(&mut net, BO, CY, frame(ANA, BO, 2, 12, offer())),
        vec![(BO, "relayed more than once")]
    );
    // An unknown call.
    let mut unknown = frame(ANA, BO, 0, 13, offer());
    unknown.call = Ulid::from_parts(9, 9);
    assert_eq!(
        feed(&mut net, BO, ANA, unknown),
        vec![(BO, "a signal for an unknown call")]
    );
    // An oversized SDP.
    let big = CallBody::Signal(WireSignal::Answer("x".repeat(MAX_SDP_BYTES + 1)));
    assert_eq!(
        feed(&mut net, BO, ANA, frame(ANA, BO, 0, 14, big)),
        vec![(BO, "a signal over its size limit")]
    );
    // An invite naming five participants.
    let crowd = CallBody::Invite {
        conversation: general(),
        video: false,
        started_at: 0,
        participants: (1..=5).map(|n| (n, user(n))).collect(),
    };
    let mut invite = frame(ANA, CY, 0, 15, crowd);
    invite.call = Ulid::from_parts(10, 10);
    assert_eq!(
        feed(&mut net, CY, ANA, invite),
        vec![(CY, "an invite with bad participants")]
    );
    // The browser's own requests are checked too.
    let too_big = WireSignal::Offer("x".repeat(MAX_SDP_BYTES + 1));
    assert_eq!(
        net.input(
            ANA,
            Input::Signal {
                call,
                to: BO,
                signal: too_big
            }
        ),
        Err(CallError::TooBig)
    );
    assert_eq!(
        net.input(
            ANA,
            Input::Signal {
                call,
                to: CY,
                signal: WireSignal::Hello
            }
        ),
        Err(CallError::NotParticipant(CY))
    );
    assert_eq!(
        net.input(ANA, Input::Accept(Ulid::from_parts(1, 1))),
        Err(CallError::Unknown(Ulid::from_parts(1, 1)))
    );
    // Nothing reaches a node without links.
    net.input(
        ANA,
        Input::Link {
            peer: BO,
            up: false,
        },
    )
    .expect("down");
    net.input(
        ANA,
        Input::Link {
            peer: CY,
            up: false,
        },
    )
    .expect("down");
    assert_eq!(
        net.input(
            ANA,
            Input::Signal {
                call,
                to: BO,
                signal: WireSignal::Hello
            }
        ),
        Err(CallError::NoRoute(BO))
    );
    assert_eq!(net.start(ANA, &[]), Err(CallError::BadPeers));
    assert_eq!(net.start(ANA, &[ANA]), Err(CallError::BadPeers));
    assert_eq!(net.start(ANA, &[BO, CY, DEE, 5]), Err(CallError::BadPeers));
    assert_eq!(
        net.start(BO, &[CY]),
        Err(CallError::Busy),
        "bo is in a call"
    );
}

#[test]
fn a_vanished_browser_or_node_is_timed_out_of_the_call() {
    let mut net = Net::new(&[ANA, BO, CY], &[(ANA, BO), (BO, CY), (ANA, CY)]);
    let call = net.start(ANA, &[BO, CY]).expect("starts");
    net.input(BO, Input::Accept(call)).expect("bo");
    net.input(CY, Input::Accept(call)).expect("cy");
    // cy's browser goes quiet: its node takes it out; the call goes on.
    net.tick_alive(BROWSER_TIMEOUT_MS + 5_000, call, &[ANA, BO]);
    assert_eq!(net.state(CY, call, CY), Some(PState::Left));
    assert_eq!(net.state(ANA, call, CY), Some(PState::Left));
    assert_eq!(net.outcome(ANA, call), None);
    assert!(net.events(call).contains(&(CY, CallEvent::Left)));
    // bo's node vanishes (no goodbye): ana's node times it out and the
    // call, now ana's alone, ends.
    net.input(
        ANA,
        Input::Link {
            peer: BO,
            up: false,
        },
    )
    .expect("link");
    net.cores.get_mut(&BO).expect("bo").links.clear();
    net.cores.get_mut(&CY).expect("cy").links.remove(&BO);
    let bo = net.cores.remove(&BO).expect("bo");
    net.tick_alive(PEER_TIMEOUT_MS + 5_000, call, &[ANA]);
    assert_eq!(net.state(ANA, call, BO), Some(PState::Left));
    assert_eq!(net.outcome(ANA, call), Some(CallEvent::Ended));
    let end = net
        .history
        .iter()
        .find(|(n, e, _)| *n == ANA && e.event == CallEvent::Ended)
        .expect("ana writes the end");
    assert_eq!(end.1.participants, vec![user(ANA), user(BO), user(CY)]);
    drop(bo);
}

#[test]
fn a_late_state_never_undoes_a_newer_one_and_recording_shows_everywhere() {
    // Three participants: bo's frames to ana and to cy share one counter,
    // so ana sees every other number.
    let mut net = Net::new(&[ANA, BO, CY], &[(ANA, BO), (BO, CY), (ANA, CY)]);
    let call = net.start(ANA, &[BO, CY]).expect("starts");
    net.input(BO, Input::Accept(call)).expect("accepts");
    net.input(BO, Input::Recording(call, true))
        .expect("records");
    let rec = |net: &Net| {
        net.cores[&ANA]
            .get(call)
            .and_then(|c| c.participants.iter().find(|p| p.node == BO))
            .map(|p| p.recording)
    };
    assert_eq!(rec(&net), Some(true));
    let newest = net.cores[&ANA]
        .get(call)
        .and_then(|c| c.participants.iter().find(|p| p.node == BO))
        .map(|p| p.seq)
        .expect("bo's newest");
    assert!(!net.cores[&ANA].seen.contains(&(BO, newest - 1)), "a gap");
    // A stale "ringing" from bo (an old sequence number) changes nothing.
    net.input(
        ANA,
        Input::Frame {
            from: BO,
            frame: CallFrame {
                call,
                origin: BO,
                target: ANA,
                hops: 0,
                // A number ana never saw (it went to cy), older than bo's
                // newest state.
                seq: newest - 1,
                body: CallBody::State {
                    state: PState::Ringing,
                    recording: false,
                },
            },
        },
    )
    .expect("frame");
    assert_eq!(net.state(ANA, call, BO), Some(PState::Joined));
    assert_eq!(rec(&net), Some(true));
    net.input(BO, Input::Recording(call, false)).expect("stops");
    assert_eq!(rec(&net), Some(false));
    assert_eq!(
        net.input(CY.min(ANA), Input::Recording(Ulid::from_parts(3, 3), true)),
        Err(CallError::Unknown(Ulid::from_parts(3, 3)))
    );
}

#[test]
fn a_node_in_a_call_declines_another_invite_as_busy() {
    let mut net = Net::new(&[ANA, BO, CY], &[(ANA, BO), (BO, CY), (ANA, CY)]);
    let first = net.start(ANA, &[BO]).expect("starts");
    net.input(BO, Input::Accept(first)).expect("accepts");
    let second = net.start(CY, &[BO]).expect("cy calls bo");
    assert_eq!(net.state(CY, second, BO), Some(PState::Declined));
    assert_eq!(net.outcome(CY, second), Some(CallEvent::Declined));
    assert!(
        net.cores[&BO].get(second).is_none(),
        "a busy node keeps nothing"
    );
    assert_eq!(net.outcome(BO, first), None);
}
