//! When the presence actor publishes and polls, as a plain state machine:
//! [`Schedule::on`] takes the time and one input and answers what to
//! start. The actor runs the publishes and polls and reports how they
//! went; the unit tests below drive the schedule by hand.
//!
//! The rules:
//!
//! - The record is published every heartbeat, and at once when it changed
//!   (a signal, the group flag, a heartbeat asked for); one publish at a
//!   time, and a change made during a publish is published right after it.
//! - The channel is polled every fast-poll interval while a link is being
//!   set up and every slow-poll interval when settled; one poll at a time.
//!   Switching to fast polling brings the next poll forward; a poll asked
//!   for runs at once.
//! - A failed publish is retried (the record stays changed). A channel
//!   that says it is rate limited pauses both, for its retry time and at
//!   most [`MAX_THROTTLE`](super::MAX_THROTTLE).

use std::time::Duration;

use tokio::time::Instant;

use super::{PresenceOptions, MAX_THROTTLE};
use crate::ports::PresenceError;

/// What the schedule hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed (the actor ticks every 200 ms).
    Tick,
    /// The record changed: publish it.
    Changed,
    /// Poll now.
    PollNow,
    /// Poll fast (a link is being set up) or slowly (settled).
    Fast(bool),
    /// The publish in flight ended.
    Published(Result<(), PresenceError>),
    /// The poll in flight ended.
    Polled(Result<(), PresenceError>),
}

/// What to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Poll,
    /// The channel is rate limited: nothing starts for this long.
    Throttled(Duration),
}

/// The presence schedule's state.
#[derive(Debug, Clone)]
pub struct Schedule {
    opts: PresenceOptions,
    fast: bool,
    publishing: bool,
    dirty: bool,
    polling: bool,
    throttled_until: Option<Instant>,
    next_poll: Instant,
    next_heartbeat: Instant,
}

impl Schedule {
    /// A new node: publish and poll at once, then poll fast.
    pub fn new(now: Instant, opts: PresenceOptions) -> Self {
        Self {
            opts,
            fast: true,
            publishing: false,
            dirty: true,
            polling: false,
            throttled_until: None,
            next_poll: now,
            next_heartbeat: now,
        }
    }

    /// Whether polls are fast.
    pub fn fast(&self) -> bool {
        self.fast
    }

    /// How long the rate limit still pauses the channel.
    pub fn throttled_for(&self, now: Instant) -> Option<Duration> {
        self.throttled_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Takes one input at `now`; answers what to start.
    pub fn on(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Changed => self.dirty = true,
            Input::PollNow => self.next_poll = now,
            Input::Fast(fast) => {
                if self.fast == fast {
                    return out;
                }
                self.fast = fast;
                if !fast {
                    return out;
                }
                self.next_poll = self.next_poll.min(now + self.opts.fast_poll);
            }
            Input::Published(result) => {
                self.publishing = false;
                if let Err(e) = result {
                    self.dirty = true;
                    self.throttle(now, &e, &mut out);
                }
                if !self.dirty {
                    return out;
                }
            }
            Input::Polled(result) => {
                self.polling = false;
                if let Err(e) = result {
                    self.throttle(now, &e, &mut out);
                }
                return out;
            }
        }
        self.due(now, &mut out);
        out
    }

    fn throttle(&mut self, now: Instant, e: &PresenceError, out: &mut Vec<Action>) {
        if let PresenceError::RateLimited { retry_after_ms } = e {
            let wait = Duration::from_millis(*retry_after_ms).min(MAX_THROTTLE);
            self.throttled_until = Some(now + wait);
            out.push(Action::Throttled(wait));
        }
    }

    /// Starts whatever is due: a publish, a poll.
    fn due(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.throttled_until.is_some_and(|t| now < t) {
            return;
        }
        if !self.publishing && (self.dirty || now >= self.next_heartbeat) {
            self.publishing = true;
            self.dirty = false;
            self.next_heartbeat = now + self.opts.heartbeat;
            out.push(Action::Publish);
        }
        if !self.polling && now >= self.next_poll {
            self.polling = true;
            let every = if self.fast {
                self.opts.fast_poll
            } else {
                self.opts.slow_poll
            };
            self.next_poll = now + every;
            out.push(Action::Poll);
        }
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
