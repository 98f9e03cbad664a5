//! Drives `skygit node` processes: starts them on a repository, learns
//! each one's HTTP API address from its first line of output, and talks to
//! it over that API. `skygit-tools demo`, `skygit-tools bench mesh` and the process
//! tests share it, so they all exercise the binary a user runs.

pub mod browser;
pub mod media_servers;
pub mod nat;

use skygit_api::events::{Event, EventReader};
use skygit_api::{ErrorBody, ErrorStatus, MessageChanged, MessagePage, NewMessage, Peer, Status};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A test that cannot run here (not root, a tool missing) says why and
/// skips on a developer's machine; under CI (`CI=true`, or
/// `SKYGIT_TESTS_MUST_RUN=1` as `.ci/run` sets it), where everything it
/// needs is installed, it fails instead.
pub fn skip_unless_required(reason: &str) {
    let set = |name: &str| {
        std::env::var(name)
            .map(|v| !v.is_empty() && v != "0" && v != "false")
            .unwrap_or(false)
    };
    if set("CI") || set("SKYGIT_TESTS_MUST_RUN") {
        panic!("this test must run under CI but cannot: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// How long a node may take to print its API address.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// One HTTP call's timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub bin: PathBuf,
    pub repo: PathBuf,
    pub user: String,
    pub data_dir: PathBuf,
    /// Extra command-line arguments (after `node`).
    pub args: Vec<String>,
    /// Extra environment (for example `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where the node's standard error goes.
    pub log: PathBuf,
    /// A command the node runs under (for example `ip netns exec NS`).
    pub wrapper: Vec<String>,
}

/// Presence timing for tests: poll fast while connecting, settle in 5 s.
pub const TEST_POLLING: [&str; 4] = ["--fast-poll-ms", "300", "--slow-poll-secs", "5"];

impl NodeSpec {
    /// A node of a test room: data directory `dir/<user>`, test polling,
    /// then `extra` arguments.
    pub fn for_test(bin: &Path, dir: &Path, repo: &Path, user: &str, extra: &[&str]) -> Self {
        let mut s = Self::new(bin, repo, user, &dir.join(user));
        s.args = TEST_POLLING
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        s
    }

    /// A node of a test room run in network namespace `ns` (root only):
    /// host candidates on `bind`, the API on `api_ip` (a link the test's
    /// namespace reaches), a commit every second, then `extra`.
    #[allow(clippy::too_many_arguments)]
    pub fn in_netns(
        bin: &Path,
        dir: &Path,
        repo: &Path,
        user: &str,
        ns: &str,
        bind: &str,
        api_ip: &str,
        extra: &[String],
    ) -> Self {
        let api = format!("{api_ip}:0");
        let own = ["--bind", bind, "--api", &api, "--commit-interval", "1"];
        let extra: Vec<&str> = own
            .into_iter()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let mut s = Self::for_test(bin, dir, repo, user, &extra);
        s.wrapper = ["ip", "netns", "exec", ns].map(String::from).to_vec();
        s
    }

    pub fn new(bin: &Path, repo: &Path, user: &str, data_dir: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            repo: repo.to_owned(),
            user: user.to_owned(),
            data_dir: data_dir.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            log: data_dir.with_extension("log"),
            wrapper: Vec::new(),
        }
    }
}

/// `skygit init` of the repository `repo` (a path becomes a new bare
/// repository), with `extra` arguments such as `--commit-interval 1`.
pub fn init_repo(bin: &Path, repo: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(bin)
        .arg("init")
        .arg("--repo")
        .arg(repo)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .context("skygit init runs")?;
    if !out.status.success() {
        bail!(
            "skygit init {} failed: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The answer to a post.
#[derive(Debug, Clone, Deserialize)]
pub struct Posted {
    pub id: String,
    pub index: Option<u64>,
    pub queued: bool,
}

/// A running node process.
pub struct NodeProc {
    pub spec: NodeSpec,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// The node's API secret (sent as `Authorization: Bearer`).
    pub secret: String,
    pub node_id: u64,
    child: Child,
    http: reqwest::Client,
}

impl NodeProc {
    /// Starts a node and waits for its API address and node id.
    pub async fn start(spec: NodeSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let mut cmd = match spec.wrapper.split_first() {
            None => Command::new(&spec.bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&spec.bin);
                c
            }
        };
        cmd.arg("node")
            .arg("--repo")
            .arg(&spec.repo)
            .arg("--user")
            .arg(&spec.user)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(&spec.args)
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spec.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (api, secret) = tokio::time::timeout(START_TIMEOUT, async {
            let mut api = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("api: ") {
                    api = Some(addr.trim().to_owned());
                } else if let (Some(s), Some(a)) = (line.strip_prefix("secret: "), &api) {
                    return Ok((a.clone(), s.trim().to_owned()));
                }
            }
            bail!(
                "the node exited before printing its API address (see {})",
                spec.log.display()
            )
        })
        .await
        .with_context(|| {
            format!(
                "node {} did not start in time (see {})",
                spec.user,
                spec.log.display()
            )
        })??;
        // Keep draining standard output so the node never blocks on it.
        // (As bytes: splitting a busy room's message lines would cost the
        // measuring process more than the nodes spend printing them.)
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut lines.into_inner(), &mut tokio::io::sink()).await;
        });
        let http = Self::client(&secret, Some(CALL_TIMEOUT))?;
        let mut node = Self {
            spec,
            api,
            secret,
            node_id: 0,
            child,
            http,
        };
        node.node_id = node.status().await?.node_id;
        Ok(node)
    }

    /// An HTTP client that sends the node's secret with every request.
    fn client(secret: &str, timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let mut b = reqwest::Client::builder().default_headers(headers);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        Ok(b.build()?)
    }

    /// The client this node's calls use (it carries the secret).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /status`, decoded with the API's types.
    pub async fn status(&self) -> anyhow::Result<Status> {
        self.get("/status").await
    }

    /// A `GET` answered with success, decoded as `T` (the API's types
    /// refuse unknown fields: a contract drift fails here).
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self.http.get(format!("{}{path}", self.api)).send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {path}: {text}"))
    }

    /// Posts `content` to the general conversation.
    pub async fn post(&self, content: &str) -> anyhow::Result<Posted> {
        post_to(&self.http, &self.api, content).await
    }

    /// `POST /attachments`: the bytes as one file.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        name: &str,
        media_type: &str,
    ) -> anyhow::Result<skygit_api::Attachment> {
        let r = self
            .http
            .post(format!(
                "{}/attachments?name={}",
                self.api,
                url_escape(name)
            ))
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes)
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("upload answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Posts `content` with files uploaded to this node.
    pub async fn post_files(
        &self,
        content: &str,
        attachments: Vec<skygit_api::Attachment>,
    ) -> anyhow::Result<MessageChanged> {
        let r = self
            .http
            .post(format!("{}/messages", self.api))
            .json(&NewMessage {
                content: content.to_owned(),
                conversation: None,
                attachments,
            })
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("post answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// `GET /attachments/{sha256}` (with `range`, a `Range` header): the
    /// status and the bytes.
    pub async fn download(
        &self,
        sha256: &str,
        range: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self
            .http
            .get(format!("{}/attachments/{sha256}", self.api))
            .timeout(Duration::from_secs(300));
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.bytes().await?.to_vec()))
    }

    /// The general conversation's message contents in log order.
    pub async fn contents(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page: MessagePage = self
                .get(&format!("/messages?limit=1000&after={after}"))
                .await?;
            let Some(last) = page.messages.last() else {
                break;
            };
            after = last.index.context("a listed message without index")?;
            for m in page.messages {
                out.push(m.content);
            }
            if !page.has_more {
                break;
            }
        }
        Ok(out)
    }

    /// Follows the node's stream of applied messages: `(message id,
    /// applied_at_us)` pairs, until the stream ends or the receiver is
    /// dropped.
    pub async fn events(&self) -> anyhow::Result<tokio::sync::mpsc::Receiver<(String, u64)>> {
        let client = Self::client(&self.secret, None)?;
        let mut r = client
            .get(format!("{}/events", self.api))
            .send()
            .await?
            .error_for_status()?;
        let (tx, rx) = tokio::sync::mpsc::channel(65_536);
        tokio::spawn(async move {
            let mut reader = EventReader::new(1 << 20);
            while let Ok(Some(chunk)) = r.chunk().await {
                for event in reader.feed(&chunk) {
                    match event {
                        Ok(Event::Message(m)) => {
                            let Some(at) = m.applied_at_us else { continue };
                            if tx.send((m.id, at)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // The contract drifted: end the stream loudly.
                        Err(e) => {
                            tracing::error!(error = %e, "an event the API's types cannot read");
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Closes this node's link to `peer` as if it failed (the node must run
    /// with `--fault-api`).
    pub async fn drop_link(&self, peer: u64) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/faults/drop-link/{peer}", self.api))
            .send()
            .await?;
        r.error_for_status()?;
        Ok(())
    }

    /// Keeps this node from ever linking to `peer` (the node must run
    /// with `--fault-api`): as if no path between the two existed.
    pub async fn block(&self, peer: u64) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/faults/block/{peer}", self.api))
            .send()
            .await?;
        r.error_for_status()?;
        Ok(())
    }

    /// Sends raw bytes to `peer` at `layer` (`wire` or `frame`); the node
    /// must run with `--fault-api`.
    pub async fn send_raw(&self, peer: u64, layer: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/faults/send/{peer}/{layer}", self.api))
            .body(bytes)
            .send()
            .await?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "send_raw answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The leader this node knows, if any.
    pub async fn leader(&self) -> Option<u64> {
        self.status().await.ok()?.consensus.leader
    }

    /// Kills the process at once (SIGKILL): no flush, no goodbye.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub async fn stop(&mut self, wait: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "node {} did not stop within {wait:?}; killed",
                    self.spec.user
                )
            }
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after
/// `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts `content` to the general conversation of the node at `api`
/// (`http` carries its secret): applied, or queued in its outbox.
pub async fn post_to(http: &reqwest::Client, api: &str, content: &str) -> anyhow::Result<Posted> {
    let r = http
        .post(format!("{api}/messages"))
        .json(&NewMessage {
            content: content.to_owned(),
            conversation: None,
            attachments: Vec::new(),
        })
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if status.is_success() {
        let body: MessageChanged = serde_json::from_str(&text)?;
        return Ok(Posted {
            id: body.message_id,
            index: body.message.index,
            queued: false,
        });
    }
    let body: ErrorBody = serde_json::from_str(&text)?;
    if body.status != ErrorStatus::Queued {
        bail!("post answered {status}: {text}");
    }
    Ok(Posted {
        id: body
            .message_id
            .context("a queued answer without message_id")?,
        index: None,
        queued: true,
    })
}

/// Waits until every node reports the same leader and returns it.
pub async fn wait_leader(nodes: &[&NodeProc], timeout: Duration) -> anyhow::Result<u64> {
    wait_for(timeout, "one leader known to every node", || async {
        let mut leader = None;
        for n in nodes {
            let l = n.leader().await?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    })
    .await
}

/// The leader every node of `nodes` knows, and another voter of its
/// membership (a room of at least two voters).
pub async fn leader_and_another_voter(
    nodes: &[&NodeProc],
    timeout: Duration,
) -> anyhow::Result<(u64, u64)> {
    let leader = wait_leader(nodes, timeout).await?;
    let voters = nodes
        .iter()
        .find(|n| n.node_id == leader)
        .context("the leader is not one of the nodes")?
        .status()
        .await?
        .membership
        .context("the leader reports no membership")?
        .voters;
    let other = voters
        .into_iter()
        .find(|v| *v != leader)
        .context("the leader is the only voter")?;
    Ok((leader, other))
}

/// Waits until every node in `nodes` runs in the room's raft group of
/// `epoch` or a newer one (a re-formed group).
pub async fn wait_epoch(nodes: &[&NodeProc], epoch: u64, timeout: Duration) -> anyhow::Result<()> {
    for n in nodes {
        wait_for(
            timeout,
            &format!("{} in group epoch {epoch}", n.spec.user),
            || async { (n.status().await.ok()?.membership?.epoch >= epoch).then_some(()) },
        )
        .await?;
    }
    Ok(())
}

/// Waits until the room's voters are exactly `count` nodes as the leader
/// sees them, and every node in `nodes` is a member.
pub async fn wait_members(
    nodes: &[&NodeProc],
    voters: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(timeout, "the membership to settle", || async {
        let leader = wait_leader(nodes, Duration::from_millis(1)).await.ok()?;
        let l = nodes.iter().find(|n| n.node_id == leader)?;
        let m = l.status().await.ok()?.membership?;
        let (v, learners) = (m.voters, m.learners);
        let all_in = nodes
            .iter()
            .all(|n| v.contains(&n.node_id) || learners.contains(&n.node_id));
        // A joint configuration lists old and new voters together, and
        // needs both majorities: not settled, whatever the count.
        (v.len() == voters && !m.joint && all_in).then_some(())
    })
    .await
}

/// Posts `each` messages through every node in turn (`"{round} #{i} from
/// {user}"`), adding each acknowledged text to `sent`; returns what each
/// post answered.
pub async fn post_round(
    nodes: &[&NodeProc],
    round: &str,
    each: u64,
    sent: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<(String, String, Posted)>> {
    let mut out = Vec::new();
    for i in 0..each {
        for n in nodes {
            let text = format!("{round} #{i} from {}", n.spec.user);
            let p = n
                .post(&text)
                .await
                .with_context(|| format!("posting through {}", n.spec.user))?;
            if p.index.is_none() && !p.queued {
                bail!("{} neither applied nor queued {text:?}", n.spec.user);
            }
            sent.insert(text.clone());
            out.push((n.spec.user.clone(), text, p));
        }
    }
    Ok(out)
}

/// Waits until every node's general conversation holds exactly the texts
/// in `sent`, each once, in the same order on every node; returns it.
pub async fn converged(
    nodes: &[&NodeProc],
    sent: &std::collections::BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    wait_for(
        timeout,
        "every node to hold every message once, in one order",
        || async {
            let mut first: Option<Vec<String>> = None;
            for n in nodes {
                let c = n.contents().await.ok()?;
                let set: std::collections::BTreeSet<String> = c.iter().cloned().collect();
                if set != *sent || c.len() != sent.len() || first.as_ref().is_some_and(|f| *f != c)
                {
                    return None;
                }
                first.get_or_insert(c);
            }
            first
        },
    )
    .await
}

/// The entry for `peer` in a node's status (its `peers` list), if listed.
pub fn peer_entry(status: &Status, peer: u64) -> Option<&Peer> {
    status.peers.iter().find(|p| p.node_id == peer)
}

/// The phase of this node's link to `peer` (`"none"` when not listed).
pub fn link_phase(status: &Status, peer: u64) -> &str {
    peer_entry(status, peer).map_or("none", |p| p.phase.as_str())
}

/// Decodes a node's answer to `method path` with the API's shared types
/// (which refuse unknown fields): a refusal as [`ErrorBody`], a success as
/// the route's answer type. `Err` says how the answer breaks the contract.
/// Answers that are not JSON (pages, metrics, the event stream) and the
/// OpenAPI description itself are not checked here.
pub fn check_answer(method: &str, path: &str, status: u16, body: &str) -> anyhow::Result<()> {
    fn de<T: serde::de::DeserializeOwned>(body: &str) -> anyhow::Result<()> {
        serde_json::from_str::<T>(body)
            .map(drop)
            .with_context(|| format!("not a {}", std::any::type_name::<T>()))
    }
    use skygit_api::calls::{CallView, Calls, IceConfig};
    use skygit_api::faults::{Blocked, Dropped, Sent};
    use skygit_api::*;
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = method.to_ascii_uppercase();
    // A range outside a file: the answer has no body.
    if status == 416 && method == "GET" && matches!(segments.as_slice(), ["attachments", _]) {
        return Ok(());
    }
    if status >= 400 {
        return de::<ErrorBody>(body);
    }
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["status"]) => de::<Status>(body),
        ("GET", ["peers"]) => de::<PeerList>(body),
        ("GET", ["messages"]) => de::<MessagePage>(body),
        ("POST", ["messages"]) => de::<MessageChanged>(body),
        ("GET", ["messages", _]) => de::<Message>(body),
        ("PATCH" | "DELETE", ["messages", _]) => de::<MessageChanged>(body),
        ("GET", ["outbox"]) => de::<Outbox>(body),
        ("POST", ["attachments"]) => de::<Attachment>(body),
        // A file's bytes.
        ("GET", ["attachments", _]) => Ok(()),
        ("GET", ["conversations"]) => de::<ConversationList>(body),
        ("POST", ["conversations"]) => de::<ConversationCreated>(body),
        ("GET", ["repositories"]) => de::<RepositoryList>(body),
        ("POST", ["repositories"]) => de::<RepositoryAdded>(body),
        ("POST", ["push"]) => de::<Pushed>(body),
        ("GET", ["flushes"]) => de::<FlushList>(body),
        ("GET" | "PUT", ["settings"]) => de::<Settings>(body),
        ("GET", ["calls"]) => de::<Calls>(body),
        ("POST", ["calls"]) => de::<CallView>(body),
        ("GET", ["calls", "ice"]) => de::<IceConfig>(body),
        ("POST", ["calls", _, "accept" | "decline" | "hangup" | "recording"]) => {
            de::<CallView>(body)
        }
        // 204 and 202: no body.
        ("POST", ["calls", _, "alive" | "signal"]) => Ok(()),
        ("POST", ["faults", "block", _]) => de::<Blocked>(body),
        ("POST", ["faults", "drop-link", _]) => de::<Dropped>(body),
        ("POST", ["faults", "send", _, _]) => de::<Sent>(body),
        ("GET", ["openapi.json" | "metrics" | "events" | "" | "dashboard"])
        | ("GET", ["ui", _]) => Ok(()),
        _ => bail!("{method} {path} answered {status}, but the contract has no such route"),
    }
}

/// Percent-encodes everything but unreserved characters (a query value).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Chat posted through one node every 50 ms while something else happens
/// (a transfer): each post's latency.
pub struct ChatProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<ChatLatency>,
}

/// What a [`ChatProbe`] saw.
#[derive(Debug, Default)]
pub struct ChatLatency {
    /// Milliseconds from each post to its answer (applied or queued),
    /// sorted.
    pub took_ms: Vec<f64>,
    /// Posts kept in the outbox (no leader reachable).
    pub queued: usize,
    /// Posts that got no answer or an error.
    pub failed: usize,
}

impl ChatLatency {
    /// The `p` quantile (0 to 1) of the latencies; 0 without any.
    pub fn quantile(&self, p: f64) -> f64 {
        let t = &self.took_ms;
        if t.is_empty() {
            return 0.0;
        }
        t[(((t.len() - 1) as f64) * p.clamp(0.0, 1.0)).round() as usize]
    }
}

impl ChatProbe {
    /// Starts posting `chat N` through `node`.
    pub fn start(node: &NodeProc) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (http, api, flag) = (node.http.clone(), node.api.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seen = ChatLatency::default();
            let mut i = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                match post_to(&http, &api, &format!("chat {i}")).await {
                    Ok(p) => {
                        seen.took_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                        seen.queued += usize::from(p.queued);
                    }
                    Err(_) => seen.failed += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen.took_ms.sort_by(f64::total_cmp);
            seen
        });
        Self { stop, task }
    }

    /// Stops posting; what it saw.
    pub async fn finish(self) -> anyhow::Result<ChatLatency> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await?)
    }
}
