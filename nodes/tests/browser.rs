//! The web UI and the dashboard in a real browser: Debian's headless
//! chromium driven through chromedriver (WebDriver), against a room of two
//! real `skygit node` processes on a local bare repository.
//!
//! - a message typed into one node's UI appears in the other node's UI
//!   within a second, and reaches the repository;
//! - message text is shown as text, never run as markup;
//! - the dashboard names the leader and updates live.
//!
//! Screenshots go to `$SKYGIT_SCREENSHOTS` (default
//! `<CARGO_TARGET_TMPDIR>/screenshots`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fantoccini::elements::Element;
use fantoccini::wd::{TimeoutConfiguration, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use skygit_harness::{init_repo, wait_leader, wait_members, NodeProc, NodeSpec};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the room may take to form.
const SETTLE: Duration = Duration::from_secs(90);
/// The most one test may take, room and browsers included.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a page may take to show its first data and open its event
/// stream.
const PAGE_READY: Duration = Duration::from_secs(15);
/// The promise: a message shows on the other node's page within this.
const DELIVERY: Duration = Duration::from_secs(1);

/// The tests of this file run one at a time: each starts two node
/// processes and two browsers, and on two cores several at once would
/// starve raft's timers (and the latency measurement).
static ONE_ROOM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- the room -----------------------------------------------------------

struct Room {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProc>,
}

impl Room {
    /// `skygit init` on a new bare repository, then two nodes (ana, bo)
    /// that find each other through it; waits for two voters and a leader.
    async fn start() -> anyhow::Result<Room> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("room.git");
        let bin = Path::new(env!("CARGO_BIN_EXE_skygit"));
        init_repo(
            bin,
            &repo,
            &dir.path().join("init"),
            &["--commit-interval", "1"],
        )?;
        let mut nodes = Vec::new();
        for user in ["ana", "bo"] {
            let spec =
                NodeSpec::for_test(bin, dir.path(), &repo, user, &["--commit-interval", "1"]);
            nodes.push(
                NodeProc::start(spec)
                    .await
                    .with_context(|| format!("node {user} starts"))?,
            );
        }
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        let t0 = Instant::now();
        wait_members(&refs, 2, SETTLE).await?;
        let leader = wait_leader(&refs, SETTLE).await?;
        eprintln!(
            "room of {:?} formed with leader {leader} in {:?}",
            nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
            t0.elapsed()
        );
        Ok(Room { dir, nodes })
    }

    fn ui(&self, i: usize) -> String {
        format!("{}/#secret={}", self.nodes[i].api, self.nodes[i].secret)
    }

    fn dashboard(&self, i: usize) -> String {
        format!(
            "{}/dashboard#secret={}",
            self.nodes[i].api, self.nodes[i].secret
        )
    }

    async fn stop(self) -> anyhow::Result<()> {
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
struct Driver {
    child: std::process::Child,
    url: String,
    profiles: tempfile::TempDir,
}

impl Driver {
    /// Fails at once, saying what to install, when there is no browser.
    fn require() -> anyhow::Result<()> {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            ensure!(
                Path::new(path).exists(),
                "{path} ({what}) is missing: run scripts/setup.sh, which installs \
                 Debian's chromium and chromium-driver"
            );
        }
        Ok(())
    }

    async fn start(log: &Path) -> anyhow::Result<Driver> {
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
    async fn session(&self, name: &str) -> anyhow::Result<Client> {
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
struct BrowserLog;

type WdUrl = url::Url;
type WdUrlError = url::ParseError;
type WdMethod = http::Method;

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
async fn alert(c: &Client) -> anyhow::Result<Option<String>> {
    match c.get_alert_text().await {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_no_such_alert() => Ok(None),
        Err(e) => Err(e).context("GET /alert/text"),
    }
}

/// Script errors and Content-Security-Policy violations logged in the
/// console since the last call (chromedriver's log endpoint).
async fn console_problems(c: &Client) -> anyhow::Result<Vec<String>> {
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
async fn text_of(c: &Client, css: &str) -> anyhow::Result<String> {
    Ok(c.find(Locator::Css(css)).await?.text().await?)
}

/// The `value` property of an element (a text field's content).
async fn value_of(e: &Element) -> anyhow::Result<String> {
    Ok(e.prop("value").await?.unwrap_or_default())
}

/// Runs a script in the page and decodes its answer.
async fn js<T: DeserializeOwned>(c: &Client, script: &str, args: Vec<Value>) -> anyhow::Result<T> {
    let v = c.execute(script, args).await?;
    serde_json::from_value(v.clone()).with_context(|| format!("unexpected script answer {v}"))
}

/// Polls `check` every `every` until it returns `Some`; fails after
/// `timeout` naming `what`.
async fn poll<T, F, Fut>(
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
async fn open_chat(c: &Client, url: &str) -> anyhow::Result<()> {
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
    println!(
        "{}: first contentful paint {} ms, load event {} ms",
        url.split('#').next().unwrap_or(url),
        paint["fcp"],
        paint["loaded"]
    );
    Ok(())
}

/// The message whose `.content` text is exactly `text`, if the page shows
/// it: `{id, sender, sync}`.
async fn find_message(c: &Client, text: &str) -> anyhow::Result<Option<Value>> {
    let v: Value = js(
        c,
        "for (const li of document.querySelectorAll('#messages .message')) {
           const c = li.querySelector('.content');
           if (c && c.textContent === arguments[0]) {
             const t = (s) => { const e = li.querySelector(s); return e ? e.textContent : null; };
             return { id: li.dataset.id, sender: t('.sender'), sync: t('.sync') };
           }
         }
         return null;",
        vec![json!(text)],
    )
    .await?;
    Ok((!v.is_null()).then_some(v))
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("SKYGIT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"))
}

async fn screenshot(c: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, c.screenshot().await?)?;
    eprintln!("screenshot: {}", path.display());
    Ok(path)
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{what} {}-{nanos}", std::process::id())
}

/// Sets up a room, chromedriver and `sessions` browsers, runs `body`, then
/// closes the browsers and stops the room whatever the body answered.
async fn with_room_and_browsers<F>(name: &str, sessions: usize, body: F)
where
    F: for<'a> FnOnce(
        &'a Room,
        &'a [Client],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
    >,
{
    let _one = ONE_ROOM_AT_A_TIME.lock().await;
    let run = async {
        Driver::require()?;
        let room = Room::start().await.context("the room forms")?;
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
            result = body(&room, &clients).await;
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
        Ok(r) => r.unwrap(),
        Err(_) => panic!("{name} did not finish within {TEST_TIMEOUT:?}"),
    }
}

// ---- the tests ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_typed_on_one_node_shows_on_the_other_within_a_second() {
    with_room_and_browsers("delivery", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            let text = unique("hello from the browser");
            let text = text.as_str();
            let composer = &ua.find(Locator::Css("#composer")).await?;
            composer.send_keys(text).await?;
            let t0 = Instant::now();
            composer.send_keys("\u{e007}").await?;
            let mut seen = None;
            while t0.elapsed() < DELIVERY * 5 {
                if let Some(v) = find_message(ub, text).await? {
                    seen = Some((t0.elapsed(), v));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let Some((took, m)) = seen else {
                screenshot(ua, "delivery-a-failed").await?;
                screenshot(ub, "delivery-b-failed").await?;
                bail!(
                    "the message never showed in B's page (waited {:?})",
                    DELIVERY * 5
                );
            };
            eprintln!(
                "typed on {} (node {}), shown on {} (node {}) {:.1} ms after Enter",
                room.nodes[0].spec.user,
                room.nodes[0].node_id,
                room.nodes[1].spec.user,
                room.nodes[1].node_id,
                took.as_secs_f64() * 1000.0
            );
            ensure!(
                took <= DELIVERY,
                "the message took {took:?} to show on B (promise: {DELIVERY:?})"
            );
            ensure!(
                m["sender"] == json!(room.nodes[0].spec.user),
                "B shows the wrong sender: {m}"
            );
            // The sender's page shows it too, and the composer is empty.
            poll(
                Duration::from_secs(5),
                Duration::from_millis(50),
                "A to show its message",
                || async move { find_message(ua, text).await },
            )
            .await?;
            ensure!(
                value_of(composer).await?.is_empty(),
                "A's composer was not cleared"
            );
            // The leader commits every second: the page hears it through
            // `synced` and shows the message as in the repository.
            let synced = poll(
                Duration::from_secs(20),
                Duration::from_millis(100),
                "B to show the message in the repository",
                || async move {
                    Ok(find_message(ub, text).await?.filter(|m| {
                        m["sync"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("in repository"))
                    }))
                },
            )
            .await;
            screenshot(ua, "delivery-a").await?;
            screenshot(ub, "delivery-b").await?;
            synced?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_a_message_is_shown_as_text() {
    with_room_and_browsers("markup", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            let payloads = [
                "<script>alert(1)</script>".to_owned(),
                format!("<img src=x onerror=alert(2)> {}", unique("img")),
            ];
            let composer = &ua.find(Locator::Css("#composer")).await?;
            for p in &payloads {
                composer.send_keys(&format!("{p}\u{e007}")).await?;
                // Wait for the composer to empty: one post at a time.
                poll(Duration::from_secs(10), Duration::from_millis(50), "the post to be answered", || async move {
                    Ok(value_of(composer).await?.is_empty().then_some(()))
                })
                .await?;
            }
            for (page, who) in [(ua, "A"), (ub, "B")] {
                for p in &payloads {
                    let m = poll(Duration::from_secs(5), Duration::from_millis(50), "the message to show", || async move {
                        find_message(page, p).await
                    })
                    .await
                    .with_context(|| format!("{who} does not show {p:?} as text"))?;
                    eprintln!("{who} shows {p:?} as text ({})", m["id"]);
                }
                if let Some(t) = alert(page).await? {
                    bail!("{who}: an alert is open: {t:?}");
                }
                let injected: Value = js(
                    page,
                    "return {
                       scripts: [...document.querySelectorAll('script')]
                         .filter((s) => s.textContent.includes('alert(')).length,
                       elements: document.querySelectorAll('#messages script, #messages img, #messages [onerror]').length,
                     }",
                    vec![],
                )
                .await?;
                ensure!(
                    injected == json!({"scripts": 0, "elements": 0}),
                    "{who}: markup from a message reached the DOM: {injected}"
                );
            }
            screenshot(ub, "markup-b").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_the_leader_and_updates_live() {
    with_room_and_browsers("dashboard", 1, |room, b| {
        Box::pin(async move {
            let page = &b[0];
            page.goto(&room.dashboard(1)).await?;
            let ids: Vec<u64> = room.nodes.iter().map(|n| n.node_id).collect();
            let leader = poll(
                PAGE_READY,
                Duration::from_millis(100),
                "the dashboard to name a leader",
                || async move {
                    let t = text_of(page, "#leader").await?;
                    Ok(t.trim().parse::<u64>().ok())
                },
            )
            .await?;
            ensure!(
                ids.contains(&leader),
                "#leader shows {leader}, not a node of the room {ids:?}"
            );
            let refs: Vec<&NodeProc> = room.nodes.iter().collect();
            let actual = wait_leader(&refs, Duration::from_secs(10)).await?;
            ensure!(
                leader == actual,
                "#leader shows {leader}, the room's leader is {actual}"
            );
            let url = page.current_url().await?;
            ensure!(
                !url.as_str().contains('#'),
                "the secret stays in the address bar: {url}"
            );
            // "last updated" moves every second.
            let text = |sel: &'static str| async move { text_of(page, sel).await };
            let first = text("#updated-at").await?;
            let first = first.as_str();
            poll(
                Duration::from_secs(5),
                Duration::from_millis(100),
                "#updated-at to change",
                || async move {
                    let now = text("#updated-at").await?;
                    Ok((now != first && now != "never").then_some(()))
                },
            )
            .await?;
            // A post moves the applied index.
            let before: u64 = text("#applied-index")
                .await?
                .trim()
                .parse()
                .context("#applied-index is a number")?;
            room.nodes[0].post(&unique("dashboard")).await?;
            let after = poll(
                Duration::from_secs(5),
                Duration::from_millis(100),
                "#applied-index to grow",
                || async move {
                    let v: Option<u64> = text("#applied-index").await?.trim().parse().ok();
                    Ok(v.filter(|v| *v > before))
                },
            )
            .await?;
            eprintln!("dashboard: leader {leader}, applied index {before} -> {after}");
            // Give the charts a few samples before the picture.
            tokio::time::sleep(Duration::from_secs(2)).await;
            screenshot(page, "dashboard").await?;
            Ok(())
        })
    })
    .await;
}
