//! Table-driven tests of the mesh protocol's rules ([`super`]).

use super::*;

/// A random source that always answers `0` (no jitter) or always the
/// maximum (the largest jitter).
struct Fixed(u64);
impl RandomSource for Fixed {
    fn next_u128(&mut self) -> u128 {
        u128::from(self.0)
    }
    fn next_u64(&mut self) -> u64 {
        self.0
    }
}

const OPTS: MeshOptions = MeshOptions {
    connect_timeout: Duration::from_secs(30),
    backoff_base: Duration::from_secs(1),
    backoff_max: Duration::from_secs(30),
};

fn record(id: NodeId, session: &str) -> PresenceRecord {
    PresenceRecord {
        version: crate::ports::PRESENCE_VERSION,
        user: format!("u{id}"),
        node_id: id,
        session_id: session.into(),
        last_seen: 0,
        dtls_fingerprint: format!("fp{id}"),
        in_group: false,
        signals: Vec::new(),
        identity: None,
    }
}

fn signal(
    to: NodeId,
    to_session: &str,
    from_session: &str,
    attempt: u64,
    kind: SignalKind,
) -> Signal {
    Signal {
        to,
        to_session: to_session.into(),
        from_session: from_session.into(),
        attempt,
        kind,
        sdp: format!("sdp-{attempt}"),
    }
}

/// Node `me` (session `s<me>`) at a fixed start time.
struct T {
    core: MeshCore,
    t0: Instant,
}

impl T {
    fn new(me: NodeId) -> Self {
        Self::with_rng(me, 0)
    }
    fn with_rng(me: NodeId, r: u64) -> Self {
        T {
            core: MeshCore::new(me, format!("s{me}"), OPTS, Box::new(Fixed(r))),
            t0: Instant::now(),
        }
    }
    fn at(&mut self, secs: u64, input: Input) -> Vec<Action> {
        self.core.on(self.t0 + Duration::from_secs(secs), input)
    }
    fn on(&mut self, input: Input) -> Vec<Action> {
        self.at(0, input)
    }
    fn online(&mut self, id: NodeId) -> Vec<Action> {
        self.on(Input::Online {
            record: record(id, &format!("s{id}")),
            old_link_alive: false,
        })
    }
    /// Brings the link to `peer` up (this node offering or answering).
    fn open(&mut self, peer: NodeId) {
        self.online(peer);
        self.on(Input::Transport(TransportEvent::Open(peer)));
    }
}

fn offers(actions: &[Action]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Offer { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn failed_wait(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::Failed { retry_in, .. } => Some(*retry_in),
        _ => None,
    })
}

#[test]
fn the_smaller_id_offers_and_the_larger_waits() {
    // (me, peer, offers on the next tick)
    for (me, peer, expect) in [(1, 2, true), (2, 1, false), (5, 9, true), (9, 5, false)] {
        let mut t = T::new(me);
        let joined = t.online(peer);
        assert!(joined.contains(&Action::Track {
            peer,
            user: format!("u{peer}")
        }));
        let tick = t.on(Input::Tick);
        assert_eq!(
            offers(&tick) == vec![peer],
            expect,
            "{me} -> {peer}: {tick:?}"
        );
        if expect {
            assert!(tick.contains(&Action::Offer {
                peer,
                attempt: 1,
                fingerprint: format!("fp{peer}")
            }));
            assert!(tick.contains(&Action::FastPoll(true)));
        }
    }
}

#[test]
fn an_offer_from_a_peer_this_node_offers_to_is_ignored() {
    let mut t = T::new(1);
    t.online(2);
    let got = t.on(Input::Signal {
        from: 2,
        signal: signal(1, "s1", "s2", 1, SignalKind::Offer),
    });
    assert!(got.is_empty(), "{got:?}");
    // The other way round it is answered.
    let mut t = T::new(2);
    t.online(1);
    let got = t.on(Input::Signal {
        from: 1,
        signal: signal(2, "s2", "s1", 1, SignalKind::Offer),
    });
    assert!(got.contains(&Action::Answer {
        peer: 1,
        attempt: 1,
        sdp: "sdp-1".into(),
        fingerprint: "fp1".into()
    }));
}

#[test]
fn stale_signals_are_dropped() {
    // (to, to_session, from_session): only (2, s2, s1) is current.
    for (to, to_session, from_session, current) in [
        (2, "s2", "s1", true),
        (3, "s2", "s1", false),
        (2, "old", "s1", false),
        (2, "s2", "old", false),
    ] {
        let mut t = T::new(2);
        t.online(1);
        let got = t.on(Input::Signal {
            from: 1,
            signal: signal(to, to_session, from_session, 1, SignalKind::Offer),
        });
        assert_eq!(
            !got.is_empty(),
            current,
            "{to} {to_session} {from_session}: {got:?}"
        );
    }
}

#[test]
fn a_signal_before_the_record_is_held_and_replayed() {
    let mut t = T::new(2);
    let got = t.on(Input::Signal {
        from: 1,
        signal: signal(2, "s2", "s1", 1, SignalKind::Offer),
    });
    assert_eq!(got, vec![Action::Poll]);
    let got = t.online(1);
    assert!(
        got.iter()
            .any(|a| matches!(a, Action::Answer { peer: 1, .. })),
        "{got:?}"
    );
    // Held signals are bounded.
    let mut t = T::new(2);
    for i in 0..(MAX_PENDING_SIGNALS as u64 + 10) {
        t.on(Input::Signal {
            from: 100 + i,
            signal: signal(2, "s2", "x", 1, SignalKind::Offer),
        });
    }
    assert_eq!(t.core.pending.len(), MAX_PENDING_SIGNALS);
}

#[test]
fn signals_go_through_the_repository_until_a_neighbour_can_relay() {
    let mut t = T::new(1);
    t.online(3);
    let tick = t.on(Input::Tick);
    assert_eq!(offers(&tick), vec![3]);
    // No open neighbour: the repository.
    let got = t.on(Input::Offered {
        peer: 3,
        attempt: 1,
        result: Ok("offer".into()),
    });
    assert!(matches!(&got[..], [Action::Publish(s)] if s.to == 3 && s.kind == SignalKind::Offer));
    // Linked to 2, and 3 was linked once: the next offer goes over the
    // mesh through 2.
    t.open(2);
    t.on(Input::Transport(TransportEvent::Open(3)));
    t.on(Input::Transport(TransportEvent::Failed {
        peer: 3,
        reason: "gone".into(),
    }));
    let tick = t.at(100, Input::Tick);
    assert_eq!(offers(&tick), vec![3]);
    let got = t.at(
        100,
        Input::Offered {
            peer: 3,
            attempt: 2,
            result: Ok("offer2".into()),
        },
    );
    assert!(
        matches!(&got[..], [Action::Relay { relayed, via }] if via == &vec![2] && relayed.hops == 0 && relayed.origin == 1 && relayed.target == 3),
        "{got:?}"
    );
    assert_eq!(t.core.status(Vec::new()).signals_via_mesh, 1);
}

#[test]
fn a_relay_forwards_once_and_bounces_what_it_cannot_deliver() {
    let relayed = |origin, target, hops| Relayed {
        origin,
        target,
        hops,
        bounced: false,
        kind: SignalKind::Offer,
        to_session: format!("s{target}"),
        from_session: format!("s{origin}"),
        attempt: 1,
        sdp: "sdp".into(),
    };
    let mut t = T::new(2);
    t.open(1);
    t.open(3);
    // Forwarded to the open target with one hop.
    let got = t.on(Input::Relayed {
        from: 1,
        relayed: relayed(1, 3, 0),
    });
    assert_eq!(
        got,
        vec![Action::Relay {
            relayed: relayed(1, 3, 1),
            via: vec![3]
        }]
    );
    // Only hop-0 signals from their origin are forwarded.
    assert!(t
        .on(Input::Relayed {
            from: 1,
            relayed: relayed(1, 3, 1)
        })
        .is_empty());
    assert!(t
        .on(Input::Relayed {
            from: 3,
            relayed: relayed(1, 4, 0)
        })
        .is_empty());
    // No link to the target: bounced back to the origin.
    let got = t.on(Input::Relayed {
        from: 1,
        relayed: relayed(1, 4, 0),
    });
    assert_eq!(
        got,
        vec![Action::Relay {
            relayed: Relayed {
                bounced: true,
                ..relayed(1, 4, 0)
            },
            via: vec![1]
        }]
    );
    // A signal for this node whose origin is not its sender is dropped.
    assert!(t
        .on(Input::Relayed {
            from: 3,
            relayed: relayed(1, 2, 0)
        })
        .is_empty());
    // An oversized one too.
    let mut big = relayed(1, 3, 0);
    big.sdp = "x".repeat(crate::ports::MAX_SDP_BYTES + 1);
    assert!(t
        .on(Input::Relayed {
            from: 1,
            relayed: big
        })
        .is_empty());
}

#[test]
fn when_every_relay_bounces_the_signal_goes_through_the_repository() {
    let mut t = T::new(1);
    t.open(2);
    t.open(3);
    t.online(4);
    // Make 4 look linked once, so its signal goes over the mesh.
    t.on(Input::Transport(TransportEvent::Open(4)));
    t.on(Input::Transport(TransportEvent::Failed {
        peer: 4,
        reason: "gone".into(),
    }));
    t.at(100, Input::Tick);
    let got = t.at(
        100,
        Input::Offered {
            peer: 4,
            attempt: 1,
            result: Ok("o".into()),
        },
    );
    let Some(Action::Relay { relayed, via }) = got.first().cloned() else {
        panic!("not relayed: {got:?}");
    };
    assert_eq!(via, vec![2, 3]);
    let bounced = Relayed {
        bounced: true,
        ..relayed
    };
    // One bounce of two: still waiting.
    assert!(t
        .on(Input::Relayed {
            from: 2,
            relayed: bounced.clone()
        })
        .is_empty());
    let got = t.on(Input::Relayed {
        from: 3,
        relayed: bounced.clone(),
    });
    assert!(
        matches!(&got[..], [Action::Publish(s)] if s.to == 4),
        "{got:?}"
    );
    // A late third bounce changes nothing.
    assert!(t
        .on(Input::Relayed {
            from: 3,
            relayed: bounced
        })
        .is_empty());
}

#[test]
fn an_attempt_that_does_not_open_times_out_and_backs_off_exponentially() {
    let mut t = T::new(1);
    t.online(2);
    t.on(Input::Tick);
    // Not yet.
    assert!(offers(&t.at(30, Input::Tick)).is_empty());
    let got = t.at(31, Input::Tick);
    assert_eq!(got.first(), Some(&Action::Close(2)));
    assert_eq!(failed_wait(&got), Some(Duration::from_secs(1)));
    // Each failure doubles the wait, up to the maximum.
    let mut now = 31;
    for expect in [2, 4, 8, 16, 30, 30] {
        let wait = t.core.peers[&2].phase;
        let Phase::Backoff { until } = wait else {
            panic!("{wait:?}")
        };
        now = until.duration_since(t.t0).as_secs();
        assert_eq!(offers(&t.at(now, Input::Tick)), vec![2]);
        let got = t.at(
            now,
            Input::Transport(TransportEvent::Failed {
                peer: 2,
                reason: "x".into(),
            }),
        );
        assert_eq!(failed_wait(&got), Some(Duration::from_secs(expect)));
    }
    assert!(now > 31);
    // Jitter adds at most half.
    let mut t = T::with_rng(1, u64::MAX);
    t.online(2);
    t.on(Input::Tick);
    let got = t.on(Input::Transport(TransportEvent::Failed {
        peer: 2,
        reason: "x".into(),
    }));
    let wait = failed_wait(&got).unwrap();
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1500),
        "{wait:?}"
    );
}

#[test]
fn an_answer_is_accepted_once_and_only_for_the_current_attempt() {
    let mut t = T::new(1);
    t.online(2);
    t.on(Input::Tick);
    let answer = |attempt| Input::Signal {
        from: 2,
        signal: signal(1, "s1", "s2", attempt, SignalKind::Answer),
    };
    assert!(t.on(answer(7)).is_empty());
    assert_eq!(
        t.on(answer(1)),
        vec![Action::Accept {
            peer: 2,
            sdp: "sdp-1".into()
        }]
    );
    assert!(t.on(answer(1)).is_empty(), "a second copy is ignored");
    let got = t.on(Input::Accepted {
        peer: 2,
        result: Err("bad".into()),
    });
    assert!(failed_wait(&got).is_some());
}

#[test]
fn a_restarted_peer_starts_over_and_its_old_links_close_is_ignored_once() {
    let mut t = T::new(1);
    t.open(2);
    let got = t.on(Input::Online {
        record: record(2, "new"),
        old_link_alive: true,
    });
    assert!(got.contains(&Action::Link { peer: 2, up: false }));
    assert!(got.contains(&Action::Detach(2)));
    // The old link's Closed is not taken for the new attempt.
    assert!(t.on(Input::Transport(TransportEvent::Closed(2))).is_empty());
    assert_eq!(offers(&t.on(Input::Tick)), vec![2]);
    // A second Closed is a real failure.
    let got = t.on(Input::Transport(TransportEvent::Closed(2)));
    assert!(failed_wait(&got).is_some(), "{got:?}");
    // The same session again only refreshes the record.
    assert!(t
        .on(Input::Online {
            record: record(2, "new"),
            old_link_alive: true
        })
        .is_empty());
}

#[test]
fn presence_saying_offline_does_not_end_an_open_link() {
    let mut t = T::new(1);
    t.open(2);
    assert!(t.on(Input::Offline(2)).is_empty());
    assert!(t.core.is_open(2));
    t.online(3);
    let got = t.on(Input::Offline(3));
    assert_eq!(
        got,
        vec![
            Action::Untrack(3),
            Action::ClearSignal(3),
            Action::Close(3),
            Action::FastPoll(false)
        ]
    );
    // A link nobody asked for is closed.
    assert_eq!(
        t.on(Input::Transport(TransportEvent::Open(9))),
        vec![Action::Close(9)]
    );
    // Dropping an open link fails it; dropping a closed one does nothing.
    let got = t.on(Input::Drop(2));
    assert_eq!(got.first(), Some(&Action::Close(2)));
    assert!(got.contains(&Action::Link { peer: 2, up: false }));
    assert!(t.on(Input::Drop(2)).is_empty());
}

#[test]
fn a_refused_peer_loses_even_an_open_link_and_is_not_offered_again() {
    let mut t = T::new(1);
    t.open(2);
    let got = t.on(Input::Refused(2));
    assert!(got.contains(&Action::Close(2)), "{got:?}");
    assert!(
        got.contains(&Action::Link { peer: 2, up: false }),
        "{got:?}"
    );
    assert!(!t.core.is_open(2));
    assert!(!t.core.peers().contains(&2));
    // Its transport closing, its signals and time passing bring nothing
    // back: it is no longer a peer.
    assert!(!t
        .on(Input::Transport(TransportEvent::Closed(2)))
        .contains(&Action::Link { peer: 2, up: true }));
    assert!(offers(&t.on(Input::Tick)).is_empty());
    assert_eq!(
        t.on(Input::Transport(TransportEvent::Open(2))),
        vec![Action::Close(2)]
    );
    // Refusing a peer it does not know does nothing.
    assert!(t.on(Input::Refused(7)).is_empty());
}
