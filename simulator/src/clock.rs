//! The simulated wall clock.

use skygit_actors::ports::WallClock;

/// A wall clock that follows tokio's (pausable) clock from a fixed epoch,
/// with a per-node skew, so simulated nodes disagree about the time the way
/// real laptops do while the run stays reproducible.
#[derive(Debug, Clone)]
pub struct SimClock {
    epoch_ms: i64,
    skew_ms: i64,
    start: tokio::time::Instant,
}

impl SimClock {
    /// A clock that reads `epoch_ms + skew_ms` now and advances with tokio
    /// time. Must be created inside a tokio runtime.
    pub fn new(epoch_ms: i64, skew_ms: i64) -> Self {
        Self::since(tokio::time::Instant::now(), epoch_ms, skew_ms)
    }

    /// A clock that read `epoch_ms + skew_ms` at `start` (the run's
    /// start): a node restarted later reads the time of its restart.
    pub fn since(start: tokio::time::Instant, epoch_ms: i64, skew_ms: i64) -> Self {
        Self {
            epoch_ms,
            skew_ms,
            start,
        }
    }
}

impl WallClock for SimClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.epoch_ms
            .saturating_add(self.skew_ms)
            .saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time_with_skew() {
        let a = SimClock::new(1_000_000, 0);
        let b = SimClock::new(1_000_000, -250);
        assert_eq!(a.now_ms(), 1_000_000);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(a.now_ms(), 1_000_000 + 3_600_000);
        assert_eq!(a.now_ms() - b.now_ms(), 250);
    }
}
