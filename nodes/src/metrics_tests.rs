//! Tests of [`super`] (metrics.rs).
use super::*;
use std::path::{Path, PathBuf};

use metrics_exporter_prometheus::PrometheusRecorder;
use openraft::vote::RaftLeaderId;
use skygit_actors::consensus::{Proposed, Submit};
use skygit_actors::local::{LocalCluster, LocalOptions};
use skygit_consensus::model::{Command, ConversationId, RoomId};

/// Source folders scanned for metrics, relative to the workspace.
const SOURCE_DIRS: &[&str] = &[
    "actors/src",
    "consensus/src",
    "storage/src",
    "nodes/src",
    "mesh/src",
    "remotes/src",
    "ports/src",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn recorder() -> PrometheusRecorder {
    match builder() {
        Ok(b) => b.build_recorder(),
        Err(e) => panic!("the recorder's configuration is invalid: {e}"),
    }
}

/// The metric names in the `skygit_*` string literals that open a
/// `counter!`, `gauge!` or `histogram!` call in `source`.
fn emitted_names(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in source.match_indices(mac) {
            let rest = source[at + mac.len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let Some(end) = literal.find('"') else {
                continue;
            };
            let name = &literal[..end];
            if name.starts_with("skygit_") {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The names in the first cell of `docs/metrics.md`'s table rows:
/// ``| `skygit_...` | ...``.
fn documented_names(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("| `skygit_"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(tail, _)| format!("skygit_{tail}"))
        .collect()
}

/// Every problem between what the code emits and what the docs list.
fn mismatches(emitted: &BTreeSet<String>, documented: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in emitted.difference(documented) {
        problems.push(format!(
            "{name} is emitted but not documented in docs/metrics.md"
        ));
    }
    for name in documented.difference(emitted) {
        problems.push(format!("{name} is documented but no code emits it"));
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn workspace_emitted_names() -> anyhow::Result<BTreeSet<String>> {
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        let dir = workspace().join(dir);
        rust_files(&dir, &mut files).with_context(|| format!("listing {}", dir.display()))?;
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        names.extend(emitted_names(&text));
    }
    Ok(names)
}

fn docs() -> anyhow::Result<BTreeSet<String>> {
    let path = workspace().join("docs/metrics.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(documented_names(&text))
}

#[test]
fn every_emitted_metric_is_documented_and_every_documented_one_emitted() -> anyhow::Result<()> {
    let emitted = workspace_emitted_names()?;
    let documented = docs()?;
    // The scan finds something at all (a broken scanner passes nothing).
    for name in [
        "skygit_raft_term",
        "skygit_mesh_rtt_seconds",
        "skygit_presence_polls_total",
    ] {
        assert!(
            emitted.contains(name),
            "the scan missed {name}: {emitted:?}"
        );
    }
    let problems = mismatches(&emitted, &documented);
    assert!(
        problems.is_empty(),
        "docs/metrics.md and the code disagree:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn the_documentation_check_finds_both_kinds_of_mismatch() {
    // Written with escaped quotes so the workspace scan skips them.
    let code = "metrics::counter!(\"skygit_a_total\").increment(1);\n\
                metrics::gauge!(\n    \"skygit_b\", \"room\" => r).set(1.0);\n\
                metrics::histogram!(NAME).record(1.0);\n\
                metrics::counter!(\"other_total\").increment(1);";
    let emitted = emitted_names(code);
    assert_eq!(
        emitted,
        BTreeSet::from(["skygit_a_total".to_owned(), "skygit_b".to_owned()])
    );
    let docs = "| name | type |\n| --- | --- |\n| `skygit_a_total` | counter |\n| `skygit_c` | gauge |\nsee `skygit_b` below\n";
    let documented = documented_names(docs);
    assert_eq!(
        documented,
        BTreeSet::from(["skygit_a_total".to_owned(), "skygit_c".to_owned()])
    );
    let problems = mismatches(&emitted, &documented);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("skygit_b is emitted but not documented")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("skygit_c is documented but no code emits it")),
        "{problems:?}"
    );
}

/// Metric names in a PromQL expression, with histogram suffixes cut.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (at, _) in expr.match_indices("skygit_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let len = expr[at..]
            .find(|c: char| !is_ident(c))
            .unwrap_or(expr.len() - at);
        let name = &expr[at..at + len];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
    }
    names
}

/// Every PromQL string in the dashboard: panel targets' `expr` and
/// template variables' `query` / `definition`.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_asks_only_for_documented_metrics() -> anyhow::Result<()> {
    let path = workspace().join("grafana/skygit-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).context("parsing the dashboard")?;
    let documented = docs()?;
    let inputs = dashboard["__inputs"].as_array().context("no __inputs")?;
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the dashboard needs a DS_PROMETHEUS input"
    );
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let panels = dashboard["panels"].as_array().context("no panels")?;
    let targets: usize = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .map(Vec::len)
        .sum();
    assert!(targets >= 10, "only {targets} panel queries");
    let mut unknown = Vec::new();
    for q in &queries {
        let names = promql_metric_names(q);
        assert!(
            !names.is_empty() || q.is_empty(),
            "a query names no skygit metric: {q}"
        );
        unknown.extend(
            names
                .difference(&documented)
                .map(|n| format!("{n} (in {q})")),
        );
    }
    assert!(
        unknown.is_empty(),
        "undocumented metrics in the dashboard:\n{}",
        unknown.join("\n")
    );
    Ok(())
}

#[test]
fn promql_names_drop_histogram_suffixes() {
    let q = "histogram_quantile(0.99, sum by (le) (rate(skygit_api_request_duration_seconds_bucket{room=~\"$room\"}[5m]))) / skygit_raft_term + on() xskygit_no";
    assert_eq!(
        promql_metric_names(q),
        BTreeSet::from([
            "skygit_api_request_duration_seconds".to_owned(),
            "skygit_raft_term".to_owned()
        ])
    );
}

fn log_id(index: u64) -> skygit_consensus::types::LogId {
    let leader = openraft::vote::leader_id_adv::LeaderId::new(2, 1);
    openraft::LogId::new(leader.to_committed(), index)
}

#[test]
fn the_leader_reports_each_followers_lag_but_not_its_own() {
    let mut m = RaftMetrics::<TypeConfig>::new_initial(1);
    m.state = ServerState::Leader;
    m.current_term = 2;
    m.last_log_index = Some(10);
    m.local_committed = Some(log_id(9));
    m.last_applied = Some(log_id(8));
    m.replication = Some(BTreeMap::from([
        (1, Some(log_id(10))),
        (2, Some(log_id(7))),
        (3, None),
        (4, Some(log_id(12))),
    ]));
    let s = Sample::from_raft(1, &m);
    assert!(s.is_leader);
    assert_eq!(
        (s.term, s.last_log_index, s.committed_index, s.applied_index),
        (2, 10, 9, 8)
    );
    assert_eq!(s.lag, BTreeMap::from([(2, 3), (3, 10), (4, 0)]));
    // A follower reports no lag, whatever its metrics hold.
    m.state = ServerState::Follower;
    let s = Sample::from_raft(1, &m);
    assert!(!s.is_leader);
    assert!(s.lag.is_empty());
}

#[test]
fn only_message_changes_that_took_effect_are_counted() -> anyhow::Result<()> {
    use skygit_consensus::model::{Message, MessageRecord, Rejection, UserId};
    let id = ulid::Ulid::new();
    let record = MessageRecord {
        message: Message {
            id,
            conversation: ConversationId::general(),
            sender: UserId::new("ana")?,
            content: "hi".to_owned(),
            created_at: 0,
            edited_at: None,
            deleted: false,
            signed: false,
            attachments: Vec::new(),
            call: None,
        },
        index: 3,
        last_change_index: 3,
    };
    let event = |outcome, message| AppliedEvent {
        epoch: 0,
        index: 5,
        request: id,
        outcome,
        message,
        settings: None,
    };
    let applied = ApplyOutcome::Applied { index: 5 };
    // A refusal or duplicate carries the message when an earlier request
    // of the same apply batch changed it.
    let rejected = ApplyOutcome::Rejected {
        index: 5,
        reason: Rejection::Deleted(id),
    };
    let duplicate = ApplyOutcome::Duplicate { original_index: 3 };
    assert!(counts_as_message(&event(
        applied.clone(),
        Some(record.clone())
    )));
    assert!(!counts_as_message(&event(applied, None)));
    assert!(!counts_as_message(&event(rejected, Some(record.clone()))));
    assert!(!counts_as_message(&event(duplicate, Some(record))));
    Ok(())
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn recorded_samples_render_with_the_documented_names_and_labels() {
    let recorder = recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let mut gauges = RoomGauges::new("octo/chat".to_owned());
        let leading = Sample {
            term: 4,
            is_leader: true,
            last_log_index: 90,
            committed_index: 90,
            applied_index: 89,
            outbox_messages: 2,
            synced_index: Some(88),
            lag: BTreeMap::from([(2, 0), (3, 5)]),
        };
        gauges.record(&leading);
        // Node 3 leaves the group: its lag drops to 0.
        gauges.record(&Sample {
            lag: BTreeMap::from([(2, 1)]),
            ..leading
        });
        // Any `*_seconds` histogram gets the configured buckets.
        let name = "example_duration_seconds";
        metrics::histogram!(name).record(0.003);
    });
    let text = render(&handle);
    for line in [
        "# TYPE skygit_raft_term gauge",
        "skygit_raft_term{room=\"octo/chat\"} 4",
        "skygit_raft_is_leader{room=\"octo/chat\"} 1",
        "skygit_raft_last_log_index{room=\"octo/chat\"} 90",
        "skygit_raft_committed_index{room=\"octo/chat\"} 90",
        "skygit_raft_applied_index{room=\"octo/chat\"} 89",
        "skygit_outbox_messages{room=\"octo/chat\"} 2",
        "skygit_synced_index{room=\"octo/chat\"} 88",
        "skygit_raft_replication_lag_entries{room=\"octo/chat\",peer=\"2\"} 1",
        "skygit_raft_replication_lag_entries{room=\"octo/chat\",peer=\"3\"} 0",
        "# TYPE example_duration_seconds histogram",
        "example_duration_seconds_bucket{le=\"0.0025\"} 0",
        "example_duration_seconds_bucket{le=\"0.005\"} 1",
        "example_duration_seconds_bucket{le=\"+Inf\"} 1",
    ] {
        assert!(has_line(&text, line), "missing `{line}` in:\n{text}");
    }
    metrics::with_local_recorder(&recorder, || {
        let mut gauges = RoomGauges::new("octo/chat".to_owned());
        gauges.peers.insert(2);
        gauges.record_stopped();
    });
    let text = render(&handle);
    for line in [
        "skygit_raft_is_leader{room=\"octo/chat\"} 0",
        "skygit_raft_replication_lag_entries{room=\"octo/chat\",peer=\"2\"} 0",
    ] {
        assert!(has_line(&text, line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn installing_twice_returns_an_error() {
    // Another test of this binary may have installed it first.
    let _ = install();
    assert!(install().is_err());
}

/// The value of the series `series` (name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Proposes `command` from `room`'s user: the request id and outcome.
async fn submit(room: &RoomHandle, command: Command) -> anyhow::Result<(ulid::Ulid, ApplyOutcome)> {
    let submit = Submit {
        sender: room.user.clone(),
        command,
        id: None,
    };
    match room.consensus.send(submit).await?? {
        (req, Proposed::Committed(outcome)) => Ok((req.id, outcome)),
        (_, Proposed::Queued { .. }) => anyhow::bail!("queued, not committed"),
    }
}

/// Polls `handle`'s rendering until `ok` holds or `wait` passes.
async fn eventually(
    handle: &PrometheusHandle,
    wait: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let text = render(handle);
        if ok(&text) || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A two-node room in this process: the sampler on its leader reports
/// the leader, the follower's lag, the indexes and the messages
/// applied, and ends when the room stops.
#[actix_rt::test]
async fn the_sampler_follows_a_running_room_and_ends_with_it() -> anyhow::Result<()> {
    let recorder = recorder();
    let handle = recorder.handle();
    // The test's runtime runs every task on this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir()?;
    let room = RoomId::new("metrics-test")?;
    let cluster =
        LocalCluster::start(dir.path(), room.clone(), 2, LocalOptions::new(&room)).await?;
    let leader = cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .context("no leader")?;
    // The leader's first entry is committed: it leads with a quorum.
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .context("the room did not settle")?;
    let follower = if leader == 1 { 2 } else { 1 };
    let node = cluster.handle(leader).context("leader handle")?.clone();
    let sampler = spawn_room_sampler(node.clone(), "room-1".to_owned());

    let general = ConversationId::general();
    let mut posts = Vec::new();
    for i in 0..3 {
        let (id, outcome) = submit(
            &node,
            Command::Post {
                conversation: general.clone(),
                content: format!("hello {i}"),
                attachments: Vec::new(),
            },
        )
        .await?;
        assert!(
            matches!(outcome, ApplyOutcome::Applied { .. }),
            "{outcome:?}"
        );
        posts.push(id);
    }
    // A delete is a message change too: four so far.
    let (_, deleted) = submit(&node, Command::Delete { message: posts[0] }).await?;
    assert!(
        matches!(deleted, ApplyOutcome::Applied { .. }),
        "{deleted:?}"
    );
    // Not counted: a refused edit and a conversation.
    let (_, refused) = submit(
        &node,
        Command::Edit {
            message: posts[0],
            content: "too late".to_owned(),
        },
    )
    .await?;
    assert!(
        matches!(refused, ApplyOutcome::Rejected { .. }),
        "{refused:?}"
    );
    submit(
        &node,
        Command::CreateConversation {
            conversation: ConversationId::new("design")?,
            title: "Design".to_owned(),
        },
    )
    .await?;
    let last = cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .context("the room did not converge")?;

    let room_label = "{room=\"room-1\"}";
    let lag_series =
        format!("skygit_raft_replication_lag_entries{{room=\"room-1\",peer=\"{follower}\"}}");
    let text = eventually(&handle, Duration::from_secs(10), |t| {
        value(t, &format!("skygit_raft_applied_index{room_label}")) == Some(last as f64)
            && value(t, &lag_series) == Some(0.0)
    })
    .await;
    let get = |name: &str| value(&text, &format!("{name}{room_label}"));
    assert_eq!(get("skygit_messages_applied_total"), Some(4.0), "{text}");
    assert_eq!(get("skygit_raft_is_leader"), Some(1.0), "{text}");
    assert!(get("skygit_raft_term").is_some_and(|t| t >= 1.0), "{text}");
    assert_eq!(
        get("skygit_raft_last_log_index"),
        Some(last as f64),
        "{text}"
    );
    assert_eq!(
        get("skygit_raft_committed_index"),
        Some(last as f64),
        "{text}"
    );
    assert_eq!(
        get("skygit_raft_applied_index"),
        Some(last as f64),
        "{text}"
    );
    assert_eq!(get("skygit_outbox_messages"), Some(0.0), "{text}");
    assert_eq!(get("skygit_synced_index"), Some(0.0), "{text}");
    assert_eq!(value(&text, &lag_series), Some(0.0), "{text}");
    let own = format!("skygit_raft_replication_lag_entries{{room=\"room-1\",peer=\"{leader}\"}}");
    assert_eq!(
        value(&text, &own),
        None,
        "the leader has no lag of its own: {text}"
    );

    drop(node);
    cluster.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), sampler)
        .await
        .context("the sampler outlived its room")??;
    let text = render(&handle);
    assert_eq!(
        value(&text, &format!("skygit_raft_is_leader{room_label}")),
        Some(0.0),
        "{text}"
    );
    Ok(())
}
