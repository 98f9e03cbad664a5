//! Integration tests of the GitHub test server, over a tiny HTTP/1.1 client
//! on `std::net::TcpStream`, checking results with the real `git` command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use skygit_github_server::{Fault, GithubServer};

const TOKEN: &str = "secret-token";

/// A parsed HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
fn raw_request(
    server: &GithubServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let url = server.url();
    let host = url.strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: skygit-test\r\nAccept: application/vnd.github+json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf-8 headers");
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest.drain(..eol + 2 + size + 2);
        }
        rest = out;
    }
    Resp {
        status,
        headers,
        body: rest,
    }
}

/// An authenticated JSON request.
fn call(server: &GithubServer, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    raw_request(
        server,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &bytes,
    )
}

fn git(repo: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .expect("run git");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn start() -> (tempfile::TempDir, GithubServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = GithubServer::start(&dir.path().join("repo.git"), "acme", "chat", TOKEN)
        .expect("start server");
    (dir, server)
}

/// Creates the first commit on `main` through the contents API.
fn seed(server: &GithubServer) -> String {
    let r = call(
        server,
        "PUT",
        "/repos/acme/chat/contents/README.md",
        Some(json!({"message": "seed", "content": b64("hello\n")})),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    r.json()["commit"]["sha"].as_str().unwrap().to_owned()
}

fn head_sha(server: &GithubServer) -> String {
    let r = call(server, "GET", "/repos/acme/chat/git/ref/heads/main", None);
    assert_eq!(r.status, 200);
    r.json()["object"]["sha"].as_str().unwrap().to_owned()
}

#[test]
fn requests_without_the_token_are_rejected() {
    let (_dir, server) = start();
    let r = raw_request(&server, "GET", "/repos/acme/chat", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Bad credentials");
    let r = raw_request(
        &server,
        "GET",
        "/repos/acme/chat",
        &[("Authorization", "token wrong")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = raw_request(
        &server,
        "GET",
        "/repos/acme/chat",
        &[("Authorization", &format!("token {TOKEN}"))],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({
            "full_name": "acme/chat", "default_branch": "main", "size": 0,
            "id": 1, "name": "chat", "owner": {"login": "acme"}, "private": false,
            "node_id": r.json()["node_id"], "html_url": r.json()["html_url"], "url": r.json()["url"],
        })
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4997"));
    assert_eq!(r.header("x-ratelimit-used"), Some("3"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(server.calls(), 3);
}

#[test]
fn empty_repository_answers_409() {
    let (_dir, server) = start();
    let r = call(&server, "GET", "/repos/acme/chat/git/ref/heads/main", None);
    assert_eq!(r.status, 409);
    assert_eq!(r.message(), "Git Repository is empty.");
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(json!({"tree": [{"path": "a", "mode": "100644", "type": "blob", "content": "x"}]})),
    );
    assert_eq!(r.status, 409);
    let r = call(&server, "GET", "/repos/acme/chat/commits", None);
    assert_eq!(r.status, 409);
    let r = call(&server, "GET", "/repos/other/chat/git/ref/heads/main", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.message(), "Not Found");
}

#[test]
fn contents_put_creates_root_commit_then_updates() {
    let (_dir, server) = start();
    let repo = server.repo_path();
    let r = call(
        &server,
        "PUT",
        "/repos/acme/chat/contents/rooms/general/2026.jsonl",
        Some(json!({
            "message": "first file",
            "content": b64("{\"a\":1}\n"),
            "committer": {"name": "Bot", "email": "bot@example.com"},
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    let body = r.json();
    assert_eq!(body["content"]["path"], "rooms/general/2026.jsonl");
    assert_eq!(body["content"]["name"], "2026.jsonl");
    assert_eq!(body["content"]["type"], "file");
    assert_eq!(body["commit"]["parents"], json!([]));
    assert_eq!(body["commit"]["author"]["name"], "Bot");
    let blob = body["content"]["sha"].as_str().unwrap().to_owned();

    let (ok, log) = git(&repo, &["log", "--format=%s", "main"]);
    assert!(ok);
    assert_eq!(log, "first file\n");
    let (_, shown) = git(&repo, &["show", "main:rooms/general/2026.jsonl"]);
    assert_eq!(shown, "{\"a\":1}\n");

    // Updating needs the current blob sha.
    let path = "/repos/acme/chat/contents/rooms/general/2026.jsonl";
    let update = |sha: Option<&str>| {
        let mut b = json!({"message": "second", "content": b64("{\"a\":2}\n")});
        if let Some(sha) = sha {
            b["sha"] = json!(sha);
        }
        call(&server, "PUT", path, Some(b))
    };
    let r = update(None);
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Invalid request.\n\n\"sha\" wasn't supplied.");
    let wrong = "0123456789012345678901234567890123456789";
    let r = update(Some(wrong));
    assert_eq!(r.status, 409);
    assert_eq!(
        r.message(),
        format!("rooms/general/2026.jsonl does not match {wrong}")
    );
    let r = update(Some(&blob));
    assert_eq!(r.status, 200, "{:?}", r.json());
    let (_, log) = git(&repo, &["log", "--format=%s", "main"]);
    assert_eq!(log, "second\nfirst file\n");

    let r = call(
        &server,
        "PUT",
        "/repos/acme/chat/contents/x.txt",
        Some(json!({"message": "m", "content": "not base64!"})),
    );
    assert_eq!(r.status, 422);

    // Reading it back through the contents API.
    let r = call(&server, "GET", &format!("{path}?ref=main"), None);
    assert_eq!(r.status, 200);
    let content = r.json()["content"].as_str().unwrap().replace('\n', "");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .unwrap(),
        b"{\"a\":2}\n"
    );
    let r = call(&server, "GET", "/repos/acme/chat/contents/rooms", None);
    assert_eq!(r.status, 404);
}

#[test]
fn tree_commit_and_ref_update_flow() {
    let (_dir, server) = start();
    let repo = server.repo_path();
    let parent = seed(&server);
    let r = call(
        &server,
        "GET",
        &format!("/repos/acme/chat/git/commits/{parent}"),
        None,
    );
    assert_eq!(r.status, 200);
    let base_tree = r.json()["tree"]["sha"].as_str().unwrap().to_owned();

    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(json!({
            "base_tree": base_tree,
            "tree": [
                {"path": "rooms/general/2026-11.jsonl", "mode": "100644", "type": "blob", "content": "line 1\nline 2\n"},
                {"path": "rooms/random/a.jsonl", "mode": "100644", "type": "blob", "content": "{}\n"},
                {"path": "README.md", "mode": "100644", "type": "blob", "sha": null},
                {"path": "never/existed", "mode": "100644", "type": "blob", "sha": null},
            ],
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    let tree = r.json();
    assert_eq!(tree["truncated"], false);
    let top: Vec<&str> = tree["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(top, vec!["rooms"]);
    assert_eq!(tree["tree"][0]["mode"], "040000");
    assert_eq!(tree["tree"][0]["type"], "tree");
    let tree_sha = tree["sha"].as_str().unwrap().to_owned();

    // Reuse a blob by sha in another tree on top of the new one.
    let r = call(
        &server,
        "GET",
        &format!("/repos/acme/chat/git/trees/{tree_sha}?recursive=1"),
        None,
    );
    assert_eq!(r.status, 200);
    let listing: Vec<(String, String)> = r.json()["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listing,
        [
            ("rooms", "tree"),
            ("rooms/general", "tree"),
            ("rooms/general/2026-11.jsonl", "blob"),
            ("rooms/random", "tree"),
            ("rooms/random/a.jsonl", "blob"),
        ]
        .map(|(p, t)| (p.to_owned(), t.to_owned()))
    );
    assert_eq!(r.json()["tree"][2]["size"], 14);

    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({"message": "append messages\n", "tree": tree_sha, "parents": [parent]})),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    let commit = r.json()["sha"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["parents"][0]["sha"], parent.as_str());
    assert_eq!(r.json()["verification"]["verified"], false);

    // Not moved yet.
    assert_eq!(head_sha(&server), parent);
    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/main",
        Some(json!({"sha": commit, "force": false})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["ref"], "refs/heads/main");
    assert_eq!(r.json()["object"]["sha"], commit.as_str());
    assert_eq!(head_sha(&server), commit);

    let (ok, shown) = git(&repo, &["show", "main:rooms/general/2026-11.jsonl"]);
    assert!(ok);
    assert_eq!(shown, "line 1\nline 2\n");
    let (ok, _) = git(&repo, &["cat-file", "-e", "main:README.md"]);
    assert!(!ok, "README.md was deleted");
    let (ok, fsck) = git(&repo, &["fsck", "--strict"]);
    assert!(ok, "{fsck}");

    // The commit list, with pagination.
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/commits?sha=main&per_page=1",
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["sha"], commit.as_str());
    assert_eq!(r.json()[0]["commit"]["message"], "append messages\n");
    let link = r.header("link").expect("link header").to_owned();
    assert!(link.contains("page=2"), "{link}");
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/commits?sha=main&per_page=1&page=2",
        None,
    );
    assert_eq!(r.json()[0]["sha"], parent.as_str());
    assert!(r.header("link").is_none());

    // Bad trees.
    for (entry, what) in [
        (
            json!({"path": "../x", "mode": "100644", "type": "blob", "content": "x"}),
            "dot-dot",
        ),
        (
            json!({"path": "/x", "mode": "100644", "type": "blob", "content": "x"}),
            "leading slash",
        ),
        (
            json!({"path": "a//b", "mode": "100644", "type": "blob", "content": "x"}),
            "double slash",
        ),
        (
            json!({"path": "x", "mode": "100600", "type": "blob", "content": "x"}),
            "mode",
        ),
        (
            json!({"path": "x", "mode": "100644", "type": "tree", "content": "x"}),
            "type",
        ),
    ] {
        let r = call(
            &server,
            "POST",
            "/repos/acme/chat/git/trees",
            Some(json!({"base_tree": tree_sha, "tree": [entry]})),
        );
        assert_eq!(r.status, 422, "{what}");
    }
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(json!({"base_tree": "0000000000000000000000000000000000000001", "tree": []})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Invalid tree info");
}

#[test]
fn non_fast_forward_ref_update_is_rejected() {
    let (_dir, server) = start();
    let repo = server.repo_path();
    let head = seed(&server);
    let tree = call(
        &server,
        "GET",
        &format!("/repos/acme/chat/git/commits/{head}"),
        None,
    )
    .json()["tree"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    // An unrelated root commit.
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({"message": "orphan", "tree": tree, "parents": []})),
    );
    assert_eq!(r.status, 201);
    let orphan = r.json()["sha"].as_str().unwrap().to_owned();
    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/main",
        Some(json!({"sha": orphan})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Update is not a fast forward");
    assert_eq!(head_sha(&server), head);

    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/nope",
        Some(json!({"sha": orphan})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Reference does not exist");
    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/main",
        Some(json!({"sha": "1111111111111111111111111111111111111111"})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Object does not exist");

    // New branches, then a forced update.
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/refs",
        Some(json!({"ref": "refs/heads/feature/x", "sha": orphan})),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/refs",
        Some(json!({"ref": "refs/heads/feature/x", "sha": orphan})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.message(), "Reference already exists");
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/git/ref/heads/feature/x",
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"]["sha"], orphan.as_str());
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/git/ref/heads/missing",
        None,
    );
    assert_eq!(r.status, 404);

    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/main",
        Some(json!({"sha": orphan, "force": true})),
    );
    assert_eq!(r.status, 200);
    let (_, log) = git(&repo, &["log", "--format=%s", "main"]);
    assert_eq!(log, "orphan\n");
}

#[test]
fn conditional_get_answers_304() {
    let (_dir, server) = start();
    let head = seed(&server);
    let path = "/repos/acme/chat/git/ref/heads/main";
    let r = call(&server, "GET", path, None);
    assert_eq!(r.status, 200);
    let etag = r.header("etag").expect("etag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let remaining: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();

    let auth = format!("token {TOKEN}");
    let conditional = |path: &str, etag: &str| {
        raw_request(
            &server,
            "GET",
            path,
            &[("Authorization", &auth), ("If-None-Match", etag)],
            b"",
        )
    };
    let r = conditional(path, &etag);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    // 304s do not count against the rate limit.
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some(remaining.to_string().as_str())
    );

    // Commits, trees and blobs are cacheable too.
    let commit_path = format!("/repos/acme/chat/git/commits/{head}");
    let r = call(&server, "GET", &commit_path, None);
    let commit_etag = r.header("etag").unwrap().to_owned();
    assert_eq!(conditional(&commit_path, &commit_etag).status, 304);
    let blob = call(&server, "GET", "/repos/acme/chat/contents/README.md", None).json()["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob_path = format!("/repos/acme/chat/git/blobs/{blob}");
    let r = call(&server, "GET", &blob_path, None);
    assert_eq!(r.json()["content"], "aGVsbG8K\n");
    assert_eq!(r.json()["size"], 6);
    let blob_etag = r.header("etag").unwrap().to_owned();
    assert_eq!(conditional(&blob_path, &blob_etag).status, 304);

    // Once the branch moves the old ETag no longer matches.
    let r = call(
        &server,
        "PUT",
        "/repos/acme/chat/contents/other.txt",
        Some(json!({"message": "two", "content": b64("2")})),
    );
    assert_eq!(r.status, 201);
    let r = conditional(path, &etag);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag"), Some(etag.as_str()));

    let log = server.requests();
    assert_eq!(log.len() as u64, server.calls());
    assert_eq!(log[2].status, 304);
    assert_eq!(log[2].body, Value::Null);
    server.reset_log();
    assert_eq!(server.calls(), 0);
    assert!(server.requests().is_empty());
}

#[test]
fn commit_sha_matches_libgit2() {
    let (dir, server) = start();
    seed(&server);

    // The same objects in an unrelated repository, written with git2.
    let other = git2::Repository::init_bare(dir.path().join("other.git")).unwrap();
    let files = [
        (
            "rooms/general/2026-11.jsonl",
            "{\"id\":\"01J\",\"text\":\"héllo\"}\n",
        ),
        ("rooms/general/meta.json", "{}"),
        ("top.txt", "top"),
    ];
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, content) in files {
        let blob = other.blob(content.as_bytes()).unwrap();
        update.upsert(path, blob, git2::FileMode::Blob);
    }
    let empty = other
        .find_tree(other.treebuilder(None).unwrap().write().unwrap())
        .unwrap();
    let tree_id = update.create_updated(&other, &empty).unwrap();
    let tree = other.find_tree(tree_id).unwrap();
    let author = git2::Signature::new(
        "Ada Lovelace",
        "ada@example.com",
        &git2::Time::new(1_795_341_600, 120),
    )
    .unwrap();
    let committer = git2::Signature::new(
        "Skygit Bot",
        "bot@skygit.invalid",
        &git2::Time::new(1_795_345_200, -330),
    )
    .unwrap();
    let message = "Batch of 3 messages\n\n  indented body\nno trailing newline";
    let first = other
        .commit(None, &author, &committer, message, &tree, &[])
        .unwrap();
    let first_commit = other.find_commit(first).unwrap();
    let second = other
        .commit(None, &author, &author, "second\n", &tree, &[&first_commit])
        .unwrap();

    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(json!({
            "tree": files.iter().map(|(path, content)| json!({
                "path": path, "mode": "100644", "type": "blob", "content": content,
            })).collect::<Vec<_>>(),
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["sha"], tree_id.to_string());

    let ada = json!({"name": "Ada Lovelace", "email": "ada@example.com", "date": "2026-11-22T12:00:00+02:00"});
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({
            "message": message,
            "tree": tree_id.to_string(),
            "parents": [],
            "author": ada,
            "committer": {"name": "Skygit Bot", "email": "bot@skygit.invalid", "date": "2026-11-22T05:30:00-05:30"},
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["sha"], first.to_string());
    assert_eq!(r.json()["message"], message);
    assert_eq!(r.json()["author"]["date"], "2026-11-22T10:00:00Z");
    assert_eq!(r.json()["committer"]["date"], "2026-11-22T11:00:00Z");

    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({
            "message": "second\n",
            "tree": tree_id.to_string(),
            "parents": [first.to_string()],
            "author": ada,
            "committer": ada,
        })),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["sha"], second.to_string());

    // The real git agrees about the stored object.
    let (ok, raw) = git(
        &server.repo_path(),
        &["cat-file", "-p", &second.to_string()],
    );
    assert!(ok);
    assert!(
        raw.contains("author Ada Lovelace <ada@example.com> 1795341600 +0200"),
        "{raw}"
    );

    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({"message": "x", "tree": "2222222222222222222222222222222222222222"})),
    );
    assert_eq!(r.status, 422);
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(
            json!({"message": "x", "tree": tree_id.to_string(), "parents": ["2222222222222222222222222222222222222222"]}),
        ),
    );
    assert_eq!(r.status, 422);
}

#[test]
fn injected_fault_is_answered_once() {
    let (_dir, server) = start();
    let head = seed(&server);
    let reset = "1800000000";
    server.inject(Fault {
        method: Some("GET".to_owned()),
        path_contains: "/git/ref/heads/main".to_owned(),
        status: 429,
        headers: vec![
            ("retry-after".to_owned(), "1".to_owned()),
            ("x-ratelimit-remaining".to_owned(), "0".to_owned()),
            ("x-ratelimit-reset".to_owned(), reset.to_owned()),
        ],
        message: "API rate limit exceeded".to_owned(),
    });
    // A different method does not trigger it.
    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/heads/main",
        Some(json!({"sha": head})),
    );
    assert_eq!(r.status, 200);

    let r = call(&server, "GET", "/repos/acme/chat/git/ref/heads/main", None);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some(reset));
    assert_eq!(r.message(), "API rate limit exceeded");

    let r = call(&server, "GET", "/repos/acme/chat/git/ref/heads/main", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"]["sha"], head.as_str());

    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![201, 200, 429, 200]);
    assert_eq!(server.calls(), 4);

    // Faults are used in FIFO order, even before authentication.
    server.inject(Fault::new("/repos/", 502, "first"));
    server.inject(Fault::new("/repos/", 503, "second").with_method("GET"));
    let r = raw_request(&server, "GET", "/repos/acme/chat", &[], b"");
    assert_eq!((r.status, r.message()), (502, "first".to_owned()));
    let r = raw_request(&server, "GET", "/repos/acme/chat", &[], b"");
    assert_eq!((r.status, r.message()), (503, "second".to_owned()));
    let r = raw_request(&server, "GET", "/repos/acme/chat", &[], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn bad_input_gets_json_errors() {
    let (_dir, server) = start();
    seed(&server);
    let auth = format!("token {TOKEN}");
    let r = raw_request(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        &[("Authorization", &auth)],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.message(), "Problems parsing JSON");
    assert_eq!(
        server.requests().last().unwrap().body,
        Value::String("{not json".to_owned())
    );
    for (method, path, body) in [
        ("GET", "/nothing/here", None),
        ("GET", "/repos/acme/chat/git/commits/zz", None),
        ("GET", "/repos/acme/chat/git/blobs/%ff", None),
        ("GET", "/repos/acme/chat/git/trees/no-such-branch", None),
        ("DELETE", "/repos/acme/chat", None),
        ("POST", "/repos/acme/chat/git/commits", Some(json!([1, 2]))),
        (
            "POST",
            "/repos/acme/chat/git/trees",
            Some(json!({"tree": "x"})),
        ),
        (
            "POST",
            "/repos/acme/chat/git/trees",
            Some(json!({"tree": [7]})),
        ),
        (
            "POST",
            "/repos/acme/chat/git/refs",
            Some(json!({"ref": "main", "sha": 1})),
        ),
        (
            "PATCH",
            "/repos/acme/chat/git/refs/heads/main",
            Some(json!({"sha": "x", "force": "yes"})),
        ),
        (
            "PUT",
            "/repos/acme/chat/contents/a/../b",
            Some(json!({"message": "m", "content": ""})),
        ),
        (
            "PUT",
            "/repos/acme/chat/contents/README.md/x",
            Some(json!({"message": "m", "content": ""})),
        ),
        (
            "GET",
            "/repos/acme/chat/commits?sha=nope&per_page=abc&page=-1",
            None,
        ),
    ] {
        let r = call(&server, method, path, body);
        assert!(
            [400, 404, 422].contains(&r.status),
            "{method} {path}: {}",
            r.status
        );
        assert!(!r.message().is_empty(), "{method} {path}");
    }
    // Still serving.
    let r = call(&server, "GET", "/repos/acme/chat/commits", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

#[test]
fn works_from_inside_a_tokio_runtime_and_shuts_down() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let (_dir, server) = start();
        let r = call(&server, "GET", "/repos/acme/chat", None);
        assert_eq!(r.status, 200);
        server.url()
        // Dropped here, inside the runtime.
    });
    let host = url.strip_prefix("http://").unwrap().to_owned();
    assert!(
        TcpStream::connect(host).is_err(),
        "the listener is closed after drop"
    );
}

#[test]
fn large_bodies_are_accepted_and_summarized_in_the_log() {
    let (_dir, server) = start();
    seed(&server);
    let big = "x".repeat(5 * 1024 * 1024);
    let r = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(
            json!({"tree": [{"path": "big.txt", "mode": "100644", "type": "blob", "content": big}]}),
        ),
    );
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["tree"][0]["size"], 5 * 1024 * 1024);
    let logged = &server.requests()[1];
    assert_eq!(logged.status, 201);
    assert!(logged.body["omitted_body_bytes"].as_u64().unwrap() > 5 * 1024 * 1024);
}

#[test]
fn concurrent_ref_updates_are_atomic() {
    let (_dir, server) = start();
    let head = seed(&server);
    let tree = call(
        &server,
        "GET",
        &format!("/repos/acme/chat/git/commits/{head}"),
        None,
    )
    .json()["tree"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let children: Vec<String> = (0..8)
        .map(|i| {
            let r = call(
                &server,
                "POST",
                "/repos/acme/chat/git/commits",
                Some(json!({"message": format!("child {i}"), "tree": tree, "parents": [head]})),
            );
            r.json()["sha"].as_str().unwrap().to_owned()
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = children
            .iter()
            .map(|sha| {
                let server = &server;
                s.spawn(move || {
                    call(
                        server,
                        "PATCH",
                        "/repos/acme/chat/git/refs/heads/main",
                        Some(json!({"sha": sha})),
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 422).count(),
        7,
        "{statuses:?}"
    );
    let winner = head_sha(&server);
    assert!(children.contains(&winner));
}

#[test]
fn matching_refs_lists_refs_by_prefix_and_is_conditional() {
    let (_dir, server) = start();
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/git/matching-refs/skygit/presence/",
        None,
    );
    assert_eq!(r.status, 409, "an empty repository");
    let head = seed(&server);
    let path = "/repos/acme/chat/git/matching-refs/skygit/presence/";
    let r = call(&server, "GET", path, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    for name in [
        "refs/skygit/presence/7",
        "refs/skygit/presence/10",
        "refs/skygit/presence-other/1",
    ] {
        let r = call(
            &server,
            "POST",
            "/repos/acme/chat/git/refs",
            Some(json!({"ref": name, "sha": head})),
        );
        assert_eq!(r.status, 201, "{:?}", r.json());
    }
    let r = call(&server, "GET", path, None);
    assert_eq!(r.status, 200);
    let listed: Vec<(String, String)> = r
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            (
                e["ref"].as_str().unwrap().to_owned(),
                e["object"]["sha"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("refs/skygit/presence/10".to_owned(), head.clone()),
            ("refs/skygit/presence/7".to_owned(), head.clone()),
        ],
        "sorted by name; the trailing slash keeps presence-other out"
    );
    assert_eq!(r.json()[0]["object"]["type"], "commit");
    // Without the trailing slash the prefix matches presence-other too.
    let r = call(
        &server,
        "GET",
        "/repos/acme/chat/git/matching-refs/skygit/presence",
        None,
    );
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));

    // Conditional: unchanged refs answer 304, a moved ref 200.
    let etag = call(&server, "GET", path, None)
        .header("etag")
        .expect("etag")
        .to_owned();
    let auth = format!("token {TOKEN}");
    let conditional = || {
        raw_request(
            &server,
            "GET",
            path,
            &[("Authorization", &auth), ("If-None-Match", &etag)],
            b"",
        )
    };
    assert_eq!(conditional().status, 304);
    let tree = call(
        &server,
        "POST",
        "/repos/acme/chat/git/trees",
        Some(json!({"tree": [{"path": "p", "mode": "100644", "type": "blob", "content": "x"}]})),
    )
    .json()["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let commit = call(
        &server,
        "POST",
        "/repos/acme/chat/git/commits",
        Some(json!({"message": "p", "tree": tree, "parents": []})),
    )
    .json()["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(
        &server,
        "PATCH",
        "/repos/acme/chat/git/refs/skygit/presence/7",
        Some(json!({"sha": commit, "force": true})),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = conditional();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[1]["object"]["sha"], commit.as_str());
}
