// Audio/video calls: the call panel, one RTCPeerConnection per other
// joined participant (a full mesh), signalling through the node, and
// recordings posted to the conversation. Everything is written as text.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const el = SG.el;
  const RINGING = new Set(['invited', 'ringing']);
  const HIDE_AFTER_MS = 10000;
  // Negotiation watchdog: a connection not up this long after its offer,
  // answer or hello is started over, at most once per RESTART_GAP_MS per
  // peer. The larger id first waits OFFER_WAIT_MS for an offer; the smaller
  // id ignores a hello while its own offer is younger than FRESH_OFFER_MS.
  const WATCH_MS = 12000;
  const RESTART_GAP_MS = 10000;
  const OFFER_WAIT_MS = 5000;
  const FRESH_OFFER_MS = 3000;
  const LEAVE_RETRY_MS = 30000;

  const SGCall = (window.SGCall = {
    pcs: new Map(), // node id -> RTCPeerConnection
    firstFrameAt: new Map(), // node id -> performance.now() of its first decoded frame
    clickedAt: null, // performance.now() of the last Start call / Accept
    recordings: [], // attachment objects of the recordings posted
  });

  const S = {
    conv: 'general',
    peers: [], // GET /peers items
    mode: 'idle', // idle | starting | ringing | in | ended
    call: null, // the CallView shown
    status: null, // a text shown instead of the mode's own
    names: [], // who a call being started invites (before the node answers)
    gen: 0, // bumped whenever a call begins or ends: stale work stops
    accepting: false, // Accept was clicked and the node has not answered
    mediaP: null, // Promise of the local MediaStream (or null)
    iceP: null, // Promise of the ICE servers
    isReady: false, // both have resolved (negotiation can go on without waiting)
    local: null, // local MediaStream
    cam: null, // camera video track
    screen: null, // shared screen track
    screenStream: null, // its stream (the local preview while sharing)
    muted: false,
    camOn: true,
    tiles: new Map(), // node id -> {fig, video}
    remote: new Map(), // node id -> remote MediaStream
    iceQ: new Map(), // node id -> candidates waiting for the remote description
    ops: new Map(), // node id -> Promise: negotiation steps run in order
    sends: new Map(), // node id -> Promise: signals are posted in order
    offering: new Set(), // node ids an offer is being made to
    sent: new WeakMap(), // pc -> {done, early}: candidates wait for the offer/answer
    latest: new Map(), // call id -> last CallView from an event
    watch: new Map(), // node id -> watchdog timeout
    offerSeq: new Map(), // node id -> number of offers received: only the newest is answered
    negAt: new Map(), // node id -> performance.now() of our last offer/answer/hello to it
    offeredAt: new WeakMap(), // pc -> performance.now() of its offer
    left: new Set(), // ids of calls hung up or declined on this page: never re-entered
    leaving: new Set(), // Promises of hangup/decline requests still being retried
    alive: null, // interval
    hide: null, // timeout
    rec: null, // the recording under way
  };

  // ---- helpers ---------------------------------------------------------
  // An API call; null when the node cannot be reached.
  async function api(method, path, body) {
    if (SG.authFailed) return null;
    try {
      return await SG.api(method, path, body);
    } catch (e) {
      return null;
    }
  }
  const callPath = (id, what) => '/calls/' + encodeURIComponent(id) + '/' + what;
  const mine = (v) => (v && v.participants ? v.participants.find((p) => p.node_id === v.me) : null);
  const others = (v) => (v && v.participants ? v.participants.filter((p) => p.node_id !== v.me) : []);
  const userOf = (v, id) => {
    const p = v && v.participants && v.participants.find((x) => x.node_id === id);
    return p ? p.user : String(id);
  };
  function note(text) {
    $('call-note').textContent = text || '';
  }
  function remember(v) {
    S.latest.delete(v.id);
    S.latest.set(v.id, v);
    if (S.latest.size > 20) S.latest.delete(S.latest.keys().next().value);
  }

  // ---- rendering -------------------------------------------------------
  function statusText() {
    if (S.status) return S.status;
    const v = S.call;
    if (S.mode === 'starting') return 'Calling ' + S.names.join(', ') + '…';
    if (S.mode === 'ringing') return userOf(v, v.initiator) + ' is calling';
    if (S.mode === 'ended') return 'Call ended';
    if (S.mode !== 'in' || !v) return '';
    const joined = others(v).filter((p) => p.state === 'joined');
    if (joined.length) return 'In a call with ' + joined.map((p) => p.user).join(', ');
    const waiting = others(v).filter((p) => RINGING.has(p.state));
    if (waiting.length) return 'Calling ' + waiting.map((p) => p.user).join(', ') + '…';
    return 'Waiting for others…';
  }

  function render() {
    const panel = $('call-panel');
    if (S.mode === 'idle') {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    const st = $('call-status');
    const text = statusText();
    if (st.textContent !== text) st.textContent = text;
    const ringing = S.mode === 'ringing';
    const inCall = S.mode === 'in';
    const video = inCall && !!(S.call && S.call.video);
    $('call-accept').hidden = !ringing;
    $('call-decline').hidden = !ringing;
    for (const id of ['call-mute', 'call-record', 'call-hangup']) $(id).hidden = !inCall;
    $('call-camera').hidden = !video;
    $('call-share').hidden = !video;
    $('call-mute').setAttribute('aria-pressed', String(S.muted));
    $('call-camera').setAttribute('aria-pressed', String(S.camOn));
    $('call-share').setAttribute('aria-pressed', String(!!S.screen));
    $('call-record').setAttribute('aria-pressed', String(!!S.rec));
    const rec = S.call && S.mode !== 'ended' ? S.call.participants.filter((p) => p.recording) : [];
    const ind = $('call-recording');
    ind.hidden = !rec.length;
    ind.textContent = rec.length ? 'Recording: ' + rec.map((p) => p.user).join(', ') : '';
  }

  // Keeps the keyboard somewhere useful when the focused button is hidden.
  function refocus(id) {
    const a = document.activeElement;
    if (!a || a === document.body || (a.closest && a.closest('#call-panel') && a.offsetParent === null)) {
      const t = $(id);
      if (t && !t.hidden) t.focus();
    }
  }

  function scheduleHide() {
    clearTimeout(S.hide);
    S.hide = setTimeout(() => {
      if (S.mode !== 'ended') return;
      S.mode = 'idle';
      S.call = null;
      S.status = null;
      render();
    }, HIDE_AFTER_MS);
  }

  // ---- tiles -----------------------------------------------------------
  function markFirstFrame(id, v) {
    const mark = () => {
      if (v.videoWidth > 0 && !SGCall.firstFrameAt.has(id)) SGCall.firstFrameAt.set(id, performance.now());
    };
    if (typeof v.requestVideoFrameCallback === 'function') {
      v.requestVideoFrameCallback(() => {
        if (!SGCall.firstFrameAt.has(id)) SGCall.firstFrameAt.set(id, performance.now());
      });
    }
    for (const t of ['loadeddata', 'playing', 'resize']) v.addEventListener(t, mark);
  }

  function tile(id, user, local) {
    let t = S.tiles.get(id);
    if (t) return t;
    const video = el('video', { autoplay: true, playsinline: true, muted: local });
    if (local) video.muted = true;
    else markFirstFrame(id, video);
    const fig = el('figure', { class: 'tile' + (local ? ' local' : ''), 'data-node': id },
      video, el('figcaption', { text: user }));
    $('call-tiles').append(fig);
    t = { fig, video };
    S.tiles.set(id, t);
    return t;
  }
  function show(video, stream) {
    if (video.srcObject === stream) return;
    video.srcObject = stream;
    const p = video.play();
    if (p) p.catch(() => {});
  }
  function dropTile(id) {
    const t = S.tiles.get(id);
    if (!t) return;
    t.video.srcObject = null;
    t.fig.remove();
    S.tiles.delete(id);
  }
  function showLocal() {
    if (!S.call) return;
    const t = tile(S.call.me, userOf(S.call, S.call.me), true);
    const s = S.screen ? S.screenStream : S.local;
    if (s) show(t.video, s);
  }

  // ---- media -----------------------------------------------------------
  async function getMedia(video) {
    const md = navigator.mediaDevices;
    if (!md || !md.getUserMedia) {
      note('This browser gives no camera or microphone here (it needs https or localhost).');
      return null;
    }
    try {
      return await md.getUserMedia({ audio: true, video: !!video });
    } catch (e) {
      if (video) {
        try {
          const s = await md.getUserMedia({ audio: true });
          note('No camera (' + e.message + '): audio only.');
          return s;
        } catch (e2) {
          /* fall through */
        }
      }
      note('No camera or microphone (' + e.message + '): receiving only.');
      return null;
    }
  }
  // Starts the local media for the current call; keeps it only while the
  // call is the same.
  function beginMedia(video) {
    const gen = S.gen;
    S.mediaP = getMedia(video).then((s) => {
      if (gen !== S.gen) {
        if (s) s.getTracks().forEach((t) => t.stop());
        return null;
      }
      S.local = s;
      S.cam = s ? s.getVideoTracks()[0] || null : null;
      if (s) {
        s.getAudioTracks().forEach((t) => (t.enabled = !S.muted));
        if (S.cam) S.cam.enabled = S.camOn;
      }
      if (S.mode === 'in') showLocal();
      return s;
    });
    S.iceP = fetchIce();
    S.isReady = false;
    Promise.all([S.mediaP, S.iceP]).then(() => {
      if (gen === S.gen) S.isReady = true;
    });
  }
  async function fetchIce() {
    const r = await api('GET', '/calls/ice');
    const list = (r && r.ok && r.data && r.data.ice_servers) || [];
    return list
      .filter((s) => s && Array.isArray(s.urls) && s.urls.length)
      .map((s) => {
        const o = { urls: s.urls };
        if (s.username != null) o.username = s.username;
        if (s.credential != null) o.credential = s.credential;
        return o;
      });
  }
  function stopLocal() {
    if (S.local) S.local.getTracks().forEach((t) => t.stop());
    if (S.screen) S.screen.stop();
    S.local = S.cam = S.screen = S.screenStream = null;
    S.mediaP = S.iceP = null;
    S.isReady = false;
  }

  // ---- signalling ------------------------------------------------------
  // Posts a signal; signals to one peer keep their order. A 409 (the
  // node has not seen the peer join yet) or a network error is retried.
  function send(to, signal) {
    const call = S.call && S.call.id;
    const gen = S.gen;
    if (!call) return;
    const p = (S.sends.get(to) || Promise.resolve()).then(async () => {
      for (let i = 0; i < 6; i++) {
        if (gen !== S.gen) return;
        const r = await api('POST', callPath(call, 'signal'), { to, signal });
        if (r && (r.ok || (r.status !== 409 && r.status < 500))) return;
        await SG.sleep(250 * (i + 1));
      }
    });
    S.sends.set(to, p);
  }
  // The offer or answer went out: local candidates may follow it.
  function described(pc, id, kind) {
    send(id, { kind, sdp: pc.localDescription.sdp });
    const now = performance.now();
    S.negAt.set(id, now);
    if (kind === 'offer') S.offeredAt.set(pc, now);
    arm(id, WATCH_MS);
    const st = S.sent.get(pc);
    st.done = true;
    for (const c of st.early) send(id, c);
    st.early = [];
  }

  // Runs f after the earlier negotiation steps with the same peer.
  function op(id, f) {
    const gen = S.gen;
    const p = (S.ops.get(id) || Promise.resolve())
      .then(() => (gen === S.gen ? f(gen) : null))
      .catch((e) => {
        if (gen === S.gen) note('Connection to ' + userOf(S.call, id) + ' failed: ' + e.message);
      });
    S.ops.set(id, p);
    return p;
  }
  async function ready(gen) {
    const [, ice] = await Promise.all([S.mediaP, S.iceP]);
    return gen === S.gen ? ice || [] : null;
  }

  // ---- negotiation watchdog ----------------------------------------------
  // One timer per peer; f (default: check) runs unless the call changed.
  function arm(id, ms, f) {
    clearTimeout(S.watch.get(id));
    const gen = S.gen;
    const t = setTimeout(() => {
      if (S.watch.get(id) === t) S.watch.delete(id);
      if (gen === S.gen) (f || check)(id);
    }, Math.max(0, ms));
    S.watch.set(id, t);
  }
  function disarm(id) {
    clearTimeout(S.watch.get(id));
    S.watch.delete(id);
  }
  // Whether id and this user are both joined in the call shown.
  function joinedPeer(id) {
    const v = S.call;
    if (S.mode !== 'in' || S.accepting || !v || id === v.me) return false;
    const m = mine(v);
    const p = v.participants.find((x) => x.node_id === id);
    return !!(m && m.state === 'joined' && p && p.state === 'joined');
  }
  function connected(id) {
    const pc = SGCall.pcs.get(id);
    return !!pc && pc.connectionState === 'connected';
  }
  // The watchdog fired: a connection to a joined peer that is not up is
  // started over.
  function check(id) {
    if (!joinedPeer(id) || connected(id)) return;
    // Still waiting for the camera (a permission prompt) or the ICE
    // servers: an offer or answer is on its way; another would cross it.
    if (!S.isReady) return arm(id, WATCH_MS);
    restart(id);
  }
  // Starts the connection to id over by the negotiation rule: the smaller
  // id offers on a fresh connection; the larger one waits a while for such
  // an offer and only then asks for one (hello). At most one restart per
  // RESTART_GAP_MS per peer: an earlier one is put off until then.
  function restart(id) {
    const wait = (S.negAt.get(id) ?? -Infinity) + RESTART_GAP_MS - performance.now();
    if (S.call.me < id) {
      // (An offer already on its way: look again later.)
      if (S.offering.has(id)) return arm(id, Math.max(wait, OFFER_WAIT_MS));
      if (wait > 0) return arm(id, wait);
      S.negAt.set(id, performance.now());
      arm(id, WATCH_MS); // in case the offer is never made
      op(id, (gen) => offer(id, gen, true));
      return;
    }
    const pc = SGCall.pcs.get(id);
    // An offer meanwhile makes a new connection and re-arms the timer.
    arm(id, Math.max(OFFER_WAIT_MS, wait), () => {
      if (!joinedPeer(id) || connected(id) || SGCall.pcs.get(id) !== pc) return check(id);
      hello(id);
    });
  }
  // Asks id (a smaller id) to offer again.
  function hello(id) {
    S.negAt.set(id, performance.now());
    send(id, { kind: 'hello' });
    arm(id, WATCH_MS);
  }
  // After the event stream came back (or lagged), signals may be lost:
  // every connection not up is started over (within the bound).
  function kick() {
    const v = S.call;
    if (!v || S.mode !== 'in') return;
    for (const p of others(v)) if (joinedPeer(p.node_id) && !connected(p.node_id)) restart(p.node_id);
  }

  function closePc(id) {
    const pc = SGCall.pcs.get(id);
    if (!pc) return;
    SGCall.pcs.delete(id);
    pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
  }

  // A new connection to id (replacing any): local candidates go out as
  // `ice` signals, remote tracks into id's tile.
  function makePc(id, ice) {
    closePc(id);
    let pc;
    try {
      pc = new RTCPeerConnection({ iceServers: ice });
    } catch (e) {
      pc = new RTCPeerConnection();
    }
    SGCall.pcs.set(id, pc);
    S.iceQ.delete(id); // candidates of the peer's previous connection
    S.sent.set(pc, { done: false, early: [] });
    S.remote.set(id, new MediaStream());
    pc.onicecandidate = (e) => {
      const c = e.candidate;
      if (!c || !c.candidate || SGCall.pcs.get(id) !== pc) return;
      const sig = { kind: 'ice', candidate: c.candidate, sdp_mid: c.sdpMid ?? null, sdp_mline_index: c.sdpMLineIndex ?? null };
      const st = S.sent.get(pc);
      if (st.done) send(id, sig);
      else st.early.push(sig);
    };
    pc.ontrack = (e) => {
      if (SGCall.pcs.get(id) !== pc) return;
      let s = e.streams && e.streams[0];
      if (!s) {
        s = S.remote.get(id);
        if (!s.getTracks().includes(e.track)) s.addTrack(e.track);
      }
      S.remote.set(id, s);
      show(tile(id, userOf(S.call, id), false).video, s);
      if (S.rec && e.track.kind === 'audio') S.rec.addAudio(e.track);
    };
    pc.onconnectionstatechange = () => {
      if (SGCall.pcs.get(id) !== pc) return;
      const st = pc.connectionState;
      if (st === 'connected') disarm(id);
      else if (st === 'disconnected') {
        // It may come back by itself; if not, the watchdog starts over.
        if (!S.watch.has(id)) arm(id, WATCH_MS);
      } else if (st === 'failed') {
        // Start over: the smaller id offers at once; the larger one waits
        // for that offer and asks for one only if none comes.
        if (joinedPeer(id)) restart(id);
      }
    };
    return pc;
  }

  // Adds the local tracks (the answerer: after the remote description, so
  // they take the offer's transceivers).
  function addLocal(pc, answering) {
    const s = S.local || new MediaStream();
    const a = S.local && S.local.getAudioTracks()[0];
    if (a) pc.addTrack(a, s);
    else if (!answering) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (!S.call.video) return;
    const v = S.screen || S.cam;
    if (v) pc.addTrack(v, s);
    else if (!answering) pc.addTransceiver('video', { direction: 'recvonly' });
  }

  async function flushIce(id, pc) {
    const q = S.iceQ.get(id) || [];
    S.iceQ.delete(id);
    for (const c of q) await pc.addIceCandidate(c).catch(() => {});
  }

  async function offer(id, gen, force) {
    if (!force && SGCall.pcs.has(id)) return;
    const ice = await ready(gen);
    if (ice == null || (!force && SGCall.pcs.has(id))) return;
    const pc = makePc(id, ice);
    addLocal(pc, false);
    await pc.setLocalDescription(await pc.createOffer());
    if (SGCall.pcs.get(id) === pc) described(pc, id, 'offer');
  }

  async function onOffer(id, sdp, gen) {
    const ice = await ready(gen);
    if (ice == null) return;
    const pc = makePc(id, ice);
    await pc.setRemoteDescription({ type: 'offer', sdp });
    addLocal(pc, true);
    await flushIce(id, pc);
    await pc.setLocalDescription(await pc.createAnswer());
    if (SGCall.pcs.get(id) === pc) described(pc, id, 'answer');
  }

  async function onAnswer(id, sdp) {
    const pc = SGCall.pcs.get(id);
    if (!pc || pc.signalingState !== 'have-local-offer') return;
    await pc.setRemoteDescription({ type: 'answer', sdp });
    await flushIce(id, pc);
  }

  async function onIce(id, s) {
    const c = { candidate: s.candidate, sdpMid: s.sdp_mid ?? null, sdpMLineIndex: s.sdp_mline_index ?? null };
    const pc = SGCall.pcs.get(id);
    if (pc && pc.remoteDescription) await pc.addIceCandidate(c).catch(() => {});
    else {
      if (!S.iceQ.has(id)) S.iceQ.set(id, []);
      S.iceQ.get(id).push(c);
    }
  }

  function onSignal(d) {
    if (!d || !S.call || d.call !== S.call.id || S.mode !== 'in' || !d.signal) return;
    const id = d.from;
    const s = d.signal;
    if (typeof id !== 'number' || id === S.call.me) return;
    if (s.kind === 'offer' && typeof s.sdp === 'string') {
      // An offer superseded by a newer one still queued is not answered: the
      // offerer applies an answer to its newest connection only.
      const n = (S.offerSeq.get(id) || 0) + 1;
      S.offerSeq.set(id, n);
      op(id, (gen) => (S.offerSeq.get(id) === n ? onOffer(id, s.sdp, gen) : null));
    }
    else if (s.kind === 'answer' && typeof s.sdp === 'string') op(id, () => onAnswer(id, s.sdp));
    else if (s.kind === 'ice' && typeof s.candidate === 'string') op(id, () => onIce(id, s));
    else if (s.kind === 'hello') {
      // The peer reloaded or lost its connection: offer again on a fresh
      // connection, unless an offer just went out (it answers the hello; a
      // second one would cross the answer to the first).
      op(id, (gen) => {
        const pc = SGCall.pcs.get(id);
        const at = pc && S.offeredAt.get(pc);
        if (at != null && performance.now() - at < FRESH_OFFER_MS) return;
        S.negAt.set(id, performance.now());
        arm(id, WATCH_MS);
        return offer(id, gen, true);
      });
    }
  }

  // Matches the connections and tiles to the call's joined participants.
  function sync() {
    const v = S.call;
    const m = mine(v);
    if (!v || S.mode !== 'in' || !m || m.state !== 'joined') return;
    showLocal();
    const keep = new Set([v.me]);
    for (const p of others(v)) {
      if (p.state !== 'joined') continue;
      keep.add(p.node_id);
      tile(p.node_id, p.user, false);
      // Nothing gets stuck: a peer not connected always has a watchdog.
      if (!S.watch.has(p.node_id) && !connected(p.node_id)) arm(p.node_id, WATCH_MS);
      if (v.me < p.node_id && !SGCall.pcs.has(p.node_id) && !S.offering.has(p.node_id)) {
        const id = p.node_id;
        S.offering.add(id);
        op(id, (gen) => offer(id, gen, false)).finally(() => S.offering.delete(id));
      }
    }
    for (const id of [...S.tiles.keys()]) if (!keep.has(id)) leave(id);
    for (const id of [...SGCall.pcs.keys()]) if (!keep.has(id)) leave(id);
  }
  function leave(id) {
    disarm(id);
    S.negAt.delete(id);
    closePc(id);
    dropTile(id);
    S.iceQ.delete(id);
    S.remote.delete(id);
  }

  // ---- call lifecycle ---------------------------------------------------
  function fresh() {
    clearTimeout(S.hide);
    S.gen++;
    S.status = null;
    S.muted = false;
    S.camOn = true;
    S.accepting = false;
    note('');
  }

  function startAlive() {
    clearInterval(S.alive);
    const id = S.call.id;
    const beat = async () => {
      if (!S.call || S.call.id !== id || (S.mode !== 'in' && S.mode !== 'ringing')) return;
      const r = await api('POST', callPath(id, 'alive'));
      if (r && r.status === 404 && S.call && S.call.id === id) end();
    };
    beat();
    S.alive = setInterval(beat, 5000);
  }

  function enter(v) {
    S.call = v;
    S.mode = 'in';
    startAlive();
    showLocal();
    onCall(v);
  }

  function ring(v) {
    fresh();
    S.call = v;
    S.mode = 'ringing';
    startAlive();
    render();
    $('call-accept').focus();
  }

  // Leaves the call on this page: stops a recording, closes every
  // connection and the local media. status: a text instead of "Call ended".
  function end(status) {
    if (S.mode === 'idle' || S.mode === 'ended') return;
    if (S.rec) stopRecording();
    S.gen++;
    clearInterval(S.alive);
    for (const id of [...SGCall.pcs.keys()]) closePc(id);
    for (const id of [...S.tiles.keys()]) dropTile(id);
    S.iceQ.clear();
    S.remote.clear();
    S.ops.clear();
    S.sends.clear();
    S.offering.clear();
    for (const t of S.watch.values()) clearTimeout(t);
    S.watch.clear();
    S.negAt.clear();
    S.offerSeq.clear();
    stopLocal();
    S.accepting = false;
    S.mode = 'ended';
    S.status = status || null;
    render();
    refocus('call-start');
    scheduleHide();
  }

  // A `call` event (or an answer carrying a CallView).
  function onCall(v) {
    if (!v || !v.id) return;
    remember(v);
    const m = mine(v);
    if (S.call && S.call.id === v.id) {
      S.call = v;
      if (S.mode === 'ringing') {
        // Answered elsewhere, cancelled or missed.
        if (v.state === 'ended' || !m || !RINGING.has(m.state)) end();
      } else if (S.mode === 'in' && !S.accepting) {
        if (v.state === 'ended' || !m || m.state !== 'joined') end();
        else sync();
      }
      render();
      return;
    }
    if (v.state === 'ended' || !m || S.left.has(v.id)) return;
    if (S.mode === 'ringing' || S.mode === 'in' || S.mode === 'starting') return;
    if (RINGING.has(m.state) && v.initiator !== v.me) ring(v);
  }

  async function start(conversation, peerIds) {
    SGCall.clickedAt = performance.now();
    if (S.mode === 'in' || S.mode === 'ringing' || S.mode === 'starting') {
      note('Already in a call: hang up first.');
      return;
    }
    const ids = [...new Set((peerIds || []).map(Number))].filter((n) => n > 0).slice(0, 3);
    fresh();
    SGCall.firstFrameAt.clear();
    if (!ids.length) {
      S.mode = 'ended';
      S.call = null;
      S.status = 'Nobody online to call.';
      render();
      scheduleHide();
      return;
    }
    const byId = new Map(S.peers.map((p) => [p.node_id, p.user]));
    S.names = ids.map((id) => byId.get(id) ?? String(id));
    S.mode = 'starting';
    S.call = null;
    render();
    beginMedia(true);
    // A hang-up still being sent would make the node refuse (409).
    if (S.leaving.size) await Promise.all([...S.leaving]);
    if (S.mode !== 'starting') return;
    const r = await api('POST', '/calls', { conversation: conversation || S.conv, peers: ids, video: true });
    if (S.mode !== 'starting') return;
    if (!r || !r.ok || !r.data || !r.data.id) {
      S.mode = 'in'; // so end() tears the media down
      end(r ? SG.errText(r) : 'The node cannot be reached.');
      return;
    }
    enter(S.latest.get(r.data.id) || r.data);
    refocus('call-hangup');
  }

  async function accept() {
    SGCall.clickedAt = performance.now();
    const v = S.call;
    if (S.mode !== 'ringing' || !v) return;
    SGCall.firstFrameAt.clear();
    S.accepting = true;
    S.mode = 'in';
    beginMedia(v.video);
    startAlive();
    showLocal();
    render();
    $('call-hangup').focus();
    const gen = S.gen;
    const r = await api('POST', callPath(v.id, 'accept'));
    if (gen !== S.gen) return;
    S.accepting = false;
    if (!r || !r.ok || !r.data) {
      end(r ? SG.errText(r) : 'The node cannot be reached.');
      return;
    }
    // An event may have brought a newer view already.
    const m = mine(S.call);
    onCall(m && m.state === 'joined' ? S.call : r.data);
  }

  // Tells the node this user declined or hung up (what), retrying with a
  // backoff for about LEAVE_RETRY_MS until it answers (404 or 409: there is
  // nothing left to leave). Resolves to the CallView, or null.
  function leaveCall(id, what) {
    S.left.add(id);
    const p = (async () => {
      const t0 = performance.now();
      for (let delay = 500; ; delay = Math.min(delay * 2, 8000)) {
        const r = await api('POST', callPath(id, what));
        if (r && (r.ok || r.status === 404 || r.status === 409)) return r.ok ? r.data : null;
        if (performance.now() - t0 + delay > LEAVE_RETRY_MS) return null;
        await SG.sleep(delay);
      }
    })();
    S.leaving.add(p);
    p.finally(() => S.leaving.delete(p));
    return p;
  }

  async function decline() {
    const v = S.call;
    if (S.mode !== 'ringing' || !v) return;
    S.left.add(v.id);
    end();
    const data = await leaveCall(v.id, 'decline');
    if (data) onCall(data);
  }

  async function hangup() {
    const v = S.call;
    if (S.mode !== 'in' || !v) return;
    S.left.add(v.id); // from now on resume() must not bring the user back
    const off = S.rec ? stopRecording() : null;
    end();
    if (off) await off;
    const data = await leaveCall(v.id, 'hangup');
    if (data) onCall(data);
  }

  // Rejoins a live call this node is in, or rings for one it is invited
  // to (never one hung up or declined on this page); while in a call,
  // brings its state up to date and starts over the connections not up
  // (signals sent while the event stream was down are lost).
  async function resume() {
    const r = await api('GET', '/calls');
    const ok = !!(r && r.ok && r.data);
    const calls = ok ? r.data.calls || [] : [];
    if (S.mode === 'in' || S.mode === 'ringing') {
      if (S.accepting || !S.call) return;
      if (ok) {
        const v = calls.find((c) => c.id === S.call.id);
        if (v) onCall(v);
        else end();
      }
      kick();
      return;
    }
    if (!ok || S.mode === 'starting') return;
    const live = calls.filter((c) => {
      const seen = S.latest.get(c.id);
      return c.state !== 'ended' && !(seen && seen.state === 'ended') && !S.left.has(c.id);
    });
    const joined = live.find((c) => (mine(c) || {}).state === 'joined');
    if (joined) {
      fresh();
      S.call = joined;
      S.mode = 'in';
      beginMedia(joined.video);
      // Those with a smaller id offer again when asked; the others get
      // an offer from sync().
      for (const p of others(joined))
        if (p.state === 'joined' && p.node_id < joined.me) hello(p.node_id);
      enter(joined);
      return;
    }
    const inv = live.find((c) => RINGING.has((mine(c) || {}).state) && c.initiator !== c.me);
    if (inv) ring(inv);
  }

  // ---- controls ----------------------------------------------------------
  function toggleMute() {
    S.muted = !S.muted;
    if (S.local) S.local.getAudioTracks().forEach((t) => (t.enabled = !S.muted));
    render();
  }
  function toggleCamera() {
    S.camOn = !S.camOn;
    if (S.cam) S.cam.enabled = S.camOn;
    render();
  }

  // Sends track on every connection's video sender and shows it locally.
  function setVideo(track) {
    for (const pc of SGCall.pcs.values()) {
      const t = pc.getTransceivers().find((x) => x.receiver.track && x.receiver.track.kind === 'video');
      if (t) t.sender.replaceTrack(track).catch(() => {});
    }
    showLocal();
  }
  async function share() {
    if (S.screen) return stopShare();
    const md = navigator.mediaDevices;
    if (!md || !md.getDisplayMedia) return note('This browser cannot share its screen here.');
    const gen = S.gen;
    let s;
    try {
      s = await md.getDisplayMedia({ video: true });
    } catch (e) {
      note('Screen not shared: ' + e.message);
      return;
    }
    const t = s.getVideoTracks()[0];
    if (gen !== S.gen || S.mode !== 'in' || !t) {
      s.getTracks().forEach((x) => x.stop());
      return;
    }
    S.screen = t;
    S.screenStream = s;
    t.addEventListener('ended', () => {
      if (S.screen === t) stopShare();
    });
    setVideo(t);
    render();
  }
  function stopShare() {
    const t = S.screen;
    S.screen = S.screenStream = null;
    if (t) t.stop();
    setVideo(S.cam);
    render();
  }

  // ---- recording -------------------------------------------------------
  const pad = (n) => String(n).padStart(2, '0');
  function stamp(d) {
    return d.getFullYear() + pad(d.getMonth() + 1) + pad(d.getDate()) + '-' +
      pad(d.getHours()) + pad(d.getMinutes()) + pad(d.getSeconds());
  }
  function mimeType() {
    if (typeof MediaRecorder.isTypeSupported !== 'function') return '';
    return ['video/webm;codecs=vp8,opus', 'video/webm'].find((t) => MediaRecorder.isTypeSupported(t)) || '';
  }
  // The first remote participant's video track; the local one when alone.
  function recordedVideo() {
    for (const p of others(S.call)) {
      const s = S.remote.get(p.node_id);
      const t = s && s.getVideoTracks().find((x) => x.readyState === 'live');
      if (t) return t;
    }
    return S.screen || S.cam;
  }

  async function startRecording() {
    const v = S.call;
    if (S.mode !== 'in' || !v || S.rec) return;
    if (typeof MediaRecorder === 'undefined') return note('This browser cannot record.');
    const ctx = new AudioContext();
    ctx.resume().catch(() => {});
    const dest = ctx.createMediaStreamDestination();
    const mixed = new Set();
    const addAudio = (t) => {
      if (mixed.has(t.id)) return;
      mixed.add(t.id);
      ctx.createMediaStreamSource(new MediaStream([t])).connect(dest);
    };
    if (S.local) S.local.getAudioTracks().forEach(addAudio);
    for (const s of S.remote.values()) s.getAudioTracks().forEach(addAudio);
    const video = recordedVideo();
    const stream = new MediaStream([...(video ? [video] : []), ...dest.stream.getAudioTracks()]);
    let recorder;
    try {
      const type = mimeType();
      recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    } catch (e) {
      ctx.close().catch(() => {});
      return note('Cannot record: ' + e.message);
    }
    const at = new Date();
    const R = {
      recorder, ctx, addAudio, chunks: [], call: v.id, conv: v.conversation,
      started: performance.now(), name: 'call-' + stamp(at) + '.webm',
    };
    R.stopped = new Promise((res) => recorder.addEventListener('stop', res));
    recorder.addEventListener('dataavailable', (e) => {
      if (e.data && e.data.size) R.chunks.push(e.data);
    });
    recorder.start(1000);
    S.rec = R;
    note('');
    render();
    const r = await api('POST', callPath(v.id, 'recording'), { on: true });
    if (r && r.ok && r.data) onCall(r.data);
    else if (S.rec === R) {
      note('The others are not told of the recording: ' + (r ? SG.errText(r) : 'the node cannot be reached.'));
    }
  }

  // Stops the recording, tells the node, then saves it in the background.
  // Resolves once the node was told.
  function stopRecording() {
    const R = S.rec;
    if (!R) return Promise.resolve();
    S.rec = null;
    R.ms = performance.now() - R.started;
    try {
      if (R.recorder.state !== 'inactive') R.recorder.stop();
    } catch (e) {
      /* stopped already */
    }
    R.stopped.then(() => save(R));
    render();
    return api('POST', callPath(R.call, 'recording'), { on: false }).then((r) => {
      if (r && r.ok && r.data) onCall(r.data);
    });
  }

  async function save(R) {
    R.ctx.close().catch(() => {});
    const blob = new Blob(R.chunks, { type: 'video/webm' });
    if (!blob.size) return note('The recording is empty.');
    note('Saving the recording…');
    let res;
    let att = null;
    try {
      res = await fetch(SG.url('/attachments?name=' + encodeURIComponent(R.name)), {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + SG.secret(), 'Content-Type': 'video/webm' },
        body: blob,
      });
      att = await res.json().catch(() => null);
    } catch (e) {
      return note('Recording not saved: the node cannot be reached.');
    }
    if (!res.ok || !att || !att.sha256) return note('Recording not saved: ' + SG.errText({ status: res.status, data: att }));
    const r = await api('POST', '/messages', {
      conversation: R.conv,
      content: 'Call recording (' + SG.fmtDur(R.ms) + ')',
      attachments: [att],
    });
    if (r && (r.ok || (r.status === 503 && r.data && r.data.status === 'queued'))) {
      SGCall.recordings.push(att);
      note(r.ok ? 'Recording saved.' : 'Recording saved; its message waits in the outbox.');
    } else note('Recording not posted: ' + (r ? SG.errText(r) : 'the node cannot be reached.'));
  }

  // ---- surface ---------------------------------------------------------
  SGCall.onEvent = function (type, d) {
    if (type === 'call') onCall(d);
    else if (type === 'call_signal') onSignal(d);
  };
  SGCall.start = start;
  SGCall.resume = resume;
  // The call ringing here or joined; once left, the call only if it ended.
  SGCall.current = () =>
    S.mode === 'in' || S.mode === 'ringing' || (S.call && S.call.state === 'ended') ? S.call : null;
  SGCall.setConversation = (id) => {
    S.conv = id;
  };
  SGCall.setPeers = (list) => {
    S.peers = Array.isArray(list) ? list : [];
  };

  function init() {
    $('call-start').addEventListener('click', () => {
      const online = S.peers.filter((p) => p.state === 'connected').slice(0, 3);
      start(S.conv, online.map((p) => p.node_id));
    });
    $('call-accept').addEventListener('click', accept);
    $('call-decline').addEventListener('click', decline);
    $('call-mute').addEventListener('click', toggleMute);
    $('call-camera').addEventListener('click', toggleCamera);
    $('call-share').addEventListener('click', share);
    $('call-record').addEventListener('click', () => (S.rec ? stopRecording() : startRecording()));
    $('call-hangup').addEventListener('click', hangup);
  }
  init();
})();
