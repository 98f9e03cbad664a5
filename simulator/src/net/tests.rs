//! Tests of [`super`] (net.rs).
use super::*;
use tokio::sync::mpsc::error::TryRecvError;

fn model() -> LinkModel {
    LinkModel::default()
}

fn new_net(seed: u64, model: LinkModel) -> SimNet {
    SimNet::new(seed, model, Trace::new(None).expect("trace"))
}

/// Connects `a` (the offerer) and `b` and waits for both Open events.
async fn connect_pair(a: &mut NodeNet, b: &mut NodeNet) {
    let (ia, ib) = (a.link.local_id(), b.link.local_id());
    let offer = a
        .transport
        .offer(ib, fingerprint_of(ib))
        .await
        .expect("offer");
    let answer = b
        .transport
        .answer(ia, offer, fingerprint_of(ia))
        .await
        .expect("answer");
    a.transport.accept_answer(ib, answer).await.expect("accept");
    assert_eq!(a.events.recv().await, Some(TransportEvent::Open(ib)));
    assert_eq!(b.events.recv().await, Some(TransportEvent::Open(ia)));
}

fn index(frame: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&frame[..4]);
    u32::from_le_bytes(b)
}

#[tokio::test(start_paused = true)]
async fn two_nodes_connect_and_both_get_open() {
    let net = new_net(1, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    assert!(!net.is_open(1, 2));
    let start = Instant::now();
    connect_pair(&mut a, &mut b).await;
    let took = start.elapsed();
    let m = model();
    assert!(took >= m.connect_min && took <= m.connect_max + Duration::from_millis(1));
    assert!(net.is_open(1, 2) && net.is_open(2, 1));
    let links = a.transport.links();
    assert_eq!(links.len(), 1);
    assert!(links[0].open && links[0].peer == 2 && links[0].state == "open");
    assert!(links[0].rtt_us.is_some());
    assert_eq!(net.stats().links_opened, 1);
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_frames_arrive_in_order_within_the_model() {
    let m = LinkModel {
        loss: 0.05,
        ..model()
    };
    let net = new_net(7, m);
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    // Sending to a node without a link is refused.
    assert_eq!(
        a.link.send(3, vec![1]).await,
        Err(LinkError::Unreachable(3))
    );
    let mut incoming = b.incoming;
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 1000 {
            let Some(f) = incoming.recv().await else {
                break;
            };
            assert_eq!(f.peer, 1);
            got.push((Instant::now(), index(&f.frame)));
        }
        got
    });
    let mut sent_at = Vec::new();
    for i in 0..1000u32 {
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent_at.push(Instant::now());
        a.link
            .send(2, i.to_le_bytes().to_vec())
            .await
            .expect("send");
    }
    let got = receiver.await.expect("receiver");
    assert_eq!(got.len(), 1000);
    let mut slow = 0;
    for (n, (at, i)) in got.iter().enumerate() {
        assert_eq!(*i as usize, n, "frames arrive in order");
        let delay = at.duration_since(sent_at[n]);
        assert!(delay >= m.latency_min, "frame {n} after {delay:?}");
        // Tokio's timer rounds up to the millisecond.
        assert!(
            delay <= m.latency_max + m.retransmit + Duration::from_millis(1),
            "frame {n} after {delay:?}"
        );
        if delay > m.latency_max + Duration::from_millis(1) {
            slow += 1;
        }
    }
    let stats = net.stats();
    assert!(stats.retransmits > 0 && slow > 0);
    assert_eq!(stats.frames_sent, 1000);
    assert_eq!(stats.frames_delivered, 1000);
    assert_eq!(stats.bytes_delivered, 4000);
}

#[tokio::test(start_paused = true)]
async fn a_blocked_direction_holds_frames_until_unblocked() {
    let net = new_net(3, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    net.block(1, 2, true);
    for i in 0..10u32 {
        a.link
            .send(2, i.to_le_bytes().to_vec())
            .await
            .expect("send");
    }
    // The other direction still flows.
    b.link.send(1, vec![9, 9, 9, 9]).await.expect("send back");
    let back = a.incoming.recv().await.expect("frame back");
    assert_eq!(back.peer, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(b.incoming.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(a.transport.links()[0].queued_frames, 9);
    let unblocked = Instant::now();
    net.block(1, 2, false);
    for i in 0..10u32 {
        let f = b.incoming.recv().await.expect("held frame");
        assert_eq!(index(&f.frame), i);
        assert!(Instant::now() > unblocked);
    }
    assert!(net.is_open(1, 2));
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(net.stats().frames_dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_direction_blocked_past_fail_detect_fails_both_sides() {
    let m = model();
    let net = new_net(4, m);
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    net.block(1, 2, true);
    for i in 0..3u32 {
        a.link
            .send(2, i.to_le_bytes().to_vec())
            .await
            .expect("send");
    }
    tokio::time::sleep(m.fail_detect - Duration::from_millis(100)).await;
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(net.is_open(1, 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        a.events.try_recv(),
        Ok(TransportEvent::Failed { peer: 2, .. })
    ));
    assert!(matches!(
        b.events.try_recv(),
        Ok(TransportEvent::Failed { peer: 1, .. })
    ));
    assert!(!net.is_open(1, 2));
    assert_eq!(
        a.link.send(2, vec![0]).await,
        Err(LinkError::Unreachable(2))
    );
    net.block(1, 2, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(b.incoming.try_recv(), Err(TryRecvError::Empty)));
    let stats = net.stats();
    assert_eq!(stats.frames_dropped, 3);
    assert_eq!(stats.links_failed, 1);
    assert_eq!(a.transport.links()[0].state, "failed");
}

#[tokio::test(start_paused = true)]
async fn a_link_does_not_open_while_blocked() {
    let net = new_net(5, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    net.block(2, 1, true);
    let offer = a
        .transport
        .offer(2, fingerprint_of(2))
        .await
        .expect("offer");
    let answer = b
        .transport
        .answer(1, offer, fingerprint_of(1))
        .await
        .expect("answer");
    a.transport.accept_answer(2, answer).await.expect("accept");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(!net.is_open(1, 2));
    assert_eq!(a.transport.links()[0].state, "connecting");
    net.heal();
    connect_pair(&mut a, &mut b).await;
    assert!(net.is_open(1, 2));
}

#[tokio::test(start_paused = true)]
async fn detach_makes_the_peer_fail_after_fail_detect() {
    let m = model();
    let net = new_net(6, m);
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    let crashed = Instant::now();
    net.detach(2);
    assert!(!net.is_open(1, 2));
    // The crashed node's receivers end.
    assert_eq!(b.incoming.recv().await, None);
    assert_eq!(b.events.recv().await, None);
    // Its peer does not know yet: the frame is accepted, then lost.
    a.link
        .send(2, vec![1, 2, 3])
        .await
        .expect("send to the dead");
    let ev = a.events.recv().await.expect("failed event");
    assert!(
        matches!(ev, TransportEvent::Failed { peer: 2, .. }),
        "{ev:?}"
    );
    assert!(crashed.elapsed() >= m.fail_detect);
    assert!(crashed.elapsed() <= m.fail_detect + Duration::from_millis(1));
    let stats = net.stats();
    assert_eq!(stats.frames_dropped, 1);
    assert_eq!(stats.links_failed, 1);
    // The old incarnation's handles are inert; the restarted node links
    // again.
    assert_eq!(
        b.link.send(1, vec![0]).await,
        Err(LinkError::Unreachable(1))
    );
    assert!(b.transport.offer(1, fingerprint_of(1)).await.is_err());
    let mut b2 = net.attach(2);
    connect_pair(&mut a, &mut b2).await;
    assert!(net.is_open(1, 2));
}

#[tokio::test(start_paused = true)]
async fn close_reports_closed_here_and_there() {
    let net = new_net(8, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    b.transport.close(1).await;
    assert_eq!(b.events.try_recv(), Ok(TransportEvent::Closed(1)));
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    let ev = a.events.recv().await;
    assert_eq!(ev, Some(TransportEvent::Closed(2)));
    assert!(!net.is_open(1, 2));
    assert!(b.transport.links().is_empty());
    assert_eq!(a.transport.links()[0].state, "closed");
}

#[tokio::test(start_paused = true)]
async fn a_replaced_attempt_is_ignored() {
    let net = new_net(9, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    let offer1 = a
        .transport
        .offer(2, fingerprint_of(2))
        .await
        .expect("offer");
    let answer1 = b
        .transport
        .answer(1, offer1, fingerprint_of(1))
        .await
        .expect("answer");
    let offer2 = a
        .transport
        .offer(2, fingerprint_of(2))
        .await
        .expect("offer");
    assert!(a.transport.accept_answer(2, answer1).await.is_err());
    let answer2 = b
        .transport
        .answer(1, offer2, fingerprint_of(1))
        .await
        .expect("answer");
    a.transport
        .accept_answer(2, answer2.clone())
        .await
        .expect("accept");
    // A second accept of the same answer is refused.
    assert!(a.transport.accept_answer(2, answer2).await.is_err());
    assert_eq!(a.events.recv().await, Some(TransportEvent::Open(2)));
    assert_eq!(b.events.recv().await, Some(TransportEvent::Open(1)));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(net.stats().links_opened, 1);
}

#[tokio::test(start_paused = true)]
async fn fail_link_fails_both_sides_now() {
    let net = new_net(10, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    net.fail_link(2, 1);
    assert!(matches!(
        a.events.try_recv(),
        Ok(TransportEvent::Failed { peer: 2, .. })
    ));
    assert!(matches!(
        b.events.try_recv(),
        Ok(TransportEvent::Failed { peer: 1, .. })
    ));
    assert!(!net.is_open(1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_fingerprint_is_refused() {
    let net = new_net(11, model());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    // The answerer expects another certificate than the offer presents.
    let offer = a
        .transport
        .offer(2, fingerprint_of(2))
        .await
        .expect("offer");
    let err = b.transport.answer(1, offer, "sim-fp-666".to_owned()).await;
    assert!(err.is_err());
    assert!(matches!(
        b.events.try_recv(),
        Ok(TransportEvent::Refused { peer: 1, .. })
    ));
    assert!(b.transport.links().is_empty());
    // The offerer expects another certificate than the answer presents.
    let offer = a
        .transport
        .offer(2, "sim-fp-777".to_owned())
        .await
        .expect("offer");
    let answer = b
        .transport
        .answer(1, offer, fingerprint_of(1))
        .await
        .expect("answer");
    assert!(a.transport.accept_answer(2, answer).await.is_err());
    assert!(matches!(
        a.events.try_recv(),
        Ok(TransportEvent::Refused { peer: 2, .. })
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!net.is_open(1, 2));
    assert!(matches!(a.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(b.events.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test(start_paused = true)]
async fn malformed_session_descriptions_are_errors() {
    let net = new_net(12, model());
    let a = net.attach(1);
    let b = net.attach(2);
    let good = a
        .transport
        .offer(2, fingerprint_of(2))
        .await
        .expect("offer");
    let long = "x".repeat(MAX_SDP_BYTES + 1);
    let mut bad = vec![
        String::new(),
        "garbage".to_owned(),
        long,
        format!("{SDP_PREFIX}"),
        format!("{SDP_PREFIX} offer"),
        format!("{SDP_PREFIX} hello from=1 to=2 gen=1 fp=sim-fp-1"),
        format!("{SDP_PREFIX} offer from=x to=2 gen=1 fp=sim-fp-1"),
        format!("{SDP_PREFIX} offer from=1 to=2 gen=99999999999999999999999 fp=sim-fp-1"),
        format!("{SDP_PREFIX} offer from=1 to=2 gen=1 fp="),
        format!("{SDP_PREFIX} offer from=1 to=2 gen=1 fp=sim-fp-1 more"),
        format!("{SDP_PREFIX} offer to=2 from=1 gen=1 fp=sim-fp-1"),
        format!("{SDP_PREFIX} offer from=-1 to=2 gen=1 fp=sim-fp-1"),
        // Addressed to another node, or from another one.
        format!("{SDP_PREFIX} offer from=1 to=3 gen=1 fp=sim-fp-1"),
        format!("{SDP_PREFIX} offer from=4 to=2 gen=1 fp=sim-fp-1"),
        // An answer where an offer is expected.
        format!("{SDP_PREFIX} answer from=1 to=2 gen=1 fp=sim-fp-1"),
        "é\u{0}🦀".to_owned(),
    ];
    for cut in 0..good.len() {
        if good.is_char_boundary(cut) {
            bad.push(good[..cut].to_owned());
        }
    }
    for sdp in &bad {
        assert!(
            b.transport
                .answer(1, sdp.clone(), fingerprint_of(1))
                .await
                .is_err(),
            "answer accepted {sdp:?}"
        );
        assert!(
            a.transport.accept_answer(2, sdp.clone()).await.is_err(),
            "accept_answer accepted {sdp:?}"
        );
    }
    // The offer itself is still answerable, and its answer acceptable.
    let answer = b
        .transport
        .answer(1, good, fingerprint_of(1))
        .await
        .expect("answer");
    assert!(b
        .transport
        .answer(1, answer.clone(), fingerprint_of(1))
        .await
        .is_err());
    a.transport.accept_answer(2, answer).await.expect("accept");
}

/// A scripted exchange: its receipts (time since start, frame) at node 2.
async fn scripted(seed: u64) -> (Vec<(Duration, Vec<u8>)>, String) {
    let trace = Trace::new(None).expect("trace");
    let net = SimNet::new(seed, model(), trace.clone());
    let mut a = net.attach(1);
    let mut b = net.attach(2);
    connect_pair(&mut a, &mut b).await;
    let link = a.link.clone();
    let sender = tokio::spawn(async move {
        for i in 0..200u32 {
            let _ = link.send(2, i.to_le_bytes().to_vec()).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut got = Vec::new();
    while got.len() < 200 {
        let Some(f) = b.incoming.recv().await else {
            break;
        };
        got.push((trace.elapsed(), f.frame));
    }
    sender.await.expect("sender");
    (got, trace.digest())
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_delivery_times() {
    let (first, d1) = scripted(42).await;
    let (second, d2) = scripted(42).await;
    assert_eq!(first.len(), 200);
    assert_eq!(first, second);
    assert_eq!(d1, d2);
    let (other, d3) = scripted(43).await;
    assert_eq!(other.len(), 200);
    assert_ne!(first, other);
    assert_ne!(d1, d3);
}
