//! A schema-driven fuzzer (schemathesis, from PyPI) against a live node:
//! it generates requests from the node's own OpenAPI description, valid
//! and invalid, and checks every answer against it (status documented,
//! body matching its schema, no 5xx, valid data accepted, invalid data
//! refused). After the run the room must still work: a post commits and a
//! push reaches the repository (a fuzzed name once made every later
//! commit fail, which no answer showed).
//!
//! `scripts/setup.sh` installs schemathesis; the test finds it through
//! `SKYGIT_SCHEMATHESIS` (the `st` program) or where setup puts it. Without
//! it the test skips on a developer's machine and fails under CI. README
//! says how to run the fuzzer by hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skygit_api::{Pushed, RepositoryList};
use skygit_harness::{skip_unless_required, wait_leader, NodeProc, NodeSpec};

/// The pinned version `scripts/setup.sh` installs.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Examples per operation and phase; a run takes about a minute.
const EXAMPLES: &str = "50";
/// A fixed seed: a failure reproduces.
const SEED: &str = "1";

fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKYGIT_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let tools = std::env::var_os("SKYGIT_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/skygit")))?;
    let st = tools
        .join(format!("schemathesis-{SCHEMATHESIS_VERSION}"))
        .join("bin/st");
    st.is_file().then_some(st)
}

/// What the run checks, besides schemathesis' defaults (every check on).
fn config(repo_key: &str) -> String {
    format!(
        r#"headers = {{ Authorization = "Bearer ${{SKYGIT_SECRET}}" }}
request-timeout = 10
workers = 1

# Requests reach the room's logic instead of 404 for a random `repo`.
[parameters]
"query.repo" = "{repo_key}"

# 413 is a refusal too (a body or a text over its limit).
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_fuzzer_finds_no_failure_against_a_live_node() {
    let Some(st) = schemathesis() else {
        skip_unless_required("schemathesis is not installed (bash scripts/setup.sh installs it)");
        return;
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_skygit"));
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("room.git");
    skygit_harness::init_repo(bin, &repo, &dir.path().join("init"), &[]).expect("skygit init");
    let mut node = NodeProc::start(NodeSpec::for_test(bin, dir.path(), &repo, "ana", &[]))
        .await
        .expect("the node starts");
    wait_leader(&[&node], Duration::from_secs(90))
        .await
        .expect("a leader");
    let repos: RepositoryList = node.get("/repositories").await.expect("repositories");
    let key = &repos.repositories[0].key;
    let cfg = dir.path().join("st.toml");
    std::fs::write(&cfg, config(key)).expect("config");

    let out = Command::new(&st)
        .arg("--config-file")
        .arg(&cfg)
        .arg("run")
        .arg(format!("{}/openapi.json", node.api))
        .args(["--max-examples", EXAMPLES, "--seed", SEED])
        // Opening a room from a fuzzed path or URL would clone or create
        // repositories anywhere on this machine: the API tests cover it.
        .args(["--exclude-operation-id", "add_repository"])
        // A deleted message stays readable as a tombstone (`deleted:
        // true`), by design: not a use after free.
        .args(["--exclude-checks", "use_after_free"])
        .arg("--no-color")
        .env("SKYGIT_SECRET", &node.secret)
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the fuzzer found failures (exit {:?}); see its report above",
        out.status.code()
    );
    assert!(
        report.contains("passed"),
        "the fuzzer ran no test cases: {report}"
    );

    // The room survived: a post commits and a push reaches the repository.
    let posted = node.post("after the fuzzer").await.expect("a post");
    assert!(
        posted.index.is_some(),
        "the post after the fuzzer did not commit: {posted:?}"
    );
    let r = node
        .http()
        .post(format!("{}/push", node.api))
        .send()
        .await
        .expect("push");
    let status = r.status();
    let text = r.text().await.expect("push answer");
    assert!(
        status.is_success(),
        "push after the fuzzer: {status} {text}"
    );
    let pushed: Pushed = serde_json::from_str(&text).expect("a push answer");
    assert!(
        pushed.up_to_index >= posted.index.unwrap_or(u64::MAX),
        "the push did not reach the post: {text}"
    );
    node.stop(Duration::from_secs(30)).await.expect("stops");
}
