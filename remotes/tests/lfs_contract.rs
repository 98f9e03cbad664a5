//! The Git LFS client against the GitHub test server's LFS: the exact
//! batch calls (body, media types, Basic credentials to the API host only),
//! an object the server has is not uploaded again, bytes come back, 5xx
//! answers are retried, refusals are not.

use std::path::Path;

use serde_json::json;
use sha2::Digest;
use skygit_github_server::{Fault, GithubServer};
use skygit_ports::media::{ContentHash, MediaStore, MediaStoreError};
use skygit_remotes::media::lfs::LfsHttp;

const TOKEN: &str = "lfs-test-token";

fn file(dir: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, ContentHash) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("writes");
    let h = ContentHash::from_digest(sha2::Sha256::digest(bytes).into());
    (p, h)
}

fn lfs(server: &GithubServer, token: &str) -> LfsHttp {
    LfsHttp::new(
        &format!("{}/o/room.git/info/lfs", server.url()),
        Some(("x-access-token".into(), token.into())),
    )
    .expect("client")
}

fn batch_calls(server: &GithubServer) -> Vec<skygit_github_server::Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/info/lfs/objects/batch"))
        .collect()
}

#[tokio::test]
async fn uploads_downloads_and_refusals_follow_the_batch_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        GithubServer::start(&dir.path().join("repo.git"), "o", "room", TOKEN).expect("starts");
    let client = lfs(&server, TOKEN);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (path, hash) = file(dir.path(), "a.bin", &bytes);

    client
        .put(&hash, bytes.len() as u64, &path)
        .await
        .expect("uploaded");
    assert_eq!(server.lfs_object(hash.as_str()), Some(bytes.clone()));
    let log = server.requests();
    let calls: Vec<(String, String)> = log
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.split('?').next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("POST".into(), "/o/room.git/info/lfs/objects/batch".into()),
            ("PUT".into(), format!("/_lfs/objects/{hash}")),
            ("POST".into(), "/_lfs/verify".into()),
        ],
        "{log:#?}"
    );
    assert_eq!(
        log[0].body,
        json!({"operation": "upload", "transfers": ["basic"],
               "objects": [{"oid": hash.as_str(), "size": bytes.len()}], "hash_algo": "sha256"})
    );
    assert!(log.iter().all(|r| r.status == 200), "{log:#?}");

    // The server has it: one batch call, nothing uploaded.
    server.reset_log();
    client
        .put(&hash, bytes.len() as u64, &path)
        .await
        .expect("already there");
    assert_eq!(server.requests().len(), 1);

    // Back, into a new file.
    let back = dir.path().join("back.bin");
    client.get(&hash, 1 << 20, &back).await.expect("downloaded");
    assert_eq!(std::fs::read(&back).expect("reads"), bytes);
    let over = dir.path().join("over.bin");
    assert!(matches!(
        client.get(&hash, 1000, &over).await,
        Err(MediaStoreError::Refused(_))
    ));
    let unknown = ContentHash::from_digest([1; 32]);
    assert!(matches!(
        client.get(&unknown, 1000, &dir.path().join("u.bin")).await,
        Err(MediaStoreError::NotFound(_))
    ));

    // Two 503s, then the batch call goes through.
    let (p2, h2) = file(dir.path(), "b.bin", b"second file");
    server.reset_log();
    for _ in 0..2 {
        server.inject(Fault::new("/objects/batch", 503, "try later"));
    }
    client
        .put(&h2, 11, &p2)
        .await
        .expect("uploaded after retries");
    assert_eq!(batch_calls(&server).len(), 3);
    assert_eq!(
        server.lfs_object(h2.as_str()).as_deref(),
        Some(&b"second file"[..])
    );

    // Four 503s: given up after four tries (a fifth would have worked).
    let (p3, h3) = file(dir.path(), "c.bin", b"third");
    server.reset_log();
    for _ in 0..4 {
        server.inject(Fault::new("/objects/batch", 503, "down"));
    }
    assert!(matches!(
        client.put(&h3, 5, &p3).await,
        Err(MediaStoreError::Unavailable(_))
    ));
    assert_eq!(batch_calls(&server).len(), 4);

    // A wrong token is refused at once, not retried.
    server.reset_log();
    let stranger = lfs(&server, "wrong");
    let (p4, h4) = file(dir.path(), "d.bin", b"fourth");
    assert!(matches!(
        stranger.put(&h4, 6, &p4).await,
        Err(MediaStoreError::Refused(_))
    ));
    assert_eq!(batch_calls(&server).len(), 1);
    assert_eq!(server.lfs_object(h4.as_str()), None);

    // Bytes that do not match their oid are refused by the storage host.
    let (p5, _) = file(dir.path(), "e.bin", b"not what the oid says");
    let claimed = ContentHash::from_digest([2; 32]);
    assert!(matches!(
        client.put(&claimed, 21, &p5).await,
        Err(MediaStoreError::Refused(_))
    ));
}
