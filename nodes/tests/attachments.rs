//! Attachments between real `skygit node` processes over WebRTC: a 20 MiB
//! file uploaded to one node is served byte-identical by the other two
//! (fetched over the mesh on demand) while chat keeps committing; ranges;
//! hostile uploads and downloads refused with a clear error.

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
        &["--commit-interval", "1", "--media-max-bytes", "31457280"],
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
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chat = {
        let http = nodes[2].http().clone();
        let api = nodes[2].api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut took = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let p = skygit_harness::post_to(&http, &api, &format!("chat {i}"))
                    .await
                    .expect("chat post answered");
                assert!(
                    !p.queued,
                    "chat {i} was queued: no leader during the transfer"
                );
                took.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            took
        })
    };
    let started = Instant::now();
    let (b, c) = tokio::join!(
        nodes[1].download(&a.sha256, None),
        nodes[2].download(&a.sha256, None)
    );
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut took = chat.await.expect("chat task");
    for (who, got) in [("bob", b), ("cy", c)] {
        let (status, got) = got.expect("download answered");
        assert_eq!(status, 200, "{who}");
        assert_eq!(got.len(), bytes.len(), "{who}");
        assert_eq!(sha(&got), a.sha256, "{who} served other bytes");
    }
    took.sort_by(f64::total_cmp);
    println!(
        "20 MiB to two nodes in {secs:.2} s ({:.1} MB/s each); chat during it: {} posts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        20.0 * 1.048_576 / secs,
        took.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or(0.0)
    );
    assert!(
        !took.is_empty(),
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
    assert_eq!(m.attachments[0].url, format!("/attachments/{}", a.sha256));

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
    for n in &mut nodes {
        n.stop(Duration::from_secs(20)).await.expect("stops");
    }
}
