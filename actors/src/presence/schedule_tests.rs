//! Table-driven tests of the presence schedule's rules ([`super`]).

use super::*;

const OPTS: PresenceOptions = PresenceOptions {
    heartbeat: Duration::from_secs(60),
    fast_poll: Duration::from_secs(5),
    slow_poll: Duration::from_secs(60),
};

struct T {
    s: Schedule,
    t0: Instant,
}

impl T {
    /// A schedule past its first publish and poll (both done).
    fn settled() -> Self {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, OPTS);
        assert_eq!(s.on(t0, Input::Tick), vec![Action::Publish, Action::Poll]);
        s.on(t0, Input::Published(Ok(())));
        s.on(t0, Input::Polled(Ok(())));
        T { s, t0 }
    }
    fn at(&mut self, secs: u64, input: Input) -> Vec<Action> {
        self.s.on(self.t0 + Duration::from_secs(secs), input)
    }
}

fn limited(ms: u64) -> PresenceError {
    PresenceError::RateLimited { retry_after_ms: ms }
}

#[test]
fn a_new_node_publishes_and_polls_at_once() {
    let t0 = Instant::now();
    let mut s = Schedule::new(t0, OPTS);
    assert!(s.fast());
    assert_eq!(s.on(t0, Input::Tick), vec![Action::Publish, Action::Poll]);
    // One of each at a time.
    assert!(s.on(t0 + Duration::from_secs(100), Input::Tick).is_empty());
}

#[test]
fn heartbeats_and_polls_follow_their_intervals() {
    // Fast: a poll every 5 s.
    let mut t = T::settled();
    assert!(t.at(4, Input::Tick).is_empty());
    assert_eq!(t.at(5, Input::Tick), vec![Action::Poll]);
    // Slow: the poll already planned (fast) still runs, the next ones
    // every 60 s; the heartbeat every 60 s either way.
    let mut t = T::settled();
    assert!(t.at(0, Input::Fast(false)).is_empty());
    assert!(!t.s.fast());
    assert_eq!(t.at(5, Input::Tick), vec![Action::Poll]);
    t.at(5, Input::Polled(Ok(())));
    assert!(t.at(59, Input::Tick).is_empty());
    assert_eq!(t.at(60, Input::Tick), vec![Action::Publish]);
    t.at(60, Input::Published(Ok(())));
    assert!(t.at(64, Input::Tick).is_empty());
    assert_eq!(t.at(65, Input::Tick), vec![Action::Poll]);
}

#[test]
fn a_change_is_published_at_once_or_right_after_the_publish_in_flight() {
    let mut t = T::settled();
    assert_eq!(t.at(1, Input::Changed), vec![Action::Publish]);
    // Changed again while that publish runs: nothing starts now...
    assert!(t.at(2, Input::Changed).is_empty());
    // ...and it is published as soon as the first one ends.
    assert_eq!(t.at(3, Input::Published(Ok(()))), vec![Action::Publish]);
    // With no change since, a finished publish starts nothing.
    assert!(t.at(4, Input::Published(Ok(()))).is_empty());
}

#[test]
fn a_failed_publish_is_retried() {
    let mut t = T::settled();
    t.at(1, Input::Changed);
    let err = PresenceError::Unavailable("down".into());
    assert_eq!(t.at(2, Input::Published(Err(err))), vec![Action::Publish]);
}

#[test]
fn fast_polling_brings_the_next_poll_forward_and_a_poll_asked_for_runs_now() {
    let mut t = T::settled();
    t.at(0, Input::Fast(false));
    t.at(5, Input::Tick);
    t.at(5, Input::Polled(Ok(())));
    // Slow: the next poll is due at 65 s.
    assert!(t.at(10, Input::Tick).is_empty());
    // Back to fast at 10 s: due at 15 s, not 65 s.
    assert!(t.at(10, Input::Fast(true)).is_empty());
    assert!(t.at(14, Input::Tick).is_empty());
    assert_eq!(t.at(15, Input::Tick), vec![Action::Poll]);
    t.at(15, Input::Polled(Ok(())));
    assert_eq!(t.at(16, Input::PollNow), vec![Action::Poll]);
    // Asking for the same speed again changes nothing.
    assert!(t.at(16, Input::Fast(true)).is_empty());
}

#[test]
fn a_rate_limited_channel_pauses_both_until_its_retry_time_at_most_an_hour() {
    // (retry after, paused for)
    for (retry_ms, paused) in [
        (30_000, Duration::from_secs(30)),
        (10 * 3_600_000, MAX_THROTTLE),
    ] {
        let mut t = T::settled();
        t.at(1, Input::PollNow);
        assert_eq!(
            t.at(1, Input::Polled(Err(limited(retry_ms)))),
            vec![Action::Throttled(paused)]
        );
        assert_eq!(
            t.s.throttled_for(t.t0 + Duration::from_secs(1)),
            Some(paused)
        );
        // Nothing starts while paused, whatever is asked.
        assert!(t.at(2, Input::Changed).is_empty());
        assert!(t.at(2, Input::PollNow).is_empty());
        let end = 1 + paused.as_secs();
        assert!(t.at(end - 1, Input::Tick).is_empty());
        // Then the change and the poll go out.
        assert_eq!(t.at(end, Input::Tick), vec![Action::Publish, Action::Poll]);
        assert_eq!(t.s.throttled_for(t.t0 + Duration::from_secs(end)), None);
    }
    // A rate-limited publish pauses too, and stays to be published.
    let mut t = T::settled();
    t.at(1, Input::Changed);
    assert_eq!(
        t.at(1, Input::Published(Err(limited(5_000)))),
        vec![Action::Throttled(Duration::from_secs(5))]
    );
    assert_eq!(t.at(6, Input::Tick), vec![Action::Publish, Action::Poll]);
}
