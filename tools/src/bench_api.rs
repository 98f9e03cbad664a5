//! `skygit-tools bench api`: `GET /messages` latency and throughput on a room of
//! a million messages.
//!
//! A single-node room (real RocksDB storage) is loaded through the real
//! path: the consensus actor's `Submit` of posts to `general`, many in
//! flight at once. With `--data-dir` the loaded room stays there and the
//! next run reuses it when it already holds enough messages (or tops it
//! up). Once raft has written the snapshot loading triggered, the node's
//! HTTP API is served on loopback and `--concurrency` clients, each on its
//! own keep-alive connection, loop over
//!
//! 1. the latest page: `GET /messages?limit=N`;
//! 2. deep pages: `GET /messages?limit=N&before=I` with `I` drawn
//!    uniformly over the whole history,
//!
//! each for `--duration-secs` after a one-second warm-up. For comparison
//! it also times the storage read alone (`ChatReader::messages`, the same
//! pages, no HTTP or JSON) on one thread.
//!
//! Prints a human summary on stderr and, with `--json`, one JSON object on
//! stdout. It prints numbers; it asserts nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_actors::room::RoomHandle;
use skygit_consensus::config::DEFAULT_SNAPSHOT_EVERY;
use skygit_consensus::model::{ApplyOutcome, Command, ConversationId, RoomId};
use skygit_storage::ChatReader;

use skygit::api::{ApiState, Served};

#[derive(Args)]
pub struct ApiBenchArgs {
    /// Messages the room holds (loaded first; a reused room is topped up).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    messages: u64,
    /// Keep the loaded room here and reuse it on the next run (default: a
    /// temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds each measured phase runs (after a one-second warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Client tasks, each with its own keep-alive connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Messages per page (`?limit=`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Proposals in flight while loading: openraft batches what is pending
/// into one log append (one fsync) and one apply.
const LOAD_IN_FLIGHT: u64 = 512;
/// Bytes of text per loaded message.
const MESSAGE_BYTES: usize = 100;
/// Loading progress goes to stderr this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Requests before this are not measured.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long each storage-only probe runs.
const STORAGE_PROBE: Duration = Duration::from_secs(2);
/// Longest wait for raft's snapshot after loading.
const SETTLE_WAIT: Duration = Duration::from_secs(600);
/// Messages one page of the count reads.
const COUNT_PAGE: usize = 1000;

/// The general conversation's messages in the room.
#[derive(Clone, Copy, Debug)]
struct Extent {
    count: u64,
    first: u64,
    last: u64,
}

/// Counts the general conversation's messages, paging back from the newest.
fn extent(reader: &ChatReader) -> anyhow::Result<Extent> {
    let general = ConversationId::general();
    let (mut count, mut first, mut last) = (0u64, 0u64, 0u64);
    let mut before = None;
    loop {
        let page = reader.messages(&general, None, before, COUNT_PAGE)?;
        let (Some(oldest), Some(newest)) = (page.first(), page.last()) else {
            break;
        };
        if before.is_none() {
            last = newest.index;
        }
        first = oldest.index;
        count += page.len() as u64;
        before = Some(oldest.index);
        if page.len() < COUNT_PAGE {
            break;
        }
    }
    Ok(Extent { count, first, last })
}

async fn extent_of(reader: &ChatReader) -> anyhow::Result<Extent> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || extent(&reader))
        .await
        .context("the count task failed")?
}

fn content(n: u64) -> String {
    let mut s = format!("api bench message {n} ");
    while s.len() < MESSAGE_BYTES {
        s.push('x');
    }
    s
}

/// Posts `n` messages (numbered from `from`) through the consensus actor,
/// [`LOAD_IN_FLIGHT`] at a time; returns the seconds it took.
async fn load(handle: &RoomHandle, from: u64, n: u64) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = (start, 0u64);
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let d = done.load(Ordering::Relaxed);
                let now = Instant::now();
                let recent = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                let overall = d as f64 / now.duration_since(start).as_secs_f64();
                eprintln!(
                    "load: {d}/{n} messages after {:.0} s ({recent:.0} messages/s now, {overall:.0} on average)",
                    now.duration_since(start).as_secs_f64()
                );
                last = (now, d);
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..LOAD_IN_FLIGHT.min(n) {
        let (next, done) = (next.clone(), done.clone());
        let addr = handle.consensus.clone();
        let user = handle.user.clone();
        workers.push(tokio::spawn(async move {
            let posted = async {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    let submit = Submit {
                        sender: user.clone(),
                        command: Command::Post {
                            conversation: ConversationId::general(),
                            content: content(from + i),
                            attachments: Vec::new(),
                        },
                        id: None,
                    };
                    let (_, p) = addr.send(submit).await??;
                    if !matches!(p, Proposed::Committed(ApplyOutcome::Applied { .. })) {
                        bail!("message not applied: {p:?}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            .await;
            if posted.is_err() {
                // The other workers stop after their current message.
                next.store(n, Ordering::Relaxed);
            }
            posted
        }));
    }
    let mut failed = None;
    for w in workers {
        if let Err(e) = w.await.context("a loading task failed").and_then(|r| r) {
            failed.get_or_insert(e);
        }
    }
    progress.abort();
    match failed {
        Some(e) => Err(e),
        None => Ok(start.elapsed().as_secs_f64()),
    }
}

/// Waits until raft has no snapshot to build. Loading triggers one every
/// [`DEFAULT_SNAPSHOT_EVERY`] applied entries, and each holds the whole
/// room (hundreds of MB for a million messages): one still being written
/// would be measured instead of the API. Returns the seconds waited.
async fn settle(handle: &RoomHandle) -> anyhow::Result<f64> {
    let start = Instant::now();
    loop {
        let m = handle.replica.metrics();
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let snapshot = m.snapshot.as_ref().map_or(0, |l| l.index);
        if applied.saturating_sub(snapshot) < DEFAULT_SNAPSHOT_EVERY {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > SETTLE_WAIT {
            bail!("raft's snapshot is still at {snapshot} of {applied} after {SETTLE_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one phase of requests measured.
struct PhaseResult {
    /// Latency of the answered (200) requests, microseconds.
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
    secs: f64,
}

impl PhaseResult {
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    fn per_sec(&self) -> f64 {
        self.requests() as f64 / self.secs
    }

    fn bytes_per_answer(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            self.bytes as f64 / self.ok as f64
        }
    }

    fn summary(&self, name: &str) -> String {
        format!(
            "{name}: {} requests in {:.1} s, {:.0} requests/s, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; errors {}; {:.0} B per answer ({:.1} MB/s)",
            self.requests(),
            self.secs,
            self.per_sec(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
            self.errors,
            self.bytes_per_answer(),
            self.bytes as f64 / self.secs / 1e6,
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests(),
            "requests_per_sec": self.per_sec(),
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.max_ms(),
            "errors": self.errors,
            "first_error": self.first_error,
            "response_bytes_avg": self.bytes_per_answer(),
            "response_bytes_total": self.bytes,
        })
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

fn client(secret: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))?;
    auth.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, auth);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Where a phase's requests point.
#[derive(Clone, Copy)]
enum Pages {
    /// The newest page.
    Latest,
    /// A page before a cursor drawn uniformly from `lo..=hi`.
    Deep { lo: u64, hi: u64 },
}

/// `concurrency` clients loop over requests for `duration` after the
/// warm-up. The latency of every `200` answer (send to the last body byte,
/// as the client sees it) goes into one histogram; anything else, transport
/// failures included, counts as an error.
async fn phase(
    base: &str,
    secret: &str,
    concurrency: u64,
    limit: u64,
    pages: Pages,
    duration: Duration,
) -> anyhow::Result<PhaseResult> {
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let http = client(secret)?;
        let url = format!("{base}/messages?limit={limit}");
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(t);
            let mut r = PhaseResult {
                hist: histogram()?,
                ok: 0,
                errors: 0,
                first_error: None,
                bytes: 0,
                secs: 0.0,
            };
            loop {
                let started = Instant::now();
                if started >= end {
                    return anyhow::Ok(r);
                }
                let measured = started >= measure_from;
                let url = match pages {
                    Pages::Latest => url.clone(),
                    Pages::Deep { lo, hi } => format!("{url}&before={}", rng.random_range(lo..=hi)),
                };
                let answer = match http.get(&url).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(body) => Ok((status, body)),
                            Err(e) => Err(format!("reading the answer: {e}")),
                        }
                    }
                    Err(e) => Err(format!("request: {e}")),
                };
                let took = started.elapsed();
                if !measured {
                    continue;
                }
                match answer {
                    Ok((status, body)) if status == reqwest::StatusCode::OK => {
                        r.ok += 1;
                        r.bytes += body.len() as u64;
                        r.hist.record((took.as_micros() as u64).max(1))?;
                    }
                    Ok((status, body)) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
        }));
    }
    let mut all = PhaseResult {
        hist: histogram()?,
        ok: 0,
        errors: 0,
        first_error: None,
        bytes: 0,
        secs: duration.as_secs_f64(),
    };
    for t in tasks {
        let r = t.await.context("a client task failed")??;
        all.hist.add(&r.hist)?;
        all.ok += r.ok;
        all.errors += r.errors;
        all.bytes += r.bytes;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    Ok(all)
}

/// Times `ChatReader::messages` alone (no HTTP, no JSON) on one thread.
async fn storage_probe(
    reader: &ChatReader,
    limit: u64,
    pages: Pages,
) -> anyhow::Result<Histogram<u64>> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let general = ConversationId::general();
        let mut hist = histogram()?;
        let mut rng = StdRng::seed_from_u64(7);
        let end = Instant::now() + STORAGE_PROBE;
        while Instant::now() < end {
            let before = match pages {
                Pages::Latest => None,
                Pages::Deep { lo, hi } => Some(rng.random_range(lo..=hi)),
            };
            let t = Instant::now();
            // One more than a page, as the API asks.
            let page = reader.messages(&general, None, before, limit as usize + 1)?;
            hist.record((t.elapsed().as_micros() as u64).max(1))?;
            std::hint::black_box(page);
        }
        anyhow::Ok(hist)
    })
    .await
    .context("the storage probe failed")?
}

fn hist_json(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "reads": h.len(),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

fn hist_summary(name: &str, h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{name}: {} reads in {:.0} s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        h.len(),
        STORAGE_PROBE.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

pub async fn api(args: ApiBenchArgs) -> anyhow::Result<()> {
    let work = crate::work_dir(args.data_dir.clone())?;
    let room = RoomId::new("bench:api")?;
    let opened = Instant::now();
    let c = LocalCluster::start(&work.path, room.clone(), 1, LocalOptions::new(&room)).await?;
    c.wait_leader(Duration::from_secs(30))
        .await
        .context("no leader")?;
    let handle = c.handle(1).context("node 1 is not running")?.clone();
    let reader = handle.storage.reader.clone();
    let counted = Instant::now();
    let before = extent_of(&reader).await?;
    eprintln!(
        "room at {}: {} messages (opened in {:.1} s, counted in {:.1} s)",
        work.path.display(),
        before.count,
        counted.duration_since(opened).as_secs_f64(),
        counted.elapsed().as_secs_f64()
    );

    let missing = args.messages.saturating_sub(before.count);
    let load_secs = if missing > 0 {
        eprintln!("load: posting {missing} messages, {LOAD_IN_FLIGHT} in flight");
        let secs = load(&handle, before.count, missing).await?;
        eprintln!(
            "load: {missing} messages in {secs:.1} s ({:.0} messages/s)",
            missing as f64 / secs
        );
        secs
    } else {
        eprintln!(
            "load: none needed (the room already holds {} messages)",
            before.count
        );
        0.0
    };
    let settle_secs = settle(&handle).await?;
    if settle_secs >= 0.05 {
        eprintln!("settle: waited {settle_secs:.1} s for raft's snapshot to be written");
    }
    let ext = if missing > 0 {
        extent_of(&reader).await?
    } else {
        before
    };
    eprintln!(
        "room: {} messages in general, log indexes {}..={}",
        ext.count, ext.first, ext.last
    );
    if ext.count == 0 {
        bail!("the room holds no messages");
    }

    let secret = hex::encode(rand::random::<[u8; 32]>());
    // The state stays here too, so the room can be taken back from the
    // server before it stops: RocksDB must close before the process exits.
    let state = Arc::new(ApiState::new(
        secret.clone(),
        Served::new(handle, None, None),
    ));
    let addr = skygit::api::serve_shared("127.0.0.1:0".parse()?, state.clone()).await?;
    let base = format!("http://{addr}");
    eprintln!("api: {base}");

    // One request first: the endpoint must answer before it is measured.
    let probe = client(&secret)?
        .get(format!("{base}/messages?limit={}", args.limit))
        .send()
        .await
        .context("the first request failed")?;
    let status = probe.status();
    let body = probe.bytes().await.context("the first answer")?;
    if status != reqwest::StatusCode::OK {
        bail!(
            "GET /messages answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let page: skygit_api::MessagePage =
        serde_json::from_slice(&body).context("the first answer")?;
    eprintln!(
        "first page: {} messages, {} B",
        page.messages.len(),
        body.len()
    );

    let duration = Duration::from_secs(args.duration_secs);
    let deep = Pages::Deep {
        lo: (ext.first + args.limit).min(ext.last),
        hi: ext.last,
    };
    let latest = phase(
        &base,
        &secret,
        args.concurrency,
        args.limit,
        Pages::Latest,
        duration,
    )
    .await?;
    let setting = format!("limit {}, {} clients", args.limit, args.concurrency);
    eprintln!("{}", latest.summary(&format!("latest page ({setting})")));
    if let Some(e) = &latest.first_error {
        eprintln!("  first error: {e}");
    }
    let deep_r = phase(&base, &secret, args.concurrency, args.limit, deep, duration).await?;
    eprintln!(
        "{}",
        deep_r.summary(&format!("deep pages, random before= ({setting})"))
    );
    if let Some(e) = &deep_r.first_error {
        eprintln!("  first error: {e}");
    }
    let storage_latest = storage_probe(&reader, args.limit, Pages::Latest).await?;
    eprintln!(
        "{}",
        hist_summary("storage read alone, latest page, 1 thread", &storage_latest)
    );
    let storage_deep = storage_probe(&reader, args.limit, deep).await?;
    eprintln!(
        "{}",
        hist_summary("storage read alone, deep pages, 1 thread", &storage_deep)
    );
    state.rooms.write().await.clear();
    drop(reader);
    c.shutdown().await;

    if args.json {
        let mut out = serde_json::json!({
            "bench": "api",
            "storage": "rocksdb-durable",
            "endpoint": "GET /messages",
            "messages": ext.count,
            "loaded": missing,
            "load_secs": load_secs,
            "settle_secs": settle_secs,
            "load_messages_per_sec": if load_secs > 0.0 { missing as f64 / load_secs } else { 0.0 },
            "concurrency": args.concurrency,
            "limit": args.limit,
            "duration_secs": args.duration_secs,
            "deep": deep_r.json(),
            "storage_read": {
                "latest": hist_json(&storage_latest),
                "deep": hist_json(&storage_deep),
            },
        });
        if let (Some(obj), serde_json::Value::Object(l)) = (out.as_object_mut(), latest.json()) {
            obj.extend(l);
        }
        println!("{out}");
    }
    Ok(())
}
