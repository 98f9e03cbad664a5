//! `skygit-tools bench call`: how long a call takes to set up, in a room of
//! three node processes over WebRTC with a headless Chromium page (fake
//! camera and microphone) for ana and for cy. Each call: ana clicks "Call"
//! on cy's row, cy's page rings and the driver clicks "Accept" at once,
//! and both pages time the first decoded frame of the other's video. Two
//! modes, each in a fresh room: `direct` (ana's and cy's nodes are linked)
//! and `relayed` (the two are kept unlinked by the fault route, so bo's
//! node carries the signalling). Printed per mode over `--calls` calls:
//! the p50, p90 and worst of the caller's click to its first remote frame
//! (ringing and the driver's accept included) and of the callee's click on
//! Accept to its first remote frame. Needs `scripts/setup.sh`'s chromium
//! and chromedriver.
//!
//! It prints numbers; it asserts nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use skygit_harness::browser::{
    click, js, open_chat, poll, run_room, setup_ms, unlink, wait_ringing,
};

#[derive(Args)]
pub struct CallBenchArgs {
    /// Calls per mode.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    calls: u32,
    /// The modes to measure, each in a fresh room.
    #[arg(long, value_delimiter = ',', default_value = "direct,relayed")]
    modes: Vec<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize, Default, Clone)]
struct ModeRun {
    mode: String,
    calls: usize,
    caller_click_to_frame_ms: Summary,
    callee_accept_to_frame_ms: Summary,
}

#[derive(serde::Serialize, Default, Clone, Copy)]
struct Summary {
    p50: f64,
    p90: f64,
    max: f64,
}

fn summary(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    Summary {
        p50: q(0.5),
        p90: q(0.9),
        max: q(1.0),
    }
}

pub async fn call(a: CallBenchArgs) -> anyhow::Result<()> {
    let bin = crate::skygit_binary()?;
    let mut runs = Vec::new();
    for mode in &a.modes {
        anyhow::ensure!(
            mode == "direct" || mode == "relayed",
            "unknown mode {mode:?}: direct or relayed"
        );
        let samples: Arc<Mutex<(Vec<f64>, Vec<f64>)>> = Arc::default();
        let (out, calls, relayed) = (samples.clone(), a.calls, mode == "relayed");
        run_room(
            &bin,
            &["ana", "bo", "cy"],
            &["--fault-api"],
            &format!("bench-call-{mode}"),
            2,
            move |room, b| {
                Box::pin(async move {
                    let (ua, uc) = (&b[0], &b[1]);
                    let (ana, cy) = (room.nodes[0].node_id, room.nodes[2].node_id);
                    if relayed {
                        unlink(&room.nodes[0], &room.nodes[2]).await?;
                    }
                    open_chat(ua, &room.ui(0)).await?;
                    open_chat(uc, &room.ui(2)).await?;
                    for i in 0..calls {
                        click(ua, &format!("button.call-peer[data-node=\"{cy}\"]")).await?;
                        wait_ringing(uc, "#call-accept", Duration::from_millis(20)).await?;
                        click(uc, "#call-accept").await?;
                        let both = poll(
                            Duration::from_secs(30),
                            Duration::from_millis(50),
                            "both pages' first remote frame",
                            || async move {
                                Ok(match (setup_ms(ua, cy).await?, setup_ms(uc, ana).await?) {
                                    (Some(x), Some(y)) => Some((x, y)),
                                    _ => None,
                                })
                            },
                        )
                        .await?;
                        if let Ok(mut o) = out.lock() {
                            o.0.push(both.0);
                            o.1.push(both.1);
                        }
                        eprintln!(
                            "call {}: caller {:.0} ms, callee {:.0} ms",
                            i + 1,
                            both.0,
                            both.1
                        );
                        click(ua, "#call-hangup").await?;
                        for c in [ua, uc] {
                            poll(
                                Duration::from_secs(15),
                                Duration::from_millis(50),
                                "the call to end on both pages",
                                || async move {
                                    let v: Value =
                                        js(c, "return SGCall.current();", vec![]).await?;
                                    Ok((v.is_null() || v["state"] == "ended").then_some(()))
                                },
                            )
                            .await?;
                        }
                        // Both nodes see the end before the next call.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Ok(())
                })
            },
        )
        .await
        .with_context(|| format!("bench call, {mode}"))?;
        let (caller, callee) = samples
            .lock()
            .map_err(|_| anyhow::anyhow!("a poisoned lock"))?
            .clone();
        let run = ModeRun {
            mode: mode.clone(),
            calls: caller.len(),
            caller_click_to_frame_ms: summary(caller),
            callee_accept_to_frame_ms: summary(callee),
        };
        if !a.json {
            println!(
                "{}: {} calls; caller click to first remote frame p50 {:.0} ms, p90 {:.0}, max {:.0}; \
                 callee accept to first remote frame p50 {:.0} ms, p90 {:.0}, max {:.0}",
                run.mode,
                run.calls,
                run.caller_click_to_frame_ms.p50,
                run.caller_click_to_frame_ms.p90,
                run.caller_click_to_frame_ms.max,
                run.callee_accept_to_frame_ms.p50,
                run.callee_accept_to_frame_ms.p90,
                run.callee_accept_to_frame_ms.max,
            );
        }
        runs.push(run);
    }
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "runs": runs }))?);
    }
    Ok(())
}
