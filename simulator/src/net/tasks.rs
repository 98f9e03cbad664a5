//! The tasks that move frames and notices along simulated links: delivery with latency, close and dead-peer notices, the partition watchdog.

use super::*;

/// Delivers one direction of one link generation, in order.
pub(super) async fn deliver(
    shared: Arc<Shared>,
    from: NodeId,
    to: NodeId,
    generation: u64,
    mut rx: mpsc::Receiver<Queued>,
) {
    // No frame goes before this instant (set when held frames resume).
    let mut floor: Option<Instant> = None;
    while let Some(Queued { at, frame }) = rx.recv().await {
        let len = frame.len();
        let mut at = floor.map_or(at, |f| at.max(f));
        let mut held = false;
        let inbox = loop {
            tokio::time::sleep_until(at).await;
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut w = shared.lock();
                if !w.link_open(from, to, generation) {
                    w.drop_frame(from, to, len, "link ended");
                    break None;
                }
                if !w.is_blocked(from, to) {
                    if held {
                        // Retransmitted once the path is back.
                        held = false;
                        at = Instant::now() + w.latency(from, to);
                        floor = Some(at);
                        continue;
                    }
                    match w.nodes.get(&to) {
                        Some(n) => break Some(n.incoming.clone()),
                        None => {
                            w.drop_frame(from, to, len, "receiver gone");
                            break None;
                        }
                    }
                }
                held = true;
            }
            notified.await;
        };
        let Some(inbox) = inbox else {
            continue;
        };
        let sent = inbox.send(IncomingFrame { peer: from, frame }).await;
        let mut w = shared.lock();
        if sent.is_ok() {
            w.stats.frames_delivered += 1;
            w.stats.bytes_delivered += len as u64;
            w.trace
                .event(to, "net.deliver", format_args!("{from}->{to} {len}"));
        } else {
            w.drop_frame(from, to, len, "receiver gone");
        }
    }
}

/// `peer`'s end of `generation` learns that `closer` closed the link.
pub(super) async fn close_notice(
    shared: Arc<Shared>,
    closer: NodeId,
    peer: NodeId,
    generation: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut w = shared.lock();
            if !w.end_in(peer, closer, generation, EndState::Open) {
                return;
            }
            if !w.is_blocked(closer, peer) {
                if let Some(end) = w.ends.get_mut(&(peer, closer)) {
                    end.state = EndState::Closed;
                    end.out = None;
                }
                w.trace.event(
                    peer,
                    "net.closed",
                    format_args!("{peer}-{closer} gen={generation}"),
                );
                w.emit(peer, TransportEvent::Closed(closer));
                drop(w);
                shared.changed.notify_waiters();
                return;
            }
        }
        notified.await;
    }
}

/// `peer` notices that `dead` crashed.
pub(super) async fn dead_peer_notice(
    shared: Arc<Shared>,
    peer: NodeId,
    dead: NodeId,
    generation: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let failed = {
        let mut w = shared.lock();
        let reason = format!("peer unreachable: no answer for {delay:?}");
        let failed = w.fail_end(peer, dead, Some(generation), &reason);
        if failed {
            w.stats.links_failed += 1;
        }
        failed
    };
    if failed {
        shared.changed.notify_waiters();
    }
}

/// Fails the link when `from -> to` stays blocked (same epoch) for `delay`.
pub(super) async fn block_watchdog(
    shared: Arc<Shared>,
    from: NodeId,
    to: NodeId,
    epoch: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let failed = {
        let mut w = shared.lock();
        if w.blocked.get(&(from, to)) != Some(&epoch) {
            return;
        }
        let reason = format!("{from}->{to} unreachable for {delay:?}");
        w.fail_pair(from, to, &reason)
    };
    if failed {
        shared.changed.notify_waiters();
    }
}
