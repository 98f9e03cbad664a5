//! The web UI and the dashboard in a real browser: Debian's headless
//! chromium driven through chromedriver (WebDriver), against a room of two
//! real `skygit node` processes on a local bare repository.
//!
//! - a message typed into one node's UI appears in the other node's UI
//!   within a second, and reaches the repository;
//! - message text is shown as text, never run as markup;
//! - the dashboard names the leader and updates live;
//! - one's own message is edited (Escape cancels, Enter saves) and deleted
//!   from the keyboard, and both pages show it; others' messages offer
//!   neither;
//! - a conversation made in the form shows live in the other page's list,
//!   which marks it unread when a message arrives there;
//! - without a leader a post shows as pending under the "no leader" notice,
//!   and commits on the page once the leader is back;
//! - a page whose node dies says it is offline;
//! - the settings form changes the commit interval;
//! - "load older" brings the earlier messages, in order, once each.
//!
//! Screenshots go to `$SKYGIT_SCREENSHOTS` (default
//! `<CARGO_TARGET_TMPDIR>/screenshots`).

mod browser_kit;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fantoccini::Locator;
use serde_json::{json, Value};
use skygit_harness::{wait_leader, NodeProc};

use browser_kit::*;

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
            // The room verifies identities: the post is signed by ana's
            // key, and B's page marks it verified.
            ensure!(
                m["verified"] == json!("✓ verified"),
                "B does not mark it verified: {m}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_messages_are_edited_and_deleted_from_the_keyboard() {
    with_room_and_browsers("edit", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            let before = unique("before the edit");
            let composer = ua.find(Locator::Css("#composer")).await?;
            composer.send_keys(&format!("{before}{ENTER}")).await?;
            let id = wait_text(ua, &before, "A to show its message").await?;
            let id = id.as_str();
            wait_message(ua, id, "A to offer edit and delete", |m| {
                m["edit"] == true && m["delete"] == true
            })
            .await?;
            let on_b = wait_message(ub, id, "B to show A's message", |m| {
                m["content"] == json!(before)
            })
            .await?;
            ensure!(
                on_b["edit"] == false && on_b["delete"] == false,
                "B offers to edit or delete A's message: {on_b}"
            );
            // Nor does A offer it for B's message.
            let theirs = room.nodes[1].post(&unique("from bo")).await?;
            let m = wait_message(ua, &theirs.id, "A to show B's message", |m| {
                m["sender"] == json!(room.nodes[1].spec.user)
            })
            .await?;
            ensure!(
                m["edit"] == false && m["delete"] == false,
                "A offers to edit or delete B's message: {m}"
            );

            // Enter on the edit control opens the editor, focused; Escape
            // cancels it and gives the focus back to the control.
            ua.find(Locator::Css(&control(id, "button.edit")))
                .await?
                .send_keys(ENTER)
                .await?;
            wait_message(ua, id, "the editor to open", |m| m["editing"] == true).await?;
            let f = focused(ua).await?;
            ensure!(
                f == format!("textarea.edit-box in {id}"),
                "the editor is not focused: {f}"
            );
            let editor = ua.active_element().await?;
            ensure!(
                value_of(&editor).await? == before,
                "the editor does not start from the message's text"
            );
            editor.send_keys(&format!(" draft{ESCAPE}")).await?;
            let m = wait_message(ua, id, "Escape to close the editor", |m| {
                m["editing"] == false
            })
            .await?;
            ensure!(
                m["content"] == json!(before) && m["edited"].is_null(),
                "Escape changed the message: {m}"
            );
            let f = focused(ua).await?;
            ensure!(
                f == format!("button.edit in {id}"),
                "after Escape the focus is not on the edit control: {f}"
            );
            // Again, from the focused control: replace the text, Enter saves.
            let after = unique("after the edit");
            ua.active_element().await?.send_keys(ENTER).await?;
            wait_message(ua, id, "the editor to open again", |m| m["editing"] == true).await?;
            let editor = ua.active_element().await?;
            editor.send_keys(&format!("{SELECT_ALL}{after}")).await?;
            ensure!(
                value_of(&editor).await? == after,
                "the editor holds {:?}",
                value_of(&editor).await?
            );
            editor.send_keys(ENTER).await?;
            for (page, who) in [(ua, "A"), (ub, "B")] {
                let m = wait_message(page, id, &format!("{who} to show the edit"), |m| {
                    m["content"] == json!(after) && m["editing"] == false
                })
                .await?;
                ensure!(
                    m["edited"] == json!("(edited)") && m["copies"] == 1,
                    "{who} shows the edit as {m}"
                );
            }
            let m = message(ua, id).await?.context("A lost the message")?;
            ensure!(
                m["edit"] == true && m["delete"] == true,
                "A no longer offers edit and delete: {m}"
            );
            // The API agrees.
            let api: Value = room.nodes[1]
                .http()
                .get(format!("{}/messages/{id}", room.nodes[1].api))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            ensure!(
                api["content"] == json!(after) && api["edited"] == true,
                "B's node holds {api}"
            );
            screenshot(ub, "edit-b").await?;

            // Delete, confirmed in the dialog.
            let del = ua.find(Locator::Css(&control(id, "button.delete"))).await?;
            // The dialog may interrupt the key press command itself.
            let _ = del.send_keys(ENTER).await;
            let question = poll(SHOWS, EVERY, "the delete confirmation", || async move {
                alert(ua).await
            })
            .await?;
            ensure!(question.contains("Delete"), "the dialog asks {question:?}");
            ua.accept_alert().await?;
            for (page, who) in [(ua, "A"), (ub, "B")] {
                let m = wait_message(page, id, &format!("{who} to show the delete"), |m| {
                    m["content"] == json!("(deleted)")
                })
                .await?;
                ensure!(
                    m["deleted"] == true
                        && m["edited"].is_null()
                        && m["edit"] == false
                        && m["delete"] == false
                        && m["copies"] == 1,
                    "{who} shows the deleted message as {m}"
                );
            }
            ensure!(
                find_message(ua, &after).await?.is_none(),
                "A still shows the deleted text"
            );
            // The keyboard stays in the list, not back at the page's start.
            let f = focused(ua).await?;
            ensure!(
                f == "ol#messages.messages",
                "after the delete the focus is on {f}"
            );
            screenshot(ua, "edit-deleted-a").await?;
            screenshot(ub, "edit-deleted-b").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_made_in_the_ui_shows_live_on_the_other_page() {
    with_room_and_browsers("conversations", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            // Something in general, to tell a loaded list from an empty one.
            let in_general = unique("in general");
            room.nodes[1].post(&in_general).await?;
            wait_text(ua, &in_general, "A to show the general message").await?;
            wait_text(ub, &in_general, "B to show the general message").await?;
            mark(ub).await?;

            // The form, from the keyboard: Enter in the title submits.
            let (conv, title) = ("design", "Design review");
            ua.find(Locator::Css("#new-conv-id"))
                .await?
                .send_keys(conv)
                .await?;
            ua.find(Locator::Css("#new-conv-title"))
                .await?
                .send_keys(&format!("{title}{ENTER}"))
                .await?;
            let v = wait_conversations(ua, "A to switch to the new conversation", |v| {
                v["list"][conv]["current"] == true && v["title"] == json!(title)
            })
            .await?;
            ensure!(
                v["list"][conv]["text"] == json!(title) && v["list"]["general"]["current"] == false,
                "A lists {v}"
            );
            ensure!(
                text_of(ua, "#new-conv-msg").await? == "Created.",
                "A's form says {:?}",
                text_of(ua, "#new-conv-msg").await?
            );
            // B hears of it through its event stream, without a reload,
            // and stays where it was.
            let v = wait_conversations(ub, "B to list the new conversation", |v| {
                v["list"][conv].is_object()
            })
            .await?;
            ensure!(
                v["list"][conv]["text"] == json!(title)
                    && v["list"][conv]["current"] == false
                    && v["list"]["general"]["current"] == true
                    && v["title"] == json!("general"),
                "B lists {v}"
            );
            ensure!(still_marked(ub).await?, "B's page was reloaded");

            // Creating it focused A's composer: type, Enter posts there.
            let f = focused(ua).await?;
            ensure!(
                f == "textarea#composer",
                "A's focus is on {f}, not the composer"
            );
            let text = unique("about the design");
            ua.active_element()
                .await?
                .send_keys(&format!("{text}{ENTER}"))
                .await?;
            wait_text(ua, &text, "A to show the message in the new conversation").await?;
            // B: the conversation is marked unread, the message is not in
            // general.
            let v = wait_conversations(ub, "B to mark the conversation unread", |v| {
                v["list"][conv]["unread"] == true
            })
            .await?;
            ensure!(
                v["list"][conv]["badge"] == json!("new")
                    && v["list"]["general"]["unread"] == false
                    && v["title"] == json!("general"),
                "B lists {v}"
            );
            ensure!(
                find_message(ub, &text).await?.is_none(),
                "B shows the design message in general"
            );
            ensure!(
                find_message(ub, &in_general).await?.is_some(),
                "B lost the general message"
            );
            screenshot(ub, "conversations-unread-b").await?;

            // B opens it from the keyboard: the message is there, the mark
            // is gone.
            ub.find(Locator::Css(&format!(
                "#conversations button.conv[data-conv=\"{conv}\"]"
            )))
            .await?
            .send_keys(ENTER)
            .await?;
            wait_text(ub, &text, "B to show the message in the conversation").await?;
            let v = conversations(ub).await?;
            ensure!(
                v["list"][conv]["current"] == true
                    && v["list"][conv]["unread"] == false
                    && v["list"][conv]["badge"].is_null()
                    && v["title"] == json!(title),
                "B lists {v}"
            );
            ensure!(
                find_message(ub, &in_general).await?.is_none(),
                "B shows a general message in {conv}"
            );
            ensure!(still_marked(ub).await?, "B's page was reloaded");
            // A goes back to general: the design message is not there.
            ua.find(Locator::Css(
                "#conversations button.conv[data-conv=\"general\"]",
            ))
            .await?
            .send_keys(ENTER)
            .await?;
            wait_text(ua, &in_general, "A to show general again").await?;
            ensure!(
                find_message(ua, &text).await?.is_none(),
                "A shows the design message in general"
            );
            // The nodes agree.
            for n in &room.nodes {
                let general = api_contents(n, "general").await?;
                let design = api_contents(n, conv).await?;
                ensure!(
                    design == [text.clone()] && !general.contains(&text),
                    "{} holds general {general:?} and {conv} {design:?}",
                    n.spec.user
                );
            }
            screenshot(ub, "conversations-b").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_leader_waits_as_pending_and_commits_when_it_is_back() {
    with_room_and_browsers("no-leader", 1, |room, b| {
        Box::pin(async move {
            let page = &b[0];
            // Two voters: without the other one, no leader can be elected.
            // The page is on the follower; the leader goes away.
            let refs: Vec<&NodeProc> = room.nodes.iter().collect();
            let leader = wait_leader(&refs, SETTLE).await?;
            let gone = room
                .nodes
                .iter()
                .position(|n| n.node_id == leader)
                .context("the leader is a node of the room")?;
            let stays = 1 - gone;
            open_chat(page, &room.ui(stays)).await?;
            wait_shown(page, "no-leader", false, SHOWS).await?;
            mark(page).await?;
            room.nodes[gone].kill().await?;
            let killed_at = Instant::now();
            eprintln!(
                "killed the leader {} ({}); the page is on {} ({})",
                room.nodes[gone].spec.user,
                room.nodes[gone].node_id,
                room.nodes[stays].spec.user,
                room.nodes[stays].node_id
            );

            let text = unique("while there is no leader");
            let text = text.as_str();
            page.find(Locator::Css("#composer"))
                .await?
                .send_keys(&format!("{text}{ENTER}"))
                .await?;
            let entered = Instant::now();
            // The node answers once the post is in its outbox, which may
            // take its forwarding timeout when the leader died a moment
            // ago: meanwhile the page says it is sending.
            let said = poll(
                Duration::from_secs(2),
                EVERY,
                "the page to say something about the post",
                || async move {
                    let s = text_of(page, "#composer-status").await?;
                    let pending = find_message(page, text).await?.is_some();
                    Ok((pending || !s.is_empty()).then_some(s))
                },
            )
            .await?;
            eprintln!("{:?} after Enter the page says {said:?}", entered.elapsed());
            let id = poll(
                Duration::from_secs(30),
                Duration::from_millis(100),
                "the post to show as pending",
                || async move {
                    Ok(find_message(page, text)
                        .await?
                        .filter(|m| m["sync"] == json!("pending"))
                        .and_then(|m| m["id"].as_str().map(str::to_owned)))
                },
            )
            .await?;
            let id = id.as_str();
            eprintln!("pending after {:?}", killed_at.elapsed());
            let status = text_of(page, "#composer-status").await?;
            ensure!(
                status.contains("outbox"),
                "the composer says {status:?}, not that the post waits in the outbox"
            );
            // (The node's status keeps naming the dead leader: with pre-vote
            // the follower never starts an election it cannot win. The page
            // tells from the post waiting in the outbox and from the named
            // leader's peer state.)
            wait_shown(page, "no-leader", true, Duration::from_secs(15)).await?;
            eprintln!("#no-leader after {:?}", killed_at.elapsed());
            let m = message(page, id).await?.context("the pending post")?;
            ensure!(
                m["edit"] == false && m["delete"] == false && m["index"] == json!(""),
                "the pending post shows as {m}"
            );
            screenshot(page, "no-leader-pending").await?;

            // The leader comes back from its data directory.
            let spec = room.nodes[gone].spec.clone();
            let restarted = Instant::now();
            room.nodes[gone] = NodeProc::start(spec).await.context("the node restarts")?;
            let m = poll(
                RECOVERY,
                Duration::from_millis(200),
                "the pending post to commit on the page",
                || async move {
                    Ok(message(page, id).await?.filter(|m| {
                        m["index"].as_str().is_some_and(|i| !i.is_empty())
                            && m["sync"]
                                .as_str()
                                .is_some_and(|s| s == "committed" || s.starts_with("in repository"))
                    }))
                },
            )
            .await?;
            eprintln!(
                "committed on the page {:?} after the restart",
                restarted.elapsed()
            );
            ensure!(
                m["content"] == json!(text) && m["copies"] == 1,
                "the page shows {m}"
            );
            ensure!(still_marked(page).await?, "the page was reloaded");
            let copies = shown(page)
                .await?
                .into_iter()
                .filter(|(_, c)| *c == text)
                .count();
            ensure!(copies == 1, "the page shows the post {copies} times");
            wait_shown(page, "no-leader", false, Duration::from_secs(15)).await?;
            // The composer no longer says the post waits.
            poll(SHOWS, EVERY, "the outbox warning to go", || async move {
                let s = text_of(page, "#composer-status").await?;
                Ok((!s.contains("outbox")).then_some(()))
            })
            .await?;
            wait_message(page, id, "the edit control on the committed post", |m| {
                m["edit"] == true
            })
            .await?;
            screenshot(page, "no-leader-committed").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_says_offline_when_its_node_dies() {
    with_room_and_browsers("offline", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            for page in [ua, ub] {
                ensure!(
                    is_hidden(page, "offline").await?,
                    "#offline shows too early"
                );
            }
            room.nodes[1].kill().await?;
            let t0 = Instant::now();
            wait_shown(ub, "offline", true, OFFLINE_NOTICE)
                .await
                .context("B's node died")?;
            eprintln!("#offline shown {:?} after the kill", t0.elapsed());
            // Then it says the node cannot be reached (the next status poll).
            let said = poll(
                Duration::from_secs(10),
                Duration::from_millis(100),
                "#offline to say the node cannot be reached",
                || async move {
                    let t = text_of(ub, "#offline").await?;
                    Ok(t.contains("cannot reach the node").then_some(t))
                },
            )
            .await?;
            eprintln!("B says {said:?} {:?} after the kill", t0.elapsed());
            screenshot(ub, "offline-b").await?;
            // A's node lives: A is not offline.
            ensure!(
                is_hidden(ua, "offline").await?,
                "A shows #offline though its node runs: {:?}",
                text_of(ua, "#offline").await?
            );
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_form_changes_the_commit_interval() {
    with_room_and_browsers("settings", 1, |room, b| {
        Box::pin(async move {
            let page = &b[0];
            open_chat(page, &room.ui(0)).await?;
            let node = &room.nodes[0];
            let get = || async move {
                let v: Value = node
                    .http()
                    .get(format!("{}/settings", node.api))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::Ok(v)
            };
            let before = get().await?;
            ensure!(
                before["commit_interval_secs"] == 1,
                "the room starts with {before}"
            );
            // Open the settings from the keyboard (Enter on the summary).
            page.find(Locator::Css("#settings summary"))
                .await?
                .send_keys(ENTER)
                .await?;
            let field = page.find(Locator::Css("#commit-interval")).await?;
            let field = &field;
            poll(
                SHOWS,
                EVERY,
                "the form to show the interval",
                || async move {
                    Ok(
                        (field.is_displayed().await? && value_of(field).await? == "1")
                            .then_some(()),
                    )
                },
            )
            .await?;
            field.send_keys(&format!("{SELECT_ALL}7")).await?;
            ensure!(
                value_of(field).await? == "7",
                "the field holds {:?}",
                value_of(field).await?
            );
            field.send_keys(ENTER).await?;
            poll(SHOWS, EVERY, "the form to say Saved.", || async move {
                Ok((text_of(page, "#settings-msg").await? == "Saved.").then_some(()))
            })
            .await?;
            let after = get().await?;
            ensure!(
                after["commit_interval_secs"] == 7
                    && after["room"]["commit_interval_secs"] == 7
                    && after["voters"] == before["voters"]
                    && after["room"]["voters"].is_null(),
                "GET /settings answers {after} (before: {before})"
            );
            // Every node runs the room's new interval, and the repository
            // records it.
            for n in &room.nodes {
                poll(
                    SHOWS,
                    EVERY,
                    "every node to flush every 7 s",
                    || async move {
                        Ok(
                            (n.status().await?.committer.map(|c| c.interval_secs) == Some(7))
                                .then_some(()),
                        )
                    },
                )
                .await?;
            }
            let repo = room.dir.path().join("room.git");
            poll(SHOWS, EVERY, "config.json to hold 7 s", || {
                let repo = repo.clone();
                async move {
                    let out = std::process::Command::new("git")
                        .arg("--git-dir")
                        .arg(&repo)
                        .args(["show", "main:.messages/config.json"])
                        .output()?;
                    let c: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                    Ok((c["commit_interval_secs"] == 7).then_some(()))
                }
            })
            .await?;
            screenshot(page, "settings").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_older_shows_the_earlier_messages_in_order() {
    with_room_and_browsers("load-older", 1, |room, b| {
        Box::pin(async move {
            let page = &b[0];
            const PAGE: usize = 50;
            const POSTED: usize = 64;
            let texts: Vec<String> = (0..POSTED).map(|i| format!("older {i:02}")).collect();
            for t in &texts {
                let p = room.nodes[0].post(t).await?;
                ensure!(p.index.is_some(), "{t:?} was not applied: {p:?}");
            }
            open_chat(page, &room.ui(0)).await?;
            let first = poll(
                SHOWS,
                EVERY,
                "the page to show 50 messages",
                || async move {
                    let s = shown(page).await?;
                    Ok((s.len() >= PAGE).then_some(s))
                },
            )
            .await?;
            let contents: Vec<&str> = first.iter().map(|(_, c)| c.as_str()).collect();
            ensure!(
                contents == texts[POSTED - PAGE..],
                "the first page shows {contents:?}"
            );
            wait_shown(page, "load-older", true, SHOWS).await?;
            // The reader goes to the top of the list (Home on the focused
            // list), then presses Enter on the button.
            page.find(Locator::Css("#messages"))
                .await?
                .send_keys(HOME)
                .await?;
            let oldest = texts[POSTED - PAGE].as_str();
            poll(
                SHOWS,
                EVERY,
                "Home to scroll to the oldest message",
                || async move { Ok(in_view(page, oldest).await?.then_some(())) },
            )
            .await?;
            page.find(Locator::Css("#load-older"))
                .await?
                .send_keys(ENTER)
                .await?;
            let all = poll(SHOWS, EVERY, "the older messages to show", || async move {
                let s = shown(page).await?;
                Ok((s.len() > PAGE).then_some(s))
            })
            .await?;
            let contents: Vec<&str> = all.iter().map(|(_, c)| c.as_str()).collect();
            ensure!(
                contents == texts,
                "after load older the page shows {contents:?}"
            );
            let ids: std::collections::BTreeSet<&str> =
                all.iter().map(|(i, _)| i.as_str()).collect();
            ensure!(ids.len() == all.len(), "the page shows a message twice");
            // Nothing older is left.
            wait_shown(page, "load-older", false, SHOWS).await?;
            // The first message of the first page is still where the
            // reader was: the list did not jump to the top.
            ensure!(
                in_view(page, oldest).await? && !in_view(page, &texts[0]).await?,
                "after load older the list jumped away from {oldest:?}"
            );
            screenshot(page, "load-older").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pasted_on_one_node_shows_as_a_preview_on_the_other() {
    with_room_and_browsers("attach", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            // A 40×30 PNG drawn in A's page, pasted into its composer
            // under a name that is markup.
            let name = "<img src=x onerror=alert(1)>.png";
            let pasted = ua
                .execute_async(
                    "const [name, done] = arguments;
                     const c = document.createElement('canvas');
                     c.width = 40; c.height = 30;
                     const g = c.getContext('2d');
                     g.fillStyle = '#c33'; g.fillRect(0, 0, 40, 30);
                     c.toBlob((b) => {
                       const dt = new DataTransfer();
                       dt.items.add(new File([b], name, { type: 'image/png' }));
                       const ev = new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
                       document.getElementById('composer').dispatchEvent(ev);
                       done(ev.defaultPrevented);
                     }, 'image/png');",
                    vec![json!(name)],
                )
                .await?;
            ensure!(pasted == json!(true), "the composer did not take the pasted file");
            poll(
                Duration::from_secs(20),
                Duration::from_millis(50),
                "the pasted file to upload",
                || async move {
                    let done: bool = js(
                        ua,
                        "const li = document.querySelectorAll('#staged li');
                         return li.length === 1 && !li[0].querySelector('progress')
                           && !li[0].classList.contains('error');",
                        vec![],
                    )
                    .await?;
                    Ok(done.then_some(()))
                },
            )
            .await?;
            let text = unique("a picture");
            let composer = &ua.find(Locator::Css("#composer")).await?;
            composer.send_keys(&text).await?;
            composer.send_keys("\u{e007}").await?;
            // B fetches the bytes from A over the mesh and shows them.
            let shown: Value = poll(
                Duration::from_secs(30),
                Duration::from_millis(100),
                "B to show the picture",
                || {
                    let text = text.clone();
                    async move {
                        let v: Value = js(
                            ub,
                            "for (const li of document.querySelectorAll('#messages .message')) {
                               const c = li.querySelector('.content');
                               if (!c || c.textContent !== arguments[0]) continue;
                               const img = li.querySelector('.file-card img.preview');
                               if (!img || !img.complete || img.naturalWidth === 0) return null;
                               return { w: img.naturalWidth, h: img.naturalHeight,
                                        src: img.getAttribute('src'),
                                        name: li.querySelector('.file-card .name').textContent,
                                        alt: img.getAttribute('alt') };
                             }
                             return null;",
                            vec![json!(text)],
                        )
                        .await?;
                        Ok((!v.is_null()).then_some(v))
                    }
                },
            )
            .await?;
            ensure!(
                shown["w"] == json!(40) && shown["h"] == json!(30),
                "B shows another picture: {shown}"
            );
            ensure!(
                shown["src"].as_str().is_some_and(|s| s.starts_with("blob:")),
                "the picture is not the node's bytes: {shown}"
            );
            ensure!(shown["name"] == json!(name), "the name is not shown as text: {shown}");
            for (who, c) in [("A", ua), ("B", ub)] {
                let injected: u64 = js(
                    c,
                    "return document.querySelectorAll('img[src=\"x\"], img[onerror]').length;",
                    vec![],
                )
                .await?;
                ensure!(injected == 0, "{who}'s page built markup from the file name");
                ensure!(alert(c).await?.is_none(), "{who}'s page ran the file name");
            }
            screenshot(ub, "attach-b").await?;
            Ok(())
        })
    })
    .await;
}
