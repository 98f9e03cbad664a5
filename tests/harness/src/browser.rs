//! The browser harness of the UI tests and `skygit-tools bench call`: a room of `skygit node`
//! processes on a local bare repository, Debian's headless chromium driven
//! through chromedriver (WebDriver), and helpers that read the pages.
//! Chromium gets fake camera and microphone devices (for the call tests)
//! and shows host candidates as addresses, not mDNS names, so WebRTC
//! between two pages works on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{init_repo, wait_leader, wait_members, NodeProc, NodeSpec};
use anyhow::{bail, ensure, Context};
use fantoccini::elements::Element;
use fantoccini::wd::{TimeoutConfiguration, WebDriverCompatibleCommand};
pub use fantoccini::Client;
use fantoccini::{ClientBuilder, Locator};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the room may take to form.
pub const SETTLE: Duration = Duration::from_secs(90);
/// The most one test may take, room and browsers included.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a page may take to show its first data and open its event
/// stream.
pub const PAGE_READY: Duration = Duration::from_secs(15);
/// The promise: a message shows on the other node's page within this.
pub const DELIVERY: Duration = Duration::from_secs(1);
/// How long a restarted node may take to bring a queued post to commit.
pub const RECOVERY: Duration = Duration::from_secs(60);
/// The promise: a page whose node died says so within this.
pub const OFFLINE_NOTICE: Duration = Duration::from_secs(5);

/// The tests of this file run one at a time: each starts two node
/// processes and two browsers, and on two cores several at once would
/// starve raft's timers (and the latency measurement).
pub static ONE_ROOM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- the room -----------------------------------------------------------

pub struct Room {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

impl Room {
    /// `skygit init` on a new bare repository with ana and bo as its
    /// members (keys made with `ssh-keygen`), then their two nodes, which
    /// find each other through it and verify each other; waits for two
    /// voters and a leader.
    pub async fn start(bin: &Path) -> anyhow::Result<Room> {
        Self::start_of(bin, &["ana", "bo"], &[]).await
    }

    /// [`Room::start`] with these users, each node started with `extra`
    /// arguments too; waits until every node counts all as members.
    pub async fn start_of(bin: &Path, users: &[&str], extra: &[&str]) -> anyhow::Result<Room> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("room.git");
        init_repo(
            bin,
            &repo,
            &dir.path().join("init"),
            &["--commit-interval", "1"],
        )?;
        let mut nodes = Vec::new();
        // The room's config.json sets the interval (no node overrides it,
        // so the settings form changes what every node does).
        for user in users {
            let key = dir.path().join(format!("{user}.key"));
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", user, "-f"])
                .arg(&key)
                .output()
                .context("ssh-keygen runs (openssh-client)")?;
            ensure!(out.status.success(), "ssh-keygen: {out:?}");
            let out = std::process::Command::new(bin)
                .args(["members", "add", user])
                .arg(key.with_extension("key.pub"))
                .arg("--repo")
                .arg(&repo)
                .arg("--data-dir")
                .arg(dir.path().join("init"))
                .output()
                .context("skygit members add runs")?;
            ensure!(out.status.success(), "members add {user}: {out:?}");
        }
        for user in users {
            let key = dir.path().join(format!("{user}.key"));
            let key = key.to_string_lossy();
            let mut args = vec!["--ssh-key", &key];
            args.extend_from_slice(extra);
            let spec = NodeSpec::for_test(bin, dir.path(), &repo, user, &args);
            nodes.push(
                NodeProc::start(spec)
                    .await
                    .with_context(|| format!("node {user} starts"))?,
            );
        }
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        let t0 = Instant::now();
        wait_members(&refs, users.len().min(3), SETTLE).await?;
        let leader = wait_leader(&refs, SETTLE).await?;
        eprintln!(
            "room of {:?} formed with leader {leader} in {:?}",
            nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
            t0.elapsed()
        );
        Ok(Room { dir, nodes })
    }

    pub fn ui(&self, i: usize) -> String {
        format!("{}/#secret={}", self.nodes[i].api, self.nodes[i].secret)
    }

    pub fn dashboard(&self, i: usize) -> String {
        format!(
            "{}/dashboard#secret={}",
            self.nodes[i].api, self.nodes[i].secret
        )
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for mut n in self.nodes.into_iter().rev() {
            n.stop(Duration::from_secs(30)).await?;
        }
        drop(self.dir);
        Ok(())
    }
}

// ---- the browser --------------------------------------------------------

/// A chromedriver process on a free loopback port. It runs in its own
/// process group, with the browsers it starts; dropping it kills the group.
pub struct Driver {
    child: std::process::Child,
    url: String,
    profiles: tempfile::TempDir,
}

impl Driver {
    /// Fails at once, saying what to install, when there is no browser.
    pub fn require() -> anyhow::Result<()> {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            ensure!(
                Path::new(path).exists(),
                "{path} ({what}) is missing: run scripts/setup.sh, which installs \
                 Debian's chromium and chromium-driver"
            );
        }
        Ok(())
    }

    pub async fn start(log: &Path) -> anyhow::Result<Driver> {
        Self::require()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = std::process::Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {CHROMEDRIVER}: run scripts/setup.sh"))?;
        let mut d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles: tempfile::tempdir()?,
        };
        // chromedriver serves sessions as soon as it listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listening = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await;
            if let Ok(Ok(_)) = listening {
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!("chromedriver exited ({status}); see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready after 30 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new browser session with a fresh profile.
    pub async fn session(&self, name: &str) -> anyhow::Result<Client> {
        let profile = self.profiles.path().join(name);
        std::fs::create_dir_all(&profile)?;
        let caps = json!({
            // The console log, to catch script errors and CSP violations.
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    // Calls: a fake camera and microphone, permission
                    // granted, media that plays without a gesture, and
                    // host candidates as addresses (not mDNS names, which
                    // nothing resolves here).
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    "--autoplay-policy=no-user-gesture-required",
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    "--auto-select-desktop-capture-source=Entire screen",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let mut builder = ClientBuilder::native();
        let connect = builder.capabilities(caps).connect(&self.url);
        let c = tokio::time::timeout(Duration::from_secs(60), connect)
            .await
            .context("no browser session within 60 s")?
            .context("cannot open a browser session")?;
        c.update_timeouts(TimeoutConfiguration::new(
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(30)),
            Some(Duration::ZERO),
        ))
        .await
        .context("cannot set the session's timeouts")?;
        Ok(c)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`), which
/// fantoccini has no method for.
#[derive(Debug)]
pub struct BrowserLog;

pub type WdUrl = url::Url;
pub type WdUrlError = url::ParseError;
pub type WdMethod = http::Method;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &WdUrl, session_id: Option<&str>) -> Result<WdUrl, WdUrlError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &WdUrl) -> (WdMethod, Option<String>) {
        (
            WdMethod::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// The text of the open alert, if one is open.
pub async fn alert(c: &Client) -> anyhow::Result<Option<String>> {
    match c.get_alert_text().await {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_no_such_alert() => Ok(None),
        Err(e) => Err(e).context("GET /alert/text"),
    }
}

/// Script errors and Content-Security-Policy violations logged in the
/// console since the last call (chromedriver's log endpoint).
pub async fn console_problems(c: &Client) -> anyhow::Result<Vec<String>> {
    let v = c.issue_cmd(BrowserLog).await.context("POST /se/log")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["level"] == json!("SEVERE")
                && (e["source"] == json!("javascript") || e["source"] == json!("security"))
        })
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// The text of the first element matching a CSS selector.
pub async fn text_of(c: &Client, css: &str) -> anyhow::Result<String> {
    Ok(c.find(Locator::Css(css)).await?.text().await?)
}

/// The `value` property of an element (a text field's content).
pub async fn value_of(e: &Element) -> anyhow::Result<String> {
    Ok(e.prop("value").await?.unwrap_or_default())
}

/// Runs a script in the page and decodes its answer.
pub async fn js<T: DeserializeOwned>(
    c: &Client,
    script: &str,
    args: Vec<Value>,
) -> anyhow::Result<T> {
    let v = c.execute(script, args).await?;
    serde_json::from_value(v.clone()).with_context(|| format!("unexpected script answer {v}"))
}

/// Polls `check` every `every` until it returns `Some`; fails after
/// `timeout` naming `what`.
pub async fn poll<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Opens the chat page and waits until it shows this node and its event
/// stream is open.
pub async fn open_chat(c: &Client, url: &str) -> anyhow::Result<()> {
    c.goto(url).await?;
    poll(
        PAGE_READY,
        Duration::from_millis(100),
        "the chat page to go live",
        || async move {
            let ready: bool = js(
                c,
                "return document.documentElement.dataset.events === 'open' \
             && document.getElementById('node-info').textContent.includes('node ') \
             && document.getElementById('auth').hidden",
                vec![],
            )
            .await?;
            Ok(ready.then_some(()))
        },
    )
    .await?;
    let now = c.current_url().await?;
    ensure!(
        !now.as_str().contains('#'),
        "the secret stays in the address bar: {now}"
    );
    // The first paint, as the browser measured it (printed, not asserted:
    // a speed target is a measurement).
    let paint: Value = js(
        c,
        "const p = performance.getEntriesByName('first-contentful-paint')[0]; \
         const n = performance.getEntriesByType('navigation')[0]; \
         return {fcp: p ? p.startTime : null, loaded: n ? n.loadEventEnd : null};",
        vec![],
    )
    .await?;
    eprintln!(
        "{}: first contentful paint {} ms, load event {} ms",
        url.split('#').next().unwrap_or(url),
        paint["fcp"],
        paint["loaded"]
    );
    Ok(())
}

/// The message whose `.content` text is exactly `text`, if the page shows
/// it: `{id, sender, sync}`.
pub async fn find_message(c: &Client, text: &str) -> anyhow::Result<Option<Value>> {
    let v: Value = js(
        c,
        "for (const li of document.querySelectorAll('#messages .message')) {
           const c = li.querySelector('.content');
           if (c && c.textContent === arguments[0]) {
             const t = (s) => { const e = li.querySelector(s); return e ? e.textContent : null; };
             return { id: li.dataset.id, sender: t('.sender'), sync: t('.sync'), verified: t('.verified') };
           }
         }
         return null;",
        vec![json!(text)],
    )
    .await?;
    Ok((!v.is_null()).then_some(v))
}

pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("SKYGIT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("skygit-screenshots"))
}

pub async fn screenshot(c: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, c.screenshot().await?)?;
    eprintln!("screenshot: {}", path.display());
    Ok(path)
}

pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{what} {}-{nanos}", std::process::id())
}

// WebDriver key codes (typed with `send_keys`).
pub const ENTER: &str = "\u{e007}";
pub const ESCAPE: &str = "\u{e00c}";
pub const HOME: &str = "\u{e011}";
/// Control+A, then Control released: selects all of a text field's
/// content, so the next keys replace it.
pub const SELECT_ALL: &str = "\u{e009}a\u{e000}";

/// How long a page may take to show what its node did.
pub const SHOWS: Duration = Duration::from_secs(10);
pub const EVERY: Duration = Duration::from_millis(50);

/// The message with this id as the page shows it, if it does: its text,
/// sync state, markers and controls.
pub async fn message(c: &Client, id: &str) -> anyhow::Result<Option<Value>> {
    let v: Value = js(
        c,
        "const li = [...document.querySelectorAll('#messages .message')]
           .find((l) => l.dataset.id === arguments[0]);
         if (!li) return null;
         const t = (s) => { const e = li.querySelector(s); return e ? e.textContent : null; };
         return {
           id: li.dataset.id, index: li.dataset.index, sender: t('.sender'),
           content: t('.content'), sync: t('.sync'),
           edited: t('.edited'), deleted: li.classList.contains('deleted'),
           edit: !!li.querySelector('button.edit'), delete: !!li.querySelector('button.delete'),
           editing: !!li.querySelector('.edit-box'),
           copies: [...document.querySelectorAll('#messages .message')]
             .filter((l) => l.dataset.id === arguments[0]).length,
         };",
        vec![json!(id)],
    )
    .await?;
    Ok((!v.is_null()).then_some(v))
}

/// Waits until the page shows message `id` and `ok` holds for it.
pub async fn wait_message(
    c: &Client,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let ok = &ok;
    poll(SHOWS, EVERY, what, || async move {
        Ok(message(c, id).await?.filter(|m| ok(m)))
    })
    .await
}

/// The id of the message whose text is `text`, once the page shows it.
pub async fn wait_text(c: &Client, text: &str, what: &str) -> anyhow::Result<String> {
    poll(SHOWS, EVERY, what, || async move {
        Ok(find_message(c, text)
            .await?
            .and_then(|m| m["id"].as_str().map(str::to_owned)))
    })
    .await
}

/// The `.content` texts of every message the page shows, top to bottom,
/// with their ids.
pub async fn shown(c: &Client) -> anyhow::Result<Vec<(String, String)>> {
    js(
        c,
        "return [...document.querySelectorAll('#messages .message')].map((li) => {
           const c = li.querySelector('.content');
           return [li.dataset.id, c ? c.textContent : ''];
         });",
        vec![],
    )
    .await
}

/// Whether the element with this id is hidden (`hidden` or not rendered).
pub async fn is_hidden(c: &Client, id: &str) -> anyhow::Result<bool> {
    js(
        c,
        "const e = document.getElementById(arguments[0]);
         return !e || e.hidden || e.getClientRects().length === 0;",
        vec![json!(id)],
    )
    .await
}

/// Waits until the element with this id is shown (`true`) or hidden.
pub async fn wait_shown(
    c: &Client,
    id: &'static str,
    shown: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("#{id} to be {}", if shown { "shown" } else { "hidden" });
    poll(timeout, EVERY, &what, || async move {
        Ok((is_hidden(c, id).await? != shown).then_some(()))
    })
    .await
}

/// Marks the page's window; [`still_marked`] then tells whether the page
/// was reloaded since.
pub async fn mark(c: &Client) -> anyhow::Result<()> {
    c.execute("window.skygitTestMark = true;", vec![]).await?;
    Ok(())
}

pub async fn still_marked(c: &Client) -> anyhow::Result<bool> {
    js(c, "return window.skygitTestMark === true;", vec![]).await
}

/// Describes the focused element: `tag#id.class…` plus the message id it
/// belongs to, if any.
pub async fn focused(c: &Client) -> anyhow::Result<String> {
    js(
        c,
        "const e = document.activeElement;
         if (!e) return '';
         const li = e.closest('.message');
         return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
           + [...e.classList].map((k) => '.' + k).join('')
           + (li ? ' in ' + li.dataset.id : '');",
        vec![],
    )
    .await
}

/// The CSS selector of a control of message `id`.
pub fn control(id: &str, css: &str) -> String {
    format!("#messages .message[data-id=\"{id}\"] {css}")
}

/// Whether the message with this text is within the list's visible area.
pub async fn in_view(c: &Client, text: &str) -> anyhow::Result<bool> {
    js(
        c,
        "const l = document.getElementById('messages');
         const li = [...l.querySelectorAll('.message')].find((x) => {
           const c = x.querySelector('.content');
           return c && c.textContent === arguments[0];
         });
         if (!li) return false;
         const a = li.getBoundingClientRect(), b = l.getBoundingClientRect();
         return a.bottom > b.top && a.top < b.bottom;",
        vec![json!(text)],
    )
    .await
}

/// The conversation list as the page shows it: `{id: {text, current,
/// unread}}`, and the title over the messages.
pub async fn conversations(c: &Client) -> anyhow::Result<Value> {
    js(
        c,
        "const list = {};
         for (const b of document.querySelectorAll('#conversations button.conv')) {
           const badge = b.querySelector('.badge');
           list[b.dataset.conv] = {
             text: b.firstChild ? b.firstChild.textContent : '',
             current: b.classList.contains('current'),
             unread: b.classList.contains('unread'),
             badge: badge ? badge.textContent : null,
           };
         }
         return { list, title: document.getElementById('conv-title').textContent };",
        vec![],
    )
    .await
}

/// Waits until the page's conversations satisfy `ok`.
pub async fn wait_conversations(
    c: &Client,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let ok = &ok;
    poll(SHOWS, EVERY, what, || async move {
        Ok(Some(conversations(c).await?).filter(|v| ok(v)))
    })
    .await
}

/// The message texts of a conversation through a node's API.
pub async fn api_contents(node: &NodeProc, conversation: &str) -> anyhow::Result<Vec<String>> {
    let v: Value = node
        .http()
        .get(format!(
            "{}/messages?conversation={conversation}&limit=1000",
            node.api
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["messages"]
        .as_array()
        .context("no messages list")?
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// Sets up a room of `users` (their nodes started with `extra`
/// arguments), chromedriver and `sessions` browsers, runs `body` (which
/// may kill and restart the room's nodes), then closes the browsers and
/// stops the room whatever the body answered; a failed run keeps the
/// room's directory and its logs. One room at a time (two cores).
pub async fn run_room<F>(
    bin: &Path,
    users: &[&str],
    extra: &[&str],
    name: &str,
    sessions: usize,
    body: F,
) -> anyhow::Result<()>
where
    F: for<'a> FnOnce(
        &'a mut Room,
        &'a [Client],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
    >,
{
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let run = async {
        Driver::require()?;
        let mut room = Room::start_of(bin, users, extra)
            .await
            .context("the room forms")?;
        let driver = Driver::start(&room.dir.path().join("chromedriver.log")).await?;
        let mut clients = Vec::new();
        let mut result = Ok(());
        for i in 0..sessions {
            match driver.session(&format!("{name}-{i}")).await {
                Ok(c) => clients.push(c),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = body(&mut room, &clients).await;
            if result.is_err() {
                // What each page showed when the test failed.
                for (i, c) in clients.iter().enumerate() {
                    let _ = screenshot(c, &format!("{name}-failed-{i}")).await;
                }
            }
        }
        if result.is_ok() {
            // No page may have logged a script error or a CSP violation.
            for (i, c) in clients.iter().enumerate() {
                match console_problems(c).await {
                    Ok(p) if p.is_empty() => {}
                    Ok(p) => {
                        result = Err(anyhow::anyhow!("browser {i} logged problems: {p:#?}"));
                        break;
                    }
                    Err(e) => {
                        result = Err(e.context("cannot read the browser console"));
                        break;
                    }
                }
            }
        }
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.close()).await;
        }
        drop(driver);
        if result.is_err() {
            for n in &room.nodes {
                eprintln!("node {} log: {}", n.spec.user, n.spec.log.display());
            }
            // Keep the logs of a failed run.
            let kept = room.dir.path().to_owned();
            let Room { dir, nodes } = room;
            drop(nodes);
            let _ = dir.keep();
            eprintln!("kept {}", kept.display());
            return result;
        }
        room.stop().await.context("the nodes stop")
    };
    match tokio::time::timeout(TEST_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("{name} did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// Clicks the element `css` (it must be shown).
pub async fn click(c: &Client, css: &str) -> anyhow::Result<()> {
    let e = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("no {css}"))?;
    e.click()
        .await
        .with_context(|| format!("cannot click {css}"))?;
    Ok(())
}

/// Whether `css` is shown (present and not hidden by itself or a parent).
pub async fn visible(c: &Client, css: &str) -> anyhow::Result<bool> {
    js(
        c,
        "const e = document.querySelector(arguments[0]); \
         return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;",
        vec![json!(css)],
    )
    .await
}

/// Waits until the page rings (its `button_css`, `#call-accept` or
/// `#call-decline`, shows), checking every `every`.
pub async fn wait_ringing(c: &Client, button_css: &str, every: Duration) -> anyhow::Result<()> {
    poll(
        Duration::from_secs(15),
        every,
        "the page to ring",
        || async move { Ok(visible(c, button_css).await?.then_some(())) },
    )
    .await
}

/// Keeps nodes `a` and `b` from ever linking (both run with
/// `--fault-api`) and waits until neither has a link to the other.
pub async fn unlink(a: &NodeProc, b: &NodeProc) -> anyhow::Result<()> {
    a.block(b.node_id).await?;
    b.block(a.node_id).await?;
    poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        "the two nodes to lose their link",
        || async move {
            let linked = |s: skygit_api::Status, p: u64| {
                s.peers
                    .iter()
                    .any(|x| x.node_id == p && x.state == skygit_api::PeerState::Connected)
            };
            Ok(
                (!linked(a.status().await?, b.node_id) && !linked(b.status().await?, a.node_id))
                    .then_some(()),
            )
        },
    )
    .await
}

/// A page's click (Start call or Accept) to its first decoded frame from
/// `peer`, once there is one (`SGCall`'s timings).
pub async fn setup_ms(c: &Client, peer: u64) -> anyhow::Result<Option<f64>> {
    js(
        c,
        "const f = SGCall.firstFrameAt.get(arguments[0]); \
         return (f && SGCall.clickedAt) ? f - SGCall.clickedAt : null;",
        vec![json!(peer)],
    )
    .await
}
