//! The event trace of a run: every event the simulator observes (a frame
//! delivered, a repository call answered, a crash, a post acknowledged)
//! as one line stamped with simulated time. The run's digest is the
//! SHA-256 of all lines, so two runs with the same digest saw the same
//! events at the same simulated instants. The last lines are kept in
//! memory for the excerpt printed next to a violation; `--trace FILE`
//! writes every line.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Lines kept in memory for excerpts.
pub const RING_LINES: usize = 4096;

/// A node id in trace lines; 0 is the simulator itself.
pub type TraceNode = u64;

struct Inner {
    start: tokio::time::Instant,
    hasher: Sha256,
    events: u64,
    ring: VecDeque<String>,
    file: Option<BufWriter<std::fs::File>>,
    file_error: Option<String>,
}

/// A shared handle on the run's trace. Cheap to clone.
#[derive(Clone)]
pub struct Trace(Arc<Mutex<Inner>>);

impl Trace {
    /// A trace starting now (tokio time), writing every line to `file`
    /// when given. Must be created inside the simulation's runtime.
    pub fn new(file: Option<&Path>) -> std::io::Result<Self> {
        let file = match file {
            Some(p) => Some(BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Self(Arc::new(Mutex::new(Inner {
            start: tokio::time::Instant::now(),
            hasher: Sha256::new(),
            events: 0,
            ring: VecDeque::with_capacity(RING_LINES),
            file,
            file_error: None,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a line half-recorded at
        // worst; the trace stays usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulated time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.lock().start.elapsed()
    }

    /// Records one event of `node` (0: the simulator).
    pub fn event(&self, node: TraceNode, kind: &str, detail: impl Display) {
        let mut g = self.lock();
        let t = g.start.elapsed();
        let line = format!(
            "{}.{:06} n{} {} {}",
            t.as_secs(),
            t.subsec_micros(),
            node,
            kind,
            detail
        );
        g.hasher.update(line.as_bytes());
        g.hasher.update(b"\n");
        g.events += 1;
        if g.ring.len() == RING_LINES {
            g.ring.pop_front();
        }
        if let Some(f) = g.file.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                g.file_error = Some(e.to_string());
                g.file = None;
            }
        }
        g.ring.push_back(line);
    }

    /// How many events were recorded.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// The hex SHA-256 of every line so far.
    pub fn digest(&self) -> String {
        hex::encode(self.lock().hasher.clone().finalize())
    }

    /// The last `n` lines (at most [`RING_LINES`]).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let g = self.lock();
        let skip = g.ring.len().saturating_sub(n);
        g.ring.iter().skip(skip).cloned().collect()
    }

    /// The kept lines that mention `needle`, newest last, at most `n`.
    pub fn grep(&self, needle: &str, n: usize) -> Vec<String> {
        let g = self.lock();
        let hits: Vec<&String> = g.ring.iter().filter(|l| l.contains(needle)).collect();
        let skip = hits.len().saturating_sub(n);
        hits.into_iter().skip(skip).cloned().collect()
    }

    /// Flushes the trace file; reports a write error seen on the way.
    pub fn finish(&self) -> Result<(), String> {
        let mut g = self.lock();
        if let Some(e) = g.file_error.take() {
            return Err(e);
        }
        if let Some(f) = g.file.as_mut() {
            f.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A seed for one stream of randomness (`"net"`, `"repo"`, `"node-3"`)
/// derived from the run's seed, so adding a stream never shifts another.
pub fn derive_seed(seed: u64, stream: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(stream.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scripted() -> Trace {
        let t = Trace::new(None).expect("trace");
        t.event(1, "post", "m1");
        tokio::time::sleep(Duration::from_millis(5)).await;
        t.event(2, "apply", 7);
        t
    }

    #[tokio::test(start_paused = true)]
    async fn same_events_same_digest() {
        let a = scripted().await;
        let b = scripted().await;
        assert_eq!(a.digest(), b.digest());
        a.event(0, "x", "");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.events(), 3);
        // `b` ran for 5 ms after `a` finished.
        assert_eq!(a.tail(1), vec!["0.010000 n0 x ".to_string()]);
        assert_eq!(a.grep("apply", 5), vec!["0.005000 n2 apply 7".to_string()]);
        // The same events at another instant are another trace.
        let c = Trace::new(None).expect("trace");
        tokio::time::sleep(Duration::from_millis(1)).await;
        c.event(1, "post", "m1");
        c.event(2, "apply", 7);
        assert_ne!(c.digest(), b.digest());
    }

    #[test]
    fn derived_seeds_differ_by_stream_and_seed() {
        assert_ne!(derive_seed(1, "net"), derive_seed(1, "repo"));
        assert_ne!(derive_seed(1, "net"), derive_seed(2, "net"));
        assert_eq!(derive_seed(1, "net"), derive_seed(1, "net"));
    }
}
