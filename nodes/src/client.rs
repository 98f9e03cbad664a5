//! `skygit send`, `tail`, `status` and `push`: the command line against
//! the local running node, through its HTTP API. The node's address and
//! secret come from its data directory (`api.json`, `api-secret`), or
//! from `--api-url` and `SKYGIT_SECRET`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

/// One call's timeout (a push may take as long as the repository does).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
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

    /// One call; answers the status and the JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, self.endpoint(path, query)?)
            .timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {} (is it running?)", self.url))?;
        let status = r.status();
        let text = r.text().await.context("the node's answer broke off")?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("the node answered {status} with non-JSON"))?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the node refused the secret: {}", v["error"]);
        }
        Ok((status, v))
    }
}

fn error_text(v: &Value) -> String {
    v["error"].as_str().unwrap_or("unknown error").to_owned()
}

/// One message as a terminal line.
fn line(m: &Value) -> String {
    let text = if m["deleted"] == true {
        "(deleted)".to_owned()
    } else {
        m["content"].as_str().unwrap_or_default().to_owned()
    };
    let edited = if m["edited"] == true { " (edited)" } else { "" };
    let sync = match m["sync_state"].as_str() {
        Some("synchronized") => "",
        Some("pending") => " [pending]",
        _ => " [not in the repository yet]",
    };
    format!(
        "[{:>6}] #{} {}: {text}{edited}{sync}",
        m["index"].as_u64().unwrap_or(0),
        m["conversation"].as_str().unwrap_or("?"),
        m["sender"].as_str().unwrap_or("?"),
    )
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The conversation (default `general`).
    #[arg(long, short)]
    conversation: Option<String>,
    /// The message; `-` or nothing reads it from standard input.
    text: Vec<String>,
}

pub async fn send(a: SendArgs) -> anyhow::Result<()> {
    let c = Client::new(&a.client)?;
    let text = match a.text.as_slice() {
        [] => read_stdin()?,
        [one] if one == "-" => read_stdin()?,
        words => words.join(" "),
    };
    let mut body = serde_json::json!({ "content": text });
    if let Some(conv) = a.conversation {
        body["conversation"] = Value::String(conv);
    }
    let (status, v) = c
        .call(reqwest::Method::POST, "/messages", &[], Some(body))
        .await?;
    match (status.as_u16(), v["status"].as_str()) {
        (201, _) => {
            println!(
                "sent {} at index {}",
                v["message_id"].as_str().unwrap_or("?"),
                v["message"]["index"]
            );
            Ok(())
        }
        (503, Some("queued")) => {
            eprintln!(
                "no leader is reachable: message {} is kept in the node's outbox ({} waiting) and is sent when a leader is reachable",
                v["message_id"].as_str().unwrap_or("?"),
                v["outbox_len"]
            );
            Ok(())
        }
        _ => bail!("not sent ({status}): {}", error_text(&v)),
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
        let (status, v) = c.call(reqwest::Method::GET, "/messages", &q, None).await?;
        if !status.is_success() {
            bail!("cannot read messages ({status}): {}", error_text(&v));
        }
        for m in v["messages"].as_array().into_iter().flatten() {
            println!("{}", line(m));
            last = last.max(m["index"].as_u64().unwrap_or(0));
        }
    }
    let Some(mut r) = stream else {
        return Ok(());
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut event = String::new();
    while let Some(chunk) = r.chunk().await.context("the event stream broke off")? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_EVENT_LINE && !buf.contains(&b'\n') {
            bail!("the node sent an event line over {MAX_EVENT_LINE} bytes");
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end();
            if let Some(e) = text.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(data) = text.strip_prefix("data: ") {
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                match event.as_str() {
                    "message" if v["conversation"] == conversation.as_str() => {
                        // An edit or delete of an older message prints too.
                        let i = v["index"].as_u64().unwrap_or(0);
                        if i > last || v["edited"] == true || v["deleted"] == true {
                            println!("{}", line(&v));
                            last = last.max(i);
                        }
                    }
                    "lagged" => eprintln!(
                        "({} events not shown: this terminal fell behind)",
                        v["missed"]
                    ),
                    _ => {}
                }
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
        let (_, s) = c.call(reqwest::Method::GET, "/status", &[], None).await?;
        let cu = &s["catch_up"];
        if cu["done"] != false {
            if shown {
                eprintln!("\rcaught up at index {}{:20}", cu["applied_index"], "");
            }
            return Ok(());
        }
        let (applied, target) = (
            cu["applied_index"].as_u64().unwrap_or(0),
            cu["target_index"].as_u64().unwrap_or(0),
        );
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
    let (status, s) = c.call(reqwest::Method::GET, "/status", &[], None).await?;
    if !status.is_success() {
        bail!("no status ({status}): {}", error_text(&s));
    }
    if a.json {
        println!("{s}");
        return Ok(());
    }
    let cs = &s["consensus"];
    println!(
        "node {} ({}) in {}",
        s["node_id"],
        s["user"].as_str().unwrap_or("?"),
        s["room"].as_str().unwrap_or("?")
    );
    let leader = match cs["leader"].as_u64() {
        Some(l) if Some(l) == s["node_id"].as_u64() => format!("{l} (this node)"),
        Some(l) => l.to_string(),
        None => "none reachable".to_owned(),
    };
    println!(
        "raft: {} in term {}, leader {leader}; log {} committed {} applied {}; outbox {}",
        cs["state"].as_str().unwrap_or("?"),
        cs["term"],
        cs["last_log_index"],
        cs["committed_index"],
        cs["applied_index"],
        cs["outbox_len"]
    );
    if s["catch_up"]["done"] == false {
        println!(
            "catching up: {}/{}",
            s["catch_up"]["applied_index"], s["catch_up"]["target_index"]
        );
    }
    let cm = &s["committer"];
    println!(
        "repository: synced up to index {}; commit interval {} s",
        cm["synced_up_to"], cm["interval_secs"]
    );
    if let Some(f) = cm["last_flush"].as_object() {
        println!(
            "last flush: {} {} ({} changes, {} commits, {:.0} ms){}",
            f.get("at").and_then(Value::as_str).unwrap_or("?"),
            f.get("reason").and_then(Value::as_str).unwrap_or("?"),
            f.get("changes").unwrap_or(&Value::Null),
            f.get("commits").unwrap_or(&Value::Null),
            f.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0),
            f.get("error")
                .and_then(Value::as_str)
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    println!("peers: {}", peers.len());
    for p in &peers {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map(|r| format!(", rtt {r:.2} ms"))
            .unwrap_or_default();
        println!(
            "  {} {} {}{}{rtt}",
            p["node_id"],
            p["user"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["role"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
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
    let (status, v) = loop {
        tokio::select! {
            r = &mut call => break r?,
            _ = tick.tick() => eprint!("\rpushing... {} s", started.elapsed().as_secs()),
        }
    };
    if started.elapsed() >= Duration::from_secs(1) {
        eprintln!();
    }
    match status.as_u16() {
        200 => {
            if let Some(l) = v["leader"].as_u64() {
                eprintln!("(flushed by the room's leader, node {l})");
            }
            println!(
                "pushed {} changes in {} commit(s); the repository holds the log up to index {} (head {}) in {:.0} ms",
                v["changes"],
                v["commits"],
                v["up_to_index"],
                v["head"].as_str().unwrap_or("none"),
                v["duration_ms"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
        _ => bail!("push failed ({status}): {}", error_text(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_line_shows_its_state() {
        let m = serde_json::json!({
            "index": 7, "conversation": "general", "sender": "ana",
            "content": "hi", "edited": true, "deleted": false, "sync_state": "committed",
        });
        assert_eq!(
            line(&m),
            "[     7] #general ana: hi (edited) [not in the repository yet]"
        );
        let d = serde_json::json!({
            "index": 8, "conversation": "general", "sender": "ana",
            "content": "", "edited": false, "deleted": true, "sync_state": "synchronized",
        });
        assert_eq!(line(&d), "[     8] #general ana: (deleted)");
    }
}
