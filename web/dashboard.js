// The dashboard: polls GET /status every second and GET /flushes every 5 s,
// keeps 5 minutes of samples and draws them on canvases by hand.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const el = SG.el;
  const WINDOW_MS = 5 * 60 * 1000;
  const COLORS = ['#2f7ed8', '#e4572e', '#29a329', '#a35bd6', '#d6a21e', '#17becf', '#8c564b'];
  const samples = []; // {t, rate, committed, applied, rtt: {node: ms}}
  let prev = null; // {t, total}
  let commitPrefix = null;
  let down = false;
  let started = false;

  const txt = (id, v) => {
    $(id).textContent = v == null ? '–' : String(v);
  };
  function setDown(d) {
    down = d;
    $('offline').hidden = !d;
    $('offline').textContent = 'Offline: cannot reach the node at ' + location.host + '. Retrying…';
  }
  async function get(path) {
    if (SG.authFailed) return null;
    try {
      const r = await SG.api('GET', path, undefined, 5000);
      if (down) setDown(false);
      return r && r.ok ? r.data : null;
    } catch (e) {
      setDown(true);
      return null;
    }
  }

  // Key/value list of an object of unknown shape (text only).
  function kv(dl, obj) {
    const kids = [];
    if (obj == null) kids.push(el('dt', { text: '–' }), el('dd', { text: 'not available' }));
    else
      for (const k of Object.keys(obj)) {
        const v = obj[k];
        let s;
        if (v == null) s = '–';
        else if (Array.isArray(v)) s = v.length ? v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : x)).join(', ') : 'none';
        else if (typeof v === 'object') s = JSON.stringify(v);
        else s = String(v);
        kids.push(el('dt', { text: k.replace(/_/g, ' ') }), el('dd', { text: s }));
      }
    dl.replaceChildren(...kids);
  }

  function shortHash(h, url) {
    if (!h) return '–';
    const href = SG.safeHref(url) || (commitPrefix ? SG.safeHref(commitPrefix + h) : null);
    const s = String(h).slice(0, 7);
    return href ? el('a', { href, target: '_blank', rel: 'noopener noreferrer', title: h, text: s }) : el('code', { title: h, text: s });
  }

  let busy = false;
  async function pollStatus() {
    if (busy) return;
    busy = true;
    const s = await get('/status').finally(() => (busy = false));
    if (!s) return;
    const now = Date.now();
    const c = s.consensus || {};
    txt('node-id', s.node_id);
    txt('user', s.user ? '(' + s.user + ')' : '');
    txt('leader', c.leader == null ? 'none' : c.leader);
    txt('leader-note', c.leader == null ? '' : (c.leader === s.node_id ? '(this node)' : '') +
      (s.leader_reachable === false ? ' (unreachable)' : ''));
    $('no-leader').hidden = c.leader != null && s.leader_reachable !== false;
    txt('term', c.term);
    const m = s.membership || {};
    txt('epoch', m.epoch);
    txt('reformed', m.reformed ? '(' + (m.reformed.founded ? 'founded' : 'joined') + ', ' +
      m.reformed.carried + ' carried)' : (m.reform_waiting || ''));
    txt('state', c.state);
    txt('last-log-index', c.last_log_index);
    txt('commit-index', c.committed_index);
    txt('applied-index', c.applied_index);
    txt('outbox-len', c.outbox_len);
    txt('msg-total', s.messages_applied_total);
    const cu = s.catch_up;
    const p = $('catchup-progress');
    if (cu) {
      txt('catchup-text', (cu.done ? 'done: ' : 'catching up: ') + cu.applied_index + ' / ' + cu.target_index);
      p.max = Math.max(1, cu.target_index || 0);
      p.value = Math.min(p.max, cu.applied_index || 0);
    } else txt('catchup-text', '–');
    const repo = s.repository || {};
    txt('repo-spec', repo.spec);
    commitPrefix = repo.commit_url_prefix || null;
    const cm = s.committer || {};
    txt('synced-up-to', cm.synced_up_to);
    txt('commit-interval', cm.interval_secs == null ? null : cm.interval_secs + ' s');
    kv($('repo-api'), s.repo_api);
    kv($('presence'), s.presence);
    kv($('membership'), s.membership);

    // Peers (links) joined with the leader's replication view.
    const repl = new Map((s.replication || []).map((r) => [r.node_id, r]));
    const rows = [];
    const rtt = {};
    for (const pe of s.peers || []) {
      const r = repl.get(pe.node_id);
      repl.delete(pe.node_id);
      if (typeof pe.rtt_ms === 'number') rtt[pe.node_id] = pe.rtt_ms;
      rows.push(el('tr', {},
        el('td', { text: pe.node_id }), el('td', { text: pe.user ?? '' }), el('td', { text: pe.state ?? '' }),
        el('td', { text: pe.phase ?? '' }), el('td', { text: pe.path ?? '–' }), el('td', { text: pe.role ?? '' }),
        el('td', { text: SG.fmtMs(pe.rtt_ms) }),
        el('td', { text: r ? r.matched_index ?? '–' : '–' }), el('td', { text: r ? r.lag ?? '–' : pe.lag ?? '–' })));
    }
    for (const r of repl.values())
      rows.push(el('tr', {}, el('td', { text: r.node_id }), el('td', { text: r.node_id === s.node_id ? '(this node)' : '' }),
        el('td', { text: '' }), el('td', { text: '' }), el('td', { text: '' }), el('td', { text: '' }), el('td', { text: '–' }),
        el('td', { text: r.matched_index ?? '–' }), el('td', { text: r.lag ?? '–' })));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'no peers' })));
    $('links').replaceChildren(...rows);

    // Rate from the delta of messages_applied_total.
    const total = s.messages_applied_total;
    let rate = null;
    if (prev && typeof total === 'number' && now > prev.t) rate = Math.max(0, ((total - prev.total) * 1000) / (now - prev.t));
    if (typeof total === 'number') prev = { t: now, total };
    txt('msg-rate', rate == null ? null : rate.toFixed(1));
    samples.push({ t: now, rate, committed: c.committed_index, applied: c.applied_index, rtt });
    while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
    const u = SG.fmtTime(new Date(now).toISOString());
    $('updated-at').textContent = u.text;
    $('updated-at').setAttribute('datetime', new Date(now).toISOString());
    draw();
  }

  async function pollFlushes() {
    const d = await get('/flushes');
    if (!d) return;
    const rows = (d.flushes || []).slice().reverse().map((f) => {
      const t = SG.fmtTime(f.at);
      return el('tr', { class: f.ok === false ? 'bad' : null },
        el('td', {}, el('time', { datetime: f.at, title: t.title || null, text: t.text })),
        el('td', { text: f.reason ?? '' }), el('td', { text: f.ok ? 'yes' : 'no' }),
        el('td', { text: f.changes ?? '–' }), el('td', { text: f.commits ?? '–' }),
        el('td', {}, shortHash(f.head, f.commit_url)), el('td', { text: f.up_to_index ?? '–' }),
        el('td', { text: SG.fmtMs(f.duration_ms) }),
        el('td', { text: f.remote_calls ?? '–' }), el('td', { class: 'err', text: f.error ?? '' }));
    });
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 10, class: 'muted', text: 'no flushes yet' })));
    $('flushes').replaceChildren(...rows);
  }

  // ---- charts ---------------------------------------------------------
  function fmtNum(v) {
    return Math.abs(v) >= 1000 ? String(Math.round(v)) : String(+v.toPrecision(3));
  }
  // series: [{label, color, pts: [[t, v]]}]; x is the last 5 minutes.
  function chart(canvas, series, from0) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300;
    const h = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.body);
    const fg = css.getPropertyValue('--fg').trim() || '#222';
    const grid = css.getPropertyValue('--line').trim() || '#ccc';
    g.font = '11px system-ui, sans-serif';
    const now = Date.now();
    const t0 = now - WINDOW_MS;
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of series) for (const [, v] of s.pts) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
    if (!isFinite(lo)) (lo = 0), (hi = 1);
    if (from0) lo = Math.min(0, lo);
    if (hi - lo < 1e-9) hi = lo + 1;
    const L = 48;
    const R = 6;
    const T = 16;
    const B = 16;
    const X = (t) => L + ((t - t0) / WINDOW_MS) * (w - L - R);
    const Y = (v) => T + (1 - (v - lo) / (hi - lo)) * (h - T - B);
    g.strokeStyle = grid;
    g.fillStyle = fg;
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 2; i++) {
      const v = lo + ((hi - lo) * i) / 2;
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath();
      g.moveTo(L, y);
      g.lineTo(w - R, y);
      g.stroke();
      g.fillText(fmtNum(v), L - 4, y);
    }
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillText('-5 min', L, h - 3);
    g.textAlign = 'right';
    g.fillText('now', w - R, h - 3);
    let lx = L;
    g.textAlign = 'left';
    series.forEach((s) => {
      g.strokeStyle = g.fillStyle = s.color;
      g.lineWidth = 1.5;
      g.beginPath();
      let on = false;
      for (const [t, v] of s.pts) {
        if (on) g.lineTo(X(t), Y(v));
        else g.moveTo(X(t), Y(v));
        on = true;
      }
      if (s.pts.length === 1) g.arc(X(s.pts[0][0]), Y(s.pts[0][1]), 1.5, 0, 7);
      g.stroke();
      g.fillRect(lx, 5, 8, 8);
      g.fillText(s.label, lx + 11, 12);
      lx += 18 + g.measureText(s.label).width;
    });
  }
  const pts = (f) => samples.filter((s) => typeof f(s) === 'number').map((s) => [s.t, f(s)]);
  function draw() {
    chart($('chart-rate'), [{ label: 'messages/s', color: COLORS[0], pts: pts((s) => s.rate) }], true);
    chart($('chart-index'), [
      { label: 'committed', color: COLORS[1], pts: pts((s) => s.committed) },
      { label: 'applied', color: COLORS[2], pts: pts((s) => s.applied) },
    ], false);
    const peers = [...new Set(samples.flatMap((s) => Object.keys(s.rtt)))].sort();
    chart($('chart-rtt'), peers.map((p, i) => ({ label: 'node ' + p, color: COLORS[i % COLORS.length], pts: pts((s) => s.rtt[p]) })), true);
  }

  function start() {
    $('chat-link').setAttribute('href', SG.pageLink('/'));
    if (!started) {
      started = true;
      setInterval(pollStatus, 1000);
      setInterval(pollFlushes, 5000);
      window.addEventListener('resize', draw);
    }
    pollStatus();
    pollFlushes();
  }
  draw();
  SG.initAuth(start);
})();
