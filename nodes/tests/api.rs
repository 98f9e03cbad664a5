//! The node's HTTP API (`docs/api.md`, `GET /openapi.json`) through real
//! `skygit node` processes on a local bare repository:
//!
//! - access: the secret, the pages without it, the `Host` and `Origin`
//!   checks, the security headers, `/metrics`, and the OpenAPI description
//!   against the routes the node really serves;
//! - messages: posting, cursors both ways, single reads, edits and deletes
//!   by the author and by another node's user, conversations, every input
//!   error, and the `message` event stream;
//! - the room: push on a follower (the leader flushes) and on the leader, the repository's head
//!   seen by the real git, flushes, settings, a second repository, status
//!   and peers, the `synced` event;
//! - a room without a quorum: a post answers 503 `queued`, waits in the
//!   outbox and commits once the voters are back.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use skygit_harness::{wait_for, wait_leader, wait_members, NodeProc, NodeSpec};

/// How long a room may take to form or heal.
const SETTLE: Duration = Duration::from_secs(90);
/// The most one test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long an event may take to reach a stream.
const EVENT_WITHIN: Duration = Duration::from_secs(5);

/// The tests of this file run one at a time: each starts up to three node
/// processes, and on two cores several rooms at once would starve raft's
/// timers.
static ONE_ROOM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skygit"))
}

/// `skygit init` of a new bare repository `dir/name`.
fn init_repo(dir: &Path, name: &str) -> PathBuf {
    let repo = dir.join(name);
    skygit_harness::init_repo(bin(), &repo, &dir.join(format!("init-{name}")), &[])
        .expect("skygit init");
    repo
}

fn spec(dir: &Path, repo: &Path, user: &str, extra: &[&str]) -> NodeSpec {
    NodeSpec::for_test(bin(), dir, repo, user, extra)
}

/// A room of node processes on a fresh repository, settled: `voters`
/// voters and one leader every node knows.
struct Room {
    dir: tempfile::TempDir,
    repo: PathBuf,
    nodes: Vec<NodeProc>,
}

impl Room {
    async fn start(users: &[&str], extra: &[&str], voters: usize) -> Room {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = init_repo(dir.path(), "room.git");
        let mut nodes = Vec::new();
        for u in users {
            nodes.push(
                NodeProc::start(spec(dir.path(), &repo, u, extra))
                    .await
                    .unwrap_or_else(|e| panic!("node {u} starts: {e:#}")),
            );
        }
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        wait_members(&refs, voters, SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{voters} voters: {e:#}"));
        wait_leader(&refs, SETTLE).await.expect("a leader");
        Room { dir, repo, nodes }
    }

    async fn leader(&self) -> u64 {
        let refs: Vec<&NodeProc> = self.nodes.iter().collect();
        wait_leader(&refs, SETTLE).await.expect("a leader")
    }

    async fn stop(mut self) {
        for mut n in std::mem::take(&mut self.nodes).into_iter().rev() {
            n.stop(Duration::from_secs(30)).await.expect("node stops");
        }
    }
}

impl Drop for Room {
    /// A failed test shows the end of every node's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

impl Room {
    fn print_logs(&self) {
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.spec.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- the end of {}'s log ({}) ----",
                n.spec.user,
                n.spec.log.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

// ---- calls --------------------------------------------------------------

/// One HTTP answer: status, headers, text and (when it is JSON) its value.
struct Answer {
    what: String,
    status: u16,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Answer {
    /// The JSON body, after checking the status.
    #[track_caller]
    fn expect(&self, code: u16) -> &Value {
        assert_eq!(
            self.status, code,
            "{} answered {} (wanted {code}): {}",
            self.what, self.status, self.text
        );
        &self.json
    }

    /// An error answer with this status: `{"status": "error", "error"}`.
    #[track_caller]
    fn expect_error(&self, code: u16) -> String {
        let j = self.expect(code);
        assert_eq!(j["status"], "error", "{}: {}", self.what, self.text);
        let e = j["error"].as_str().unwrap_or_default();
        assert!(
            !e.is_empty(),
            "{}: an error without text: {}",
            self.what,
            self.text
        );
        e.to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request; every JSON answer must decode with the API's shared
/// types (`skygit_harness::check_answer`), or the test fails.
async fn send(what: String, rb: reqwest::RequestBuilder) -> Answer {
    let (client, req) = rb.build_split();
    let req = req.unwrap_or_else(|e| panic!("{what}: a bad request: {e}"));
    let (method, path) = (req.method().to_string(), req.url().path().to_owned());
    let r = client
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let streaming = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    // An event stream never ends: its head is the answer.
    let text = if streaming {
        String::new()
    } else {
        r.text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"))
    };
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    let is_json = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        if let Err(e) = skygit_harness::check_answer(&method, &path, status, &text) {
            panic!("{what}: the answer breaks the API contract: {e:#}\n{text}");
        }
    }
    Answer {
        what,
        status,
        headers,
        text,
        json,
    }
}

/// A call with the node's secret; `body` is sent as JSON text.
/// The `room` label of the first `name` series in Prometheus text.
fn room_label(text: &str, name: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with(&format!("{name}{{")))?;
    let value = line.split("room=\"").nth(1)?.split('"').next()?;
    Some(value.to_owned())
}

async fn call(n: &NodeProc, method: Method, path: &str, body: Option<String>) -> Answer {
    let what = format!("{method} {path} on {}", n.spec.user);
    let mut rb = n.http().request(method, format!("{}{path}", n.api));
    if let Some(b) = body {
        rb = rb.header(CONTENT_TYPE, "application/json").body(b);
    }
    send(what, rb).await
}

async fn get(n: &NodeProc, path: &str) -> Answer {
    call(n, Method::GET, path, None).await
}

async fn post(n: &NodeProc, path: &str, body: &Value) -> Answer {
    call(n, Method::POST, path, Some(body.to_string())).await
}

async fn post_raw(n: &NodeProc, path: &str, body: &str) -> Answer {
    call(n, Method::POST, path, Some(body.to_owned())).await
}

async fn patch(n: &NodeProc, path: &str, body: &Value) -> Answer {
    call(n, Method::PATCH, path, Some(body.to_string())).await
}

async fn put(n: &NodeProc, path: &str, body: &Value) -> Answer {
    call(n, Method::PUT, path, Some(body.to_string())).await
}

async fn delete(n: &NodeProc, path: &str) -> Answer {
    call(n, Method::DELETE, path, None).await
}

/// A client without the node's secret.
fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Posts `content` (to `conversation`, if given) and checks the 201
/// answer; returns the message.
#[track_caller]
fn check_posted(a: &Answer, user: &str, conversation: &str, content: &str) -> Value {
    let j = a.expect(201);
    assert_eq!(j["status"], "success", "{}", a.text);
    let id = j["message_id"].as_str().expect("message_id");
    let m = &j["message"];
    assert_eq!(m["id"], id, "the message is the one posted: {}", a.text);
    assert_eq!(m["content"], content, "{}", a.text);
    assert_eq!(m["sender"], user, "{}", a.text);
    assert_eq!(m["conversation"], conversation, "{}", a.text);
    assert_eq!(m["sync_state"], "committed", "{}", a.text);
    assert_eq!(m["edited"], false, "{}", a.text);
    assert_eq!(m["deleted"], false, "{}", a.text);
    assert!(m["index"].as_u64().is_some_and(|i| i > 0), "{}", a.text);
    assert!(ulid::Ulid::from_string(id).is_ok(), "a ULID id: {id}");
    m.clone()
}

async fn post_message(n: &NodeProc, conversation: Option<&str>, content: &str) -> Value {
    let body = match conversation {
        Some(c) => json!({ "content": content, "conversation": c }),
        None => json!({ "content": content }),
    };
    let a = post(n, "/messages", &body).await;
    check_posted(&a, &n.spec.user, conversation.unwrap_or("general"), content)
}

/// `(index, id)` of a page of messages, checking it is oldest first.
#[track_caller]
fn page_ids(a: &Answer) -> (Vec<(u64, String)>, bool) {
    let j = a.expect(200);
    let list: Vec<(u64, String)> = j["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no messages list: {}", a.what, a.text))
        .iter()
        .map(|m| {
            (
                m["index"].as_u64().expect("index"),
                m["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    assert!(
        list.windows(2).all(|w| w[0].0 < w[1].0),
        "{}: not oldest first: {list:?}",
        a.what
    );
    let more = j["has_more"]
        .as_bool()
        .unwrap_or_else(|| panic!("{}: no has_more: {}", a.what, a.text));
    (list, more)
}

/// The conversation's whole history paged newest to oldest with `before`.
async fn page_backwards(n: &NodeProc, query: &str, limit: usize) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..1000 {
        let path = match before {
            None => format!("/messages?limit={limit}{query}"),
            Some(b) => format!("/messages?limit={limit}&before={b}{query}"),
        };
        let a = get(n, &path).await;
        let (page, more) = page_ids(&a);
        assert!(page.len() <= limit, "{path}: {} messages", page.len());
        if let Some(b) = before {
            assert!(page.iter().all(|(i, _)| *i < b), "{path}: {page:?}");
        }
        if more {
            assert_eq!(page.len(), limit, "{path}: has_more on a short page");
        }
        before = page.first().map(|p| p.0);
        all.splice(0..0, page);
        if !more {
            return all;
        }
    }
    panic!("paging backwards never ended");
}

/// The conversation's whole history paged oldest to newest with `after`.
async fn page_forwards(n: &NodeProc, query: &str, limit: usize) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let path = format!("/messages?limit={limit}&after={after}{query}");
        let a = get(n, &path).await;
        let (page, more) = page_ids(&a);
        assert!(page.len() <= limit, "{path}: {} messages", page.len());
        assert!(page.iter().all(|(i, _)| *i > after), "{path}: {page:?}");
        if more {
            assert_eq!(page.len(), limit, "{path}: has_more on a short page");
        }
        if let Some(last) = page.last() {
            after = last.0;
        }
        all.extend(page);
        if !more {
            return all;
        }
    }
    panic!("paging forwards never ended");
}

/// A request written by hand (any `Host`), answered over a fresh
/// connection: the status and the head.
async fn raw_http(api: &str, request: String) -> (u16, String) {
    let addr = api
        .strip_prefix("http://")
        .expect("http address")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_write_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(request.as_bytes()).expect("request written");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
        (status, head)
    })
    .await
    .expect("raw request")
}

fn raw_get(path: &str, host: &str, secret: Option<&str>) -> String {
    let auth = secret
        .map(|s| format!("Authorization: Bearer {s}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
}

// ---- server-sent events --------------------------------------------------

/// What the stream reader reports for an event the shared types refuse.
const CONTRACT_BROKEN: &str = "contract-broken";

/// A node's event stream, read in the background.
struct Events {
    rx: tokio::sync::mpsc::Receiver<(String, Value)>,
    seen: Vec<(String, Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Events {
    async fn open(n: &NodeProc) -> Events {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            client
                .get(format!("{}/events", n.api))
                .bearer_auth(&n.secret)
                .send(),
        )
        .await
        .expect("the event stream answers in time")
        .expect("the event stream opens");
        assert_eq!(r.status().as_u16(), 200, "GET /events");
        let ct = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "content type {ct:?}");
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "CORS header on the event stream"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let mut r = r;
        let task = tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = None;
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event: ") {
                            event = Some(e.to_owned());
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            data.push_str(d);
                        }
                    }
                    let Some(event) = event else { continue };
                    // Every event must decode with the API's shared types.
                    if let Err(e) = skygit_api::Event::decode(&event, &data) {
                        let _ = tx
                            .send((
                                CONTRACT_BROKEN.into(),
                                Value::String(format!("{e}: {data}")),
                            ))
                            .await;
                        return;
                    }
                    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    if tx.send((event, data)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Events {
            rx,
            seen: Vec::new(),
            task,
        }
    }

    /// The first event (from now) that `pred` accepts, within `within`;
    /// `Err` says what the stream sent instead.
    async fn try_wait(
        &mut self,
        within: Duration,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((e, d))) => {
                    assert_ne!(e, CONTRACT_BROKEN, "an event breaks the API contract: {d}");
                    let hit = pred(&e, &d);
                    self.seen.push((e, d.clone()));
                    if hit {
                        return Ok(d);
                    }
                }
                Ok(None) => return Err(format!("the stream ended; it sent {}", self.summary())),
                Err(_) => {
                    return Err(format!(
                        "nothing within {within:?}; the stream sent {}",
                        self.summary()
                    ))
                }
            }
        }
    }

    /// The last events seen, one short line each.
    fn summary(&self) -> String {
        let skip = self.seen.len().saturating_sub(12);
        let last: Vec<String> = self.seen[skip..]
            .iter()
            .map(|(e, d)| {
                let about = ["id", "up_to_index", "node_id", "missed"]
                    .iter()
                    .find_map(|k| d.get(*k).map(|v| format!("{k}={v}")))
                    .unwrap_or_default();
                let conv = d
                    .get("conversation")
                    .map(|c| format!(" in {c}"))
                    .unwrap_or_default();
                format!("{e}({about}{conv})")
            })
            .collect();
        format!("{} events, the last: {}", self.seen.len(), last.join(", "))
    }

    /// Like [`Events::try_wait`], failing the test if the event does not come.
    async fn wait(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        match self.try_wait(within, pred).await {
            Ok(v) => v,
            Err(e) => panic!("no {what}: {e}"),
        }
    }
}

// ---- checks shared by the tests ------------------------------------------

/// Every answer carries the security headers and never a CORS header.
#[track_caller]
fn check_security_headers(a: &Answer) {
    let csp = a.header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{}: CSP {csp:?}",
        a.what
    );
    assert_eq!(a.header("x-content-type-options"), "nosniff", "{}", a.what);
    assert_eq!(a.header("x-frame-options"), "DENY", "{}", a.what);
    assert_eq!(a.header("referrer-policy"), "no-referrer", "{}", a.what);
    for (name, _) in a.headers.iter() {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "{}: CORS header {name}",
            a.what
        );
    }
}

/// The routes `nodes/src/api/mod.rs` serves behind the secret (the
/// `/faults` routes aside).
const API_ROUTES: &[(&str, &str)] = &[
    ("get", "/status"),
    ("get", "/peers"),
    ("get", "/messages"),
    ("post", "/messages"),
    ("get", "/messages/{id}"),
    ("patch", "/messages/{id}"),
    ("delete", "/messages/{id}"),
    ("get", "/outbox"),
    ("post", "/attachments"),
    ("get", "/attachments/{sha256}"),
    ("get", "/conversations"),
    ("post", "/conversations"),
    ("get", "/repositories"),
    ("post", "/repositories"),
    ("post", "/push"),
    ("get", "/flushes"),
    ("get", "/settings"),
    ("put", "/settings"),
    ("get", "/calls"),
    ("post", "/calls"),
    ("get", "/calls/ice"),
    ("post", "/calls/{id}/accept"),
    ("post", "/calls/{id}/decline"),
    ("post", "/calls/{id}/hangup"),
    ("post", "/calls/{id}/recording"),
    ("post", "/calls/{id}/alive"),
    ("post", "/calls/{id}/signal"),
    ("get", "/events"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

const PAGES: &[&str] = &["/", "/dashboard", "/ui/{file}"];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

// ---- the tests ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_guarded_and_the_openapi_description_matches_the_routes() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let room = Room::start(&["ana"], &["--commit-interval", "1"], 1).await;
        let n = &room.nodes[0];
        let anon = anonymous();
        let mut answers: Vec<Answer> = Vec::new();

        // A fresh room lists general, with no messages yet.
        let a = get(n, "/conversations").await;
        assert_eq!(
            a.expect(200)["conversations"],
            json!([{ "id": "general", "title": "general", "created_by": null,
                     "created_at": null, "last_index": null }]),
            "a fresh room's conversations"
        );
        let (msgs, more) = page_ids(&get(n, "/messages").await);
        assert!(msgs.is_empty() && !more, "a fresh room has no messages");

        // The pages and their assets need no secret.
        for (path, mime) in [
            ("/", "text/html"),
            ("/dashboard", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/style.css", "text/css"),
        ] {
            let a = send(
                format!("GET {path} without the secret"),
                anon.get(format!("{}{path}", n.api)),
            )
            .await;
            assert_eq!(a.status, 200, "{}: {}", a.what, a.text);
            assert!(
                a.header("content-type").starts_with(mime),
                "{}: {:?}",
                a.what,
                a.header("content-type")
            );
            assert!(!a.text.is_empty(), "{}: empty", a.what);
            answers.push(a);
        }
        let a = send(
            "GET /ui/nope.js".into(),
            anon.get(format!("{}/ui/nope.js", n.api)),
        )
        .await;
        a.expect_error(404);
        answers.push(a);

        // Every API route wants the secret: none, a wrong one, another
        // scheme, the secret with something after it.
        let wrong = "0".repeat(64);
        for (method, path) in [
            (Method::GET, "/status"),
            (Method::GET, "/messages"),
            (Method::POST, "/messages"),
            (Method::GET, "/metrics"),
            (Method::GET, "/events"),
            (Method::GET, "/openapi.json"),
            (Method::GET, "/repositories"),
            (Method::POST, "/push"),
            (Method::PUT, "/settings"),
            (Method::GET, "/outbox"),
        ] {
            let url = format!("{}{path}", n.api);
            let body = json!({ "content": "sneaky" }).to_string();
            for (label, auth) in [
                ("no secret", None),
                ("a wrong secret", Some(format!("Bearer {wrong}"))),
                ("the Basic scheme", Some(format!("Basic {}", n.secret))),
                ("a longer secret", Some(format!("Bearer {}0", n.secret))),
                (
                    "a prefix of the secret",
                    Some(format!("Bearer {}", &n.secret[..63])),
                ),
            ] {
                let mut rb = anon
                    .request(method.clone(), &url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(h) = auth {
                    rb = rb.header("authorization", h);
                }
                let a = send(format!("{method} {path} with {label}"), rb).await;
                a.expect_error(401);
                assert_eq!(a.header("www-authenticate"), "Bearer", "{}", a.what);
                answers.push(a);
            }
        }
        // Nothing was posted by those attempts.
        let (msgs, _) = page_ids(&get(n, "/messages").await);
        assert!(
            msgs.is_empty(),
            "a post without the secret went through: {msgs:?}"
        );

        // Host must be a loopback name (DNS rebinding).
        let port = n.api.rsplit(':').next().expect("port");
        for (host, secret, want) in [
            ("evil.example".to_owned(), true, 403),
            (format!("evil.example:{port}"), true, 403),
            (format!("127.0.0.1.evil.example:{port}"), true, 403),
            (format!("10.1.2.3:{port}"), true, 403),
            (format!("localhost:{port}"), true, 200),
            (format!("127.0.0.1:{port}"), true, 200),
            (format!("[::1]:{port}"), true, 200),
            ("evil.example".to_owned(), false, 403),
        ] {
            let path = if secret { "/status" } else { "/" };
            let (status, head) = raw_http(
                &n.api,
                raw_get(path, &host, secret.then_some(n.secret.as_str())),
            )
            .await;
            assert_eq!(status, want, "GET {path} with Host {host}: {head}");
            let lower = head.to_ascii_lowercase();
            assert!(
                lower.contains("x-frame-options: deny"),
                "Host {host}: {head}"
            );
            assert!(!lower.contains("access-control-"), "Host {host}: {head}");
        }

        // A cross-origin Origin is refused, the node's own is not.
        for (origin, want) in [
            ("http://evil.example".to_owned(), 403),
            ("null".to_owned(), 403),
            (format!("https://127.0.0.1:{port}"), 403),
            (format!("http://localhost:{port}"), 403),
            (n.api.clone(), 200),
        ] {
            let a = send(
                format!("GET /status with Origin {origin}"),
                n.http()
                    .get(format!("{}/status", n.api))
                    .header("origin", &origin),
            )
            .await;
            if want == 403 {
                a.expect_error(403);
            } else {
                a.expect(200);
            }
            answers.push(a);
            let a = send(
                format!("GET / with Origin {origin}"),
                anon.get(format!("{}/", n.api)).header("origin", &origin),
            )
            .await;
            assert_eq!(a.status, want, "{}: {}", a.what, a.text);
            answers.push(a);
        }
        // A preflight from another origin gets no CORS grant.
        let a = send(
            "OPTIONS /messages from another origin".into(),
            anon.request(Method::OPTIONS, format!("{}/messages", n.api))
                .header("origin", "http://evil.example")
                .header("access-control-request-method", "POST"),
        )
        .await;
        assert_eq!(a.status, 403, "{}: {}", a.what, a.text);
        answers.push(a);

        // The fallback and a wrong method.
        let a = get(n, "/no/such/thing").await;
        let e = a.expect_error(404);
        assert!(e.contains("no such endpoint"), "{e}");
        answers.push(a);
        let a = call(n, Method::DELETE, "/status", None).await;
        assert_eq!(a.status, 405, "{}: {}", a.what, a.text);
        answers.push(a);

        // API answers are not cached.
        let a = get(n, "/status").await;
        a.expect(200);
        assert_eq!(a.header("cache-control"), "no-store", "{}", a.what);
        answers.push(a);
        for a in &answers {
            check_security_headers(a);
        }

        // Prometheus text.
        wait_for(
            Duration::from_secs(20),
            "the metrics to name the API and raft",
            || async {
                let a = get(n, "/metrics").await;
                (a.status == 200
                    && a.header("content-type").starts_with("text/plain")
                    && a.text.contains("skygit_api_requests_total")
                    && a.text.contains("skygit_raft_term"))
                .then_some(())
            },
        )
        .await
        .expect("metrics");
        // Every per-room series carries the same `room` label as raft's.
        wait_for(
            Duration::from_secs(30),
            "presence and committer series labelled with the room",
            || async {
                let text = get(n, "/metrics").await.text;
                let raft = room_label(&text, "skygit_raft_term")?;
                (room_label(&text, "skygit_presence_polls_total")? == raft
                    && room_label(&text, "skygit_committer_flushes_total")? == raft)
                    .then_some(())
            },
        )
        .await
        .expect("per-room labels");
        let metrics = get(n, "/metrics").await;
        assert!(
            metrics.text.lines().any(
                |l| l.starts_with("skygit_api_requests_total{") && l.contains("status=\"401\"")
            ),
            "the refused requests are counted: {}",
            metrics.text
        );
        assert!(
            metrics
                .text
                .lines()
                .any(|l| l.starts_with("skygit_api_requests_total{")
                    && l.contains("route=\"/status\"")
                    && l.contains("status=\"200\"")),
            "requests are counted by route: {}",
            metrics.text
        );

        // The OpenAPI description: valid JSON naming exactly the routes.
        let a = get(n, "/openapi.json").await;
        let doc = a.expect(200).clone();
        assert!(
            a.header("content-type").starts_with("application/json"),
            "{}",
            a.header("content-type")
        );
        assert_eq!(doc["openapi"], "3.1.0", "openapi version");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
            "bearer scheme"
        );
        assert_eq!(
            doc["security"],
            json!([{ "bearer": [] }]),
            "the secret is required by default"
        );
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/messages",
            "/repositories",
            "/push",
            "/events",
            "/messages/{id}",
            "/status",
        ] {
            assert!(paths.contains_key(p), "openapi.json lacks {p}");
        }
        let mut listed = BTreeSet::new();
        for (path, item) in paths {
            assert!(
                !path.starts_with("/faults"),
                "openapi.json lists the hidden {path}"
            );
            for (method, _) in item.as_object().expect("path item") {
                if METHODS.contains(&method.as_str()) {
                    listed.insert((method.clone(), path.clone()));
                }
            }
        }
        let api: BTreeSet<(String, String)> = API_ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        let pages: BTreeSet<(String, String)> = listed
            .iter()
            .filter(|(_, p)| PAGES.contains(&p.as_str()))
            .cloned()
            .collect();
        let rest: BTreeSet<(String, String)> = listed.difference(&pages).cloned().collect();
        assert_eq!(rest, api, "openapi.json must list exactly the API routes");

        // Every listed operation is served, answers a status it documents,
        // and (unless public) wants the secret.
        for (method, path) in &listed {
            let op = &doc["paths"][path][method];
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"));
            let public = op["security"] == json!([]);
            assert_eq!(
                public,
                PAGES.contains(&path.as_str()),
                "{method} {path}: only pages are public"
            );
            let mut concrete = path
                .replace("{file}", "app.js")
                .replace("{sha256}", &"0".repeat(64));
            if concrete.contains("{id}") {
                let m = post_message(n, None, &format!("for {method} {path}")).await;
                concrete = concrete.replace("{id}", m["id"].as_str().expect("id"));
            }
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let body = matches!(method.as_str(), "post" | "put" | "patch").then(|| "{}".to_owned());
            let a = call(n, m.clone(), &concrete, body.clone()).await;
            assert_ne!(a.status, 405, "{}: method not allowed: {}", a.what, a.text);
            assert!(
                !(a.status == 404 && a.text.contains("no such endpoint")),
                "{}: the node does not serve it: {}",
                a.what,
                a.text
            );
            assert!(
                responses.contains_key(&a.status.to_string()),
                "{}: answered {} which openapi.json does not document ({:?}): {}",
                a.what,
                a.status,
                responses.keys().collect::<Vec<_>>(),
                a.text
            );
            check_security_headers(&a);
            if !public {
                let mut rb = anon.request(m, format!("{}{concrete}", n.api));
                if let Some(b) = body {
                    rb = rb.header(CONTENT_TYPE, "application/json").body(b);
                }
                let a = send(format!("{method} {concrete} without the secret"), rb).await;
                a.expect_error(401);
                assert!(
                    responses.contains_key("401"),
                    "{method} {path}: 401 undocumented"
                );
            }
        }
        // At most 64 event streams at once; a closed one frees its slot.
        let sse = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let events_url = format!("{}/events", n.api);
        let mut streams = Vec::new();
        for i in 0..64 {
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                sse.get(&events_url).bearer_auth(&n.secret).send(),
            )
            .await
            .unwrap_or_else(|_| panic!("event stream {i} answers in time"))
            .unwrap_or_else(|e| panic!("event stream {i}: {e}"));
            assert_eq!(r.status().as_u16(), 200, "event stream {i}");
            streams.push(r);
        }
        let a = send(
            "the 65th event stream".into(),
            sse.get(&events_url)
                .bearer_auth(&n.secret)
                .timeout(Duration::from_secs(15)),
        )
        .await;
        let e = a.expect_error(503);
        eprintln!("the 65th event stream: {e}");
        let started = std::time::Instant::now();
        drop(streams);
        wait_for(
            Duration::from_secs(40),
            "a closed stream to free its slot",
            || async {
                let r = sse
                    .get(&events_url)
                    .bearer_auth(&n.secret)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .ok()?;
                (r.status().as_u16() == 200).then_some(())
            },
        )
        .await
        .expect("a slot came back");
        eprintln!(
            "a slot came back {:?} after the streams closed",
            started.elapsed()
        );
        room.stop().await;
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_page_edit_delete_and_conversations() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let room = Room::start(&["ana", "bo"], &["--commit-interval", "3600"], 2).await;
        let (ana, bo) = (&room.nodes[0], &room.nodes[1]);
        let mut events = Events::open(bo).await;
        events
            .wait(EVENT_WITHIN, "the hello event", |e, _| e == "hello")
            .await;

        // 65 posts through ana; the first one reaches bo's event stream.
        let first = post_message(ana, None, "page #0").await;
        let fid = first["id"].as_str().expect("id").to_owned();
        let ev = events
            .wait(
                EVENT_WITHIN,
                "the first post's message event on bo",
                |e, d| e == "message" && d["id"] == fid.as_str(),
            )
            .await;
        assert_eq!(ev["content"], "page #0", "{ev}");
        assert_eq!(ev["sender"], "ana", "{ev}");
        assert!(ev["applied_at_us"].as_u64().is_some(), "{ev}");
        let mut posted = vec![(first["index"].as_u64().expect("index"), fid.clone())];
        for i in 1..65 {
            let m = post_message(ana, None, &format!("page #{i}")).await;
            posted.push((
                m["index"].as_u64().expect("index"),
                m["id"].as_str().expect("id").to_owned(),
            ));
        }
        assert!(
            posted.windows(2).all(|w| w[0].0 < w[1].0),
            "indexes grow: {posted:?}"
        );

        // Default: the 50 newest, oldest first, more before them.
        let (page, more) = page_ids(&get(ana, "/messages").await);
        assert_eq!(
            page,
            posted[15..].to_vec(),
            "GET /messages is the 50 newest"
        );
        assert!(more, "GET /messages: has_more with 65 messages");
        let (page, more) = page_ids(&get(ana, "/messages?limit=1000").await);
        assert_eq!(page, posted, "limit=1000 is everything");
        assert!(!more, "limit=1000: nothing more");
        let (page, more) = page_ids(&get(ana, "/messages?conversation=general&limit=65").await);
        assert_eq!(page, posted, "limit=65");
        assert!(!more, "limit=65 of 65: nothing more");
        // Both ways, in pages of 7: no gaps, no duplicates, in order.
        assert_eq!(
            page_backwards(ana, "", 7).await,
            posted,
            "paging back with before"
        );
        assert_eq!(
            page_forwards(ana, "", 7).await,
            posted,
            "paging forward with after"
        );
        assert_eq!(
            page_forwards(ana, "&conversation=general", 50).await,
            posted,
            "pages of 50"
        );
        // A window between two cursors.
        let (a, b) = (posted[9].0, posted[20].0);
        let (page, more) = page_ids(&get(ana, &format!("/messages?after={a}&before={b}")).await);
        assert_eq!(page, posted[10..20].to_vec(), "after {a} before {b}");
        assert!(!more, "the whole window");
        let (page, more) =
            page_ids(&get(ana, &format!("/messages?after={a}&before={b}&limit=4")).await);
        assert_eq!(page, posted[10..14].to_vec(), "the window's first 4");
        assert!(more, "more in the window");
        let (page, more) = page_ids(&get(ana, &format!("/messages?before={b}&limit=4")).await);
        assert_eq!(page, posted[16..20].to_vec(), "the 4 before {b}");
        assert!(more, "more before");
        let last = posted.last().expect("posted").0;
        let (page, more) = page_ids(&get(ana, &format!("/messages?after={last}")).await);
        assert!(page.is_empty() && !more, "nothing after the last");
        // bo holds the same.
        let want = posted.clone();
        wait_for(SETTLE, "bo to hold the 65 messages", || async {
            let a = get(bo, "/messages?limit=1000").await;
            (a.status == 200 && page_ids(&a).0 == want).then_some(())
        })
        .await
        .expect("bo replicated");

        // One message.
        let (idx, id) = posted[3].clone();
        let one = get(ana, &format!("/messages/{id}")).await;
        let m = one.expect(200);
        assert_eq!(
            (m["id"].as_str(), m["index"].as_u64()),
            (Some(id.as_str()), Some(idx)),
            "{}",
            one.text
        );
        assert_eq!(m["content"], "page #3");
        assert!(
            m.get("timestamp").is_none() && m.get("is_synchronized").is_none(),
            "one name per field: {}",
            one.text
        );
        assert_eq!(
            m["updated_at"], m["created_at"],
            "not edited: updated_at = created_at"
        );
        assert_eq!(
            m["sync_state"], "committed",
            "nothing pushed yet: {}",
            one.text
        );
        assert_eq!(m["git_hash"], Value::Null);
        let unknown = ulid::Ulid::new().to_string();

        // Input errors.
        let big = "a".repeat(16 * 1024 + 1);
        let huge = "a".repeat(260 * 1024);
        // An empty range is an empty page, not an error.
        let (page, more) = page_ids(&get(ana, "/messages?after=5&before=5").await);
        assert!(page.is_empty() && !more, "after=5&before=5: {page:?}");
        for (what, a, code) in [
            (
                "bad JSON",
                post_raw(ana, "/messages", "{\"content\": ").await,
                400,
            ),
            (
                "not an object",
                post_raw(ana, "/messages", "[1]").await,
                400,
            ),
            ("no content", post(ana, "/messages", &json!({})).await, 400),
            (
                "empty content",
                post(ana, "/messages", &json!({ "content": "" })).await,
                400,
            ),
            (
                "blank content",
                post(ana, "/messages", &json!({ "content": " \n\t " })).await,
                400,
            ),
            (
                "content not a string",
                post(ana, "/messages", &json!({ "content": 7 })).await,
                400,
            ),
            (
                "a bad conversation",
                post(
                    ana,
                    "/messages",
                    &json!({ "content": "x", "conversation": "Bad Name!" }),
                )
                .await,
                400,
            ),
            (
                "an empty conversation",
                post(
                    ana,
                    "/messages",
                    &json!({ "content": "x", "conversation": "" }),
                )
                .await,
                400,
            ),
            (
                "a bad query",
                post(ana, "/messages?bogus=1", &json!({ "content": "x" })).await,
                400,
            ),
            (
                "content over 16 KiB",
                post(ana, "/messages", &json!({ "content": big })).await,
                413,
            ),
            (
                "a body over 256 KiB",
                post(ana, "/messages", &json!({ "content": huge })).await,
                413,
            ),
            (
                "an unknown repo",
                post(ana, "/messages?repo=nope", &json!({ "content": "x" })).await,
                404,
            ),
            ("limit=0", get(ana, "/messages?limit=0").await, 400),
            ("limit=1001", get(ana, "/messages?limit=1001").await, 400),
            ("limit=abc", get(ana, "/messages?limit=abc").await, 400),
            ("before=-1", get(ana, "/messages?before=-1").await, 400),
            (
                "an unknown parameter",
                get(ana, "/messages?bogus=1").await,
                400,
            ),
            (
                "a bad conversation query",
                get(ana, "/messages?conversation=Bad%20Name").await,
                400,
            ),
            (
                "an unknown repo query",
                get(ana, "/messages?repo=nope").await,
                404,
            ),
            ("a bad id", get(ana, "/messages/not-a-ulid").await, 400),
            (
                "an unknown id",
                get(ana, &format!("/messages/{unknown}")).await,
                404,
            ),
            (
                "an unknown id in another repo",
                get(ana, &format!("/messages/{id}?repo=nope")).await,
                404,
            ),
            (
                "a bad query on one message",
                get(ana, &format!("/messages/{id}?bogus=1")).await,
                400,
            ),
            (
                "editing a bad id",
                patch(ana, "/messages/not-a-ulid", &json!({ "content": "x" })).await,
                400,
            ),
            (
                "editing an unknown id",
                patch(
                    ana,
                    &format!("/messages/{unknown}"),
                    &json!({ "content": "x" }),
                )
                .await,
                404,
            ),
            (
                "editing with bad JSON",
                call(
                    ana,
                    Method::PATCH,
                    &format!("/messages/{id}"),
                    Some("{".into()),
                )
                .await,
                400,
            ),
            (
                "editing with an unknown field",
                patch(
                    ana,
                    &format!("/messages/{id}"),
                    &json!({ "content": "x", "bogus": 1 }),
                )
                .await,
                400,
            ),
            (
                "editing to empty",
                patch(ana, &format!("/messages/{id}"), &json!({ "content": "" })).await,
                400,
            ),
            (
                "an edit body over 256 KiB",
                patch(
                    ana,
                    &format!("/messages/{id}"),
                    &json!({ "content": "c".repeat(260 * 1024) }),
                )
                .await,
                413,
            ),
            (
                "a conversation body over 256 KiB",
                post(
                    ana,
                    "/conversations",
                    &json!({ "id": "big", "title": "t".repeat(260 * 1024) }),
                )
                .await,
                413,
            ),
            (
                "editing over 16 KiB",
                patch(
                    ana,
                    &format!("/messages/{id}"),
                    &json!({ "content": "b".repeat(16 * 1024 + 1) }),
                )
                .await,
                413,
            ),
            (
                "deleting a bad id",
                delete(ana, "/messages/not-a-ulid").await,
                400,
            ),
            (
                "deleting an unknown id",
                delete(ana, &format!("/messages/{unknown}")).await,
                404,
            ),
            (
                "the outbox of an unknown repo",
                get(ana, "/outbox?repo=nope").await,
                404,
            ),
            (
                "the conversations of an unknown repo",
                get(ana, "/conversations?repo=nope").await,
                404,
            ),
        ] {
            let e = a.expect_error(code);
            eprintln!("{what}: {code} {e}");
        }
        // Exactly 16 KiB is allowed.
        let full = "z".repeat(16 * 1024);
        let m = post_message(ana, None, &full).await;
        assert_eq!(m["content"].as_str().map(str::len), Some(16 * 1024));
        // The refused posts left nothing behind.
        let (page, _) = page_ids(&get(ana, "/messages?limit=1000").await);
        assert_eq!(page.len(), 66, "65 posts and the 16 KiB one");
        let pending = get(ana, "/outbox").await;
        assert_eq!(pending.expect(200)["pending"], json!([]), "nothing pending");

        // Edit: the author may.
        let before = get(ana, &format!("/messages/{id}"))
            .await
            .expect(200)
            .clone();
        let a = patch(
            ana,
            &format!("/messages/{id}"),
            &json!({ "content": "page #3, edited" }),
        )
        .await;
        let j = a.expect(200);
        assert_eq!(j["status"], "success", "{}", a.text);
        assert_eq!(j["message_id"], id.as_str(), "{}", a.text);
        let m = &j["message"];
        assert_eq!(m["content"], "page #3, edited", "{}", a.text);
        assert_eq!(m["edited"], true, "{}", a.text);
        assert_eq!(m["deleted"], false, "{}", a.text);
        assert_eq!(m["index"], before["index"], "an edit keeps the index");
        assert_eq!(
            before["last_change_index"], before["index"],
            "a fresh post's last change is itself"
        );
        assert!(
            m["last_change_index"].as_u64() > before["last_change_index"].as_u64(),
            "an edit is the message's last change: {}",
            a.text
        );
        assert_eq!(
            m["created_at"], before["created_at"],
            "an edit keeps created_at"
        );
        assert_ne!(
            m["updated_at"], before["updated_at"],
            "an edit moves updated_at: {}",
            a.text
        );
        assert!(
            m["updated_at"].as_str() > before["created_at"].as_str(),
            "updated_at after created_at: {}",
            a.text
        );
        let read = get(ana, &format!("/messages/{id}")).await;
        assert_eq!(
            read.expect(200)["content"],
            "page #3, edited",
            "the edit reads back"
        );
        let ev = events
            .wait(EVENT_WITHIN, "the edit's message event on bo", |e, d| {
                e == "message" && d["id"] == id.as_str() && d["edited"] == true
            })
            .await;
        assert_eq!(ev["content"], "page #3, edited", "{ev}");

        // Another node's user may not.
        let idc = id.clone();
        wait_for(SETTLE, "bo to see the edit", || async {
            let a = get(bo, &format!("/messages/{idc}")).await;
            (a.status == 200 && a.json["content"] == "page #3, edited").then_some(())
        })
        .await
        .expect("bo has the edit");
        let e = patch(
            bo,
            &format!("/messages/{id}"),
            &json!({ "content": "bo was here" }),
        )
        .await
        .expect_error(403);
        assert!(e.contains("author"), "{e}");
        delete(bo, &format!("/messages/{id}"))
            .await
            .expect_error(403);
        assert_eq!(
            get(ana, &format!("/messages/{id}")).await.expect(200)["content"],
            "page #3, edited",
            "bo changed nothing"
        );

        // Delete: the author may, once.
        let a = delete(ana, &format!("/messages/{id}")).await;
        let j = a.expect(200);
        assert_eq!(j["status"], "success", "{}", a.text);
        assert_eq!(j["message_id"], id.as_str(), "{}", a.text);
        assert_eq!(j["message"]["deleted"], true, "{}", a.text);
        assert_eq!(
            j["message"]["content"], "",
            "a deleted message has no content: {}",
            a.text
        );
        assert_eq!(
            j["message"]["index"], before["index"],
            "a delete keeps the index"
        );
        events
            .wait(EVENT_WITHIN, "the delete's message event on bo", |e, d| {
                e == "message" && d["id"] == id.as_str() && d["deleted"] == true
            })
            .await;
        let e = patch(
            ana,
            &format!("/messages/{id}"),
            &json!({ "content": "again" }),
        )
        .await
        .expect_error(409);
        assert!(e.contains("deleted"), "{e}");
        delete(ana, &format!("/messages/{id}"))
            .await
            .expect_error(409);
        let listed = get(ana, &format!("/messages?after={}&limit=1", idx - 1)).await;
        let m = &listed.expect(200)["messages"][0];
        assert_eq!(
            (m["id"].as_str(), &m["deleted"], &m["content"]),
            (Some(id.as_str()), &json!(true), &json!("")),
            "the list shows it deleted"
        );

        // Conversations.
        let a = get(ana, "/conversations").await;
        let list = a.expect(200)["conversations"]
            .as_array()
            .cloned()
            .expect("conversations");
        let general = list
            .iter()
            .find(|c| c["id"] == "general")
            .unwrap_or_else(|| panic!("no general: {}", a.text));
        assert_eq!(
            general["last_index"].as_u64(),
            page.last().map(|p| p.0),
            "general's newest message: {}",
            a.text
        );
        let a = post(
            ana,
            "/conversations",
            &json!({ "id": "design", "title": "Design" }),
        )
        .await;
        let j = a.expect(201);
        assert_eq!(j["status"], "success", "{}", a.text);
        assert_eq!(j["conversation"]["id"], "design", "{}", a.text);
        assert_eq!(j["conversation"]["title"], "Design", "{}", a.text);
        assert_eq!(j["conversation"]["created_by"], "ana", "{}", a.text);
        events
            .wait(EVENT_WITHIN, "the conversation event on bo", |e, d| {
                e == "conversation" && d["id"] == "design"
            })
            .await;
        let e = post(ana, "/conversations", &json!({ "id": "design" }))
            .await
            .expect_error(409);
        assert!(e.contains("design"), "{e}");
        post(
            bo,
            "/conversations",
            &json!({ "id": "design", "title": "Other" }),
        )
        .await
        .expect_error(409);
        for (what, body) in [
            ("a bad name", json!({ "id": "Bad Name" })),
            ("an empty name", json!({ "id": "" })),
            ("a slash", json!({ "id": "a/b" })),
            ("no id", json!({ "title": "x" })),
            ("an unknown field", json!({ "id": "ok", "bogus": true })),
            (
                "a title over 256 bytes",
                json!({ "id": "long-title", "title": "t".repeat(300) }),
            ),
        ] {
            let e = post(ana, "/conversations", &body).await.expect_error(400);
            eprintln!("conversation with {what}: {e}");
        }
        post_raw(ana, "/conversations", "{").await.expect_error(400);
        post(ana, "/conversations?repo=nope", &json!({ "id": "x" }))
            .await
            .expect_error(404);
        let d = post_message(ana, Some("design"), "a design note").await;
        let did = d["id"].as_str().expect("id").to_owned();
        let (page, more) = page_ids(&get(ana, "/messages?conversation=design").await);
        assert_eq!(
            page,
            vec![(d["index"].as_u64().expect("index"), did.clone())],
            "design holds its one message"
        );
        assert!(!more);
        let (page, _) = page_ids(&get(ana, "/messages?limit=1000").await);
        assert!(
            !page.iter().any(|p| p.1 == did),
            "the design note is not in general"
        );
        let a = get(ana, "/conversations").await;
        let list = a.expect(200)["conversations"]
            .as_array()
            .cloned()
            .expect("conversations");
        let design = list
            .iter()
            .find(|c| c["id"] == "design")
            .unwrap_or_else(|| panic!("no design: {}", a.text));
        assert_eq!(design["last_index"], d["index"], "{}", a.text);
        assert_eq!(design["title"], "Design", "{}", a.text);
        assert!(
            list.iter().any(|c| c["id"] == "general"),
            "general still listed: {}",
            a.text
        );
        // A conversation nobody made is not there.
        get(ana, "/messages?conversation=nothere").await.expect(404);
        // Posting into a new name makes the conversation, and the stream
        // announces it (docs/api.md: `conversation` "when one is created")
        // before the message that made it.
        post_message(bo, Some("ops"), "posted into a new conversation").await;
        let mut problems: Vec<String> = Vec::new();
        if let Err(e) = events
            .try_wait(EVENT_WITHIN, |e, d| e == "conversation" && d["id"] == "ops")
            .await
        {
            problems.push(format!(
                "a conversation created by posting into it is not announced on /events: {e}"
            ));
        }
        events
            .wait(
                EVENT_WITHIN,
                "the ops post's message event on bo",
                |e, d| e == "message" && d["conversation"] == "ops",
            )
            .await;
        wait_for(SETTLE, "ana to list ops and bo to read design", || async {
            let a = get(ana, "/conversations").await;
            let has_ops = a.json["conversations"]
                .as_array()?
                .iter()
                .any(|c| c["id"] == "ops");
            let b = get(bo, "/messages?conversation=design").await;
            let bo_has = b.json["messages"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == did.as_str());
            (has_ops && bo_has).then_some(())
        })
        .await
        .expect("replicated conversations");

        // Nothing waits for a leader.
        for n in [ana, bo] {
            assert_eq!(
                get(n, "/outbox").await.expect(200)["pending"],
                json!([]),
                "{}'s outbox",
                n.spec.user
            );
        }
        get(ana, "/outbox?bogus=1").await.expect_error(400);
        drop(events);
        room.stop().await;
        assert!(problems.is_empty(), "API problems: {problems:#?}");
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_flushes_settings_repositories_and_status() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A long interval: only the push below writes the messages.
        let room = Room::start(&["ana", "bo"], &["--commit-interval", "3600"], 2).await;
        let leader_id = room.leader().await;
        let li = room
            .nodes
            .iter()
            .position(|n| n.node_id == leader_id)
            .expect("the leader is a node");
        let leader = &room.nodes[li];
        let follower = &room.nodes[1 - li];
        let mut problems: Vec<String> = Vec::new();
        let mut events = Events::open(leader).await;
        let hello = events
            .wait(EVENT_WITHIN, "the hello event", |e, _| e == "hello")
            .await;
        assert_eq!(hello["node_id"].as_u64(), Some(leader_id), "{hello}");

        // A post reaches the stream.
        let m = post_message(follower, None, "to be pushed").await;
        let mid = m["id"].as_str().expect("id").to_owned();
        let midx = m["index"].as_u64().expect("index");
        events
            .wait(EVENT_WITHIN, "the post's message event", |e, d| {
                e == "message" && d["id"] == mid.as_str()
            })
            .await;
        let before = get(leader, &format!("/messages/{mid}"))
            .await
            .expect(200)
            .clone();
        assert_eq!(
            before["sync_state"], "committed",
            "not pushed yet: {before}"
        );
        assert_eq!(before["git_hash"], Value::Null, "{before}");

        post(leader, "/push?repo=nope", &json!({}))
            .await
            .expect_error(404);
        post(leader, "/push?bogus=1", &json!({}))
            .await
            .expect_error(400);
        // Push on a follower: the leader flushes, and the answer names it.
        let a = call(follower, Method::POST, "/push", None).await;
        let p = a.expect(200).clone();
        assert_eq!(p["status"], "success", "{}", a.text);
        assert_eq!(p["leader"].as_u64(), Some(leader_id), "{}", a.text);
        let head = p["head"]
            .as_str()
            .unwrap_or_else(|| panic!("a push without head: {}", a.text))
            .to_owned();
        assert_eq!(head.len(), 40, "a commit id: {head}");
        assert!(
            p["up_to_index"].as_u64().is_some_and(|u| u >= midx),
            "{}",
            a.text
        );
        assert!(p["commits"].as_u64().is_some_and(|c| c >= 1), "{}", a.text);
        assert!(p["changes"].as_u64().is_some_and(|c| c >= 1), "{}", a.text);
        assert!(p["duration_ms"].as_f64().is_some(), "{}", a.text);
        let git = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&room.repo)
            .args(["rev-parse", "main"])
            .output()
            .expect("git runs");
        assert!(
            git.status.success(),
            "git rev-parse: {}",
            String::from_utf8_lossy(&git.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&git.stdout).trim(),
            head,
            "the push's head is the branch's"
        );
        let ev = events
            .wait(EVENT_WITHIN, "the synced event", |e, d| {
                e == "synced" && d["up_to_index"].as_u64().is_some_and(|u| u >= midx)
            })
            .await;
        assert_eq!(ev["git_hash"], head.as_str(), "{ev}");
        for n in [leader, follower] {
            let (h, id) = (head.clone(), mid.clone());
            wait_for(
                Duration::from_secs(20),
                "the message to read synchronized",
                || async {
                    let a = get(n, &format!("/messages/{id}")).await;
                    (a.json["sync_state"] == "synchronized").then(|| a.json.clone())
                },
            )
            .await
            .map(|j| {
                assert_eq!(j["git_hash"], h.as_str(), "on {}: {j}", n.spec.user);
                assert_eq!(j["sync_state"], "synchronized", "on {}: {j}", n.spec.user);
            })
            .unwrap_or_else(|e| panic!("on {}: {e:#}", n.spec.user));
            let (page, _) = page_ids(&get(n, "/messages").await);
            assert!(page.iter().any(|p| p.1 == mid), "listed on {}", n.spec.user);
            let a = get(n, "/messages").await;
            let listed = a.json["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .find(|x| x["id"] == mid.as_str())
                .cloned()
                .expect("listed");
            assert_eq!(
                listed["sync_state"], "synchronized",
                "GET /messages on {}: {listed}",
                n.spec.user
            );
            assert_eq!(
                listed["git_hash"],
                head.as_str(),
                "GET /messages on {}: {listed}",
                n.spec.user
            );
        }
        // Nothing new: no commit, same head.
        let a = post(leader, "/push", &json!({})).await;
        let again = a.expect(200);
        assert_eq!(again["head"], head.as_str(), "{}", a.text);
        assert_eq!(again["commits"], 0, "{}", a.text);

        // Flushes: the pushes, newest last.
        let a = get(leader, "/flushes").await;
        let list = a.expect(200)["flushes"]
            .as_array()
            .cloned()
            .expect("flushes");
        let last = list
            .last()
            .unwrap_or_else(|| panic!("no flushes: {}", a.text));
        assert_eq!(last["reason"], "OnDemand", "{}", a.text);
        assert_eq!(last["ok"], true, "{}", a.text);
        assert_eq!(last["head"], head.as_str(), "{}", a.text);
        assert!(
            list.iter().any(|f| f["reason"] == "OnDemand"
                && f["commits"].as_u64() >= Some(1)
                && f["head"] == head.as_str()),
            "the committing push is listed: {}",
            a.text
        );
        for f in &list {
            for k in [
                "at",
                "reason",
                "ok",
                "changes",
                "commits",
                "head",
                "up_to_index",
                "duration_ms",
                "remote_calls",
                "error",
            ] {
                assert!(f.get(k).is_some(), "a flush without {k}: {f}");
            }
        }
        assert!(get(follower, "/flushes").await.expect(200)["flushes"].is_array());
        get(leader, "/flushes?repo=nope").await.expect_error(404);

        // Settings.
        // Settings are the room's: a change asked on the follower goes
        // through raft to every node and into the repository's config.json.
        // A node's own --commit-interval still wins on that node.
        let a = get(leader, "/settings").await;
        let s = a.expect(200);
        assert_eq!(s["commit_interval_secs"], 3600, "{}", a.text);
        assert_eq!(
            s["node_overrides"]["commit_interval_secs"], 3600,
            "{}",
            a.text
        );
        assert!(s["room"]["commit_interval_secs"].is_null(), "{}", a.text);
        assert_eq!(s["room"]["changed_index"], 0, "{}", a.text);
        let a = put(
            follower,
            "/settings",
            &json!({ "commit_interval_secs": 3000, "voters": 3 }),
        )
        .await;
        let s = a.expect(200);
        assert_eq!(s["room"]["commit_interval_secs"], 3000, "{}", a.text);
        assert_eq!(s["room"]["voters"], 3, "{}", a.text);
        assert_eq!(s["voters"], 3, "no node pins the voters: {}", a.text);
        assert_eq!(
            s["commit_interval_secs"], 3600,
            "the node's own wins: {}",
            a.text
        );
        assert!(s["room"]["changed_at"].is_string(), "{}", a.text);
        for n in [leader, follower] {
            wait_for(SETTLE, "every node to apply the settings", || async {
                let s = get(n, "/settings").await.json;
                (s["room"]["commit_interval_secs"] == 3000 && s["voters"] == 3).then_some(())
            })
            .await
            .expect("applied");
        }
        events
            .wait(EVENT_WITHIN, "the settings event", |e, d| {
                e == "settings" && d["commit_interval_secs"] == 3000
            })
            .await;
        // The leader writes them into config.json at once (its own
        // interval is an hour).
        let config = wait_for(SETTLE, "config.json to hold the settings", || async {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&room.repo)
                .args(["show", "main:.messages/config.json"])
                .output()
                .ok()?;
            let c: Value = serde_json::from_slice(&out.stdout).ok()?;
            (c["commit_interval_secs"] == 3000 && c["voters"] == 3).then_some(c)
        })
        .await
        .expect("config.json");
        assert_eq!(
            config["version"], 1,
            "the rest of the file is kept: {config}"
        );
        assert!(config["media"].is_object(), "{config}");
        for (what, body) in [
            ("interval 0", json!({ "commit_interval_secs": 0 })),
            (
                "interval over a week",
                json!({ "commit_interval_secs": 604_801 }),
            ),
            ("interval negative", json!({ "commit_interval_secs": -1 })),
            ("0 voters", json!({ "voters": 0 })),
            ("2 voters", json!({ "voters": 2 })),
            ("6 voters", json!({ "voters": 6 })),
            ("an unknown field", json!({ "bogus": 1 })),
            ("a string", json!({ "voters": "three" })),
        ] {
            let e = put(leader, "/settings", &body).await.expect_error(400);
            eprintln!("settings with {what}: {e}");
        }
        // A change of nothing changes nothing: the settings as they are.
        let now = get(leader, "/settings").await.expect(200).clone();
        for nothing in [
            json!({}),
            json!({ "commit_interval_secs": null, "voters": null }),
        ] {
            let a = put(leader, "/settings", &nothing).await;
            assert_eq!(*a.expect(200), now, "PUT /settings {nothing}");
        }
        call(leader, Method::PUT, "/settings", Some("{".into()))
            .await
            .expect_error(400);
        put(leader, "/settings?repo=nope", &json!({ "voters": 3 }))
            .await
            .expect_error(404);
        let s = get(leader, "/settings").await.expect(200).clone();
        assert_eq!(
            s["room"]["commit_interval_secs"], 3000,
            "refused changes changed nothing: {s}"
        );

        // Status and peers.
        let fid = follower.node_id;
        let st = wait_for(
            Duration::from_secs(30),
            "the leader's status to show a measured link",
            || async {
                let s = get(leader, "/status").await.json;
                let p = s["peers"]
                    .as_array()?
                    .iter()
                    .find(|p| p["node_id"].as_u64() == Some(fid))?
                    .clone();
                (p["state"] == "connected"
                    && p["rtt_ms"].as_f64().is_some()
                    && s["catch_up"]["done"] == true)
                    .then_some(s)
            },
        )
        .await
        .expect("status");
        assert_eq!(st["node_id"].as_u64(), Some(leader_id), "{st}");
        assert_eq!(st["user"], leader.spec.user.as_str(), "{st}");
        assert!(
            st["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{st}"
        );
        assert_eq!(st["consensus"]["leader"].as_u64(), Some(leader_id), "{st}");
        assert!(
            st["consensus"]["term"].as_u64().is_some_and(|t| t >= 1),
            "{st}"
        );
        assert_eq!(st["consensus"]["state"], "Leader", "{st}");
        assert_eq!(st["consensus"]["outbox_len"], 0, "{st}");
        for k in ["applied_index", "target_index"] {
            assert!(
                st["catch_up"][k].as_u64().is_some_and(|i| i >= midx),
                "catch_up.{k}: {st}"
            );
        }
        let voters_now: Vec<u64> = st["membership"]["voters"]
            .as_array()
            .expect("voters")
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        assert!(
            voters_now.contains(&leader_id) && voters_now.contains(&fid),
            "{st}"
        );
        let peer = st["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["node_id"].as_u64() == Some(fid))
            .cloned()
            .expect("peer");
        assert_eq!(peer["user"], follower.spec.user.as_str(), "{peer}");
        assert_eq!(peer["role"], "voter", "{peer}");
        assert!(peer["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0), "{peer}");
        let replication = st["replication"]
            .as_array()
            .unwrap_or_else(|| panic!("the leader reports replication: {st}"));
        assert!(
            replication
                .iter()
                .any(|r| r["node_id"].as_u64() == Some(fid)),
            "{st}"
        );
        assert_eq!(st["committer"]["leader"], true, "{st}");
        assert_eq!(
            st["committer"]["interval_secs"], 3600,
            "its own interval: {st}"
        );
        assert!(
            st["committer"]["synced_up_to"]
                .as_u64()
                .is_some_and(|s| s >= midx),
            "{st}"
        );
        // The last flush wrote the settings on top of the push's commit.
        assert_eq!(st["committer"]["last_flush"]["reason"], "Settings", "{st}");
        let branch = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&room.repo)
            .args(["rev-parse", "main", &format!("{head}^{{commit}}")])
            .output()
            .expect("git runs");
        let branch = String::from_utf8_lossy(&branch.stdout).into_owned();
        let mut shas = branch.lines();
        assert_eq!(
            st["committer"]["last_flush"]["head"].as_str(),
            shas.next(),
            "the last flush's head is the branch's: {st}"
        );
        assert_eq!(shas.next(), Some(head.as_str()), "the push's commit exists");
        assert!(
            st["repo_api"]["calls"].as_u64().is_some_and(|c| c > 0),
            "{st}"
        );
        assert!(st["presence"]["online"].is_array(), "{st}");
        assert!(st["repository"]["key"].is_string(), "{st}");
        assert!(st["messages_applied_total"].as_u64().is_some(), "{st}");
        let fs = get(follower, "/status").await;
        let fs = fs.expect(200);
        assert_eq!(fs["consensus"]["leader"].as_u64(), Some(leader_id), "{fs}");
        assert_eq!(fs["committer"]["leader"], false, "{fs}");
        assert_eq!(
            fs["replication"],
            Value::Null,
            "only the leader reports replication: {fs}"
        );
        get(leader, "/status?repo=nope").await.expect_error(404);
        get(leader, "/status?bogus=1").await.expect_error(400);
        let a = get(follower, "/peers").await;
        let peers = a.expect(200)["peers"].as_array().cloned().expect("peers");
        let p = peers
            .iter()
            .find(|p| p["node_id"].as_u64() == Some(leader_id))
            .unwrap_or_else(|| panic!("the leader is a peer: {}", a.text));
        assert!(
            ["connected", "connecting", "backoff", "offline"]
                .contains(&p["state"].as_str().unwrap_or("")),
            "{p}"
        );
        for k in ["node_id", "user", "state", "phase", "rtt_ms", "role", "lag"] {
            assert!(p.get(k).is_some(), "a peer without {k}: {p}");
        }
        get(leader, "/peers?repo=nope").await.expect_error(404);
        get(leader, "/events?repo=nope").await.expect_error(404);
        get(leader, "/events?bogus=1").await.expect_error(400);
        if st["repository"]["primary"] == false {
            problems.push(format!(
                "GET /status of the primary room says repository.primary = false: {}",
                st["repository"]
            ));
        }

        // Repositories: one, then a second room on the leader's node.
        let a = get(leader, "/repositories").await;
        let repos = a.expect(200)["repositories"]
            .as_array()
            .cloned()
            .expect("repositories");
        assert_eq!(repos.len(), 1, "{}", a.text);
        assert_eq!(repos[0]["primary"], true, "{}", a.text);
        assert_eq!(repos[0]["node_id"].as_u64(), Some(leader_id), "{}", a.text);
        let primary_key = repos[0]["key"].as_str().expect("key").to_owned();
        let primary_spec = repos[0]["spec"].as_str().expect("spec").to_owned();
        assert_eq!(
            get(leader, &format!("/messages?repo={primary_key}"))
                .await
                .expect(200)["messages"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let second = init_repo(room.dir.path(), "second.git");
        let url = second.to_string_lossy().into_owned();
        // Refusals first: none of them opens a room.
        for (what, body) in [
            ("owner alone", json!({ "owner": "x" })),
            ("name alone", json!({ "name": "x" })),
            (
                "owner, name and url",
                json!({ "owner": "x", "name": "y", "url": url }),
            ),
            ("an unknown field", json!({ "url": url, "bogus": 1 })),
        ] {
            let e = post(leader, "/repositories", &body).await.expect_error(400);
            eprintln!("repositories with {what}: {e}");
        }
        post_raw(leader, "/repositories", "not json")
            .await
            .expect_error(400);
        let big = "x".repeat(260 * 1024);
        post(leader, "/repositories", &json!({ "url": big }))
            .await
            .expect_error(413);
        put(leader, "/settings", &json!({ "bogus": big }))
            .await
            .expect_error(413);
        let e = post(leader, "/repositories", &json!({ "url": primary_spec }))
            .await
            .expect_error(409);
        eprintln!("the primary repository again: {e}");
        assert_eq!(
            get(leader, "/repositories").await.expect(200)["repositories"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "nothing opened by the refusals"
        );
        // A second repository.
        let answer = leader
            .http()
            .post(format!("{}/repositories", leader.api))
            .json(&json!({ "url": url }))
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let opened = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                Some(Answer {
                    what: format!("POST /repositories {url}"),
                    status,
                    headers: HeaderMap::new(),
                    json: serde_json::from_str(&text).unwrap_or(Value::Null),
                    text,
                })
            }
            Err(e) => {
                problems.push(format!(
                    "POST /repositories {{\"url\": {url:?}}} got no answer ({e}): the node dropped \
                     the request (its log says why)"
                ));
                None
            }
        };
        if let Some(a) = opened {
            let r = a.expect(201).clone();
            assert_eq!(r["status"], "success", "{}", a.text);
            assert_eq!(r["repository"]["primary"], false, "{}", a.text);
            assert_eq!(r["repository"]["spec"], url.as_str(), "{}", a.text);
            assert_eq!(
                r["repository"]["node_id"].as_u64(),
                Some(leader_id),
                "{}",
                a.text
            );
            let key = r["repository"]["key"].as_str().expect("key").to_owned();
            assert_ne!(key, primary_key);
            let a = get(leader, "/repositories").await;
            let repos = a.expect(200)["repositories"]
                .as_array()
                .cloned()
                .expect("repositories");
            assert_eq!(repos.len(), 2, "{}", a.text);
            assert!(
                repos
                    .iter()
                    .any(|r| r["key"] == key.as_str() && r["primary"] == false),
                "{}",
                a.text
            );
            assert_eq!(
                repos[0]["key"],
                primary_key.as_str(),
                "the primary stays first: {}",
                a.text
            );
            // The new room elects its one member; its log is its own.
            let k = key.clone();
            wait_for(SETTLE, "the second room to have a leader", || async {
                let s = get(leader, &format!("/status?repo={k}")).await.json;
                (s["consensus"]["leader"].as_u64() == Some(leader_id)).then_some(())
            })
            .await
            .expect("the second room's leader");
            let a = get(leader, &format!("/messages?repo={key}")).await;
            assert_eq!(page_ids(&a).0, vec![], "the second room starts empty");
            let a = post(
                leader,
                &format!("/messages?repo={key}"),
                &json!({ "content": "in the second room" }),
            )
            .await;
            let other = check_posted(&a, &leader.spec.user, "general", "in the second room");
            let oid = other["id"].as_str().expect("id").to_owned();
            let (page, _) = page_ids(&get(leader, &format!("/messages?repo={key}")).await);
            assert_eq!(
                page.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
                vec![oid.clone()],
                "the second room holds its post"
            );
            let (page, _) = page_ids(&get(leader, "/messages?limit=1000").await);
            assert!(
                !page.iter().any(|p| p.1 == oid),
                "the post stays out of the primary room"
            );
            get(leader, &format!("/messages/{oid}"))
                .await
                .expect_error(404);
            get(leader, &format!("/messages/{oid}?repo={key}"))
                .await
                .expect(200);
            get(follower, &format!("/messages?repo={key}"))
                .await
                .expect_error(404);
            let e = post(leader, "/repositories", &json!({ "url": url }))
                .await
                .expect_error(409);
            eprintln!("the same repository again: {e}");
            assert_eq!(
                get(leader, "/repositories").await.expect(200)["repositories"]
                    .as_array()
                    .map(Vec::len),
                Some(2),
                "nothing more opened"
            );
        }

        drop(events);
        if !problems.is_empty() {
            room.print_logs();
        }
        room.stop().await;
        assert!(problems.is_empty(), "API problems: {problems:#?}");
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_without_a_quorum_keeps_posts_in_the_outbox() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut room = Room::start(
            &["ana", "bo", "cy"],
            &["--voters", "3", "--commit-interval", "3600"],
            3,
        )
        .await;
        let before = post_message(&room.nodes[0], None, "while all three are up").await;
        // Two of the three voters die, the leader among them: no majority,
        // and the survivor (a follower) still names the dead leader.
        let leader = room.leader().await;
        let follower = room
            .nodes
            .iter()
            .position(|n| n.node_id != leader)
            .expect("a follower");
        room.nodes.swap(0, follower);
        let mut dead = room.nodes.split_off(1);
        for d in &mut dead {
            d.kill().await.expect("killed");
        }
        let survivor = &room.nodes[0];
        let mut queued = Vec::new();
        for (i, text) in ["kept while alone", "also kept"].iter().enumerate() {
            let asked = std::time::Instant::now();
            let a = post(survivor, "/messages", &json!({ "content": text })).await;
            eprintln!("post {i} answered {} in {:?}", a.status, asked.elapsed());
            let j = a.expect(503);
            assert_eq!(j["status"], "queued", "{}", a.text);
            assert!(
                j["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                a.text
            );
            let id = j["message_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no message_id: {}", a.text))
                .to_owned();
            assert!(ulid::Ulid::from_string(&id).is_ok(), "{id}");
            assert_eq!(j["outbox_len"].as_u64(), Some(i as u64 + 1), "{}", a.text);
            let reason = j["reason"].as_str().unwrap_or_default();
            assert!(!reason.is_empty(), "{}", a.text);
            if i == 0 {
                // Forwarded to the dead leader: the lost link fails the
                // call (or the link is already down), no timeout is waited.
                assert!(!reason.contains("no answer"), "{}", a.text);
                assert!(reason.contains(&format!("node {leader}")), "{}", a.text);
            }
            assert_eq!(j["message"]["sync_state"], "pending", "{}", a.text);
            assert_eq!(j["message"]["content"], *text, "{}", a.text);
            queued.push((id, text.to_string()));
        }
        let a = get(survivor, "/outbox").await;
        let pending = a.expect(200)["pending"]
            .as_array()
            .cloned()
            .expect("pending");
        assert_eq!(pending.len(), 2, "{}", a.text);
        for ((id, text), p) in queued.iter().zip(&pending) {
            assert_eq!(p["id"], id.as_str(), "oldest first: {}", a.text);
            assert_eq!(p["kind"], "post", "{}", a.text);
            assert_eq!(p["content"], text.as_str(), "{}", a.text);
            assert_eq!(p["conversation"], "general", "{}", a.text);
            assert_eq!(p["sender"], survivor.spec.user.as_str(), "{}", a.text);
            assert!(p["created_at"].is_string(), "{}", a.text);
        }
        let st = get(survivor, "/status").await;
        assert_eq!(st.expect(200)["consensus"]["outbox_len"], 2, "{}", st.text);
        get(survivor, &format!("/messages/{}", queued[0].0))
            .await
            .expect_error(404);
        // Other writes wait too; reads go on.
        let a = post(survivor, "/conversations", &json!({ "id": "later" })).await;
        assert_eq!(a.expect(503)["status"], "queued", "{}", a.text);
        let (page, _) = page_ids(&get(survivor, "/messages").await);
        assert_eq!(
            page.last().map(|p| p.1.as_str()),
            before["id"].as_str(),
            "reads still work"
        );

        // The voters come back with their data: the outbox drains.
        for d in dead {
            room.nodes
                .push(NodeProc::start(d.spec.clone()).await.expect("restarts"));
        }
        let survivor = &room.nodes[0];
        let ids: Vec<String> = queued.iter().map(|q| q.0.clone()).collect();
        wait_for(
            SETTLE,
            "the kept posts to commit and the outbox to drain",
            || async {
                let pending = get(survivor, "/outbox").await.json["pending"]
                    .as_array()?
                    .len();
                let (page, _) = page_ids(&get(survivor, "/messages").await);
                let all = ids.iter().all(|id| page.iter().any(|p| &p.1 == id));
                (pending == 0 && all).then_some(())
            },
        )
        .await
        .expect("committed after the quorum came back");
        let (page, _) = page_ids(&get(survivor, "/messages").await);
        let listed: Vec<&str> = page.iter().map(|p| p.1.as_str()).collect();
        let pos: Vec<usize> = ids
            .iter()
            .map(|id| listed.iter().position(|l| l == id).expect("listed"))
            .collect();
        assert!(pos[0] < pos[1], "kept posts commit in order: {listed:?}");
        assert_eq!(
            listed
                .iter()
                .filter(|l| ids.contains(&l.to_string()))
                .count(),
            2,
            "each once: {listed:?}"
        );
        let a = get(survivor, "/conversations").await;
        assert!(
            a.expect(200)["conversations"]
                .as_array()
                .expect("list")
                .iter()
                .any(|c| c["id"] == "later"),
            "the kept conversation was created: {}",
            a.text
        );
        for n in &room.nodes[1..] {
            let id = ids[1].clone();
            wait_for(
                SETTLE,
                "the returning voters to hold the kept posts",
                || async { (get(n, &format!("/messages/{id}")).await.status == 200).then_some(()) },
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", n.spec.user));
        }
        room.stop().await;
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ring_relay_signals_end_and_refuse_bad_input() {
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let room = Room::start(&["ana", "bo"], &[], 2).await;
        let (ana, bo) = (&room.nodes[0], &room.nodes[1]);
        let mut on_bo = Events::open(bo).await;
        on_bo
            .wait(EVENT_WITHIN, "the hello event", |e, _| e == "hello")
            .await;
        let mut on_ana = Events::open(ana).await;
        on_ana
            .wait(EVENT_WITHIN, "the hello event", |e, _| e == "hello")
            .await;

        // Calls nobody could place.
        let start = |peers: Value| json!({"conversation": "general", "peers": peers});
        for (body, why) in [
            (start(json!([ana.node_id])), "this node"),
            (start(json!([12345])), "a node the room does not know"),
        ] {
            let e = post(ana, "/calls", &body).await.expect_error(404);
            assert!(e.contains("not a peer"), "{why}: {e}");
        }
        for (body, why) in [
            (start(json!([])), "no peers"),
            (start(json!([1, 2, 3, 4])), "more than 3 peers"),
            (
                json!({"conversation": "No Such Name", "peers": [bo.node_id]}),
                "a bad conversation name",
            ),
            (
                json!({"conversation": "general", "peers": [bo.node_id], "x": 1}),
                "an unknown field",
            ),
        ] {
            let e = post(ana, "/calls", &body).await.expect_error(400);
            assert!(!e.is_empty(), "{why}");
        }
        post_raw(ana, "/calls", "[]").await.expect_error(400);
        call(ana, Method::POST, "/calls/not-a-call/accept", None)
            .await
            .expect_error(400);
        call(ana, Method::POST, "/calls/01ARZ3NDEKTSV4RRFFQ69G5FAV/accept", None)
            .await
            .expect_error(404);

        // ana calls bo: bo's node rings.
        let c = post(ana, "/calls", &start(json!([bo.node_id])))
            .await
            .expect(201)
            .clone();
        let id = c["id"].as_str().expect("call id").to_owned();
        assert_eq!(c["state"], "ringing", "{c}");
        assert_eq!(c["me"], ana.node_id, "{c}");
        let rings = on_bo
            .wait(EVENT_WITHIN, "bo's node to ring", |e, d| {
                e == "call"
                    && d["id"] == id.as_str()
                    && d["participants"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["user"] == "bo" && p["state"] == "ringing"))
            })
            .await;
        assert_eq!(rings["initiator"], ana.node_id, "{rings}");
        assert_eq!(rings["me"], bo.node_id, "{rings}");
        // A second call while in one; accepting one's own; signalling a
        // participant who has not joined.
        post(ana, "/calls", &start(json!([bo.node_id])))
            .await
            .expect_error(409);
        call(ana, Method::POST, &format!("/calls/{id}/accept"), None)
            .await
            .expect_error(409);
        let hello = json!({"to": bo.node_id, "signal": {"kind": "hello"}});
        post(ana, &format!("/calls/{id}/signal"), &hello)
            .await
            .expect_error(409);

        // bo answers; the call is active on both.
        let c = call(bo, Method::POST, &format!("/calls/{id}/accept"), None)
            .await
            .expect(200)
            .clone();
        assert_eq!(c["state"], "active", "{c}");
        on_ana
            .wait(EVENT_WITHIN, "ana's node to see bo join", |e, d| {
                e == "call" && d["id"] == id.as_str() && d["state"] == "active"
            })
            .await;

        // SDP from ana's browser reaches bo's event stream, unchanged.
        let offer = json!({"to": bo.node_id, "signal": {"kind": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}});
        post(ana, &format!("/calls/{id}/signal"), &offer)
            .await
            .expect(202);
        let s = on_bo
            .wait(EVENT_WITHIN, "the offer on bo's stream", |e, d| {
                e == "call_signal" && d["call"] == id.as_str()
            })
            .await;
        assert_eq!(s["from"], ana.node_id, "{s}");
        assert_eq!(s["signal"], offer["signal"], "{s}");
        let ice = json!({"to": ana.node_id, "signal": {"kind": "ice", "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdp_mid": "0", "sdp_mline_index": 0}});
        post(bo, &format!("/calls/{id}/signal"), &ice)
            .await
            .expect(202);
        on_ana
            .wait(EVENT_WITHIN, "the candidate on ana's stream", |e, d| {
                e == "call_signal" && d["signal"]["kind"] == "ice" && d["from"] == bo.node_id
            })
            .await;
        // Bad signals.
        let big = json!({"to": bo.node_id, "signal": {"kind": "offer", "sdp": "v".repeat(64 * 1024 + 1)}});
        post(ana, &format!("/calls/{id}/signal"), &big)
            .await
            .expect_error(400);
        let odd = json!({"to": bo.node_id, "signal": {"kind": "bye"}});
        post(ana, &format!("/calls/{id}/signal"), &odd)
            .await
            .expect_error(400);
        let nobody = json!({"to": 12345, "signal": {"kind": "hello"}});
        post(ana, &format!("/calls/{id}/signal"), &nobody)
            .await
            .expect_error(409);
        let a = call(ana, Method::POST, &format!("/calls/{id}/alive"), None).await;
        assert_eq!(a.status, 204, "{}", a.text);

        // ana records: bo's node sees it.
        post(ana, &format!("/calls/{id}/recording"), &json!({"on": true}))
            .await
            .expect(200);
        on_bo
            .wait(EVENT_WITHIN, "ana's recording on bo's stream", |e, d| {
                e == "call"
                    && d["participants"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["user"] == "ana" && p["recording"] == true))
            })
            .await;
        // The browsers' ICE servers: a list, empty in a test room.
        let ice = get(ana, "/calls/ice").await.expect(200).clone();
        assert!(ice["ice_servers"].is_array(), "{ice}");

        // bo hangs up: the call ends on both, and its lines are messages.
        call(bo, Method::POST, &format!("/calls/{id}/hangup"), None)
            .await
            .expect(200);
        on_ana
            .wait(EVENT_WITHIN, "the end on ana's stream", |e, d| {
                e == "call" && d["id"] == id.as_str() && d["outcome"] == "ended"
            })
            .await;
        let calls = get(bo, "/calls").await.expect(200).clone();
        assert_eq!(calls["calls"][0]["state"], "ended", "{calls}");
        call(bo, Method::POST, &format!("/calls/{id}/hangup"), None)
            .await
            .expect_error(409);
        let mut events = Vec::new();
        for _ in 0..50 {
            let page = get(ana, "/messages").await.expect(200).clone();
            events = page["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .filter_map(|m| Some((m["sender"].as_str()?.to_owned(), m["call"]["event"].as_str()?.to_owned())))
                .collect();
            if events.iter().any(|(_, e)| e == "ended") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(events.contains(&("ana".into(), "started".into())), "{events:?}");
        assert!(events.contains(&("bo".into(), "joined".into())), "{events:?}");
        assert_eq!(
            events.iter().filter(|(_, e)| e == "ended").count(),
            1,
            "both nodes proposed the end; it applies once: {events:?}"
        );
        // A call line is not edited or deleted.
        let page = get(ana, "/messages").await.expect(200).clone();
        let line = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .find(|m| m["sender"] == "ana" && m["call"]["event"] == "started")
            .expect("the started line")
            .clone();
        let lid = line["id"].as_str().expect("id");
        patch(ana, &format!("/messages/{lid}"), &json!({"content": "no"}))
            .await
            .expect_error(409);
        delete(ana, &format!("/messages/{lid}")).await.expect_error(409);
        room.stop().await;
    })
    .await
    .expect("the test finishes in time");
}
