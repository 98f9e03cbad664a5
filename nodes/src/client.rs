//! `skygit send`, `tail`, `status` and `push`: the command line against
//! the local running node, through its HTTP API. The node's address and
//! secret come from its data directory (`api.json`, `api-secret`), or
//! from `--api-url` and `SKYGIT_SECRET`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::de::DeserializeOwned;
use skygit_api::events::{Event, EventReader};
use skygit_api::{
    Attachment, ErrorBody, ErrorStatus, Message, MessageChanged, MessagePage, NewMessage, Pushed,
    Status, SyncState,
};

/// One call's timeout (a push may take as long as the repository does).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest an upload may take (a 100 MiB file over a slow disk).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest line of the event stream the CLI buffers.
const MAX_EVENT_LINE: usize = 1 << 20;

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The node's data directory (its `api.json` and `api-secret`).
    #[arg(long, env = "SKYGIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's API address (default: what the running node recorded
    /// in its data directory).
    #[arg(long = "api-url", env = "SKYGIT_API_URL")]
    pub api_url: Option<String>,
    /// The room, when the node serves several (key or repository spec).
    #[arg(long)]
    pub repo: Option<String>,
}

/// A connection to the local node's API.
pub struct Client {
    url: String,
    http: reqwest::Client,
    repo: Option<String>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(crate::config::default_data_dir);
        let url = match &args.api_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => crate::api::secret::read_endpoint(&dir)?,
        };
        let secret = match std::env::var("SKYGIT_SECRET") {
            Ok(s) if !s.is_empty() => s,
            _ => crate::api::secret::read(&dir)?,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))
            .context("the secret is not a valid header value")?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            url,
            http,
            repo: args.repo.clone(),
        })
    }

    fn endpoint(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<reqwest::Url> {
        let mut u = reqwest::Url::parse(&format!("{}{path}", self.url))
            .with_context(|| format!("bad API address {}", self.url))?;
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(r) = &self.repo {
                q.append_pair("repo", r);
            }
        }
        Ok(u)
    }

    /// One call: the answer decoded as `T` on success, or the node's
    /// refusal with its status.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&NewMessage>,
    ) -> anyhow::Result<Result<T, Refused>> {
        let mut req = self
            .http
            .request(method, self.endpoint(path, query)?)
            .timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.answer(path, req).await
    }

    /// Uploads a file (streamed) to `POST /attachments`.
    async fn upload(&self, file: &std::path::Path) -> anyhow::Result<Result<Attachment, Refused>> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let media_type = mime_guess::from_path(file).first_or_octet_stream();
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let req = self
            .http
            .post(self.endpoint("/attachments", &[("name", name)])?)
            .timeout(UPLOAD_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, media_type.essence_str())
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.answer("/attachments", req).await
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Result<T, Refused>> {
        let r = req
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {} (is it running?)", self.url))?;
        let status = r.status();
        let text = r.text().await.context("the node's answer broke off")?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Ok)
                .with_context(|| format!("the node's answer to {path} does not match the API"));
        }
        let body: ErrorBody = serde_json::from_str(&text)
            .with_context(|| format!("the node answered {status} with no error body"))?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the node refused the secret: {}", body.error);
        }
        Ok(Err(Refused { status, body }))
    }
}

/// A refusal: its HTTP status and body.
#[derive(Debug)]
struct Refused {
    status: reqwest::StatusCode,
    body: ErrorBody,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}): {}", self.status, self.body.error)
    }
}

/// One message as a terminal line.
fn line(m: &Message) -> String {
    let call;
    let text = if m.deleted {
        "(deleted)"
    } else if let Some(c) = &m.call {
        call = call_text(c);
        call.as_str()
    } else {
        m.content.as_str()
    };
    let edited = if m.edited { " (edited)" } else { "" };
    let sync = match m.sync_state {
        SyncState::Synchronized => "",
        SyncState::Pending => " [pending]",
        SyncState::Committed => " [not in the repository yet]",
    };
    format!(
        "[{:>6}] #{} {}: {text}{edited}{sync}",
        m.index.unwrap_or(0),
        m.conversation,
        m.sender,
    )
}

/// What a call line says, for a terminal.
fn call_text(c: &skygit_api::calls::CallLine) -> String {
    use skygit_api::calls::CallLineEvent as E;
    let who = c.participants.join(", ");
    let secs = c.duration_ms / 1000;
    match c.event {
        E::Started => format!("(started a call with {who})"),
        E::Joined => "(joined the call)".into(),
        E::Left => "(left the call)".into(),
        E::Ended => format!("(call ended after {}:{:02}: {who})", secs / 60, secs % 60),
        E::Declined => format!("(call declined: {who})"),
        E::Missed => format!("(call missed: {who})"),
        E::Cancelled => "(call cancelled)".into(),
    }
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The conversation (default `general`).
    #[arg(long, short)]
    conversation: Option<String>,
    /// Attach a file (repeatable, at most 10): uploaded to the node first.
    /// Without text, the message is the files' names.
    #[arg(long = "attach", value_name = "FILE")]
    attach: Vec<std::path::PathBuf>,
    /// The message; `-` or nothing reads it from standard input.
    text: Vec<String>,
}

pub async fn send(a: SendArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.client)?;
    if a.attach.len() > skygit_api::limits::MAX_ATTACHMENTS {
        bail!(
            "at most {} files per message",
            skygit_api::limits::MAX_ATTACHMENTS
        );
    }
    let mut attachments = Vec::with_capacity(a.attach.len());
    for file in &a.attach {
        match c.upload(file).await? {
            Ok(att) => attachments.push(att),
            Err(e) => bail!("{} was not uploaded {e}", file.display()),
        }
    }
    let text = match a.text.as_slice() {
        [] if !attachments.is_empty() => attachments
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        [] => read_stdin()?,
        [one] if one == "-" => read_stdin()?,
        words => words.join(" "),
    };
    let body = NewMessage {
        content: text,
        conversation: a.conversation,
        attachments,
    };
    let sent: Result<MessageChanged, Refused> = c
        .call(reqwest::Method::POST, "/messages", &[], Some(&body))
        .await?;
    match sent {
        Ok(v) => {
            println!(
                "sent {} at index {}",
                v.message_id,
                v.message.index.unwrap_or(0)
            );
            Ok(())
        }
        Err(Refused { body: b, .. }) if b.status == ErrorStatus::Queued => {
            eprintln!(
                "no leader is reachable: message {} is kept in the node's outbox ({} waiting) and is sent when a leader is reachable",
                b.message_id.as_deref().unwrap_or("?"),
                b.outbox_len.unwrap_or(0)
            );
            Ok(())
        }
        Err(e) => bail!("not sent {e}"),
    }
}

fn read_stdin() -> anyhow::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin()
        .take(crate::api::MAX_BODY_BYTES as u64 + 1)
        .read_to_string(&mut s)
        .context("cannot read standard input")?;
    Ok(s.trim_end_matches('\n').to_owned())
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The conversation (default `general`).
    #[arg(long, short)]
    conversation: Option<String>,
    /// How many recent messages to print first.
    #[arg(long, short = 'n', default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    lines: u64,
    /// Keep printing messages as they commit.
    #[arg(long, short)]
    follow: bool,
}

pub async fn tail(a: TailArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.client)?;
    let conversation = a.conversation.unwrap_or_else(|| "general".to_owned());
    // Open the stream first, so nothing commits between history and live.
    let stream = if a.follow {
        let r = c
            .http
            .get(c.endpoint("/events", &[])?)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", c.url))?;
        if !r.status().is_success() {
            bail!("the node refused the event stream: {}", r.status());
        }
        Some(r)
    } else {
        None
    };
    if a.follow {
        wait_caught_up(&c).await?;
    }
    let mut last = 0;
    if a.lines > 0 {
        let q = [
            ("limit", a.lines.to_string()),
            ("conversation", conversation.clone()),
        ];
        let page: MessagePage = c
            .call(reqwest::Method::GET, "/messages", &q, None)
            .await?
            .map_err(|e| anyhow::anyhow!("cannot read messages {e}"))?;
        for m in &page.messages {
            println!("{}", line(m));
            last = last.max(m.index.unwrap_or(0));
        }
    }
    let Some(mut r) = stream else {
        return Ok(());
    };
    let mut reader = EventReader::new(MAX_EVENT_LINE);
    while let Some(chunk) = r.chunk().await.context("the event stream broke off")? {
        for event in reader.feed(&chunk) {
            match event.context("the node sent an event this client cannot read")? {
                Event::Message(m) if m.conversation == conversation => {
                    // An edit or delete of an older message prints too.
                    let i = m.index.unwrap_or(0);
                    if i > last || m.edited || m.deleted {
                        println!("{}", line(&m));
                        last = last.max(i);
                    }
                }
                Event::Lagged(l) => {
                    eprintln!("({} events not shown: this terminal fell behind)", l.missed)
                }
                _ => {}
            }
        }
    }
    bail!("the node closed the event stream (it stopped?)")
}

/// Shows the node's catch-up progress (first history load or rejoining)
/// until it has applied what it knows is committed.
async fn wait_caught_up(c: &Client) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = false;
    loop {
        let s: Status = c
            .call(reqwest::Method::GET, "/status", &[], None)
            .await?
            .map_err(|e| anyhow::anyhow!("no status {e}"))?;
        let cu = &s.catch_up;
        if cu.done {
            if shown {
                eprintln!("\rcaught up at index {}{:20}", cu.applied_index, "");
            }
            return Ok(());
        }
        let (applied, target) = (cu.applied_index, cu.target_index);
        eprint!(
            "\rcatching up: {applied}/{target} ({:.0}%)",
            100.0 * applied as f64 / target.max(1) as f64
        );
        shown = true;
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!();
            eprintln!("still catching up after 10 min; following anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the node's status as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.client)?;
    let s: Status = c
        .call(reqwest::Method::GET, "/status", &[], None)
        .await?
        .map_err(|e| anyhow::anyhow!("no status {e}"))?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    let cs = &s.consensus;
    println!("node {} ({}) in {}", s.node_id, s.user, s.room);
    let leader = match cs.leader {
        Some(l) if l == s.node_id => format!("{l} (this node)"),
        Some(l) => l.to_string(),
        None => "none reachable".to_owned(),
    };
    let idx = |i: Option<u64>| i.map_or_else(|| "-".to_owned(), |i| i.to_string());
    println!(
        "raft: {} in term {}, leader {leader}; log {} committed {} applied {}; outbox {}",
        cs.state,
        cs.term,
        idx(cs.last_log_index),
        idx(cs.committed_index),
        idx(cs.applied_index),
        cs.outbox_len
    );
    if !s.catch_up.done {
        println!(
            "catching up: {}/{}",
            s.catch_up.applied_index, s.catch_up.target_index
        );
    }
    if let Some(cm) = &s.committer {
        println!(
            "repository: synced up to index {}; commit interval {} s",
            cm.synced_up_to, cm.interval_secs
        );
        if let Some(f) = &cm.last_flush {
            println!(
                "last flush: {} {} ({} changes, {} commits, {:.0} ms){}",
                f.at.as_deref().unwrap_or("?"),
                f.reason,
                f.changes,
                f.commits,
                f.duration_ms,
                f.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    println!("peers: {}", s.peers.len());
    for p in &s.peers {
        let rtt = p
            .rtt_ms
            .map(|r| format!(", rtt {r:.2} ms"))
            .unwrap_or_default();
        let state = serde_json::to_value(p.state)?;
        let role = p
            .role
            .map(|r| serde_json::to_value(r).map(|r| format!(" ({})", r.as_str().unwrap_or("?"))))
            .transpose()?
            .unwrap_or_default();
        println!(
            "  {} {} {}{role}{rtt}",
            p.node_id,
            p.user,
            state.as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

/// `skygit push` against the running node.
pub async fn push(args: ClientArgs) -> anyhow::Result<()> {
    let c = Client::new(&args)?;
    let started = Instant::now();
    let call = c.call(reqwest::Method::POST, "/push", &[], None);
    tokio::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let pushed: Result<Pushed, Refused> = loop {
        tokio::select! {
            r = &mut call => break r?,
            _ = tick.tick() => eprint!("\rpushing... {} s", started.elapsed().as_secs()),
        }
    };
    if started.elapsed() >= Duration::from_secs(1) {
        eprintln!();
    }
    match pushed {
        Ok(v) => {
            if let Some(l) = v.leader {
                eprintln!("(flushed by the room's leader, node {l})");
            }
            println!(
                "pushed {} changes in {} commit(s); the repository holds the log up to index {} (head {}) in {:.0} ms",
                v.changes,
                v.commits,
                v.up_to_index,
                v.head.as_deref().unwrap_or("none"),
                v.duration_ms
            );
            Ok(())
        }
        Err(e) => bail!("push failed {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        index: u64,
        content: &str,
        edited: bool,
        deleted: bool,
        state: SyncState,
    ) -> Message {
        Message {
            id: "01J00000000000000000000000".into(),
            index: Some(index),
            last_change_index: Some(index),
            conversation: "general".into(),
            sender: "ana".into(),
            content: content.into(),
            created_at: "2026-12-07T00:00:00.000Z".into(),
            updated_at: "2026-12-07T00:00:00.000Z".into(),
            edited,
            deleted,
            verified: false,
            sync_state: state,
            git_hash: None,
            commit_url: None,
            applied_at_us: None,
            attachments: Vec::new(),
            call: None,
        }
    }

    #[test]
    fn a_message_line_shows_its_state() {
        let m = message(7, "hi", true, false, SyncState::Committed);
        assert_eq!(
            line(&m),
            "[     7] #general ana: hi (edited) [not in the repository yet]"
        );
        let d = message(8, "", false, true, SyncState::Synchronized);
        assert_eq!(line(&d), "[     8] #general ana: (deleted)");
        let p = message(9, "later", false, false, SyncState::Pending);
        assert_eq!(line(&p), "[     9] #general ana: later [pending]");
        let mut c = message(10, "", false, false, SyncState::Synchronized);
        c.call = Some(skygit_api::calls::CallLine {
            call: "01J00000000000000000000000".into(),
            event: skygit_api::calls::CallLineEvent::Ended,
            participants: vec!["ana".into(), "bo".into()],
            duration_ms: 83_000,
        });
        assert_eq!(
            line(&c),
            "[    10] #general ana: (call ended after 1:23: ana, bo)"
        );
    }
}
