//! The GitHub presence channel: contract tests against a mock of the REST
//! API (wiremock: which requests, with which exact bodies, how often, how
//! answers are read), then against the stateful GitHub test server backed
//! by a real bare repository, checked with the real `git` CLI and compared
//! with what the plain-git channel stores.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use skygit_github_server::GithubServer;
use skygit_ports::layout::{RoomConfig, CONFIG_PATH};
use skygit_ports::{
    CommitRequest, PresenceChannel, PresenceError, PresenceRecord, RepoError, RepoRemote, Signal,
    SignalKind, MAX_PRESENCE_RECORD_BYTES, PRESENCE_VERSION,
};
use skygit_remotes::github::{GithubConfig, GithubRemote};
use skygit_remotes::github_presence::EMPTY_REPOSITORY;
use skygit_remotes::{GitPresence, GithubPresence, RemoteOptions};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "ghp_presenceTestSecret0123456789abcdef";
/// 2025-11-22T08:26:40.123Z.
const T0: i64 = 1_763_800_000_123;
const T0_RFC3339: &str = "2025-11-22T08:26:40Z";
const ETAG: &str = "W/\"0123456789abcdef\"";

const LIST_PATH: &str = "/repos/acme/chat/git/matching-refs/skygit/presence/";
const TREES_PATH: &str = "/repos/acme/chat/git/trees";
const COMMITS_PATH: &str = "/repos/acme/chat/git/commits";
const REFS_PATH: &str = "/repos/acme/chat/git/refs";
const BLOBS_PATH: &str = "/repos/acme/chat/git/blobs";

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

fn ref_path(id: &str) -> String {
    format!("{REFS_PATH}/skygit/presence/{id}")
}

fn record(id: u64, last_seen: i64) -> PresenceRecord {
    PresenceRecord {
        version: PRESENCE_VERSION,
        user: format!("user{id}"),
        node_id: id,
        session_id: format!("session-{id}-{last_seen}"),
        last_seen,
        dtls_fingerprint: format!("sha-256 {id:02X}:AB:CD"),
        in_group: id % 2 == 1,
        signals: vec![Signal {
            to: id + 1,
            to_session: format!("session-{}", id + 1),
            from_session: format!("session-{id}"),
            attempt: 1,
            kind: SignalKind::Offer,
            sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
        }],
        identity: None,
    }
}

fn options(api: String, token: Option<&str>) -> RemoteOptions {
    RemoteOptions {
        branch: None,
        github_api: Some(api),
        token: token.map(str::to_owned),
    }
}

fn channel(server: &MockServer, id: u64) -> GithubPresence {
    GithubPresence::open("acme", "chat", &options(server.uri(), Some(TOKEN)), id).expect("open")
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.expect("recording is on")
}

fn method_and_path(r: &Request) -> (String, String) {
    (r.method.to_string(), r.url.path().to_owned())
}

fn mp(m: &str, p: &str) -> (String, String) {
    (m.to_owned(), p.to_owned())
}

fn assert_secret_free(e: &PresenceError) {
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    assert!(
        !shown.contains("presenceTestSecret"),
        "part of the token leaked: {shown}"
    );
}

// ------------------------------------------------------------- publish

fn expected_tree_body(rec: &PresenceRecord) -> Value {
    json!({ "tree": [{
        "path": "presence.json",
        "mode": "100644",
        "type": "blob",
        "content": String::from_utf8(rec.to_json()).unwrap(),
    }] })
}

fn expected_commit_body(id: u64, tree: &str) -> Value {
    let sig = json!({ "name": "skygit", "email": "skygit@localhost", "date": T0_RFC3339 });
    json!({
        "message": format!("presence of node {id}\n"),
        "tree": tree,
        "parents": [],
        "author": sig,
        "committer": sig,
    })
}

fn ref_answer(name: &str, sha: &str) -> Value {
    json!({
        "ref": name,
        "node_id": "REF_x",
        "url": "https://example.invalid",
        "object": { "sha": sha, "type": "commit", "url": "https://example.invalid" },
    })
}

/// The tree and commit of node 7's record at `T0`, answered as GitHub does.
async fn mount_objects(server: &MockServer, rec: &PresenceRecord) {
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .and(body_json(expected_tree_body(rec)))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sha": sha('b'), "url": "https://example.invalid", "truncated": false,
            "tree": [{ "path": "presence.json", "mode": "100644", "type": "blob",
                       "sha": sha('c'), "size": 10, "url": "https://example.invalid" }],
        })))
        .named("create tree")
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMITS_PATH))
        .and(body_json(expected_commit_body(rec.node_id, &sha('b'))))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sha": sha('d'), "node_id": "C_x", "message": "presence of node 7\n",
            "tree": { "sha": sha('b'), "url": "https://example.invalid" }, "parents": [],
        })))
        .named("create commit")
        .mount(server)
        .await;
}

fn update_body() -> Value {
    json!({ "sha": sha('d'), "force": true })
}

#[tokio::test]
async fn a_publish_on_an_existing_ref_is_tree_commit_and_forced_update() {
    let server = MockServer::start().await;
    let rec = record(7, T0);
    mount_objects(&server, &rec).await;
    Mock::given(method("PATCH"))
        .and(path(ref_path("7")))
        .and(body_json(update_body()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ref_answer("refs/skygit/presence/7", &sha('d'))),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = channel(&server, 7);
    p.publish(rec).await.expect("published");
    let reqs = received(&server).await;
    assert_eq!(
        reqs.iter().map(method_and_path).collect::<Vec<_>>(),
        vec![
            mp("POST", TREES_PATH),
            mp("POST", COMMITS_PATH),
            mp("PATCH", &ref_path("7")),
        ]
    );
    for r in &reqs {
        let auth: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1, "exactly one Authorization header");
        assert_eq!(auth[0].to_str().unwrap(), format!("Bearer {TOKEN}"));
    }
    assert_eq!((p.writes(), p.reads()), (3, 0));
    server.verify().await;
}

#[tokio::test]
async fn a_first_publish_creates_the_ref_after_the_update_finds_none() {
    let server = MockServer::start().await;
    let rec = record(7, T0);
    mount_objects(&server, &rec).await;
    Mock::given(method("PATCH"))
        .and(path(ref_path("7")))
        .and(body_json(update_body()))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": "Reference does not exist",
            "documentation_url": "https://docs.github.com/rest/git/refs#update-a-reference",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(REFS_PATH))
        .and(body_json(
            json!({ "ref": "refs/skygit/presence/7", "sha": sha('d') }),
        ))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(ref_answer("refs/skygit/presence/7", &sha('d'))),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = channel(&server, 7);
    p.publish(rec.clone()).await.expect("published");
    assert_eq!(
        received(&server)
            .await
            .iter()
            .map(method_and_path)
            .collect::<Vec<_>>(),
        vec![
            mp("POST", TREES_PATH),
            mp("POST", COMMITS_PATH),
            mp("PATCH", &ref_path("7")),
            mp("POST", REFS_PATH),
        ]
    );
    assert_eq!(p.writes(), 4);
    server.verify().await;
}

#[tokio::test]
async fn a_404_on_the_update_also_creates_the_ref() {
    let server = MockServer::start().await;
    let rec = record(7, T0);
    mount_objects(&server, &rec).await;
    Mock::given(method("PATCH"))
        .and(path(ref_path("7")))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "message": "Not Found" })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(REFS_PATH))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(ref_answer("refs/skygit/presence/7", &sha('d'))),
        )
        .expect(1)
        .mount(&server)
        .await;
    channel(&server, 7).publish(rec).await.expect("published");
    server.verify().await;
}

#[tokio::test]
async fn another_nodes_record_or_an_unreadable_one_is_refused_without_a_call() {
    let server = MockServer::start().await;
    let p = channel(&server, 7);
    let e = p.publish(record(8, T0)).await.expect_err("not ours");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    let mut big = record(7, T0);
    big.user = "u".repeat(65);
    let e = p.publish(big).await.expect_err("readers would refuse it");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert!(received(&server).await.is_empty());
    assert_eq!(p.writes(), 0);
}

#[tokio::test]
async fn an_empty_repository_cannot_take_presence_and_holds_none() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({ "message": "Git Repository is empty." })),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(LIST_PATH))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({ "message": "Git Repository is empty." })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = channel(&server, 7);
    assert_eq!(
        p.publish(record(7, T0)).await,
        Err(PresenceError::Unavailable(EMPTY_REPOSITORY.into()))
    );
    assert_eq!(
        EMPTY_REPOSITORY,
        "the repository is empty; initialise the room first (skygit init)"
    );
    assert_eq!(p.fetch().await, Ok(vec![]));
    server.verify().await;
}

// --------------------------------------------------------------- fetch

fn listed(name: &str, sha: &str, kind: &str) -> Value {
    json!({
        "ref": name,
        "node_id": "REF_x",
        "url": "https://example.invalid",
        "object": { "sha": sha, "type": kind, "url": "https://example.invalid" },
    })
}

fn commit_path(sha: &str) -> String {
    format!("{COMMITS_PATH}/{sha}")
}

fn tree_path(sha: &str) -> String {
    format!("{TREES_PATH}/{sha}")
}

fn blob_path(sha: &str) -> String {
    format!("{BLOBS_PATH}/{sha}")
}

/// GitHub's base64: lines of 60 characters.
fn base64_lines(bytes: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::new();
    for chunk in b.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out
}

/// A presence commit `commit` → tree `tree` → `entries`.
async fn mount_commit_and_tree(server: &MockServer, commit: &str, tree: &str, entries: Value) {
    Mock::given(method("GET"))
        .and(path(commit_path(commit)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": commit, "node_id": "C_x", "message": "presence\n",
            "tree": { "sha": tree, "url": "https://example.invalid" }, "parents": [],
            "author": { "name": "skygit", "email": "skygit@localhost", "date": T0_RFC3339 },
            "committer": { "name": "skygit", "email": "skygit@localhost", "date": T0_RFC3339 },
        })))
        .named(format!("commit {commit}"))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(tree_path(tree)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": tree, "url": "https://example.invalid", "tree": entries, "truncated": false,
        })))
        .named(format!("tree {tree}"))
        .mount(server)
        .await;
}

fn file_entry(blob: &str, size: usize) -> Value {
    json!([{ "path": "presence.json", "mode": "100644", "type": "blob", "sha": blob,
             "size": size, "url": "https://example.invalid" }])
}

/// A presence commit holding `bytes` as its `presence.json`.
async fn mount_record(server: &MockServer, commit: &str, tree: &str, blob: &str, bytes: &[u8]) {
    mount_commit_and_tree(server, commit, tree, file_entry(blob, bytes.len())).await;
    Mock::given(method("GET"))
        .and(path(blob_path(blob)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": blob, "node_id": "B_x", "size": bytes.len(),
            "url": "https://example.invalid",
            "content": base64_lines(bytes), "encoding": "base64",
        })))
        .named(format!("blob {blob}"))
        .mount(server)
        .await;
}

/// The listing: conditional (304 for `ETAG`), else `body` with `ETAG`.
async fn mount_listing(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path(LIST_PATH))
        .and(header("if-none-match", ETAG))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", ETAG))
        .with_priority(1)
        .named("conditional listing")
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(LIST_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", ETAG)
                .set_body_json(body),
        )
        .with_priority(2)
        .named("listing")
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_fetch_reads_changed_refs_then_a_304_costs_one_call() {
    let server = MockServer::start().await;
    let (r1, r2) = (record(1, T0), record(2, T0 + 1));
    // Listed out of order: records come back by node id.
    mount_listing(
        &server,
        json!([
            listed("refs/skygit/presence/2", &sha('2'), "commit"),
            listed("refs/skygit/presence/1", &sha('1'), "commit"),
        ]),
    )
    .await;
    mount_record(&server, &sha('1'), &sha('a'), &sha('b'), &r1.to_json()).await;
    mount_record(&server, &sha('2'), &sha('c'), &sha('d'), &r2.to_json()).await;

    let p = channel(&server, 1);
    assert_eq!(p.fetch().await, Ok(vec![r1.clone(), r2.clone()]));
    let reqs = received(&server).await;
    assert_eq!(
        reqs.iter().map(method_and_path).collect::<Vec<_>>(),
        vec![
            mp("GET", LIST_PATH),
            mp("GET", &commit_path(&sha('1'))),
            mp("GET", &tree_path(&sha('a'))),
            mp("GET", &blob_path(&sha('b'))),
            mp("GET", &commit_path(&sha('2'))),
            mp("GET", &tree_path(&sha('c'))),
            mp("GET", &blob_path(&sha('d'))),
        ]
    );
    assert!(reqs[0].headers.get("if-none-match").is_none());
    assert_eq!((p.reads(), p.blob_reads(), p.writes()), (7, 2, 0));

    // Nothing changed: one conditional request, answered 304, and no more.
    assert_eq!(p.fetch().await, Ok(vec![r1, r2]));
    let reqs = received(&server).await;
    assert_eq!(
        reqs.len(),
        8,
        "{:?}",
        reqs.iter().map(method_and_path).collect::<Vec<_>>()
    );
    assert_eq!(method_and_path(&reqs[7]), mp("GET", LIST_PATH));
    assert_eq!(reqs[7].headers.get("if-none-match").unwrap(), ETAG);
    assert_eq!((p.reads(), p.blob_reads()), (8, 2));
}

#[tokio::test]
async fn a_moved_ref_costs_its_new_commit_only() {
    let server = MockServer::start().await;
    let (r1, r2) = (record(1, T0), record(2, T0));
    mount_listing(
        &server,
        json!([
            listed("refs/skygit/presence/1", &sha('1'), "commit"),
            listed("refs/skygit/presence/2", &sha('2'), "commit"),
        ]),
    )
    .await;
    mount_record(&server, &sha('1'), &sha('a'), &sha('b'), &r1.to_json()).await;
    mount_record(&server, &sha('2'), &sha('c'), &sha('d'), &r2.to_json()).await;
    let p = channel(&server, 1);
    assert_eq!(p.fetch().await, Ok(vec![r1.clone(), r2]));

    // Node 2 republished: the listing changed, only its new commit exists
    // on the mock (a re-read of node 1's would fail and drop it).
    server.reset().await;
    let r2b = record(2, T0 + 5_000);
    Mock::given(method("GET"))
        .and(path(LIST_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v2\"")
                .set_body_json(json!([
                    listed("refs/skygit/presence/1", &sha('1'), "commit"),
                    listed("refs/skygit/presence/2", &sha('3'), "commit"),
                ])),
        )
        .mount(&server)
        .await;
    mount_record(&server, &sha('3'), &sha('e'), &sha('f'), &r2b.to_json()).await;
    assert_eq!(p.fetch().await, Ok(vec![r1, r2b]));
    let reqs = received(&server).await;
    assert_eq!(
        reqs.iter().map(method_and_path).collect::<Vec<_>>(),
        vec![
            mp("GET", LIST_PATH),
            mp("GET", &commit_path(&sha('3'))),
            mp("GET", &tree_path(&sha('e'))),
            mp("GET", &blob_path(&sha('f'))),
        ]
    );
    assert_eq!(reqs[0].headers.get("if-none-match").unwrap(), ETAG);
}

#[tokio::test]
async fn an_oversized_record_is_refused_from_its_tree_entry_without_a_download() {
    let server = MockServer::start().await;
    let r1 = record(1, T0);
    mount_listing(
        &server,
        json!([
            listed("refs/skygit/presence/1", &sha('1'), "commit"),
            listed("refs/skygit/presence/2", &sha('2'), "commit"),
        ]),
    )
    .await;
    mount_record(&server, &sha('1'), &sha('a'), &sha('b'), &r1.to_json()).await;
    mount_commit_and_tree(
        &server,
        &sha('2'),
        &sha('c'),
        file_entry(&sha('d'), MAX_PRESENCE_RECORD_BYTES + 1),
    )
    .await;
    Mock::given(method("GET"))
        .and(path(blob_path(&sha('d'))))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(0)
        .named("the oversized blob")
        .mount(&server)
        .await;
    let p = channel(&server, 1);
    assert_eq!(p.fetch().await, Ok(vec![r1.clone()]));
    assert_eq!(p.blob_reads(), 1);
    // Refused once, remembered: the next fetch reads nothing more.
    assert_eq!(p.fetch().await, Ok(vec![r1]));
    assert_eq!(received(&server).await.len(), 1 + 3 + 2 + 1);
    server.verify().await;
}

#[tokio::test]
async fn bad_records_are_skipped_once_and_never_fail_the_fetch() {
    let server = MockServer::start().await;
    let r1 = record(1, T0);
    mount_listing(
        &server,
        json!([
            listed("refs/skygit/presence/1", &sha('1'), "commit"),
            // claims node 3
            listed("refs/skygit/presence/2", &sha('2'), "commit"),
            // not a canonical id: never read
            listed("refs/skygit/presence/007", &sha('1'), "commit"),
            listed("refs/skygit/presence/x", &sha('1'), "commit"),
            // not JSON
            listed("refs/skygit/presence/4", &sha('4'), "commit"),
            // a tag: never read
            listed("refs/skygit/presence/5", &sha('5'), "tag"),
            // no presence.json
            listed("refs/skygit/presence/6", &sha('6'), "commit"),
            // GitHub does not know the commit
            listed("refs/skygit/presence/8", &sha('8'), "commit"),
            // not an object id: never read
            listed("refs/skygit/presence/9", "not-a-sha", "commit"),
            // a malformed entry
            json!({ "ref": "refs/skygit/presence/10" }),
            // a blob whose size lies
            listed("refs/skygit/presence/11", &sha('e'), "commit"),
        ]),
    )
    .await;
    mount_record(&server, &sha('1'), &sha('a'), &sha('b'), &r1.to_json()).await;
    mount_record(
        &server,
        &sha('2'),
        &sha('c'),
        &sha('d'),
        &record(3, T0).to_json(),
    )
    .await;
    mount_record(&server, &sha('4'), &sha('f'), &sha('0'), b"{not json").await;
    mount_commit_and_tree(
        &server,
        &sha('6'),
        &sha('7'),
        json!([{ "path": "README", "mode": "100644", "type": "blob", "sha": sha('9'), "size": 3 }]),
    )
    .await;
    Mock::given(method("GET"))
        .and(path(commit_path(&sha('8'))))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "message": "Not Found" })))
        .mount(&server)
        .await;
    mount_commit_and_tree(&server, &sha('e'), &sha('3'), file_entry(&sha('4'), 10)).await;
    let huge = vec![b' '; MAX_PRESENCE_RECORD_BYTES + 10];
    Mock::given(method("GET"))
        .and(path(blob_path(&sha('4'))))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": sha('4'), "size": huge.len(), "content": base64_lines(&huge),
            "encoding": "base64",
        })))
        .mount(&server)
        .await;

    let p = channel(&server, 1);
    assert_eq!(p.fetch().await, Ok(vec![r1.clone()]));
    let reqs = received(&server).await;
    let shown: Vec<_> = reqs.iter().map(method_and_path).collect();
    // The listing, three reads each for 1, 2, 4 and 11, two for 6, one for 8.
    assert_eq!(reqs.len(), 1 + 3 + 3 + 3 + 2 + 1 + 3, "{shown:?}");
    for never in [commit_path(&sha('5')), commit_path("not-a-sha")] {
        assert!(!shown.contains(&mp("GET", &never)), "{never} was read");
    }
    // Remembered: a 304 listing reads nothing else.
    assert_eq!(p.fetch().await, Ok(vec![r1]));
    assert_eq!(received(&server).await.len(), reqs.len() + 1);
}

#[tokio::test]
async fn at_most_256_refs_are_read_lowest_ids_first() {
    let server = MockServer::start().await;
    let list: Vec<Value> = (1..=300u64)
        .rev()
        .map(|i| listed(&format!("refs/skygit/presence/{i}"), &sha('1'), "commit"))
        .collect();
    mount_listing(&server, Value::Array(list)).await;
    // Every ref points at node 1's commit: only ref 1 keeps it.
    mount_record(
        &server,
        &sha('1'),
        &sha('a'),
        &sha('b'),
        &record(1, T0).to_json(),
    )
    .await;
    let p = channel(&server, 1);
    assert_eq!(p.fetch().await, Ok(vec![record(1, T0)]));
    // One commit, read once for all the refs pointing at it.
    assert_eq!(received(&server).await.len(), 1 + 3);
}

// --------------------------------------------------------- rate limits

#[tokio::test]
async fn rate_limit_answers_become_rate_limited() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cases = [
        (
            ResponseTemplate::new(429).insert_header("retry-after", "30"),
            Some(30_000),
        ),
        (
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", (now + 120).to_string().as_str())
                .set_body_json(json!({ "message": "API rate limit exceeded for user ID 1." })),
            None,
        ),
        (
            ResponseTemplate::new(403).set_body_json(json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            })),
            Some(60_000),
        ),
    ];
    for (answer, want) in cases {
        // On a publish: the first write; on a fetch: the listing.
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TREES_PATH))
            .respond_with(answer.clone())
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(LIST_PATH))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let p = channel(&server, 7);
        for res in [
            p.publish(record(7, T0)).await.map(|_| Vec::new()),
            p.fetch().await,
        ] {
            match (res, want) {
                (Err(PresenceError::RateLimited { retry_after_ms }), Some(w)) => {
                    assert_eq!(retry_after_ms, w)
                }
                (Err(PresenceError::RateLimited { retry_after_ms }), None) => assert!(
                    (60_000..=121_000).contains(&retry_after_ms),
                    "{retry_after_ms}"
                ),
                (res, _) => panic!("not rate limited: {res:?}"),
            }
        }
        // Neither is repeated.
        server.verify().await;
    }
}

#[tokio::test]
async fn a_rate_limited_record_read_fails_the_fetch_and_is_read_again_later() {
    let server = MockServer::start().await;
    let r1 = record(1, T0);
    mount_listing(
        &server,
        json!([listed("refs/skygit/presence/1", &sha('1'), "commit")]),
    )
    .await;
    mount_commit_and_tree(
        &server,
        &sha('1'),
        &sha('a'),
        file_entry(&sha('b'), r1.to_json().len()),
    )
    .await;
    Mock::given(method("GET"))
        .and(path(blob_path(&sha('b'))))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "5"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(blob_path(&sha('b'))))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": sha('b'), "size": r1.to_json().len(),
            "content": base64_lines(&r1.to_json()), "encoding": "base64",
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    let p = channel(&server, 1);
    assert_eq!(
        p.fetch().await,
        Err(PresenceError::RateLimited {
            retry_after_ms: 5_000
        })
    );
    // Not remembered as a bad record: read again, and found.
    assert_eq!(p.fetch().await, Ok(vec![r1]));
}

#[tokio::test]
async fn a_record_github_cannot_serve_fails_the_fetch_rather_than_dropping_a_peer() {
    let server = MockServer::start().await;
    mount_listing(
        &server,
        json!([listed("refs/skygit/presence/1", &sha('1'), "commit")]),
    )
    .await;
    Mock::given(method("GET"))
        .and(path(commit_path(&sha('1'))))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let p = channel(&server, 1);
    let e = p.fetch().await.expect_err("GitHub failed");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert_secret_free(&e);
}

/// A channel sharing the write budget of a GitHub remote.
#[tokio::test]
async fn presence_and_commits_share_the_write_budget() {
    let server = MockServer::start().await;
    let rec = record(7, T0);
    mount_objects(&server, &rec).await;
    Mock::given(method("PATCH"))
        .and(path(ref_path("7")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ref_answer("refs/skygit/presence/7", &sha('d'))),
        )
        .mount(&server)
        .await;
    let remote = Arc::new(
        GithubRemote::new(GithubConfig {
            api: server.uri(),
            owner: "acme".into(),
            name: "chat".into(),
            branch: "main".into(),
            token: Some(TOKEN.into()),
        })
        .unwrap(),
    );
    let p = GithubPresence::with_remote(remote.clone(), 7);
    for i in 0..26 {
        assert_eq!(p.publish(rec.clone()).await, Ok(()), "publish {i}");
    }
    assert_eq!(received(&server).await.len(), 78);
    // Writes 79 and 80 go out; the 81st (the ref update) does not.
    match p.publish(rec.clone()).await {
        Err(PresenceError::RateLimited { retry_after_ms }) => {
            assert!((1..=60_000).contains(&retry_after_ms), "{retry_after_ms}")
        }
        res => panic!("not refused: {res:?}"),
    }
    assert_eq!(received(&server).await.len(), 80);
    assert_eq!(p.writes(), 81, "the refused write was asked for");
    // The remote's commits find the budget spent too, without a request.
    let res = remote
        .commit(CommitRequest {
            expected_head: None,
            files: vec![(CONFIG_PATH.into(), b"{}".to_vec())],
            message: "init".into(),
            time_secs: T0 / 1000,
        })
        .await;
    assert!(matches!(res, Err(RepoError::RateLimited { .. })), "{res:?}");
    assert_eq!(received(&server).await.len(), 80);
    assert!(Arc::ptr_eq(&p.remote(), &remote));
}

// --------------------------------------------------------------- token

#[tokio::test]
async fn the_token_is_in_no_error() {
    // Refused credentials.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(LIST_PATH))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
        })))
        .mount(&server)
        .await;
    let e = channel(&server, 7).fetch().await.expect_err("refused");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("Bad credentials"), "{e}");
    assert_secret_free(&e);

    // An answer that echoes the token back.
    let server = MockServer::start().await;
    let rec = record(7, T0);
    mount_objects(&server, &rec).await;
    Mock::given(method("PATCH"))
        .and(path(ref_path("7")))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": format!("Bad ref update with Bearer {TOKEN}"),
        })))
        .mount(&server)
        .await;
    let e = channel(&server, 7).publish(rec).await.expect_err("refused");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("Bad ref update"), "{e}");
    assert_secret_free(&e);

    // Nothing listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    drop(l);
    let p = GithubPresence::open("acme", "chat", &options(api, Some(TOKEN)), 7).unwrap();
    for e in [
        p.publish(record(7, T0)).await.expect_err("nothing listens"),
        p.fetch().await.expect_err("nothing listens"),
    ] {
        assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
        assert_secret_free(&e);
    }
    assert!(!p.describe().contains(TOKEN));
}

// -------------------------------------- the stateful GitHub test server

const OWNER: &str = "acme";
const NAME: &str = "room";
const SERVER_TOKEN: &str = "t0ken-presence";

/// The real git CLI on bare repository `repo`.
fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn server_channel(server: &GithubServer, id: u64) -> GithubPresence {
    GithubPresence::open(OWNER, NAME, &options(server.url(), Some(SERVER_TOKEN)), id).expect("open")
}

fn by_id(mut v: Vec<PresenceRecord>) -> Vec<PresenceRecord> {
    v.sort_by_key(|r| r.node_id);
    v
}

#[tokio::test]
async fn three_nodes_meet_through_refs_of_the_github_test_server() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("room.git");
    let server = GithubServer::start(&bare, OWNER, NAME, SERVER_TOKEN).expect("server starts");
    let nodes: Vec<GithubPresence> = (1..=3).map(|id| server_channel(&server, id)).collect();

    // An empty repository: nothing to read, nowhere to write yet.
    assert_eq!(nodes[0].fetch().await, Ok(vec![]));
    assert_eq!(
        nodes[0].publish(record(1, T0)).await,
        Err(PresenceError::Unavailable(EMPTY_REPOSITORY.into()))
    );

    // The room is initialised: its first commit on main.
    let remote = server_channel(&server, 9).remote();
    let main = remote
        .commit(CommitRequest {
            expected_head: None,
            files: vec![(CONFIG_PATH.into(), RoomConfig::default().to_bytes())],
            message: "init\n".into(),
            time_secs: T0 / 1000,
        })
        .await
        .expect("room initialised");
    assert_eq!(git(&bare, &["rev-parse", "main"]).trim(), main);

    let mut records: Vec<PresenceRecord> = (1..=3).map(|id| record(id, T0 + id as i64)).collect();
    for (n, r) in nodes.iter().zip(&records) {
        n.publish(r.clone()).await.expect("published");
        // Node 1 also tried once on the empty repository (its tree).
        let before = u64::from(n.node_id() == 1);
        assert_eq!(
            n.writes(),
            before + 4,
            "tree, commit, the missing ref's update, its creation"
        );
    }
    for n in &nodes {
        assert_eq!(by_id(n.fetch().await.expect("fetched")), records);
        // Its own record needs no read-back: two others, three reads each
        // (node 1 also listed the empty repository once).
        let before = u64::from(n.node_id() == 1);
        assert_eq!(n.reads(), before + 1 + 2 * 3, "node {}", n.node_id());
        assert_eq!(n.blob_reads(), 2);
    }

    // Nothing changed: one request, answered 304.
    server.reset_log();
    assert_eq!(by_id(nodes[0].fetch().await.unwrap()), records);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (
            reqs[0].method.as_str(),
            reqs[0].path.as_str(),
            reqs[0].status
        ),
        (
            "GET",
            "/repos/acme/room/git/matching-refs/skygit/presence/",
            304
        )
    );

    // Node 2 republishes (three writes); node 1 sees it for four reads.
    server.reset_log();
    records[1] = PresenceRecord {
        last_seen: T0 + 60_000,
        in_group: true,
        signals: vec![],
        ..records[1].clone()
    };
    nodes[1]
        .publish(records[1].clone())
        .await
        .expect("republished");
    assert_eq!(nodes[1].writes(), 4 + 3);
    assert_eq!(nodes[0].writes(), 1 + 4, "only node 2 wrote");
    let writes: Vec<_> = server
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.status))
        .collect();
    assert_eq!(
        writes,
        vec![
            ("POST".into(), "/repos/acme/room/git/trees".into(), 201),
            ("POST".into(), "/repos/acme/room/git/commits".into(), 201),
            (
                "PATCH".into(),
                "/repos/acme/room/git/refs/skygit/presence/2".into(),
                200
            ),
        ]
    );
    server.reset_log();
    assert_eq!(by_id(nodes[0].fetch().await.unwrap()), records);
    assert_eq!(server.requests().len(), 4, "{:?}", server.requests());

    // What git sees: exactly three presence refs, each a parentless commit
    // holding the published JSON; main did not move.
    let refs = git(
        &bare,
        &[
            "for-each-ref",
            "--format=%(refname) %(objecttype)",
            "refs/skygit/presence",
        ],
    );
    assert_eq!(
        refs.lines().collect::<Vec<_>>(),
        vec![
            "refs/skygit/presence/1 commit",
            "refs/skygit/presence/2 commit",
            "refs/skygit/presence/3 commit",
        ]
    );
    for r in &records {
        let name = format!("refs/skygit/presence/{}", r.node_id);
        let shown = git(&bare, &["show", &format!("{name}:presence.json")]);
        assert_eq!(shown.as_bytes(), r.to_json().as_slice(), "{name}");
        assert_eq!(PresenceRecord::from_json(shown.as_bytes()).as_ref(), Ok(r));
        assert_eq!(git(&bare, &["log", "--format=%P", &name]).trim(), "");
        assert_eq!(
            git(&bare, &["ls-tree", "--name-only", &name]).trim(),
            "presence.json"
        );
        assert_eq!(
            git(
                &bare,
                &[
                    "log",
                    "-1",
                    "--format=%an <%ae> %at %cn <%ce> %ct %B",
                    &name
                ]
            )
            .trim(),
            format!(
                "skygit <skygit@localhost> {s} skygit <skygit@localhost> {s} presence of node {}",
                r.node_id,
                s = r.last_seen / 1000
            )
        );
    }
    assert_eq!(git(&bare, &["rev-parse", "main"]).trim(), main);
    assert_eq!(git(&bare, &["rev-list", "--count", "main"]).trim(), "1");
    assert_eq!(
        git(
            &bare,
            &["for-each-ref", "--format=%(refname)", "refs/heads"]
        )
        .trim(),
        "refs/heads/main"
    );

    // The plain-git channel stores the very same commit for a record.
    let plain = dir.path().join("plain.git");
    let g = GitPresence::open(plain.to_str().unwrap(), 2, &dir.path().join("cache")).unwrap();
    g.publish(records[1].clone()).await.unwrap();
    assert_eq!(
        git(&plain, &["rev-parse", "refs/skygit/presence/2"]),
        git(&bare, &["rev-parse", "refs/skygit/presence/2"]),
        "both backends make the same commit"
    );

    // A forged record (another node's id under ref 5) is skipped, once.
    let forged = git_forge(&bare, &record(1, T0 + 99_000).to_json());
    git(&bare, &["update-ref", "refs/skygit/presence/5", &forged]);
    server.reset_log();
    assert_eq!(by_id(nodes[0].fetch().await.unwrap()), records);
    assert_eq!(server.requests().len(), 4, "the forged commit read once");
    server.reset_log();
    assert_eq!(by_id(nodes[0].fetch().await.unwrap()), records);
    assert_eq!(server.requests().len(), 1, "and not again");
}

/// A parentless commit holding `json` as `presence.json`, made with git.
fn git_forge(bare: &Path, json: &[u8]) -> String {
    use std::io::Write;
    let run = |args: &[&str], input: &[u8]| {
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(bare)
            .args(args)
            .env("GIT_AUTHOR_NAME", "mallory")
            .env("GIT_AUTHOR_EMAIL", "mallory@example.invalid")
            .env("GIT_COMMITTER_NAME", "mallory")
            .env("GIT_COMMITTER_EMAIL", "mallory@example.invalid")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("git runs");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let blob = run(&["hash-object", "-w", "--stdin"], json);
    let tree = run(
        &["mktree"],
        format!("100644 blob {blob}\tpresence.json\n").as_bytes(),
    );
    run(&["commit-tree", &tree, "-m", "forged"], b"")
}
