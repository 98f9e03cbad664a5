//! The async runtime raft runs on: tokio, with one difference that makes
//! the simulator reproducible. openraft draws its election timeouts and
//! first tick waits from `AsyncRuntime::thread_rng()`; here that generator
//! comes from a per-thread stream that [`seed_raft_rng`] can seed. A real
//! node never seeds it and gets OS entropy; the simulator, which runs a
//! whole room on one thread, seeds it from the run's seed.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;

#[allow(deprecated)]
use openraft::impls::TokioRuntime;
use openraft::rt::{Select2, Select3, Select4};
use openraft::{AsyncRuntime, OptionalSend};
use rand_raft::rngs::SmallRng;
use rand_raft::{Rng, SeedableRng};

thread_local! {
    /// The seeded stream of this thread, if the simulator installed one.
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Makes raft's randomness on this thread a function of `seed` from now
/// on (simulator only).
pub fn seed_raft_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// Returns this thread to OS entropy.
pub fn unseed_raft_rng() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

fn next_rng() -> SmallRng {
    let seeded = SEEDED.with(|s| s.borrow_mut().as_mut().map(|r| r.next_u64()));
    match seeded {
        Some(seed) => SmallRng::seed_from_u64(seed),
        None => {
            let mut os = rand_raft::rngs::SysRng;
            let mut seed = [0u8; 8];
            // OS entropy failing leaves a fixed seed; timeouts still spread
            // because every node draws many values.
            let _ = rand_raft::TryRng::try_fill_bytes(&mut os, &mut seed);
            SmallRng::seed_from_u64(u64::from_le_bytes(seed))
        }
    }
}

/// tokio with a seedable `thread_rng` (see the module doc).
pub struct RaftRuntime(#[allow(deprecated)] TokioRuntime);

impl std::fmt::Debug for RaftRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftRuntime")
    }
}

#[allow(deprecated)]
impl AsyncRuntime for RaftRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        next_rng()
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Self(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_raft::RngExt;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| RaftRuntime::thread_rng().random_range(500..1000))
            .collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_timeouts() {
        seed_raft_rng(9);
        let a = draws();
        seed_raft_rng(9);
        let b = draws();
        seed_raft_rng(10);
        let c = draws();
        unseed_raft_rng();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (500..1000).contains(v)));
    }
}
