//! Real WebRTC between `Mesh` instances in one process, over loopback.
//!
//! Every test builds its own meshes; no test asserts on timing beyond
//! generous timeouts that only turn a hang into a failure.

use std::sync::Arc;
use std::time::Duration;

use skygit_consensus::ports::{IncomingFrame, LinkError, PeerLink};
use skygit_mesh::{LinkState, Mesh, MeshConfig, MeshError, MeshEvent};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Long enough for a loaded 2-core machine; a pass never waits this long.
const WAIT: Duration = Duration::from_secs(30);

struct Node {
    id: u64,
    mesh: Arc<Mesh>,
    frames: mpsc::Receiver<IncomingFrame>,
    events: mpsc::Receiver<MeshEvent>,
}

impl Node {
    async fn new(id: u64) -> Node {
        Node::with_config(id, MeshConfig::default()).await
    }

    async fn with_config(id: u64, cfg: MeshConfig) -> Node {
        init_tracing();
        let (mesh, frames, events) = Mesh::new(id, cfg).await.expect("mesh");
        Node {
            id,
            mesh,
            frames,
            events,
        }
    }

    async fn next_event(&mut self) -> MeshEvent {
        timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("node {}: no event within {WAIT:?}", self.id))
            .expect("event stream open")
    }

    async fn next_frame(&mut self) -> IncomingFrame {
        timeout(WAIT, self.frames.recv())
            .await
            .unwrap_or_else(|_| panic!("node {}: no frame within {WAIT:?}", self.id))
            .expect("frame stream open")
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Offer from `a`, answer from `b`, both sides open.
async fn connect(a: &mut Node, b: &mut Node) {
    let offer = a
        .mesh
        .offer(b.id, &b.mesh.fingerprint())
        .await
        .expect("offer");
    let answer = b
        .mesh
        .answer(a.id, &offer, &a.mesh.fingerprint())
        .await
        .expect("answer");
    a.mesh.accept_answer(b.id, &answer).await.expect("accept");
    assert_eq!(a.next_event().await, MeshEvent::Open(b.id));
    assert_eq!(b.next_event().await, MeshEvent::Open(a.id));
    assert!(a.mesh.is_open(b.id));
    assert!(b.mesh.is_open(a.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_flow_both_ways_chunked_and_in_order() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    assert!(a.mesh.fingerprint().starts_with("sha-256 "));
    assert_ne!(a.mesh.fingerprint(), b.mesh.fingerprint());
    connect(&mut a, &mut b).await;

    // A 3 MiB frame each way: chunked on the wire, whole on arrival.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    a.mesh.send(b.id, big.clone()).await.expect("send big a->b");
    b.mesh.send(a.id, big.clone()).await.expect("send big b->a");
    let got = b.next_frame().await;
    assert_eq!(got.peer, a.id);
    assert!(got.frame == big, "3 MiB frame a->b corrupted");
    let got = a.next_frame().await;
    assert_eq!(got.peer, b.id);
    assert!(got.frame == big, "3 MiB frame b->a corrupted");

    // 10,000 small frames, received concurrently, in order.
    const N: u32 = 10_000;
    let sender = {
        let mesh = a.mesh.clone();
        let to = b.id;
        tokio::spawn(async move {
            for i in 0..N {
                let mut frame = i.to_be_bytes().to_vec();
                frame.extend(std::iter::repeat_n(i as u8, (i % 200) as usize));
                mesh.send(to, frame).await.expect("send small");
            }
        })
    };
    for i in 0..N {
        let got = b.next_frame().await;
        assert_eq!(got.peer, a.id);
        assert_eq!(got.frame[..4], i.to_be_bytes(), "frame {i} out of order");
        assert_eq!(got.frame.len(), 4 + (i % 200) as usize);
    }
    sender.await.expect("sender task");

    // And back, a few.
    for i in 0..100u32 {
        b.mesh
            .send(a.id, i.to_be_bytes().to_vec())
            .await
            .expect("send b->a");
    }
    for i in 0..100u32 {
        assert_eq!(a.next_frame().await.frame, i.to_be_bytes());
    }

    // A frame is counted once its delivery completed, which may be just
    // after the consumer took it: give the counters a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (status, b_status) = loop {
        let (s, bs) = (a.mesh.status(), b.mesh.status());
        let counted = s.first().is_some_and(|l| l.received_frames == 101)
            && bs
                .first()
                .is_some_and(|l| l.received_frames == 1 + u64::from(N));
        if counted || tokio::time::Instant::now() >= deadline {
            break (s, bs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].peer, b.id);
    assert_eq!(status[0].state, LinkState::Open);
    assert_eq!(status[0].sent_frames, 1 + u64::from(N));
    assert_eq!(status[0].received_frames, 101);
    assert_eq!(b_status[0].received_frames, 1 + u64::from(N));

    a.mesh.shutdown().await;
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_fingerprint_is_refused() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    let c = Node::new(3).await;

    // The answerer expects C's certificate but the offer carries A's.
    let offer = a
        .mesh
        .offer(b.id, &b.mesh.fingerprint())
        .await
        .expect("offer");
    let err = b
        .mesh
        .answer(a.id, &offer, &c.mesh.fingerprint())
        .await
        .expect_err("answer must be refused");
    assert!(matches!(err, MeshError::Refused { peer: 1, .. }), "{err:?}");
    assert!(matches!(
        b.next_event().await,
        MeshEvent::Refused { peer: 1, .. }
    ));
    assert!(!b.mesh.is_open(a.id));

    // The offerer expects C's certificate but the answer carries B's.
    let offer = a
        .mesh
        .offer(b.id, &c.mesh.fingerprint())
        .await
        .expect("offer");
    let answer = b
        .mesh
        .answer(a.id, &offer, &a.mesh.fingerprint())
        .await
        .expect("answer");
    let err = a
        .mesh
        .accept_answer(b.id, &answer)
        .await
        .expect_err("answer must be refused");
    assert!(matches!(err, MeshError::Refused { peer: 2, .. }), "{err:?}");
    assert!(matches!(
        a.next_event().await,
        MeshEvent::Refused { peer: 2, .. }
    ));
    assert!(!a.mesh.is_open(b.id));
    assert_eq!(
        a.mesh.send(b.id, vec![1]).await,
        Err(LinkError::Unreachable(b.id))
    );

    // Nothing was delivered on either side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.frames.try_recv().is_err());
    assert!(b.frames.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_sdp_fingerprint_never_opens() {
    // B's answer is rewritten to declare C's certificate, which is what A
    // expects: the SDP check passes, but B cannot prove it holds C's key, so
    // the DTLS handshake (or the post-handshake certificate check) fails.
    // webrtc 0.21.1 only logs the DTLS fingerprint mismatch and keeps the
    // connection "connecting", so the connect timeout is what ends it.
    let quick = || MeshConfig {
        connect_timeout: Duration::from_secs(5),
        ..MeshConfig::default()
    };
    let mut a = Node::with_config(1, quick()).await;
    let mut b = Node::with_config(2, quick()).await;
    let c = Node::new(3).await;
    let offer = a
        .mesh
        .offer(b.id, &c.mesh.fingerprint())
        .await
        .expect("offer");
    let answer = b
        .mesh
        .answer(a.id, &offer, &a.mesh.fingerprint())
        .await
        .expect("answer");
    let b_fp = b.mesh.fingerprint();
    let c_fp = c.mesh.fingerprint();
    let forged = answer.replace(
        b_fp.trim_start_matches("sha-256 "),
        c_fp.trim_start_matches("sha-256 "),
    );
    assert_ne!(forged, answer, "the answer declares B's fingerprint");
    // webrtc writes the fingerprint in lower case; forge that form too.
    let forged = forged.replace(
        &b_fp.trim_start_matches("sha-256 ").to_lowercase(),
        &c_fp.trim_start_matches("sha-256 ").to_lowercase(),
    );
    a.mesh.accept_answer(b.id, &forged).await.expect("accept");

    let event = a.next_event().await;
    assert!(
        matches!(
            event,
            MeshEvent::Failed { peer: 2, .. } | MeshEvent::Refused { peer: 2, .. }
        ),
        "{event:?}"
    );
    assert!(!a.mesh.is_open(b.id));
    let event = b.next_event().await;
    assert!(
        !matches!(event, MeshEvent::Open(_)),
        "B must not open: {event:?}"
    );
    assert!(a.frames.try_recv().is_err());
    assert!(b.frames.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_drops_only_the_offending_link() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    let mut c = Node::new(3).await;
    connect(&mut a, &mut b).await;
    connect(&mut c, &mut b).await;

    // Wrong version byte.
    a.mesh
        .send_raw(b.id, &[9, 0, 1, 2, 3])
        .await
        .expect("raw send");
    match b.next_event().await {
        MeshEvent::Misbehaved { peer, reason } => {
            assert_eq!(peer, a.id);
            assert!(reason.contains("version"), "{reason}");
        }
        other => panic!("expected Misbehaved, got {other:?}"),
    }
    assert!(!b.mesh.is_open(a.id));
    let event = a.next_event().await;
    assert!(
        matches!(
            event,
            MeshEvent::Closed(2) | MeshEvent::Failed { peer: 2, .. }
        ),
        "{event:?}"
    );
    assert!(
        b.frames.try_recv().is_err(),
        "garbage must not be delivered"
    );

    // C's link to B is unaffected, both ways.
    c.mesh.send(b.id, b"from c".to_vec()).await.expect("c->b");
    let got = b.next_frame().await;
    assert_eq!((got.peer, got.frame.as_slice()), (c.id, &b"from c"[..]));
    b.mesh.send(c.id, b"to c".to_vec()).await.expect("b->c");
    let got = c.next_frame().await;
    assert_eq!((got.peer, got.frame.as_slice()), (b.id, &b"to c"[..]));
    assert!(b.mesh.is_open(c.id));
    assert_eq!(
        b.mesh.send(a.id, vec![1]).await,
        Err(LinkError::Unreachable(a.id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_one_side_is_seen_by_the_other() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    connect(&mut a, &mut b).await;

    a.mesh.close(b.id).await;
    assert_eq!(a.next_event().await, MeshEvent::Closed(b.id));
    let event = timeout(MeshConfig::default().connect_timeout, b.events.recv())
        .await
        .expect("B notices within the connect timeout")
        .expect("event");
    assert!(
        matches!(
            event,
            MeshEvent::Closed(1) | MeshEvent::Failed { peer: 1, .. }
        ),
        "{event:?}"
    );
    assert!(!b.mesh.is_open(a.id));
    assert!(b.mesh.send(a.id, vec![1]).await.is_err());
    assert!(a.mesh.send(b.id, vec![1]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_mesh_is_seen_by_its_peers() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    connect(&mut a, &mut b).await;

    let Node { mesh, .. } = a;
    drop(mesh);
    let event = timeout(MeshConfig::default().connect_timeout, b.events.recv())
        .await
        .expect("B notices within the connect timeout")
        .expect("event");
    assert!(
        matches!(
            event,
            MeshEvent::Closed(1) | MeshEvent::Failed { peer: 1, .. }
        ),
        "{event:?}"
    );
    assert!(b.mesh.send(1, vec![1]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_offer_replaces_the_old_link() {
    let mut a = Node::new(1).await;
    let mut b = Node::new(2).await;
    connect(&mut a, &mut b).await;

    // Reconnect over an open link: the old one goes away silently on both
    // sides (B may see the old channel close before its new answer).
    let offer = a
        .mesh
        .offer(b.id, &b.mesh.fingerprint())
        .await
        .expect("offer");
    let answer = b
        .mesh
        .answer(a.id, &offer, &a.mesh.fingerprint())
        .await
        .expect("answer");
    a.mesh.accept_answer(b.id, &answer).await.expect("accept");
    assert_eq!(a.next_event().await, MeshEvent::Open(b.id));
    loop {
        match b.next_event().await {
            MeshEvent::Open(1) => break,
            // The old link, closed by A before B answered: B sees it
            // close, or its writer's next send (a ping) fail first.
            MeshEvent::Closed(1) | MeshEvent::Failed { peer: 1, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    a.mesh.send(b.id, b"again".to_vec()).await.expect("send");
    assert_eq!(b.next_frame().await.frame, b"again");
    b.mesh.send(a.id, b"back".to_vec()).await.expect("send");
    assert_eq!(a.next_frame().await.frame, b"back");
    assert_eq!(a.mesh.status().len(), 1);

    // No stray events from the replaced links.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.events.try_recv().is_err());
    assert!(b.events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_answer_without_offer_and_bad_inputs_are_errors() {
    let a = Node::new(1).await;
    let err = a.mesh.accept_answer(9, "v=0").await.expect_err("no offer");
    assert!(matches!(err, MeshError::NoSuchOffer(9)));
    let err = a.mesh.offer(9, "sha-1 00").await.expect_err("bad fp");
    assert!(matches!(err, MeshError::BadFingerprint(_)));
    assert_eq!(a.mesh.send(9, vec![]).await, Err(LinkError::Unreachable(9)));
    a.mesh.shutdown().await;
    let err = a
        .mesh
        .offer(9, &a.mesh.fingerprint())
        .await
        .expect_err("shut down");
    assert!(matches!(err, MeshError::Closed));
}

/// A peer that hangs (a stopped or wedged process: its sockets stay open but
/// nothing answers) is failed after the silence timeout, long before ICE
/// would notice.
/// The connect timeout bounds only the opening: a link that opened stays
/// open past it. (It once fired anyway when nothing else woke the link's
/// supervisor, cutting every link `connect_timeout` after it started.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_link_outlives_the_connect_timeout() {
    let cfg = MeshConfig {
        connect_timeout: Duration::from_secs(3),
        ..MeshConfig::default()
    };
    let mut a = Node::with_config(1, cfg.clone()).await;
    let mut b = Node::with_config(2, cfg.clone()).await;
    connect(&mut a, &mut b).await;
    tokio::time::sleep(cfg.connect_timeout * 2).await;
    assert!(a.mesh.is_open(b.id), "A's link was cut after opening");
    assert!(b.mesh.is_open(a.id), "B's link was cut after opening");
    assert!(a.events.try_recv().is_err(), "A saw a link event");
    assert!(b.events.try_recv().is_err(), "B saw a link event");
    a.mesh
        .send(b.id, b"still here".to_vec())
        .await
        .expect("send");
    assert_eq!(b.next_frame().await.frame, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_peer_is_failed_for_silence() {
    let cfg = MeshConfig {
        ping_interval: Duration::from_millis(250),
        silence_timeout: Duration::from_secs(2),
        // ICE alone would take two minutes: far past WAIT.
        ice_disconnected_timeout: Duration::from_secs(60),
        ice_failed_timeout: Duration::from_secs(60),
        ..MeshConfig::default()
    };
    let mut a = Node::with_config(1, cfg.clone()).await;

    // B runs on its own single-threaded runtime, so blocking that thread
    // stops everything B does, as SIGSTOP would.
    let (fp_tx, fp_rx) = tokio::sync::oneshot::channel();
    let (offer_tx, offer_rx) = tokio::sync::oneshot::channel::<(String, String)>();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let (hang_tx, hang_rx) = tokio::sync::oneshot::channel::<()>();
    let b_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (mesh, _frames, _events) = Mesh::new(2, cfg).await.expect("mesh");
            let _ = fp_tx.send(mesh.fingerprint());
            let (offer, a_fp) = offer_rx.await.expect("offer");
            let _ = answer_tx.send(mesh.answer(1, &offer, &a_fp).await.expect("answer"));
            let _ = hang_rx.await;
            std::thread::sleep(Duration::from_secs(8));
        });
    });
    let b_fp = fp_rx.await.expect("B's fingerprint");
    let offer = a.mesh.offer(2, &b_fp).await.expect("offer");
    offer_tx
        .send((offer, a.mesh.fingerprint()))
        .expect("B waits for the offer");
    let answer = answer_rx.await.expect("B's answer");
    a.mesh.accept_answer(2, &answer).await.expect("accept");
    assert_eq!(a.next_event().await, MeshEvent::Open(2));
    // Pings flow both ways while B runs: no silence.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.mesh.is_open(2), "a live peer is not failed");

    hang_tx.send(()).expect("B is running");
    match a.next_event().await {
        MeshEvent::Failed { peer, reason } => {
            assert_eq!(peer, 2);
            assert!(reason.contains("silent"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(!a.mesh.is_open(2));
    tokio::task::spawn_blocking(move || b_thread.join())
        .await
        .expect("join")
        .expect("B's thread");
}

#[tokio::test]
async fn silence_timeout_must_exceed_the_ping_interval() {
    let cfg = MeshConfig {
        ping_interval: Duration::from_secs(2),
        silence_timeout: Duration::from_secs(2),
        ..MeshConfig::default()
    };
    match Mesh::new(1, cfg).await {
        Err(MeshError::Config(why)) => assert!(why.contains("silence_timeout"), "{why}"),
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("expected a config error"),
    }
}
