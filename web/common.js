// Shared by the chat UI and the dashboard: the secret, an authenticated
// fetch, a server-sent-events reader over fetch, time formatting and a
// DOM builder that only ever writes text (never HTML).
'use strict';
(function () {
  const KEY = 'skygit-secret';
  const SG = (window.SG = { authFailed: false });
  let memSecret = '';
  const search = new URLSearchParams(location.search);
  // A node may serve several rooms: `?repo=<key>` picks one.
  SG.repo = search.get('repo');

  SG.sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Builds an element. props: class, text, on<event> (listener), other
  // keys become attributes. Children are nodes or strings (text nodes).
  SG.el = function (tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const k in props || {}) {
      const v = props[k];
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of kids) if (c != null && c !== false) e.append(c);
    return e;
  };

  // An http(s) URL, or null: the only hrefs the pages build from data.
  SG.safeHref = function (u) {
    if (typeof u !== 'string' || !u) return null;
    try {
      const p = new URL(u);
      return p.protocol === 'https:' || p.protocol === 'http:' ? p.href : null;
    } catch (e) {
      return null;
    }
  };

  function store(s) {
    memSecret = s;
    try {
      sessionStorage.setItem(KEY, s);
    } catch (e) {
      /* storage disabled: keep it in memory */
    }
  }

  SG.secret = function () {
    try {
      return sessionStorage.getItem(KEY) || memSecret;
    } catch (e) {
      return memSecret;
    }
  };

  // Takes `#secret=...` from the address bar into sessionStorage and
  // removes the fragment.
  SG.takeSecret = function () {
    const h = location.hash.replace(/^#/, '');
    if (!h) return;
    const p = new URLSearchParams(h);
    const s = (p.get('secret') || '').trim();
    if (s) store(s);
    if (p.has('secret')) history.replaceState(null, '', location.pathname + location.search);
  };

  // A link to another page of this node that carries the secret along.
  SG.pageLink = function (path) {
    const s = SG.secret();
    return path + location.search + (s ? '#secret=' + encodeURIComponent(s) : '');
  };

  SG.url = function (path) {
    if (!SG.repo) return path;
    return path + (path.includes('?') ? '&' : '?') + 'repo=' + encodeURIComponent(SG.repo);
  };

  const onAuthFail = [];
  SG.onAuthFail = (f) => onAuthFail.push(f);

  // Shows the secret form with an explanation and pauses API calls.
  SG.needAuth = function (why) {
    SG.authFailed = true;
    document.getElementById('auth-msg').textContent = why;
    document.getElementById('auth').hidden = false;
    document.getElementById('secret-input').focus();
    onAuthFail.forEach((f) => f());
  };

  const REFUSED =
    'The node refused this secret (401). It may have a new data directory, or the secret is mistyped: paste the "secret:" line the node printed.';

  // Binds the secret form; calls start() once a secret is known (again
  // after every new secret).
  SG.initAuth = function (start) {
    const form = document.getElementById('auth-form');
    const input = document.getElementById('secret-input');
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      let v = input.value.trim();
      const m = /#secret=([0-9A-Za-z]+)/.exec(v);
      if (m) v = m[1];
      if (!/^[0-9A-Za-z]{8,256}$/.test(v)) {
        document.getElementById('auth-msg').textContent =
          'That does not look like a secret: expected the hex digits after "secret:".';
        return;
      }
      store(v);
      input.value = '';
      SG.authFailed = false;
      document.getElementById('auth').hidden = true;
      start();
    });
    SG.takeSecret();
    if (SG.secret()) start();
    else
      SG.needAuth(
        'Paste the secret your node printed at start (the "secret:" line), or open the "ui:" link it printed.'
      );
  };

  // One API call. Resolves to {status, ok, data}; throws (err.network =
  // true) when the node cannot be reached.
  SG.api = async function (method, path, body, timeoutMs) {
    const headers = { Authorization: 'Bearer ' + SG.secret(), Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', signal: AbortSignal.timeout(timeoutMs || 15000) };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(SG.url(path), init);
    } catch (e) {
      const err = new Error('cannot reach the node (' + e.message + ')');
      err.network = true;
      throw err;
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.status === 401 && !SG.authFailed) SG.needAuth(REFUSED);
    return { status: res.status, ok: res.ok, data };
  };

  // The error text of an API answer.
  SG.errText = function (r) {
    const e = r && r.data && r.data.error;
    return 'HTTP ' + r.status + (e ? ': ' + e : '');
  };

  // Reads a server-sent-events stream over fetch until it ends, fails or
  // stays silent for idleMs (the node sends a keep-alive every 15 s).
  // onEvent(type, parsedData); onOpen() once the answer is 200.
  SG.stream = async function (path, onEvent, onOpen, idleMs) {
    const ctl = new AbortController();
    let last = Date.now();
    const idle = setInterval(() => {
      if (Date.now() - last > (idleMs || 45000)) ctl.abort();
    }, 1000);
    try {
      const res = await fetch(SG.url(path), {
        headers: { Authorization: 'Bearer ' + SG.secret(), Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: ctl.signal,
      });
      if (res.status === 401) {
        if (!SG.authFailed) SG.needAuth(REFUSED);
        const e = new Error('401');
        e.auth = true;
        throw e;
      }
      if (!res.ok || !res.body) throw new Error('events: HTTP ' + res.status);
      if (onOpen) onOpen();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let type = '';
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        last = Date.now();
        buf += value;
        let i;
        while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
          // A lone \r at the end may be half of a \r\n: wait for more.
          if (buf[i] === '\r' && i === buf.length - 1) break;
          const line = buf.slice(0, i);
          buf = buf.slice(i + (buf.startsWith('\r\n', i) ? 2 : 1));
          if (line === '') {
            if (data.length) {
              let parsed = null;
              try {
                parsed = JSON.parse(data.join('\n'));
              } catch (e) {
                parsed = null;
              }
              if (parsed !== null) onEvent(type || 'message', parsed);
            }
            type = '';
            data = [];
            continue;
          }
          if (line[0] === ':') continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? '' : line.slice(c + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'event') type = val;
          else if (field === 'data') data.push(val);
        }
      }
    } finally {
      clearInterval(idle);
      ctl.abort();
    }
  };

  const pad = (n) => String(n).padStart(2, '0');
  // RFC 3339 -> {text, title}: "HH:MM:SS" today, else "YYYY-MM-DD HH:MM".
  SG.fmtTime = function (s) {
    const d = new Date(s);
    if (!s || isNaN(d.getTime())) return { text: s ? String(s) : '', title: '' };
    const hms = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    const day = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
    const today = d.toDateString() === new Date().toDateString();
    return { text: today ? hms : day + ' ' + hms.slice(0, 5), title: day + ' ' + hms + ' (' + s + ')' };
  };

  // Milliseconds -> "m:ss" (or "h:mm:ss").
  SG.fmtDur = function (ms) {
    const t = Math.max(0, Math.round((Number(ms) || 0) / 1000));
    const h = Math.floor(t / 3600);
    const m = Math.floor(t / 60) % 60;
    return (h ? h + ':' + pad(m) : String(m)) + ':' + pad(t % 60);
  };

  SG.fmtMs = (v) => (typeof v === 'number' ? (v < 10 ? v.toFixed(2) : v.toFixed(0)) + ' ms' : '–');
})();
