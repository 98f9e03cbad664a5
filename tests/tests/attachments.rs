//! Attachments' bytes between in-process nodes (real RocksDB, real files):
//! fetched chunk by chunk and verified, bytes that do not match their hash
//! refused in favour of another peer, small files following their posts
//! onto every node.

use std::time::Duration;

use sha2::Digest;
use skygit_actors::media::{FetchError, Transfers};
use skygit_consensus::model::{Attachment, Command, ContentHash, ConversationId};
use skygit_consensus::NodeId;
use skygit_tests::*;

fn transfers(c: &skygit_actors::local::LocalCluster, id: NodeId) -> Transfers {
    c.handle(id)
        .and_then(|h| h.attachments.clone())
        .expect("the node keeps attachments")
}

async fn wait_linked(t: &Transfers, peers: &[NodeId]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !peers.iter().all(|p| t.peers().contains(p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "links to {peers:?} never came up (have {:?})",
            t.peers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_file_moves_between_nodes_and_forged_bytes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster(dir.path(), 3, None).await;
    let bytes = noise(3 * 1024 * 1024 + 17, 1);
    let src = dir.path().join("upload.bin");
    std::fs::write(&src, &bytes).expect("writes");
    let (h, n) = transfers(&c, 3)
        .store()
        .put_file(&src, 1 << 30)
        .await
        .expect("stores");
    assert_eq!(
        h,
        ContentHash::from_digest(sha2::Sha256::digest(&bytes).into())
    );
    // Node 1 answers with other bytes of the same length.
    let forged = transfers(&c, 1).store().path(&h);
    std::fs::create_dir_all(forged.parent().expect("parent")).expect("mkdir");
    std::fs::write(&forged, noise(bytes.len(), 2)).expect("writes");

    let t2 = transfers(&c, 2);
    wait_linked(&t2, &[1, 3]).await;
    t2.fetch(&h, Some(n)).await.expect("fetched from node 3");
    assert_eq!(std::fs::read(t2.store().path(&h)).expect("reads"), bytes);
    let stats = t2.stats();
    assert_eq!(stats.bad_bytes, 1, "node 1's bytes were refused: {stats:?}");
    assert_eq!(stats.bytes_received, 2 * n, "{stats:?}");

    // By hash alone: the first answer tells the size.
    let small = noise(150_000, 5);
    let src = dir.path().join("small.bin");
    std::fs::write(&src, &small).expect("writes");
    let (hs, _) = t2.store().put_file(&src, 1 << 30).await.expect("stores");
    let t3 = transfers(&c, 3);
    wait_linked(&t3, &[2]).await;
    t3.fetch(&hs, None).await.expect("fetched by hash alone");
    assert_eq!(std::fs::read(t3.store().path(&hs)).expect("reads"), small);

    let nobody = ContentHash::from_digest([3; 32]);
    assert_eq!(
        t2.fetch(&nobody, Some(10)).await,
        Err(FetchError::NotFound { tried: 2 })
    );
    assert_eq!(t2.store().size(&nobody).await, None);
    c.shutdown().await;
}

#[actix_rt::test]
async fn a_small_file_follows_its_post_onto_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cluster(dir.path(), 3, None).await;
    let bytes = noise(200_000, 7);
    let src = dir.path().join("shot.png");
    std::fs::write(&src, &bytes).expect("writes");
    let (h, n) = transfers(&c, 2)
        .store()
        .put_file(&src, 1 << 30)
        .await
        .expect("stores");
    for id in [1, 3] {
        wait_linked(&transfers(&c, id), &[2]).await;
    }
    let command = Command::Post {
        conversation: ConversationId::general(),
        content: "a screenshot".into(),
        attachments: vec![Attachment {
            sha256: h.clone(),
            size: n,
            name: "shot.png".into(),
            media_type: "image/png".into(),
        }],
    };
    let handle = c.handle(2).expect("node").consensus.clone();
    handle
        .send(skygit_actors::consensus::Submit {
            sender: skygit_consensus::model::UserId::new("ana").expect("user"),
            command,
            id: None,
        })
        .await
        .expect("actor")
        .expect("accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for id in [1, 3] {
        let t = transfers(&c, id);
        while t.store().size(&h).await != Some(n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} never fetched the file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::read(t.store().path(&h)).expect("reads"), bytes);
    }
    c.shutdown().await;
}
