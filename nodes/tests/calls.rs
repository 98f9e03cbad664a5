//! Calls between real browsers: headless chromium with a fake camera and
//! microphone, one page per `skygit node` process, media browser to
//! browser and signalling through the nodes over the WebRTC mesh.
//!
//! - a 1:1 video call: both pages decode the other's video and receive its
//!   audio (`getStats()` counters rise over a second); a recording made
//!   meanwhile ends as an attachment whose bytes are WebM (EBML magic) and
//!   reach the repository; sharing a screen keeps the video flowing; a
//!   reloaded page rejoins the call; hanging up ends the call on both;
//! - a call between two nodes kept unlinked (the fault route): a third node
//!   relays the signalling, and the media still flows;
//! - a three-person call: every page decodes both others;
//! - a declined and an unanswered invite end cleanly, and the call lines
//!   (started, joined, ended, declined, missed) are in the repository.
//!
//! The time from the click on "Start call" to the first decoded remote
//! frame is printed for each call (measured, not asserted; `skygit-tools
//! bench call` reports it over many calls).

mod browser_kit;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use fantoccini::Client;
use serde_json::{json, Value};
use skygit_harness::NodeProc;

use browser_kit::*;

/// How long a call may take to connect and show media.
const CONNECTS: Duration = Duration::from_secs(30);
/// How long an ended call may take to show as ended on every page.
const ENDS: Duration = Duration::from_secs(10);
/// The node's invite timeout, and a margin.
const UNANSWERED: Duration = Duration::from_secs(45 + 15);

/// The page's current call (`SGCall.current()`), if any.
async fn current(c: &Client) -> anyhow::Result<Value> {
    js(c, "return window.SGCall ? SGCall.current() : null;", vec![]).await
}

/// Decoded video frames and received audio bytes on the page's connection
/// to `peer`; `None` while there is none.
async fn received(c: &Client, peer: u64) -> anyhow::Result<Option<(u64, u64)>> {
    let v = c
        .execute_async(
            "const [peer, done] = arguments; \
             const pc = window.SGCall && SGCall.pcs.get(peer); \
             if (!pc) return done(null); \
             pc.getStats().then((r) => { let f = 0, a = 0; \
               r.forEach((s) => { if (s.type !== 'inbound-rtp') return; \
                 if (s.kind === 'video') f += s.framesDecoded || 0; \
                 if (s.kind === 'audio') a += s.bytesReceived || 0; }); \
               done([f, a]); }, () => done(null));",
            vec![json!(peer)],
        )
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Waits until the page decodes `peer`'s video and receives its audio,
/// then checks that both counters rise over one more second.
async fn media_flows(c: &Client, page: &str, peer: u64) -> anyhow::Result<()> {
    let first = poll(
        CONNECTS,
        Duration::from_millis(250),
        &format!("{page} to decode {peer}'s video and audio"),
        || async move { Ok(received(c, peer).await?.filter(|(f, a)| *f > 0 && *a > 0)) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = received(c, peer)
        .await?
        .context("the connection went away")?;
    ensure!(
        second.0 > first.0 && second.1 > first.1,
        "{page}: media from {peer} stopped: frames {} -> {}, audio bytes {} -> {}",
        first.0,
        second.0,
        first.1,
        second.1
    );
    // The tile shows it.
    let width: u64 = js(
        c,
        "const v = document.querySelector('#call-tiles .tile[data-node=\"' + arguments[0] + '\"] video'); \
         return v ? v.videoWidth : 0;",
        vec![json!(peer.to_string())],
    )
    .await?;
    ensure!(width > 0, "{page}: {peer}'s tile shows no video");
    println!(
        "{page}: from {peer}: {} frames decoded, {} audio bytes",
        second.0, second.1
    );
    Ok(())
}

/// Waits until every page's call is over (the page shows no call, or the
/// ended one with `outcome`) and every node's newest call ended with
/// `outcome`.
async fn wait_ended(pages: &[&Client], nodes: &[&NodeProc], outcome: &str) -> anyhow::Result<()> {
    for (i, c) in pages.iter().enumerate() {
        poll(
            ENDS,
            Duration::from_millis(200),
            &format!("page {i} to show the call ended"),
            || async move {
                let call = current(c).await?;
                let ended =
                    call.is_null() || (call["state"] == "ended" && call["outcome"] == outcome);
                Ok(ended.then_some(()))
            },
        )
        .await?;
        ensure!(
            !visible(c, "#call-hangup").await?,
            "page {i} still offers to hang up"
        );
    }
    for n in nodes {
        poll(
            ENDS,
            Duration::from_millis(200),
            &format!("{}'s node to end the call as {outcome}", n.spec.user),
            || async move {
                let calls = calls_of(n).await?;
                let newest = calls
                    .calls
                    .iter()
                    .max_by(|a, b| a.started_at.cmp(&b.started_at));
                Ok(newest
                    .is_some_and(|c| {
                        c.state == skygit_api::calls::CallState::Ended
                            && serde_json::to_value(c.outcome).ok() == Some(json!(outcome))
                    })
                    .then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// The label of the video track `page` sends to `peer`.
async fn sent_video(c: &Client, peer: u64) -> anyhow::Result<String> {
    js(
        c,
        "const pc = SGCall.pcs.get(arguments[0]); \
         const s = pc && pc.getSenders().find((s) => s.track && s.track.kind === 'video'); \
         return s ? s.track.label : '';",
        vec![json!(peer)],
    )
    .await
}

/// A node's calls as its API says.
async fn calls_of(node: &NodeProc) -> anyhow::Result<skygit_api::calls::Calls> {
    node.get("/calls").await
}

/// The call lines of the repository's history (after a flush): each
/// `(sender, event)`.
async fn repo_call_lines(room: &Room, node: usize) -> anyhow::Result<Vec<(String, String)>> {
    let n = &room.nodes[node];
    let r = n.http().post(format!("{}/push", n.api)).send().await?;
    ensure!(r.status().is_success(), "push: {}", r.status());
    let repo = room.dir.path().join("room.git");
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["log", "-p", "--format=", "main", "--", ".messages"])
        .output()?;
    ensure!(out.status.success(), "git log: {out:?}");
    let mut lines = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(json) = l.strip_prefix('+') else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        if v["kind"] == "call" {
            lines.push((
                v["sender"].as_str().unwrap_or("?").to_owned(),
                v["call"]["event"].as_str().unwrap_or("?").to_owned(),
            ));
        }
    }
    Ok(lines)
}

/// Waits until the repository holds `want` call lines (in any order;
/// sender `*`: anyone's, as the end every participant proposes is kept
/// from whoever's came first).
async fn wait_repo_lines(room: &Room, want: &[(&str, &str)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = repo_call_lines(room, 0).await?;
        let missing: Vec<_> = want
            .iter()
            .filter(|(u, e)| {
                !lines
                    .iter()
                    .any(|(lu, le)| (*u == "*" || lu == u) && le == e)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the repository lacks call lines {missing:?}; it has {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_to_one_video_call_flows_both_ways_records_and_hangs_up() {
    with_room(&["ana", "bo"], &[], "call-1to1", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            let (ana, bo) = (room.nodes[0].node_id, room.nodes[1].node_id);
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            // ana calls bo from the peers list.
            click(ua, &format!("button.call-peer[data-node=\"{bo}\"]")).await?;
            wait_ringing(ub, "#call-accept", Duration::from_millis(100)).await?;
            let prompt = text_of(ub, "#call-status").await?;
            ensure!(prompt.contains("ana"), "bo's page says {prompt:?}");
            click(ub, "#call-accept").await?;
            media_flows(ua, "ana", bo).await?;
            media_flows(ub, "bo", ana).await?;
            println!(
                "call set-up, click to first remote frame: ana {:?} ms, bo {:?} ms",
                setup_ms(ua, bo).await?,
                setup_ms(ub, ana).await?
            );
            for (who, node) in [("ana", &room.nodes[0]), ("bo", &room.nodes[1])] {
                let calls = calls_of(node).await?;
                let live: Vec<_> = calls
                    .calls
                    .iter()
                    .filter(|c| c.state == skygit_api::calls::CallState::Active)
                    .collect();
                ensure!(live.len() == 1, "{who}'s node: {calls:?}");
            }

            // ana records; bo's page shows it.
            click(ua, "#call-record").await?;
            poll(
                Duration::from_secs(10),
                Duration::from_millis(100),
                "bo's page to show the recording",
                || async move { Ok(visible(ub, "#call-recording").await?.then_some(())) },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            click(ua, "#call-record").await?;
            let att: Value = poll(
                Duration::from_secs(30),
                Duration::from_millis(200),
                "the recording to be uploaded and posted",
                || async move {
                    let r: Value = js(
                        ua,
                        "return SGCall.recordings.length ? SGCall.recordings[0] : null;",
                        vec![],
                    )
                    .await?;
                    Ok((!r.is_null()).then_some(r))
                },
            )
            .await?;
            let sha = att["sha256"]
                .as_str()
                .context("the recording's hash")?
                .to_owned();
            let size = att["size"].as_u64().context("the recording's size")?;
            ensure!(size > 1000, "a recording of {size} bytes");
            let (status, bytes) = room.nodes[1].download(&sha, None).await?;
            ensure!(
                status == 200,
                "bo's node answers {status} for the recording"
            );
            ensure!(
                bytes.len() as u64 == size,
                "{} bytes of {size}",
                bytes.len()
            );
            ensure!(
                bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]),
                "the recording is not WebM: {:02x?}",
                &bytes[..bytes.len().min(8)]
            );
            poll(
                Duration::from_secs(10),
                Duration::from_millis(100),
                "bo's page to stop showing the recording",
                || async move { Ok((!visible(ub, "#call-recording").await?).then_some(())) },
            )
            .await?;

            // ana shares her screen: her connection sends the screen (a
            // track of its own), and bo keeps decoding her video.
            let camera = sent_video(ua, bo).await?;
            ensure!(!camera.is_empty(), "ana sends no video");
            click(ua, "#call-share").await?;
            poll(
                Duration::from_secs(10),
                Duration::from_millis(100),
                "ana's page to share its screen",
                || async move {
                    let on: Option<String> = js(
                        ua,
                        "return document.getElementById('call-share').getAttribute('aria-pressed');",
                        vec![],
                    )
                    .await?;
                    Ok((on.as_deref() == Some("true")).then_some(()))
                },
            )
            .await?;
            let shared = sent_video(ua, bo).await?;
            ensure!(
                !shared.is_empty() && shared != camera,
                "sharing still sends the camera ({camera:?})"
            );
            media_flows(ub, "bo, ana sharing", ana).await?;
            click(ua, "#call-share").await?;

            // bo's page reloads: it rejoins and the media flows again.
            ub.refresh().await?;
            poll(
                Duration::from_secs(15),
                Duration::from_millis(100),
                "bo's reloaded page to go live",
                || async move {
                    let live: bool = js(
                        ub,
                        "return document.documentElement.dataset.events === 'open';",
                        vec![],
                    )
                    .await?;
                    Ok(live.then_some(()))
                },
            )
            .await?;
            media_flows(ub, "bo, reloaded", ana).await?;
            media_flows(ua, "ana, after bo's reload", bo).await?;

            // bo hangs up: the call ends on both pages.
            click(ub, "#call-hangup").await?;
            wait_ended(&[ua, ub], &[&room.nodes[0], &room.nodes[1]], "ended").await?;
            let calls = calls_of(&room.nodes[0]).await?;
            ensure!(
                calls
                    .calls
                    .iter()
                    .any(|c| c.outcome == Some(skygit_api::calls::CallOutcome::Ended)),
                "ana's node: {calls:?}"
            );
            wait_repo_lines(
                room,
                &[("ana", "started"), ("bo", "joined"), ("*", "ended")],
            )
            .await?;
            // Both pages show the call's lines in the conversation.
            for (who, c) in [("ana", ua), ("bo", ub)] {
                poll(
                    Duration::from_secs(10),
                    Duration::from_millis(200),
                    &format!("{who}'s page to show the call lines"),
                    || async move {
                        let lines: Vec<String> = js(
                            c,
                            "return [...document.querySelectorAll('#messages .call-line')].map((e) => e.textContent);",
                            vec![],
                        )
                        .await?;
                        let has = |t: &str| lines.iter().any(|l| l.contains(t));
                        Ok((has("ana started a call with bo")
                            && has("bo joined the call")
                            && has("call ended after"))
                        .then_some(()))
                    },
                )
                .await?;
            }
            // The recording reached the repository's storage.
            let repo = room.dir.path().join("room.git");
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["ls-tree", "-r", "--name-only", "main", ".messages"])
                .output()?;
            let tree = String::from_utf8_lossy(&out.stdout);
            ensure!(
                tree.lines().any(|l| l.ends_with(&sha)),
                "the recording {sha} is not in the repository: {tree}"
            );
            screenshot(ua, "call-1to1-ana").await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_unlinked_nodes_is_signalled_through_a_third() {
    with_room(
        &["ana", "bo", "cy"],
        &["--fault-api"],
        "call-relayed",
        2,
        |room, b| {
            Box::pin(async move {
                let (ua, uc) = (&b[0], &b[1]);
                let (ana, bo, cy) = (
                    room.nodes[0].node_id,
                    room.nodes[1].node_id,
                    room.nodes[2].node_id,
                );
                // No path between ana's node and cy's.
                unlink(&room.nodes[0], &room.nodes[2]).await?;
                open_chat(ua, &room.ui(0)).await?;
                open_chat(uc, &room.ui(2)).await?;
                click(ua, &format!("button.call-peer[data-node=\"{cy}\"]")).await?;
                wait_ringing(uc, "#call-accept", Duration::from_millis(100)).await?;
                click(uc, "#call-accept").await?;
                media_flows(ua, "ana", cy).await?;
                media_flows(uc, "cy", ana).await?;
                println!(
                    "relayed call set-up, click to first remote frame: ana {:?} ms, cy {:?} ms",
                    setup_ms(ua, cy).await?,
                    setup_ms(uc, ana).await?
                );
                // bo's node carried it.
                let metrics = room.nodes[1]
                    .http()
                    .get(format!("{}/metrics", room.nodes[1].api))
                    .send()
                    .await?
                    .text()
                    .await?;
                let relayed: f64 = metrics
                    .lines()
                    .filter(|l| l.starts_with("skygit_call_frames_relayed_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                ensure!(relayed > 0.0, "bo relayed no call frame:\n{metrics}");
                println!("bo relayed {relayed} call frames");
                ensure!(
                    calls_of(&room.nodes[1]).await?.calls.is_empty(),
                    "bo's node, not in the call, knows of it"
                );
                let _ = bo;
                click(ua, "#call-hangup").await?;
                wait_ended(&[ua, uc], &[&room.nodes[0], &room.nodes[2]], "ended").await?;
                Ok(())
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_people_talk_in_one_call() {
    with_room(&["ana", "bo", "cy"], &[], "call-three", 3, |room, b| {
        Box::pin(async move {
            let ids: Vec<u64> = room.nodes.iter().map(|n| n.node_id).collect();
            for (i, c) in b.iter().enumerate() {
                open_chat(c, &room.ui(i)).await?;
            }
            // Start call invites every online peer.
            poll(
                Duration::from_secs(15),
                Duration::from_millis(200),
                "ana's page to list both peers",
                || async {
                    let n: u64 = js(
                        &b[0],
                        "return document.querySelectorAll('button.call-peer').length;",
                        vec![],
                    )
                    .await?;
                    Ok((n >= 2).then_some(()))
                },
            )
            .await?;
            click(&b[0], "#call-start").await?;
            for c in &b[1..] {
                wait_ringing(c, "#call-accept", Duration::from_millis(100)).await?;
                click(c, "#call-accept").await?;
            }
            let names = ["ana", "bo", "cy"];
            for (i, c) in b.iter().enumerate() {
                for (j, peer) in ids.iter().enumerate() {
                    if i != j {
                        media_flows(c, names[i], *peer)
                            .await
                            .with_context(|| format!("{} hears {}", names[i], names[j]))?;
                    }
                }
            }
            // cy leaves; ana and bo go on.
            click(&b[2], "#call-hangup").await?;
            poll(
                ENDS,
                Duration::from_millis(200),
                "ana's page to drop cy's tile",
                || async {
                    let n: u64 = js(
                        &b[0],
                        "return document.querySelectorAll('#call-tiles .tile').length;",
                        vec![],
                    )
                    .await?;
                    Ok((n == 2).then_some(()))
                },
            )
            .await?;
            media_flows(&b[0], "ana", ids[1]).await?;
            click(&b[0], "#call-hangup").await?;
            wait_ended(
                &[&b[0], &b[1], &b[2]],
                &[&room.nodes[0], &room.nodes[1], &room.nodes[2]],
                "ended",
            )
            .await?;
            wait_repo_lines(
                room,
                &[
                    ("ana", "started"),
                    ("bo", "joined"),
                    ("cy", "joined"),
                    ("cy", "left"),
                ],
            )
            .await?;
            Ok(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_and_unanswered_invites_end_cleanly_and_are_in_the_history() {
    with_room(&["ana", "bo"], &[], "call-declined", 2, |room, b| {
        Box::pin(async move {
            let (ua, ub) = (&b[0], &b[1]);
            let bo = room.nodes[1].node_id;
            open_chat(ua, &room.ui(0)).await?;
            open_chat(ub, &room.ui(1)).await?;
            click(ua, &format!("button.call-peer[data-node=\"{bo}\"]")).await?;
            wait_ringing(ub, "#call-decline", Duration::from_millis(100)).await?;
            click(ub, "#call-decline").await?;
            wait_ended(&[ua, ub], &[&room.nodes[0]], "declined").await?;
            let calls = calls_of(&room.nodes[0]).await?;
            ensure!(
                calls
                    .calls
                    .iter()
                    .any(|c| c.outcome == Some(skygit_api::calls::CallOutcome::Declined)),
                "ana's node: {calls:?}"
            );

            // Again; bo's page lets it ring out.
            click(ua, &format!("button.call-peer[data-node=\"{bo}\"]")).await?;
            wait_ringing(ub, "#call-accept", Duration::from_millis(100)).await?;
            let nb = &room.nodes[1];
            poll(
                UNANSWERED,
                Duration::from_millis(500),
                "the unanswered call to end",
                || async move {
                    let calls = calls_of(nb).await?;
                    Ok(calls
                        .calls
                        .iter()
                        .any(|c| c.outcome == Some(skygit_api::calls::CallOutcome::Missed))
                        .then_some(()))
                },
            )
            .await?;
            wait_ended(&[ua, ub], &[&room.nodes[0], &room.nodes[1]], "missed").await?;
            ensure!(!visible(ub, "#call-accept").await?, "bo's page still rings");
            wait_repo_lines(
                room,
                &[("ana", "started"), ("ana", "declined"), ("ana", "missed")],
            )
            .await?;
            Ok(())
        })
    })
    .await;
}
