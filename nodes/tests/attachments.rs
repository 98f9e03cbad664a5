//! Attachments between real `skygit node` processes over WebRTC: a 20 MiB
//! file uploaded to one node is served byte-identical by the other two
//! (fetched over the mesh on demand) while chat keeps committing; ranges;
//! hostile uploads and downloads refused with a clear error. Then where
//! the room stores them, checked with the real `git lfs` client: git-lfs's
//! standalone layout in a local bare repository and plain git blobs; a Git
//! LFS server (giftless) and an S3-compatible server (moto) on loopback,
//! through an outage of the S3 server.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest;
use skygit_harness::{init_repo, wait_members, NodeProc, NodeSpec};

const SETTLE: Duration = Duration::from_secs(90);
const MIB: usize = 1024 * 1024;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skygit"))
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Sends only the head of an upload declaring `len` bytes and reads the
/// answer's head.
async fn too_large_head(node: &NodeProc, len: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.api.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    let head = format!(
        "POST /attachments?name=big HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
        node.secret
    );
    s.write_all(head.as_bytes()).await.expect("writes");
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered before the body")
        .expect("reads");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_file_reaches_every_node_while_chat_keeps_committing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("room.git");
    init_repo(
        bin(),
        &repo,
        &dir.path().join("init"),
        &[
            "--commit-interval",
            "1",
            "--media-max-bytes",
            "31457280",
            "--media-small-storage",
            "git",
            "--media-small-max-bytes",
            "1048576",
        ],
    )
    .expect("init");
    let mut nodes = Vec::new();
    for user in ["ana", "bob", "cy"] {
        let spec = NodeSpec::for_test(bin(), dir.path(), &repo, user, &[]);
        nodes.push(NodeProc::start(spec).await.expect("node starts"));
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await.expect("room formed");

    let bytes = skygit_tests::noise(20 * MIB, 11);
    let a = nodes[0]
        .upload(bytes.clone(), "dump.bin", "application/octet-stream")
        .await
        .expect("uploaded");
    assert_eq!(a.sha256, sha(&bytes));
    assert_eq!(a.size, bytes.len() as u64);
    let posted = nodes[0]
        .post_files("the dump", vec![a.clone()])
        .await
        .expect("posted");
    assert_eq!(posted.message.attachments.len(), 1);
    assert!(posted.message.attachments[0].local);

    // Chat through the third node while the other two fetch the file.
    let chat = skygit_harness::ChatProbe::start(&nodes[2]);
    let started = Instant::now();
    let (b, c) = tokio::join!(
        nodes[1].download(&a.sha256, None),
        nodes[2].download(&a.sha256, None)
    );
    let secs = started.elapsed().as_secs_f64();
    let chat = chat.finish().await.expect("chat task");
    assert_eq!(
        (chat.queued, chat.failed),
        (0, 0),
        "chat stalled during the transfer"
    );
    for (who, got) in [("bob", b), ("cy", c)] {
        let (status, got) = got.expect("download answered");
        assert_eq!(status, 200, "{who}");
        assert_eq!(got.len(), bytes.len(), "{who}");
        assert_eq!(sha(&got), a.sha256, "{who} served other bytes");
    }
    println!(
        "20 MiB to two nodes in {secs:.2} s ({:.1} MB/s each); chat during it: {} posts, p50 {:.1} ms, p99 {:.1} ms",
        20.0 * 1.048_576 / secs,
        chat.took_ms.len(),
        chat.quantile(0.5),
        chat.quantile(0.99),
    );
    assert!(
        !chat.took_ms.is_empty(),
        "no chat message committed during the transfer"
    );

    // A range, as a video element asks for it.
    let (status, part) = nodes[2]
        .download(&a.sha256, Some("bytes=1000-1999"))
        .await
        .expect("range answered");
    assert_eq!(status, 206);
    assert_eq!(part, bytes[1000..2000]);

    // The message shows the file as local on a node that fetched it.
    let page: skygit_api::MessagePage = nodes[1].get("/messages").await.expect("messages");
    let m = page
        .messages
        .iter()
        .find(|m| m.id == posted.message_id)
        .expect("the post reached bob");
    assert_eq!(m.attachments[0].sha256, a.sha256);
    assert!(m.attachments[0].local);
    assert_eq!(
        m.attachments[0].url,
        format!("/attachments/{}?size={}", a.sha256, a.size)
    );

    // Hostile input: too large, unknown, malformed, never uploaded.
    // Refused on its declared length, before a byte of the body is sent.
    let head = too_large_head(&nodes[1], 30 * MIB as u64 + 1).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let unknown = "0".repeat(64);
    assert_eq!(
        nodes[1].download(&unknown, None).await.expect("answered").0,
        404
    );
    assert_eq!(
        nodes[1].download("zz", None).await.expect("answered").0,
        400
    );
    let mut never = a.clone();
    never.sha256 = "1".repeat(64);
    let refused = nodes[1]
        .post_files("ghost", vec![never])
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("409"), "{refused}");
    let bad_name = nodes[1]
        .upload(vec![1, 2, 3], "a\nb", "text/plain")
        .await
        .expect_err("refused");
    assert!(bad_name.to_string().contains("400"), "{bad_name}");

    // Stored: the big file in git-lfs's standalone layout of the bare
    // repository, a small one as a blob.
    let small = skygit_tests::noise(3000, 12);
    let s = nodes[1]
        .upload(small.clone(), "notes.txt", "text/plain")
        .await
        .expect("uploaded");
    let posted_small = nodes[1]
        .post_files("notes", vec![s.clone()])
        .await
        .expect("posted");
    for id in [&posted.message_id, &posted_small.message_id] {
        wait_stored(&nodes[0], id).await;
    }
    let clone = dir.path().join("clone");
    git_lfs_clone(&repo.to_string_lossy(), &clone, None);
    let lfs_file = clone.join(".messages/lfs").join(&a.sha256);
    assert_eq!(
        sha(&std::fs::read(&lfs_file).expect("git lfs pull wrote the file")),
        a.sha256
    );
    let blob = clone.join(".messages/attachments").join(&s.sha256);
    assert_eq!(
        std::fs::read(&blob).expect("the blob is in the tree"),
        small
    );

    // Alone and without its copies, a node reads the blob back from the
    // repository and the LFS object from the standalone layout.
    for n in &mut nodes[1..] {
        n.stop(Duration::from_secs(20)).await.expect("stops");
    }
    for f in [&s, &a] {
        remove_blob(&nodes[0].spec.data_dir.join("attachments"), &f.sha256);
        let (status, got) = nodes[0]
            .download(&format!("{}?size={}", f.sha256, f.size), None)
            .await
            .expect("answered");
        assert_eq!(status, 200, "{}", f.name);
        assert_eq!(sha(&got), f.sha256, "{}", f.name);
    }
    for n in &mut nodes {
        n.stop(Duration::from_secs(20)).await.expect("stops");
    }
}

/// Waits until `node` shows message `id` synchronized with every file
/// stored.
async fn wait_stored(node: &NodeProc, id: &str) {
    skygit_harness::wait_for(SETTLE, &format!("message {id} stored"), || async {
        let m: skygit_api::Message = node.get(&format!("/messages/{id}")).await.ok()?;
        (m.sync_state == skygit_api::SyncState::Synchronized
            && m.attachments.iter().all(|a| a.stored))
        .then_some(())
    })
    .await
    .expect("stored");
}

/// `git clone` without LFS, `git lfs install` in the clone, then `git lfs
/// pull` (with `lfs_url` as the LFS endpoint): what a teammate without
/// skygit does.
fn git_lfs_clone(url: &str, into: &Path, lfs_url: Option<&str>) {
    let run = |args: &[&str], cwd: &Path| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_LFS_SKIP_SMUDGE", "1")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let parent = into.parent().expect("parent");
    run(&["clone", "--quiet", url, &into.to_string_lossy()], parent);
    run(&["lfs", "install", "--local"], into);
    match lfs_url {
        Some(u) => run(&["-c", &format!("lfs.url={u}"), "lfs", "pull"], into),
        None => run(&["lfs", "pull"], into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_to_a_git_lfs_server_and_to_s3_through_an_outage() {
    let Some(env) = skygit_harness::media_servers::media_env() else {
        skygit_harness::skip_unless_required(
            "giftless and moto are not installed (bash scripts/setup.sh installs them)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lfs = skygit_harness::media_servers::giftless(&env, &dir.path().join("giftless"))
        .await
        .expect("giftless starts");
    let mut s3 = skygit_harness::media_servers::moto(&env, &dir.path().join("moto"))
        .await
        .expect("moto starts");
    let bucket = "room-files";
    let http = reqwest::Client::new();
    let make_bucket = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .put(format!("{url}/{bucket}"))
                .send()
                .await
                .expect("moto answers");
            assert!(r.status().is_success(), "bucket: {}", r.status());
        }
    };
    make_bucket(s3.url.clone()).await;
    let lfs_url = format!("{}/skygit/room.git/info/lfs", lfs.url);
    let repo = dir.path().join("room.git");
    init_repo(
        bin(),
        &repo,
        &dir.path().join("init"),
        &[
            "--commit-interval",
            "1",
            "--voters",
            "1",
            "--media-storage",
            "external",
            "--media-small-storage",
            "git-lfs",
            "--media-small-max-bytes",
            "1048576",
            "--lfs-url",
            &lfs_url,
            "--s3-endpoint",
            &s3.url,
            "--s3-bucket",
            bucket,
            "--s3-prefix",
            "files/",
        ],
    )
    .expect("init");
    let mut spec = NodeSpec::for_test(bin(), dir.path(), &repo, "ana", &[]);
    spec.env
        .push(("AWS_ACCESS_KEY_ID".into(), "testing".into()));
    spec.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), "testing".into()));
    let mut node = NodeProc::start(spec).await.expect("node starts");
    wait_members(&[&node], 1, SETTLE)
        .await
        .expect("room formed");

    // A small file to the LFS server.
    let small = skygit_tests::noise(300_000, 21);
    let a = node
        .upload(small.clone(), "photo.jpg", "image/jpeg")
        .await
        .expect("uploaded");
    let p = node
        .post_files("photo", vec![a.clone()])
        .await
        .expect("posted");
    wait_stored(&node, &p.message_id).await;
    let clone = dir.path().join("clone");
    git_lfs_clone(&repo.to_string_lossy(), &clone, Some(&lfs_url));
    assert_eq!(
        std::fs::read(clone.join(".messages/lfs").join(&a.sha256)).expect("pulled"),
        small
    );

    // A large file while the S3 server is down: the commit waits.
    s3.stop().await;
    let big = skygit_tests::noise(6 * MIB + 5, 22);
    let b = node
        .upload(big.clone(), "trace.bin", "application/octet-stream")
        .await
        .expect("uploaded");
    let q = node
        .post_files("trace", vec![b.clone()])
        .await
        .expect("posted");
    let err = skygit_harness::wait_for(SETTLE, "a flush failing on the S3 outage", || async {
        let st = node.status().await.ok()?;
        let f = st.committer?.last_flush?;
        f.error.filter(|e| e.contains("attachments"))
    })
    .await
    .expect("the outage is reported");
    println!("during the outage: {err}");
    let m: skygit_api::Message = node
        .get(&format!("/messages/{}", q.message_id))
        .await
        .expect("message");
    assert!(!m.attachments[0].stored, "stored during the outage");
    assert_ne!(m.sync_state, skygit_api::SyncState::Synchronized);
    s3.restart().await.expect("moto restarts");
    make_bucket(s3.url.clone()).await;
    wait_stored(&node, &q.message_id).await;
    let objects = s3_objects(&s3.url, bucket).await;
    let key = format!("files/{}", b.sha256);
    assert_eq!(
        objects.get(&key).map(|o| sha(o)),
        Some(b.sha256.clone()),
        "{:?}",
        objects.keys()
    );

    // A node that lost its copies and has no peer reads them back from the
    // room's storage.
    for f in [&a, &b] {
        let removed = remove_blob(&node.spec.data_dir.join("attachments"), &f.sha256);
        assert!(removed, "the node kept no copy of {}", f.name);
        let (status, got) = node
            .download(&format!("{}?size={}", f.sha256, f.size), None)
            .await
            .expect("answered");
        assert_eq!(status, 200, "{}", f.name);
        assert_eq!(sha(&got), f.sha256, "{}", f.name);
    }
    lfs.stop().await;
    node.stop(Duration::from_secs(20)).await.expect("stops");
}

/// Removes the file named `name` under `dir` (recursively).
fn remove_blob(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            removed |= remove_blob(&p, name);
        } else if p.file_name().is_some_and(|n| n == name) {
            removed |= std::fs::remove_file(&p).is_ok();
        }
    }
    removed
}

/// Every object of the bucket with its bytes (signed with moto's
/// test credentials).
async fn s3_objects(url: &str, bucket: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(url)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("client");
    let list: Vec<_> = store.list(None).try_collect().await.expect("listed");
    let mut out = std::collections::BTreeMap::new();
    for meta in list {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.insert(meta.location.to_string(), bytes.to_vec());
    }
    out
}
