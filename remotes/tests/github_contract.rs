//! Contract tests of the GitHub remote against a mock of the REST API
//! (wiremock): which requests it sends, with which exact bodies and
//! headers, how often, and how it reads GitHub's answers.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use skygit_ports::layout::{COMMITTER_EMAIL, COMMITTER_NAME};
use skygit_ports::{
    CommitInfo, CommitRequest, EntryKind, RepoError, RepoHead, RepoRemote, TreeEntry,
};
use skygit_remotes::github::{GithubConfig, GithubRemote};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "ghp_contractTestSecret0123456789abcdef";
/// The branch head.
const HEAD: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Its tree.
const TREE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// A tree created by a commit.
const NEW_TREE: &str = "cccccccccccccccccccccccccccccccccccccccc";
/// A commit created by a commit.
const NEW_COMMIT: &str = "dddddddddddddddddddddddddddddddddddddddd";
/// The `.messages` subtree.
const SUBTREE: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const BLOB: &str = "ffffffffffffffffffffffffffffffffffffffff";
const BLOB2: &str = "1111111111111111111111111111111111111111";
const BLOB3: &str = "2222222222222222222222222222222222222222";
const SUBMODULE: &str = "3333333333333333333333333333333333333333";
const PARENT: &str = "4444444444444444444444444444444444444444";

const HEAD_MESSAGE: &str = "m\n\nRaft-Last-Index: 7\n";
const ETAG: &str = "W/\"0123456789abcdef\"";
/// 2025-11-22T08:26:40Z.
const TIME: i64 = 1_763_800_000;
const TIME_RFC3339: &str = "2025-11-22T08:26:40Z";

const REF_PATH: &str = "/repos/acme/chat/git/ref/heads/main";
const REF_UPDATE_PATH: &str = "/repos/acme/chat/git/refs/heads/main";
const TREES_PATH: &str = "/repos/acme/chat/git/trees";
const COMMITS_PATH: &str = "/repos/acme/chat/git/commits";
const BLOBS_PATH: &str = "/repos/acme/chat/git/blobs";
const CONFIG_PUT_PATH: &str = "/repos/acme/chat/contents/.messages/config.json";

fn config(api: String, token: Option<&str>) -> GithubConfig {
    GithubConfig {
        api,
        owner: "acme".into(),
        name: "chat".into(),
        branch: "main".into(),
        token: token.map(str::to_owned),
    }
}

fn remote(server: &MockServer) -> GithubRemote {
    GithubRemote::new(config(server.uri(), Some(TOKEN))).expect("client")
}

fn commit_path(sha: &str) -> String {
    format!("{COMMITS_PATH}/{sha}")
}

fn ref_answer(sha: &str) -> Value {
    json!({
        "ref": "refs/heads/main",
        "node_id": "REF_x",
        "url": "https://api.github.com/repos/acme/chat/git/refs/heads/main",
        "object": { "sha": sha, "type": "commit", "url": "https://example.invalid" }
    })
}

fn commit_answer(sha: &str, tree: &str, message: &str) -> Value {
    json!({
        "sha": sha,
        "node_id": "C_x",
        "message": message,
        "tree": { "sha": tree, "url": "https://example.invalid" },
        "parents": [],
        "author": { "name": "skygit", "email": COMMITTER_EMAIL, "date": TIME_RFC3339 },
        "committer": { "name": "skygit", "email": COMMITTER_EMAIL, "date": TIME_RFC3339 },
        "verification": { "verified": false, "reason": "unsigned" }
    })
}

/// The signature every commit must carry.
fn signature() -> Value {
    json!({ "name": COMMITTER_NAME, "email": COMMITTER_EMAIL, "date": TIME_RFC3339 })
}

/// The branch at `HEAD`, whose tree is `TREE`.
async fn mount_head(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(ref_answer(HEAD)))
        .with_priority(10)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(commit_path(HEAD)))
        .respond_with(ResponseTemplate::new(200).set_body_json(commit_answer(
            HEAD,
            TREE,
            HEAD_MESSAGE,
        )))
        .with_priority(10)
        .mount(server)
        .await;
}

/// A remote whose commit cache holds `HEAD` (so a commit on it costs no
/// read); reading it took two calls.
async fn remote_with_known_head(server: &MockServer) -> GithubRemote {
    mount_head(server).await;
    let r = remote(server);
    let h = r.head().await.expect("head").expect("a head");
    assert_eq!(h.commit_sha, HEAD);
    assert_eq!(r.calls(), 2);
    r
}

fn tree_answer(sha: &str) -> Value {
    json!({ "sha": sha, "url": "https://example.invalid", "tree": [], "truncated": false })
}

fn created_commit_answer(sha: &str, tree: &str, message: &str) -> Value {
    let mut c = commit_answer(sha, tree, message);
    c["parents"] = json!([{ "sha": HEAD, "url": "https://example.invalid" }]);
    c
}

fn updated_ref_answer(sha: &str) -> Value {
    ref_answer(sha)
}

fn batch_request(expected_head: Option<&str>) -> CommitRequest {
    CommitRequest {
        expected_head: expected_head.map(str::to_owned),
        files: vec![
            (
                ".messages/2025/11/22/batch-0001.jsonl".into(),
                b"{\"id\":\"01J\",\"text\":\"h\\u00e9llo\"}\n".to_vec(),
            ),
            (".messages/index.json".into(), b"{\"last\":9}".to_vec()),
        ],
        message: "batch 1\n\nRaft-Last-Index: 9\n".into(),
        time_secs: TIME,
    }
}

fn expected_tree_body() -> Value {
    json!({
        "base_tree": TREE,
        "tree": [
            {
                "path": ".messages/2025/11/22/batch-0001.jsonl",
                "mode": "100644",
                "type": "blob",
                "content": "{\"id\":\"01J\",\"text\":\"h\\u00e9llo\"}\n",
            },
            {
                "path": ".messages/index.json",
                "mode": "100644",
                "type": "blob",
                "content": "{\"last\":9}",
            },
        ],
    })
}

fn expected_commit_body() -> Value {
    json!({
        "message": "batch 1\n\nRaft-Last-Index: 9\n",
        "tree": NEW_TREE,
        "parents": [HEAD],
        "author": signature(),
        "committer": signature(),
    })
}

/// Tree, commit and ref update answering as GitHub does on success; the
/// ref update `expect`s exactly one call.
async fn mount_commit_writes(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .and(body_json(expected_tree_body()))
        .respond_with(ResponseTemplate::new(201).set_body_json(tree_answer(NEW_TREE)))
        .with_priority(10)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMITS_PATH))
        .and(body_json(expected_commit_body()))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(created_commit_answer(
                NEW_COMMIT,
                NEW_TREE,
                "batch 1\n\nRaft-Last-Index: 9\n",
            )),
        )
        .with_priority(10)
        .mount(server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(REF_UPDATE_PATH))
        .and(body_json(json!({ "sha": NEW_COMMIT, "force": false })))
        .respond_with(ResponseTemplate::new(200).set_body_json(updated_ref_answer(NEW_COMMIT)))
        .with_priority(10)
        .mount(server)
        .await;
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.expect("recording is on")
}

/// The requests with this method and path, in order.
async fn received_to(server: &MockServer, m: &str, p: &str) -> Vec<Request> {
    received(server)
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == m && r.url.path() == p)
        .collect()
}

fn method_and_path(r: &Request) -> (String, String) {
    (r.method.to_string(), r.url.path().to_owned())
}

fn assert_secret_free(e: &RepoError) {
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    assert!(
        !shown.contains("contractTestSecret"),
        "part of the token leaked: {shown}"
    );
}

// ---------------------------------------------------------------- head

#[tokio::test]
async fn head_reads_ref_and_commit_then_revalidates_with_the_etag() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .and(header("if-none-match", ETAG))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", ETAG))
        .with_priority(1)
        .expect(1)
        .named("conditional ref read")
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", ETAG)
                .set_body_json(ref_answer(HEAD)),
        )
        .with_priority(2)
        .expect(1)
        .named("first ref read")
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(commit_path(HEAD)))
        .respond_with(ResponseTemplate::new(200).set_body_json(commit_answer(
            HEAD,
            TREE,
            HEAD_MESSAGE,
        )))
        .expect(1)
        .named("commit read")
        .mount(&server)
        .await;

    let r = remote(&server);
    let want = Some(RepoHead {
        commit_sha: HEAD.into(),
        message: HEAD_MESSAGE.into(),
    });
    assert_eq!(r.head().await.unwrap(), want);
    assert_eq!(r.calls(), 2);
    assert_eq!(r.head().await.unwrap(), want);
    assert_eq!(r.calls(), 3, "the 304 costs one call, the commit is cached");

    let reqs = received(&server).await;
    assert_eq!(
        reqs.iter().map(method_and_path).collect::<Vec<_>>(),
        vec![
            ("GET".to_owned(), REF_PATH.to_owned()),
            ("GET".to_owned(), commit_path(HEAD)),
            ("GET".to_owned(), REF_PATH.to_owned()),
        ]
    );
    assert!(
        reqs[0].headers.get("if-none-match").is_none(),
        "nothing to revalidate on the first read"
    );
    assert_eq!(reqs[2].headers.get("if-none-match").unwrap(), ETAG);
    for r in &reqs {
        let auth: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1, "exactly one Authorization header");
        assert_eq!(auth[0].to_str().unwrap(), format!("Bearer {TOKEN}"));
        assert_eq!(
            r.headers.get("accept").unwrap().to_str().unwrap(),
            "application/vnd.github+json"
        );
        assert_eq!(r.headers.get("x-github-api-version").unwrap(), "2022-11-28");
    }
    server.verify().await;
}

#[tokio::test]
async fn a_moved_ref_is_read_again_and_its_new_commit_fetched() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .and(header("if-none-match", ETAG))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"second\"")
                .set_body_json(ref_answer(NEW_COMMIT)),
        )
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", ETAG)
                .set_body_json(ref_answer(HEAD)),
        )
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    for (sha, msg) in [(HEAD, HEAD_MESSAGE), (NEW_COMMIT, "second\n")] {
        Mock::given(method("GET"))
            .and(path(commit_path(sha)))
            .respond_with(ResponseTemplate::new(200).set_body_json(commit_answer(sha, TREE, msg)))
            .expect(1)
            .mount(&server)
            .await;
    }
    let r = remote(&server);
    assert_eq!(r.head().await.unwrap().unwrap().commit_sha, HEAD);
    let h = r.head().await.unwrap().unwrap();
    assert_eq!(h.commit_sha, NEW_COMMIT);
    assert_eq!(h.message, "second\n");
    server.verify().await;
}

#[tokio::test]
async fn without_a_token_no_authorization_header_is_sent() {
    let server = MockServer::start().await;
    mount_head(&server).await;
    let r = GithubRemote::new(config(server.uri(), None)).unwrap();
    assert!(r.head().await.unwrap().is_some());
    for req in received(&server).await {
        assert!(req.headers.get("authorization").is_none());
    }
}

#[tokio::test]
async fn describe_names_the_repository_but_not_the_token() {
    let server = MockServer::start().await;
    let shown = remote(&server).describe();
    assert!(shown.contains("acme/chat"), "{shown}");
    assert!(!shown.contains(TOKEN), "{shown}");
}

#[tokio::test]
async fn an_empty_repository_or_a_missing_branch_has_no_head() {
    for status in [409, 404] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(REF_PATH))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(json!({ "message": "Git Repository is empty." })),
            )
            .expect(1)
            .mount(&server)
            .await;
        let r = remote(&server);
        assert_eq!(r.head().await, Ok(None), "status {status}");
        assert_eq!(received(&server).await.len(), 1, "status {status}");
        assert_eq!(r.calls(), 1);
        server.verify().await;
    }
}

#[tokio::test]
async fn a_malformed_ref_answer_is_invalid() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(ref_answer("not-a-sha/../x")))
        .mount(&server)
        .await;
    let r = remote(&server);
    assert!(matches!(r.head().await, Err(RepoError::Invalid(_))));
    assert_eq!(received(&server).await.len(), 1, "no commit read follows");
}

// -------------------------------------------------------------- commit

#[tokio::test]
async fn a_commit_on_a_known_head_is_three_calls_with_exact_bodies() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    mount_commit_writes(&server).await;

    let before = r.calls();
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Ok(NEW_COMMIT.into())
    );
    assert_eq!(r.calls() - before, 3);

    let reqs = received(&server).await;
    assert_eq!(
        reqs[2..].iter().map(method_and_path).collect::<Vec<_>>(),
        vec![
            ("POST".to_owned(), TREES_PATH.to_owned()),
            ("POST".to_owned(), COMMITS_PATH.to_owned()),
            ("PATCH".to_owned(), REF_UPDATE_PATH.to_owned()),
        ]
    );
    // Exact bodies (the mocks matched them too; this says which differed).
    assert_eq!(reqs[2].body_json::<Value>().unwrap(), expected_tree_body());
    assert_eq!(
        reqs[3].body_json::<Value>().unwrap(),
        expected_commit_body()
    );
    assert_eq!(
        reqs[4].body_json::<Value>().unwrap(),
        json!({ "sha": NEW_COMMIT, "force": false })
    );
    for w in &reqs[2..] {
        assert_eq!(
            w.headers.get("authorization").unwrap().to_str().unwrap(),
            format!("Bearer {TOKEN}")
        );
        assert!(w
            .headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }

    // The new head is known: reading it back costs the ref read only.
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(ref_answer(NEW_COMMIT)))
        .with_priority(1)
        .mount(&server)
        .await;
    let before = r.calls();
    assert_eq!(
        r.head().await.unwrap(),
        Some(RepoHead {
            commit_sha: NEW_COMMIT.into(),
            message: "batch 1\n\nRaft-Last-Index: 9\n".into(),
        })
    );
    assert_eq!(r.calls() - before, 1);
    assert!(received_to(&server, "GET", &commit_path(NEW_COMMIT))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_commit_on_an_unread_parent_reads_the_parent_first() {
    let server = MockServer::start().await;
    mount_head(&server).await;
    mount_commit_writes(&server).await;
    let r = remote(&server);
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Ok(NEW_COMMIT.into())
    );
    assert_eq!(r.calls(), 4);
    assert_eq!(
        received(&server)
            .await
            .iter()
            .map(method_and_path)
            .collect::<Vec<_>>()[0],
        ("GET".to_owned(), commit_path(HEAD))
    );
}

#[tokio::test]
async fn a_commit_on_a_parent_github_does_not_know_is_a_conflict() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(commit_path(HEAD)))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .expect(1)
        .mount(&server)
        .await;
    let r = remote(&server);
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Err(RepoError::Conflict)
    );
    assert_eq!(received(&server).await.len(), 1, "nothing written");
}

#[tokio::test]
async fn a_malformed_expected_head_is_refused_without_a_call() {
    let server = MockServer::start().await;
    let r = remote(&server);
    let res = r.commit(batch_request(Some("../../../etc"))).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert!(received(&server).await.is_empty());
    assert_eq!(r.calls(), 0);
}

#[tokio::test]
async fn binary_files_are_uploaded_as_base64_blobs_first() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    let bytes = vec![0xff, 0x00, 0xfe, b'\n', 0x80];
    Mock::given(method("POST"))
        .and(path(BLOBS_PATH))
        .and(body_json(json!({
            "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "encoding": "base64",
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "sha": BLOB, "url": "x" })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .and(body_json(json!({
            "base_tree": TREE,
            "tree": [{ "path": "attachments/a.bin", "mode": "100644", "type": "blob", "sha": BLOB }],
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(tree_answer(NEW_TREE)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMITS_PATH))
        .and(body_json(json!({
            "message": "bin",
            "tree": NEW_TREE,
            "parents": [HEAD],
            "author": signature(),
            "committer": signature(),
        })))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created_commit_answer(NEW_COMMIT, NEW_TREE, "bin")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(REF_UPDATE_PATH))
        .and(body_json(json!({ "sha": NEW_COMMIT, "force": false })))
        .respond_with(ResponseTemplate::new(200).set_body_json(updated_ref_answer(NEW_COMMIT)))
        .expect(1)
        .mount(&server)
        .await;
    let before = r.calls();
    let res = r
        .commit(CommitRequest {
            expected_head: Some(HEAD.into()),
            files: vec![("attachments/a.bin".into(), bytes.clone())],
            message: "bin".into(),
            time_secs: TIME,
        })
        .await;
    assert_eq!(res, Ok(NEW_COMMIT.into()));
    assert_eq!(r.calls() - before, 4);
    server.verify().await;
}

// ----------------------------------------------------- first commit (PUT)

fn config_request(files: Vec<(String, Vec<u8>)>) -> CommitRequest {
    CommitRequest {
        expected_head: None,
        files,
        message: "create room\n\nRaft-Last-Index: 0\n".into(),
        time_secs: TIME,
    }
}

const CONFIG_JSON: &[u8] = b"{\n  \"layout\": 1,\n  \"name\": \"chat\"\n}\n";

fn expected_put_body() -> Value {
    json!({
        "message": "create room\n\nRaft-Last-Index: 0\n",
        "content": base64::engine::general_purpose::STANDARD.encode(CONFIG_JSON),
        "branch": "main",
        "author": signature(),
        "committer": signature(),
    })
}

#[tokio::test]
async fn the_first_commit_of_an_empty_repository_is_one_contents_put() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(CONFIG_PUT_PATH))
        .and(body_json(expected_put_body()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "content": {
                "name": "config.json",
                "path": ".messages/config.json",
                "sha": BLOB,
                "size": CONFIG_JSON.len(),
                "type": "file",
            },
            "commit": {
                "sha": NEW_COMMIT,
                "message": "create room\n\nRaft-Last-Index: 0\n",
                "tree": { "sha": NEW_TREE },
                "parents": [],
            },
        })))
        .expect(1)
        .mount(&server)
        .await;
    let r = remote(&server);
    let res = r
        .commit(config_request(vec![(
            ".messages/config.json".into(),
            CONFIG_JSON.to_vec(),
        )]))
        .await;
    assert_eq!(res, Ok(NEW_COMMIT.into()));
    assert_eq!(r.calls(), 1);
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body_json::<Value>().unwrap(), expected_put_body());
    assert_eq!(
        reqs[0]
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("Bearer {TOKEN}")
    );
    server.verify().await;
}

#[tokio::test]
async fn a_first_commit_of_two_files_is_refused_without_a_call() {
    let server = MockServer::start().await;
    let r = remote(&server);
    let res = r
        .commit(config_request(vec![
            (".messages/config.json".into(), CONFIG_JSON.to_vec()),
            (".messages/other.json".into(), b"{}".to_vec()),
        ]))
        .await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    let res = r.commit(config_request(vec![])).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert!(received(&server).await.is_empty());
    assert_eq!(r.calls(), 0);
}

#[tokio::test]
async fn a_first_commit_that_lost_the_race_is_a_conflict() {
    for status in [422, 409] {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(path(CONFIG_PUT_PATH))
            .respond_with(ResponseTemplate::new(status).set_body_json(
                json!({ "message": "Invalid request.\n\n\"sha\" wasn't supplied." }),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let r = remote(&server);
        let res = r
            .commit(config_request(vec![(
                ".messages/config.json".into(),
                CONFIG_JSON.to_vec(),
            )]))
            .await;
        assert_eq!(res, Err(RepoError::Conflict), "status {status}");
        server.verify().await;
    }
}

#[tokio::test]
async fn a_first_commit_answered_500_is_unknown_and_not_repeated() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(CONFIG_PUT_PATH))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({ "message": "oops" })))
        .expect(1)
        .mount(&server)
        .await;
    let r = remote(&server);
    let res = r
        .commit(config_request(vec![(
            ".messages/config.json".into(),
            CONFIG_JSON.to_vec(),
        )]))
        .await;
    assert!(matches!(res, Err(RepoError::Unknown(_))), "{res:?}");
    server.verify().await;
}

// ------------------------------------------------- compare-and-swap lost

#[tokio::test]
async fn a_ref_update_that_is_not_a_fast_forward_is_a_conflict_sent_once() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .respond_with(ResponseTemplate::new(201).set_body_json(tree_answer(NEW_TREE)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMITS_PATH))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created_commit_answer(NEW_COMMIT, NEW_TREE, "x")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(REF_UPDATE_PATH))
        .and(body_json(json!({ "sha": NEW_COMMIT, "force": false })))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": "Update is not a fast forward",
            "documentation_url": "https://docs.github.com/rest/git/refs#update-a-reference",
            "status": "422",
        })))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Err(RepoError::Conflict)
    );
    assert_eq!(
        received(&server).await.len(),
        2 + 3,
        "nothing after the PATCH"
    );
    assert_eq!(
        received_to(&server, "PATCH", REF_UPDATE_PATH).await.len(),
        1
    );
    server.verify().await;
}

// --------------------------------------------------------- rate limits

/// The error `head()` gives when the ref read is answered with `answer`;
/// the read must have been sent exactly once.
async fn head_error(answer: ResponseTemplate) -> RepoError {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(answer)
        .expect(1)
        .mount(&server)
        .await;
    let r = remote(&server);
    let e = r.head().await.expect_err("an error");
    assert_eq!(received(&server).await.len(), 1, "not retried: {e:?}");
    server.verify().await;
    assert_secret_free(&e);
    e
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_429_with_retry_after_is_rate_limited_for_that_long() {
    let e = head_error(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(json!({ "message": "Too many requests" })),
    )
    .await;
    assert_eq!(
        e,
        RepoError::RateLimited {
            retry_after_ms: 7000
        }
    );
}

#[tokio::test]
async fn a_429_without_a_hint_waits_a_minute() {
    let e = head_error(ResponseTemplate::new(429)).await;
    assert_eq!(
        e,
        RepoError::RateLimited {
            retry_after_ms: 60_000
        }
    );
}

#[tokio::test]
async fn an_exhausted_primary_limit_waits_until_the_reset() {
    let reset = now_secs() + 30;
    let e = head_error(
        ResponseTemplate::new(403)
            .insert_header("x-ratelimit-limit", "5000")
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-used", "5000")
            .insert_header("x-ratelimit-reset", reset.to_string().as_str())
            .set_body_json(json!({ "message": "API rate limit exceeded for user ID 1." })),
    )
    .await;
    match e {
        RepoError::RateLimited { retry_after_ms } => assert!(
            (20_000..=31_000).contains(&retry_after_ms),
            "{retry_after_ms}"
        ),
        e => panic!("not rate limited: {e:?}"),
    }
}

#[tokio::test]
async fn an_exhausted_primary_limit_on_a_429_waits_until_the_reset() {
    let reset = now_secs() + 30;
    let e = head_error(
        ResponseTemplate::new(429)
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
    )
    .await;
    match e {
        RepoError::RateLimited { retry_after_ms } => assert!(
            (20_000..=31_000).contains(&retry_after_ms),
            "{retry_after_ms}"
        ),
        e => panic!("not rate limited: {e:?}"),
    }
}

#[tokio::test]
async fn a_secondary_limit_403_with_retry_after_is_rate_limited() {
    let e = head_error(
        ResponseTemplate::new(403)
            .insert_header("retry-after", "60")
            .insert_header("x-ratelimit-remaining", "4000")
            .set_body_json(json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            })),
    )
    .await;
    assert_eq!(
        e,
        RepoError::RateLimited {
            retry_after_ms: 60_000
        }
    );
}

#[tokio::test]
async fn a_plain_403_or_401_is_denied() {
    let e = head_error(
        ResponseTemplate::new(403)
            .insert_header("x-ratelimit-remaining", "4999")
            .set_body_json(
                json!({ "message": "Resource not accessible by personal access token" }),
            ),
    )
    .await;
    match e {
        RepoError::Denied(m) => assert!(m.contains("Resource not accessible"), "{m}"),
        e => panic!("not denied: {e:?}"),
    }
    let e = head_error(
        ResponseTemplate::new(401).set_body_json(json!({ "message": "Bad credentials" })),
    )
    .await;
    assert!(matches!(e, RepoError::Denied(_)), "{e:?}");
}

#[tokio::test]
async fn a_rate_limited_write_is_not_repeated() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .respond_with(ResponseTemplate::new(403).insert_header("retry-after", "5"))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Err(RepoError::RateLimited {
            retry_after_ms: 5000
        })
    );
    assert_eq!(received(&server).await.len(), 3);
    server.verify().await;
}

// ------------------------------------------------------------------ 5xx

#[tokio::test]
async fn a_read_answered_502_twice_is_retried_and_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad gateway</html>"))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&server)
        .await;
    mount_head(&server).await;
    let r = remote(&server);
    let h = r.head().await.unwrap().unwrap();
    assert_eq!(h.commit_sha, HEAD);
    assert_eq!(received_to(&server, "GET", REF_PATH).await.len(), 3);
    assert_eq!(r.calls(), 4, "three ref reads and one commit read");
    server.verify().await;
}

#[tokio::test]
async fn a_read_failing_every_time_is_tried_a_bounded_number_of_times() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(REF_PATH))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&server)
        .await;
    let r = remote(&server);
    let res = r.head().await;
    assert!(matches!(res, Err(RepoError::Unavailable(_))), "{res:?}");
    server.verify().await;
}

#[tokio::test]
async fn a_tree_creation_answered_500_once_is_repeated_identically() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    Mock::given(method("POST"))
        .and(path(TREES_PATH))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({ "message": "Server Error" })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    mount_commit_writes(&server).await;
    assert_eq!(
        r.commit(batch_request(Some(HEAD))).await,
        Ok(NEW_COMMIT.into())
    );
    let trees = received_to(&server, "POST", TREES_PATH).await;
    assert_eq!(trees.len(), 2);
    assert_eq!(trees[0].body, trees[1].body);
    assert_eq!(trees[0].body_json::<Value>().unwrap(), expected_tree_body());
    assert_eq!(
        received_to(&server, "PATCH", REF_UPDATE_PATH).await.len(),
        1
    );
    server.verify().await;
}

#[tokio::test]
async fn a_commit_creation_failing_every_time_never_moves_the_ref() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    Mock::given(method("POST"))
        .and(path(COMMITS_PATH))
        .respond_with(ResponseTemplate::new(502))
        .with_priority(1)
        .expect(3)
        .mount(&server)
        .await;
    mount_commit_writes(&server).await;
    let res = r.commit(batch_request(Some(HEAD))).await;
    assert!(matches!(res, Err(RepoError::Unavailable(_))), "{res:?}");
    assert!(received_to(&server, "PATCH", REF_UPDATE_PATH)
        .await
        .is_empty());
    server.verify().await;
}

#[tokio::test]
async fn a_ref_update_answered_500_is_unknown_and_sent_once() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    Mock::given(method("PATCH"))
        .and(path(REF_UPDATE_PATH))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({ "message": "Server Error" })),
        )
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    mount_commit_writes(&server).await;
    let res = r.commit(batch_request(Some(HEAD))).await;
    assert!(matches!(res, Err(RepoError::Unknown(_))), "{res:?}");
    assert_eq!(
        received_to(&server, "PATCH", REF_UPDATE_PATH).await.len(),
        1
    );
    assert_eq!(received(&server).await.len(), 5);
    server.verify().await;
}

// -------------------------------------------------------------- secrets

#[tokio::test]
async fn the_token_is_in_no_error_for_a_401() {
    let e = head_error(ResponseTemplate::new(401).set_body_json(json!({
        "message": "Bad credentials",
        "documentation_url": "https://docs.github.com/rest",
    })))
    .await;
    assert!(matches!(e, RepoError::Denied(_)));
    assert_secret_free(&e);
}

/// An address nothing listens on.
fn closed_port_api() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn the_token_is_in_no_error_for_a_refused_connection() {
    let r = GithubRemote::new(config(closed_port_api(), Some(TOKEN))).unwrap();
    let e = r.head().await.expect_err("nothing listens");
    assert!(matches!(e, RepoError::Unavailable(_)), "{e:?}");
    assert_secret_free(&e);
    assert_eq!(r.calls(), 3, "a read is tried a bounded number of times");

    // A call that is not repeated: its outcome is unknown.
    let e = r
        .commit(config_request(vec![(
            ".messages/config.json".into(),
            CONFIG_JSON.to_vec(),
        )]))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, RepoError::Unknown(_)), "{e:?}");
    assert_secret_free(&e);
    assert_eq!(r.calls(), 4, "the contents PUT is never repeated");
}

// ---------------------------------------------------------------- blobs

fn blob_path(sha: &str) -> String {
    format!("/repos/acme/chat/git/blobs/{sha}")
}

async fn mount_blob(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path(blob_path(BLOB)))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_blob_with_line_broken_base64_decodes() {
    let server = MockServer::start().await;
    let text = b"{\"id\":1,\"text\":\"hello world, a line long enough to wrap\"}\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    let wrapped: String = b64
        .as_bytes()
        .chunks(20)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    assert!(wrapped.matches('\n').count() > 2);
    mount_blob(
        &server,
        json!({
            "sha": BLOB, "node_id": "B_x", "url": "x",
            "size": text.len(), "encoding": "base64", "content": wrapped,
        }),
    )
    .await;
    let r = remote(&server);
    assert_eq!(r.read_blob(BLOB, 1024).await, Ok(text.to_vec()));
    assert_eq!(r.read_blob(BLOB, text.len()).await, Ok(text.to_vec()));
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn a_blob_larger_than_the_limit_is_invalid() {
    let server = MockServer::start().await;
    mount_blob(
        &server,
        json!({
            "sha": BLOB, "size": 2000, "encoding": "base64",
            "content": base64::engine::general_purpose::STANDARD.encode(b"small"),
        }),
    )
    .await;
    let r = remote(&server);
    let res = r.read_blob(BLOB, 1000).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn a_blob_whose_size_lies_is_still_held_to_the_limit() {
    let server = MockServer::start().await;
    mount_blob(
        &server,
        json!({
            "sha": BLOB, "size": 5, "encoding": "base64",
            "content": base64::engine::general_purpose::STANDARD.encode(b"hello world"),
        }),
    )
    .await;
    let r = remote(&server);
    let res = r.read_blob(BLOB, 5).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
}

#[tokio::test]
async fn an_oversized_blob_answer_is_refused_after_one_download() {
    let server = MockServer::start().await;
    let big = "A".repeat(200_000);
    mount_blob(
        &server,
        json!({ "sha": BLOB, "size": 16, "encoding": "base64", "content": big }),
    )
    .await;
    let r = remote(&server);
    let res = r.read_blob(BLOB, 16).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert_eq!(
        received(&server).await.len(),
        1,
        "downloaded more than once"
    );
}

#[tokio::test]
async fn a_blob_in_another_encoding_or_with_bad_base64_is_invalid() {
    for body in [
        json!({ "sha": BLOB, "size": 2, "encoding": "utf-8", "content": "hi" }),
        json!({ "sha": BLOB, "size": 2, "encoding": "base64", "content": "!!!!" }),
        json!({ "sha": BLOB, "size": 2 }),
    ] {
        let server = MockServer::start().await;
        mount_blob(&server, body.clone()).await;
        let res = remote(&server).read_blob(BLOB, 100).await;
        assert!(matches!(res, Err(RepoError::Invalid(_))), "{body}: {res:?}");
    }
}

#[tokio::test]
async fn a_missing_blob_is_not_found_and_a_bad_id_is_refused_locally() {
    let server = MockServer::start().await;
    let r = remote(&server);
    let res = r.read_blob(BLOB, 100).await;
    assert!(matches!(res, Err(RepoError::NotFound(_))), "{res:?}");
    let res = r.read_blob("../../contents/x", 100).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert_eq!(received(&server).await.len(), 1);
}

// ----------------------------------------------------------------- list

fn git_tree_path(sha: &str) -> String {
    format!("{TREES_PATH}/{sha}")
}

/// The head commit (tree `TREE`) and a root tree holding `.messages`.
async fn mount_root(server: &MockServer) {
    mount_head(server).await;
    Mock::given(method("GET"))
        .and(path(git_tree_path(TREE)))
        .and(query_param_is_missing("recursive"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": TREE,
            "url": "x",
            "tree": [
                { "path": ".messages", "mode": "040000", "type": "tree", "sha": SUBTREE },
                { "path": "README.md", "mode": "100644", "type": "blob", "sha": BLOB3, "size": 9 },
            ],
            "truncated": false,
        })))
        .mount(server)
        .await;
}

#[tokio::test]
async fn list_walks_to_the_folder_and_lists_it_recursively_with_full_paths() {
    let server = MockServer::start().await;
    mount_root(&server).await;
    Mock::given(method("GET"))
        .and(path(git_tree_path(SUBTREE)))
        .and(query_param("recursive", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": SUBTREE,
            "url": "x",
            "tree": [
                { "path": "2025", "mode": "040000", "type": "tree", "sha": NEW_TREE },
                { "path": "2025/11.jsonl", "mode": "100644", "type": "blob", "sha": BLOB, "size": 12 },
                { "path": "config.json", "mode": "100755", "type": "blob", "sha": BLOB2, "size": 3 },
                { "path": "link", "mode": "120000", "type": "blob", "sha": BLOB3, "size": 4 },
                { "path": "vendored", "mode": "160000", "type": "commit", "sha": SUBMODULE },
            ],
            "truncated": false,
        })))
        .expect(2)
        .mount(&server)
        .await;
    let r = remote(&server);
    let got = r.list(HEAD, ".messages", 100).await.unwrap();
    assert_eq!(
        got,
        vec![
            TreeEntry {
                path: ".messages/2025/11.jsonl".into(),
                kind: EntryKind::File,
                id: BLOB.into(),
                size: Some(12),
            },
            TreeEntry {
                path: ".messages/config.json".into(),
                kind: EntryKind::File,
                id: BLOB2.into(),
                size: Some(3),
            },
            TreeEntry {
                path: ".messages/link".into(),
                kind: EntryKind::Other,
                id: BLOB3.into(),
                size: Some(4),
            },
            TreeEntry {
                path: ".messages/vendored".into(),
                kind: EntryKind::Other,
                id: SUBMODULE.into(),
                size: None,
            },
        ]
    );
    assert_eq!(
        received(&server)
            .await
            .iter()
            .map(|r| r.url.path().to_owned() + "?" + r.url.query().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec![
            commit_path(HEAD) + "?",
            git_tree_path(TREE) + "?",
            git_tree_path(SUBTREE) + "?recursive=1",
        ]
    );
    // A trailing slash names the same folder; the commit is cached now.
    let before = r.calls();
    let again = r.list(HEAD, ".messages/", 100).await.unwrap();
    assert_eq!(again, got);
    assert_eq!(
        r.calls() - before,
        2,
        "root tree and folder, no commit read"
    );
}

#[tokio::test]
async fn a_truncated_listing_is_invalid() {
    let server = MockServer::start().await;
    mount_root(&server).await;
    Mock::given(method("GET"))
        .and(path(git_tree_path(SUBTREE)))
        .and(query_param("recursive", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": SUBTREE,
            "tree": [
                { "path": "a.jsonl", "mode": "100644", "type": "blob", "sha": BLOB, "size": 1 },
            ],
            "truncated": true,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let res = remote(&server).list(HEAD, ".messages", 100).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    server.verify().await;
}

#[tokio::test]
async fn a_listing_over_max_is_invalid() {
    let server = MockServer::start().await;
    mount_root(&server).await;
    Mock::given(method("GET"))
        .and(path(git_tree_path(SUBTREE)))
        .and(query_param("recursive", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sha": SUBTREE,
            "tree": [
                { "path": "a", "mode": "100644", "type": "blob", "sha": BLOB, "size": 1 },
                { "path": "b", "mode": "100644", "type": "blob", "sha": BLOB2, "size": 1 },
                { "path": "c", "mode": "100644", "type": "blob", "sha": BLOB3, "size": 1 },
            ],
            "truncated": false,
        })))
        .mount(&server)
        .await;
    let r = remote(&server);
    let res = r.list(HEAD, ".messages", 2).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert_eq!(r.list(HEAD, ".messages", 3).await.unwrap().len(), 3);
}

#[tokio::test]
async fn listing_a_missing_folder_is_empty_and_a_file_is_invalid() {
    let server = MockServer::start().await;
    mount_root(&server).await;
    let r = remote(&server);
    assert_eq!(r.list(HEAD, "attachments", 10).await, Ok(vec![]));
    let res = r.list(HEAD, "README.md", 10).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert!(
        received(&server)
            .await
            .iter()
            .all(|r| r.url.query().is_none()),
        "no recursive listing was requested"
    );
}

// -------------------------------------------------------------- history

fn listed(sha: &str, message: &str) -> Value {
    json!({
        "sha": sha,
        "node_id": "C_x",
        "commit": {
            "message": message,
            "tree": { "sha": TREE },
            "author": { "name": "skygit", "email": COMMITTER_EMAIL, "date": TIME_RFC3339 },
        },
        "parents": [],
    })
}

fn history_mock(page: u32, items: Vec<Value>) -> Mock {
    Mock::given(method("GET"))
        .and(path("/repos/acme/chat/commits"))
        .and(query_param("sha", HEAD))
        .and(query_param("per_page", "100"))
        .and(query_param("page", page.to_string()))
        .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(items)))
}

fn sha_n(n: usize) -> String {
    format!("{n:040x}")
}

#[tokio::test]
async fn history_of_less_than_a_page_is_one_request() {
    let server = MockServer::start().await;
    history_mock(1, vec![listed(HEAD, "m2\n"), listed(PARENT, "m1\n")])
        .expect(1)
        .mount(&server)
        .await;
    let r = remote(&server);
    assert_eq!(
        r.history(HEAD, 1000).await,
        Ok(vec![
            CommitInfo {
                sha: HEAD.into(),
                message: "m2\n".into(),
            },
            CommitInfo {
                sha: PARENT.into(),
                message: "m1\n".into(),
            },
        ])
    );
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].url.query(),
        Some(format!("sha={HEAD}&per_page=100&page=1").as_str())
    );
    server.verify().await;
}

#[tokio::test]
async fn history_pages_until_max_or_a_short_page() {
    let server = MockServer::start().await;
    let page1: Vec<Value> = (0..100).map(|i| listed(&sha_n(1000 + i), "p1")).collect();
    let page2: Vec<Value> = (0..3).map(|i| listed(&sha_n(2000 + i), "p2")).collect();
    history_mock(1, page1).expect(3).mount(&server).await;
    history_mock(2, page2).expect(1).mount(&server).await;
    let r = remote(&server);
    let all = r.history(HEAD, 1000).await.unwrap();
    assert_eq!(all.len(), 103);
    assert_eq!(all[0].sha, sha_n(1000));
    assert_eq!(all[102].sha, sha_n(2002));
    // A full first page is enough for max 100 or fewer.
    assert_eq!(r.history(HEAD, 100).await.unwrap().len(), 100);
    assert_eq!(r.history(HEAD, 40).await.unwrap().len(), 40);
    server.verify().await;
}

#[tokio::test]
async fn history_refuses_malformed_ids() {
    let server = MockServer::start().await;
    history_mock(1, vec![listed("zz", "m")])
        .mount(&server)
        .await;
    let r = remote(&server);
    let res = r.history(HEAD, 10).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    let res = r.history("main", 10).await;
    assert!(matches!(res, Err(RepoError::Invalid(_))), "{res:?}");
    assert_eq!(received(&server).await.len(), 1);
}

// --------------------------------------------------------- write budget

#[tokio::test]
async fn the_81st_write_in_a_minute_is_refused_locally() {
    let server = MockServer::start().await;
    let r = remote_with_known_head(&server).await;
    mount_commit_writes(&server).await;
    for i in 0..26 {
        assert_eq!(
            r.commit(batch_request(Some(HEAD))).await,
            Ok(NEW_COMMIT.into()),
            "commit {i}"
        );
    }
    assert_eq!(received(&server).await.len(), 2 + 78);
    let calls = r.calls();
    // Writes 79 and 80 go out; the 81st (the ref update) does not.
    match r.commit(batch_request(Some(HEAD))).await {
        Err(RepoError::RateLimited { retry_after_ms }) => {
            assert!((1..=60_000).contains(&retry_after_ms), "{retry_after_ms}")
        }
        res => panic!("not refused: {res:?}"),
    }
    assert_eq!(r.calls() - calls, 2);
    assert_eq!(received(&server).await.len(), 2 + 80);
    assert_eq!(
        received_to(&server, "PATCH", REF_UPDATE_PATH).await.len(),
        26
    );
    // Still refused, still without a request; reads are not limited.
    let res = r.commit(batch_request(Some(HEAD))).await;
    assert!(matches!(res, Err(RepoError::RateLimited { .. })), "{res:?}");
    assert!(r.head().await.unwrap().is_some());
    assert_eq!(received(&server).await.len(), 2 + 80 + 1);
}
