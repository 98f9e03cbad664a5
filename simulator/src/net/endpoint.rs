//! One node's end of the simulated network: its PeerLink and PeerTransport.

use super::*;

/// One incarnation of a node's network ports.
pub(super) struct Endpoint {
    pub(super) shared: Arc<Shared>,
    pub(super) id: NodeId,
    pub(super) incarnation: u64,
}

pub(super) const NOT_ATTACHED: &str = "this node is not attached to the network";

impl Endpoint {
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, World>, String> {
        let w = self.shared.lock();
        if w.current(self.id, self.incarnation) {
            Ok(w)
        } else {
            Err(NOT_ATTACHED.to_owned())
        }
    }

    pub(super) async fn send_frame(&self, to: NodeId, frame: Vec<u8>) -> Result<(), LinkError> {
        let me = self.id;
        if frame.len() > MAX_FRAME_BYTES {
            return Err(LinkError::Unreachable(to));
        }
        let (tx, generation) = {
            let w = self.lock().map_err(|_| LinkError::Unreachable(to))?;
            match w.ends.get(&(me, to)) {
                Some(End {
                    state: EndState::Open,
                    out: Some(out),
                    generation,
                    ..
                }) => (out.tx.clone(), *generation),
                _ => return Err(LinkError::Unreachable(to)),
            }
        };
        // Waits while the directed link's queue is full.
        let permit = tx.reserve().await.map_err(|_| LinkError::Closed(to))?;
        let mut w = self.lock().map_err(|_| LinkError::Closed(to))?;
        if !w.end_in(me, to, generation, EndState::Open) {
            return Err(LinkError::Closed(to));
        }
        let (delay, lost) = w.frame_delay(me, to);
        let now = Instant::now();
        let Some(out) = w.ends.get_mut(&(me, to)).and_then(|e| e.out.as_mut()) else {
            return Err(LinkError::Closed(to));
        };
        let at = (now + delay).max(out.last_at);
        out.last_at = at;
        w.stats.frames_sent += 1;
        if lost {
            w.stats.retransmits += 1;
        }
        permit.send(Queued { at, frame });
        Ok(())
    }

    pub(super) fn do_offer(&self, peer: NodeId, expected: String) -> Result<String, String> {
        let me = self.id;
        if peer == me {
            return Err("cannot link a node to itself".to_owned());
        }
        if expected.is_empty() || expected.len() > MAX_FINGERPRINT_BYTES {
            return Err("bad expected fingerprint".to_owned());
        }
        let mut w = self.lock()?;
        let generation = w.next_generation;
        w.next_generation += 1;
        Ok(self.start_end(w, peer, generation, EndState::Offered, expected))
    }

    pub(super) fn do_answer(
        &self,
        peer: NodeId,
        offer: &str,
        expected: String,
    ) -> Result<String, String> {
        let me = self.id;
        let sdp = Sdp::parse_for(offer, SdpKind::Offer, peer, me)?;
        let mut w = self.lock()?;
        if sdp.fp != expected {
            let reason = format!("offer presents {:?}, expected {expected:?}", sdp.fp);
            return Err(w.refuse(me, peer, reason));
        }
        Ok(self.start_end(w, peer, sdp.generation, EndState::Answered, expected))
    }

    /// Installs this node's new end of the link to `peer` and answers the
    /// session description that announces it.
    pub(super) fn start_end(
        &self,
        mut w: MutexGuard<'_, World>,
        peer: NodeId,
        generation: u64,
        state: EndState,
        expected_fp: String,
    ) -> String {
        let me = self.id;
        w.install(
            &self.shared,
            me,
            peer,
            End {
                generation,
                state,
                expected_fp,
                out: None,
            },
        );
        drop(w);
        self.shared.changed.notify_waiters();
        Sdp {
            kind: if state == EndState::Offered {
                SdpKind::Offer
            } else {
                SdpKind::Answer
            },
            from: me,
            to: peer,
            generation,
            fp: fingerprint_of(me),
        }
        .encode()
    }

    pub(super) fn do_accept(&self, peer: NodeId, answer: &str) -> Result<(), String> {
        let me = self.id;
        let sdp = Sdp::parse_for(answer, SdpKind::Answer, peer, me)?;
        let mut w = self.lock()?;
        let Some(end) = w
            .ends
            .get_mut(&(me, peer))
            .filter(|e| e.state == EndState::Offered && e.generation == sdp.generation)
        else {
            return Err(format!("no pending offer to node {peer}"));
        };
        if sdp.fp != end.expected_fp {
            let reason = format!(
                "answer presents {:?}, expected {:?}",
                sdp.fp, end.expected_fp
            );
            end.state = EndState::Failed;
            return Err(w.refuse(me, peer, reason));
        }
        end.state = EndState::Connecting;
        let m = w.model(me, peer);
        let delay = w.uniform(m.connect_min, m.connect_max);
        tokio::spawn(connect(
            self.shared.clone(),
            me,
            peer,
            sdp.generation,
            delay,
        ));
        Ok(())
    }

    pub(super) fn do_close(&self, peer: NodeId) {
        let me = self.id;
        let Ok(mut w) = self.lock() else {
            return;
        };
        let Some(end) = w.ends.remove(&(me, peer)) else {
            return;
        };
        if !end.state.ended() {
            w.trace.event(
                me,
                "net.close",
                format_args!("{me}-{peer} gen={}", end.generation),
            );
            w.emit(me, TransportEvent::Closed(peer));
        }
        if end.state == EndState::Open {
            w.notify_close(&self.shared, me, peer, end.generation);
        }
        drop(w);
        self.shared.changed.notify_waiters();
    }

    pub(super) fn do_links(&self) -> Vec<LinkInfo> {
        let me = self.id;
        let Ok(w) = self.lock() else {
            return Vec::new();
        };
        w.ends
            .range((me, NodeId::MIN)..=(me, NodeId::MAX))
            .map(|((_, peer), e)| {
                let m = w.model(me, *peer);
                let open = e.state == EndState::Open;
                LinkInfo {
                    peer: *peer,
                    open,
                    state: e.state.name().to_owned(),
                    rtt_us: open.then(|| micros(m.latency_min.saturating_add(m.latency_max))),
                    queued_frames: e
                        .out
                        .as_ref()
                        .map_or(0, |o| o.tx.max_capacity().saturating_sub(o.tx.capacity())),
                    path: None,
                }
            })
            .collect()
    }
}

/// Completes the connection of `generation` from offerer `a` to `b`.
pub(super) async fn connect(
    shared: Arc<Shared>,
    a: NodeId,
    b: NodeId,
    generation: u64,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let mut w = shared.lock();
    let current = w.end_in(a, b, generation, EndState::Connecting)
        && w.end_in(b, a, generation, EndState::Answered);
    if !current {
        w.trace.event(
            a,
            "net.noconnect",
            format_args!("{a}-{b} gen={generation} stale"),
        );
        return;
    }
    if w.is_blocked(a, b) || w.is_blocked(b, a) {
        w.trace.event(
            a,
            "net.noconnect",
            format_args!("{a}-{b} gen={generation} blocked"),
        );
        return;
    }
    w.open(&shared, a, b, generation);
}

impl PeerLink for Endpoint {
    fn local_id(&self) -> NodeId {
        self.id
    }

    /// Queues `frame` for `to`: `Unreachable` without an open link (or for
    /// a frame over `MAX_FRAME_BYTES`); waits while the link's queue is
    /// full; `Closed` if the link ends meanwhile.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(self.send_frame(to, frame))
    }
}

impl PeerTransport for Endpoint {
    fn fingerprint(&self) -> String {
        fingerprint_of(self.id)
    }

    fn offer(
        &self,
        peer: NodeId,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_offer(peer, expected_fingerprint) })
    }

    fn answer(
        &self,
        peer: NodeId,
        offer: String,
        expected_fingerprint: String,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.do_answer(peer, &offer, expected_fingerprint) })
    }

    fn accept_answer(&self, peer: NodeId, answer: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.do_accept(peer, &answer) })
    }

    fn close(&self, peer: NodeId) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.do_close(peer) })
    }

    fn links(&self) -> Vec<LinkInfo> {
        self.do_links()
    }
}
