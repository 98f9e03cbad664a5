// The chat UI: conversations, messages with live updates, composer, edit
// and delete, peers, settings. Everything from the API is written as text.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const el = SG.el;
  const S = {
    user: null,
    webUrl: null,
    conv: 'general',
    convs: new Map(), // id -> conversation
    unread: new Set(),
    msgs: new Map(), // id -> {m, li}
    hasMore: false,
    editing: null, // id of the message being edited
    warnedAt: 0, // when the composer last said a post waits in the outbox
    started: false,
    fetchDown: false,
    streamDown: false,
    gen: 0, // bumped on every conversation switch or reload
    staged: [], // files to send: {name, size, progress, att, error, li}
    blobs: new Map(), // sha256 -> Promise of an object URL (previews)
  };

  // ---- connection state -------------------------------------------------
  function showOffline() {
    const b = $('offline');
    b.hidden = !(S.fetchDown || S.streamDown);
    b.textContent = S.fetchDown
      ? 'Offline: cannot reach the node at ' + location.host + '. Retrying…'
      : 'Live updates interrupted: reconnecting…';
  }
  // An API call that records whether the node answered. Null when not.
  async function call(method, path, body) {
    if (SG.authFailed) return null;
    try {
      const r = await SG.api(method, path, body);
      if (S.fetchDown) {
        S.fetchDown = false;
        showOffline();
      }
      return r;
    } catch (e) {
      S.fetchDown = true;
      showOffline();
      return null;
    }
  }

  // ---- status ---------------------------------------------------------
  // Runs f unless its previous run is still waiting for the node.
  function single(f) {
    let busy = false;
    return async () => {
      if (busy) return;
      busy = true;
      try {
        await f();
      } finally {
        busy = false;
      }
    };
  }

  const pollStatus = single(async () => {
    const asked = Date.now();
    const r = await call('GET', '/status');
    if (!r || !r.ok || !r.data) return;
    const s = r.data;
    const c = s.consensus || {};
    const web = SG.safeHref(s.repository && s.repository.web_url);
    const webUrl = web ? web.replace(/\/+$/, '') : null;
    if (webUrl !== S.webUrl || s.user !== S.user) {
      S.webUrl = webUrl;
      S.user = s.user;
      for (const [id, x] of S.msgs) if (S.editing !== id) fill(x.li, x.m);
    }
    $('node-info').textContent =
      (s.user || '?') + ' · node ' + s.node_id + ' · ' + (c.state || '?') + ' · term ' + (c.term ?? '?') +
      (s.repository && s.repository.spec ? ' · ' + s.repository.spec : '');
    // No leader reachable: the node says so (raft may keep naming a dead
    // leader while no election can win), or posts of this node wait in
    // its outbox.
    const noLeader = s.leader_reachable === false || c.leader == null || (c.outbox_len || 0) > 0;
    $('no-leader').hidden = !noLeader;
    // The composer's "kept in the outbox" warning ends with the wait (as
    // a status asked for after the warning tells).
    const cs = $('composer-status');
    if (!noLeader && cs.classList.contains('warn') && asked > S.warnedAt) {
      cs.textContent = '';
      cs.title = '';
      cs.className = 'msg';
    }
    // The room's group re-formed in the last ten minutes: messages held
    // apart meanwhile were proposed again and may have moved later.
    const rf = s.membership && s.membership.reformed;
    const recent = rf && Date.now() - rf.at_ms < 600000;
    $('reformed').hidden = !recent;
    if (recent) {
      $('reformed').textContent = 'The room re-formed its group (epoch ' + rf.epoch + ') after ' +
        'losing touch with some of its nodes. Nothing was lost: messages sent meanwhile may ' +
        'appear later in the conversation than where they were first shown.';
    }
    const cu = s.catch_up;
    const catching = cu && cu.done === false;
    $('catchup').hidden = !catching;
    if (catching) {
      $('catchup-text').textContent = 'catching up: ' + cu.applied_index + ' / ' + cu.target_index;
      const p = $('catchup-progress');
      p.max = Math.max(1, cu.target_index || 0);
      p.value = Math.min(p.max, cu.applied_index || 0);
    }
  });

  // ---- peers ----------------------------------------------------------
  // One row per peer, kept from poll to poll so its Call button keeps
  // the focus.
  const peerRows = new Map(); // node_id -> {tr, cells, btn}
  const noPeers = el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'no peers' }));
  const pollPeers = single(async () => {
    const r = await call('GET', '/peers');
    if (!r || !r.ok || !r.data) return;
    const peers = r.data.peers || [];
    if (window.SGCall) SGCall.setPeers(peers);
    const body = $('peers-body');
    const seen = new Set();
    let prev = null;
    if (peers.length) noPeers.remove();
    for (const p of peers) {
      seen.add(p.node_id);
      let x = peerRows.get(p.node_id);
      if (!x) {
        const id = p.node_id;
        const btn = el('button', {
          type: 'button', class: 'call-peer', 'data-node': id,
          onclick: () => window.SGCall && SGCall.start(S.conv, [id]),
        }, 'Call');
        x = { tr: el('tr'), cells: [el('td'), el('td'), el('td'), el('td')], btn };
        x.tr.append(...x.cells, el('td', {}, btn));
        peerRows.set(id, x);
      }
      x.tr.className = 'peer-' + p.state;
      const texts = [p.user ?? '?', p.node_id,
        p.state + (p.role ? ' · ' + p.role : '') + (p.path ? ' · via ' + p.path : ''), SG.fmtMs(p.rtt_ms)];
      x.cells.forEach((c, i) => {
        if (c.textContent !== String(texts[i])) c.textContent = String(texts[i]);
      });
      x.btn.setAttribute('aria-label', 'Start call with ' + (p.user ?? '?'));
      const at = prev ? prev.nextSibling : body.firstChild;
      if (at !== x.tr) body.insertBefore(x.tr, at);
      prev = x.tr;
    }
    for (const [id, x] of peerRows)
      if (!seen.has(id)) {
        x.tr.remove();
        peerRows.delete(id);
      }
    if (!peers.length) body.replaceChildren(noPeers);
  });

  // ---- conversations --------------------------------------------------
  function renderConvs() {
    if (!S.convs.has('general')) S.convs.set('general', { id: 'general', title: 'general' });
    const items = [...S.convs.values()].map((c) => {
      const unread = S.unread.has(c.id);
      const b = el('button', {
        type: 'button',
        class: 'conv' + (c.id === S.conv ? ' current' : '') + (unread ? ' unread' : ''),
        'aria-current': c.id === S.conv ? 'true' : null,
        'data-conv': c.id,
        title: c.title && c.title !== c.id ? c.id : null,
        onclick: () => switchConv(c.id),
      }, c.title || c.id);
      if (unread) b.append(el('span', { class: 'badge', text: 'new' }));
      return el('li', {}, b);
    });
    $('conversations').replaceChildren(...items);
    const cur = S.convs.get(S.conv);
    $('conv-title').textContent = cur ? cur.title || cur.id : S.conv;
  }
  async function loadConvs() {
    const r = await call('GET', '/conversations');
    if (!r || !r.ok || !r.data) return;
    for (const c of r.data.conversations || []) S.convs.set(c.id, c);
    renderConvs();
  }
  function switchConv(id) {
    if (id === S.conv) return;
    S.conv = id;
    if (window.SGCall) SGCall.setConversation(id);
    S.unread.delete(id);
    renderConvs();
    reloadMessages();
    $('composer').focus();
  }
  async function createConv(ev) {
    ev.preventDefault();
    const id = $('new-conv-id').value.trim();
    const title = $('new-conv-title').value.trim();
    const msg = $('new-conv-msg');
    if (!id) {
      msg.textContent = 'Give the conversation an id.';
      return;
    }
    msg.textContent = 'creating…';
    const r = await call('POST', '/conversations', title ? { id, title } : { id });
    if (!r) return void (msg.textContent = 'The node cannot be reached.');
    if (r.status === 409) return void (msg.textContent = 'A conversation "' + id + '" exists already.');
    if (!r.ok) return void (msg.textContent = 'Not created: ' + SG.errText(r));
    const c = (r.data && r.data.conversation) || { id, title };
    S.convs.set(c.id, c);
    $('new-conv-id').value = '';
    $('new-conv-title').value = '';
    msg.textContent = 'Created.';
    S.conv = '';
    switchConv(c.id);
  }

  // ---- messages -------------------------------------------------------
  const REF =
    /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}])|(?:([A-Za-z0-9][A-Za-z0-9-]{0,38})\/([A-Za-z0-9._-]{1,100}))?#(\d{1,10})\b/g;
  // Writes text into node, with http(s) URLs and (in a GitHub room)
  // issue references as links: text nodes and <a> elements only.
  function linkify(node, text) {
    let last = 0;
    let m;
    REF.lastIndex = 0;
    while ((m = REF.exec(text))) {
      let href = null;
      const prev = m.index > 0 ? text[m.index - 1] : '';
      if (m[1]) href = SG.safeHref(m[1]);
      else if (S.webUrl && !/[\w/#&]/.test(prev))
        href = m[2]
          ? 'https://github.com/' + m[2] + '/' + m[3] + '/issues/' + m[4]
          : S.webUrl + '/issues/' + m[4];
      if (!href) continue;
      if (m.index > last) node.append(text.slice(last, m.index));
      node.append(el('a', { href, target: '_blank', rel: 'noopener noreferrer', text: m[0] }));
      last = m.index + m[0].length;
    }
    if (last < text.length) node.append(text.slice(last));
  }

  function syncState(m) {
    if (m.index == null) return 'pending';
    return m.sync_state;
  }
  function syncEl(m) {
    const st = syncState(m);
    const s = el('span', { class: 'sync sync-' + st });
    if (st === 'synchronized') {
      s.append('in repository');
      const h = m.git_hash ? String(m.git_hash).slice(0, 7) : '';
      const href = SG.safeHref(m.commit_url);
      if (href) s.append(' ', el('a', { href, target: '_blank', rel: 'noopener noreferrer', title: m.git_hash, text: h || 'commit' }));
      else if (h) s.append(' ', el('code', { title: m.git_hash, text: h }));
    } else {
      s.append(st === 'pending' ? 'pending' : 'committed');
      s.title = st === 'pending' ? 'waiting for a leader (outbox) or not applied yet' : 'applied; not in the repository yet';
    }
    return s;
  }

  // ---- attachments ----------------------------------------------------
  // Media types shown as a picture. Anything else is a file card with a
  // download button; nothing from a file is ever run or parsed as markup.
  const PREVIEW = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
  const PREVIEW_MAX = 20 * 1024 * 1024;

  function fmtSize(n) {
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1024 / 1024).toFixed(1) + ' MiB';
  }

  // The file's bytes as an object URL of type `type` (the node serves
  // every file as application/octet-stream).
  async function fileUrl(a, type) {
    const r = await fetch(SG.url(a.url), {
      headers: { Authorization: 'Bearer ' + SG.secret() },
      cache: 'default',
    });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const b = await r.blob();
    return URL.createObjectURL(new Blob([b], { type }));
  }

  function preview(a) {
    if (!S.blobs.has(a.sha256)) {
      const p = fileUrl(a, a.media_type);
      p.catch(() => S.blobs.delete(a.sha256));
      S.blobs.set(a.sha256, p);
    }
    return S.blobs.get(a.sha256);
  }

  async function download(a, btn) {
    btn.disabled = true;
    btn.textContent = 'Downloading…';
    try {
      const u = await fileUrl(a, 'application/octet-stream');
      const link = el('a', { href: u, download: a.name });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(u), 60000);
      btn.textContent = 'Download';
    } catch (e) {
      btn.textContent = 'Download failed (' + e.message + ')';
    } finally {
      btn.disabled = false;
    }
  }

  function fileCard(a) {
    const where = a.stored ? 'stored in the room' : a.local ? 'on this node' : 'on a peer';
    const card = el('div', { class: 'file-card', 'data-sha256': a.sha256 });
    if (PREVIEW.has(a.media_type) && a.size <= PREVIEW_MAX) {
      const img = el('img', { class: 'preview', alt: a.name });
      card.append(img);
      preview(a).then((u) => {
        img.src = u;
      }, () => {
        img.replaceWith(el('div', { class: 'about', text: 'preview unavailable' }));
      });
    }
    const btn = el('button', { type: 'button', class: 'download' }, 'Download');
    btn.addEventListener('click', () => download(a, btn));
    card.append(
      el('div', { class: 'name', text: a.name }),
      el('div', { class: 'about', text: fmtSize(a.size) + ' · ' + a.media_type + ' · ' + where }),
      btn);
    return card;
  }

  function renderStaged() {
    const ul = $('staged');
    ul.replaceChildren();
    for (const f of S.staged) {
      const li = el('li', { class: f.error ? 'error' : null });
      li.append(el('span', { class: 'name', text: f.name }));
      if (f.error) li.append(el('span', { text: f.error }));
      else if (!f.att) li.append(el('progress', { max: String(f.size || 1), value: String(f.progress) }));
      else li.append(el('span', { class: 'muted', text: fmtSize(f.size) }));
      const rm = el('button', { type: 'button', 'aria-label': 'Remove ' + f.name }, '×');
      rm.addEventListener('click', () => {
        if (f.xhr) f.xhr.abort();
        S.staged = S.staged.filter((x) => x !== f);
        renderStaged();
      });
      li.append(rm);
      ul.append(li);
    }
    ul.hidden = S.staged.length === 0;
  }

  // A media type the node accepts (type/subtype of token characters).
  function mediaType(t) {
    return /^[A-Za-z0-9!#$&^_.+-]+\/[A-Za-z0-9!#$&^_.+-]+$/.test(t || '') ? t : 'application/octet-stream';
  }

  // Uploads files at once (XHR: fetch reports no upload progress).
  function addFiles(list) {
    for (const file of list) {
      if (S.staged.length >= 10) {
        $('composer-status').textContent = 'At most 10 files per message.';
        break;
      }
      const name = (file.name || 'pasted').slice(0, 255);
      const f = { name, size: file.size, progress: 0, att: null, error: null, xhr: null };
      S.staged.push(f);
      const x = new XMLHttpRequest();
      f.xhr = x;
      x.open('POST', SG.url('/attachments?name=' + encodeURIComponent(name)));
      x.setRequestHeader('Authorization', 'Bearer ' + SG.secret());
      x.setRequestHeader('Content-Type', mediaType(file.type));
      x.upload.onprogress = (e) => {
        f.progress = e.loaded;
        renderStaged();
      };
      x.onload = () => {
        f.xhr = null;
        let d = null;
        try {
          d = JSON.parse(x.responseText);
        } catch (e) {
          d = null;
        }
        if (x.status === 201 && d && d.sha256) f.att = d;
        else f.error = (x.status === 413 ? 'too large: ' : 'not uploaded: ') + ((d && d.error) || 'HTTP ' + x.status);
        renderStaged();
      };
      x.onerror = () => {
        f.xhr = null;
        f.error = 'not uploaded: the node cannot be reached';
        renderStaged();
      };
      x.send(file);
    }
    renderStaged();
  }

  // The line a call entry shows (see the contract's "Messages").
  function callText(m) {
    const c = m.call;
    const who = m.sender ?? '?';
    const all = Array.isArray(c.participants) ? c.participants : [];
    const rest = all.filter((u) => u !== who);
    switch (c.event) {
      case 'started': return who + ' started a call' + (rest.length ? ' with ' + rest.join(', ') : '');
      case 'joined': return who + ' joined the call';
      case 'left': return who + ' left the call';
      case 'ended': return 'call ended after ' + SG.fmtDur(c.duration_ms) + (all.length ? ' (' + all.join(', ') + ')' : '');
      case 'declined': return (rest.length ? rest.join(', ') : who) + ' declined the call';
      case 'missed': return 'missed call from ' + who;
      case 'cancelled': return who + ' cancelled the call';
      default: return 'call: ' + String(c.event);
    }
  }

  function fill(li, m) {
    li.replaceChildren();
    li.dataset.index = m.index == null ? '' : String(m.index);
    li.classList.toggle('call-line', !!m.call);
    if (m.call) {
      li.classList.remove('own');
      const t = SG.fmtTime(m.created_at);
      li.append(el('span', { class: 'call-text', text: callText(m) }), ' ',
        el('time', { class: 'time', datetime: m.created_at || null, title: t.title || null, text: t.text }));
      return;
    }
    li.classList.toggle('own', m.sender === S.user);
    li.classList.toggle('deleted', !!m.deleted);
    const t = SG.fmtTime(m.created_at);
    li.append(el('div', { class: 'meta' },
      el('span', { class: 'sender', text: m.sender ?? '?' }),
      el('time', { class: 'time', datetime: m.created_at || null, title: t.title || null, text: t.text }),
      m.edited && !m.deleted ? el('span', { class: 'edited', text: '(edited)' }) : null,
      m.verified && !m.deleted
        ? el('span', { class: 'verified', title: "signed with the sender's SSH key, checked against the keys of " + (m.sender ?? '?'), text: '✓ verified' })
        : null,
      syncEl(m)));
    const content = el('div', { class: 'content' });
    if (m.deleted) {
      content.textContent = '(deleted)';
      content.classList.add('muted');
    } else linkify(content, String(m.content ?? ''));
    li.append(content);
    if (!m.deleted && Array.isArray(m.attachments) && m.attachments.length)
      li.append(el('div', { class: 'files' }, ...m.attachments.map(fileCard)));
    if (S.user != null && m.sender === S.user && !m.deleted && m.index != null) {
      li.append(el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'edit', 'aria-label': 'Edit this message', onclick: () => startEdit(m.id) }, 'Edit'),
        el('button', { type: 'button', class: 'delete', 'aria-label': 'Delete this message', onclick: () => del(m.id) }, 'Delete')));
    }
  }

  function nearBottom() {
    const l = $('messages');
    return l.scrollHeight - l.scrollTop - l.clientHeight < 40;
  }
  function toBottom() {
    const l = $('messages');
    l.scrollTop = l.scrollHeight;
  }
  // Puts li into the list in index order (pending ones at the end).
  function place(li, idx) {
    const list = $('messages');
    let before = null;
    if (idx != null) {
      const kids = list.children;
      const lastIdx = (c) => (c.dataset.index === '' ? Infinity : +c.dataset.index);
      const tail = kids.length ? kids[kids.length - 1] : null;
      if (!tail || (tail !== li && lastIdx(tail) < idx)) before = null;
      else for (const c of kids) if (c !== li && lastIdx(c) > idx) { before = c; break; }
    }
    if (li.nextSibling !== before || li.parentNode !== list) list.insertBefore(li, before);
  }
  function minIndex() {
    let min = null;
    for (const { m } of S.msgs.values()) if (m.index != null && (min == null || m.index < min)) min = m.index;
    return min;
  }
  // Inserts or replaces a message (by id) in the view.
  function upsert(m) {
    if (!m || !m.id) return;
    // Without last_change_index the index of an edit or delete is unknown:
    // such a message is not marked synchronized by a later `synced`.
    if ((m.edited || m.deleted) && m.last_change_index == null && syncState(m) !== 'synchronized') m.changeUnknown = true;
    const x = S.msgs.get(m.id);
    if (x) {
      // The sync state of one version never goes back (an answer may
      // trail an event); an edit or delete starts again from committed.
      const same = m.index === x.m.index && m.updated_at === x.m.updated_at && m.deleted === x.m.deleted;
      if (same && syncState(x.m) === 'synchronized' && syncState(m) !== 'synchronized')
        for (const k of ['sync_state', 'git_hash', 'commit_url']) m[k] = x.m[k];
      x.m = m;
      if (S.editing === m.id) x.stale = true;
      else fill(x.li, m);
      place(x.li, m.index);
      return;
    }
    const li = el('li', { class: 'message', 'data-id': m.id });
    fill(li, m);
    S.msgs.set(m.id, { m, li });
    place(li, m.index);
  }
  function onMessageEvent(m) {
    if (m.conversation !== S.conv) {
      if (!m.edited && !m.deleted) {
        S.unread.add(m.conversation);
        renderConvs();
      }
      return;
    }
    // An edit of a message older than the loaded page is not shown.
    const min = minIndex();
    if (!S.msgs.has(m.id) && S.hasMore && min != null && m.index < min) return;
    const stick = nearBottom();
    upsert(m);
    if (stick) toBottom();
  }
  function onSynced(d) {
    for (const x of S.msgs.values()) {
      const m = x.m;
      // The index of the message's latest change (post, edit or delete).
      const at = m.last_change_index ?? m.index;
      // Only an applied change can be in the repository: a pending post
      // (its queued answer says index 0) waits for its message event.
      if (at == null || m.changeUnknown || at > d.up_to_index || syncState(m) !== 'committed') continue;
      Object.assign(m, { sync_state: 'synchronized', git_hash: d.git_hash, commit_url: d.commit_url });
      const old = x.li.querySelector('.sync');
      if (old) old.replaceWith(syncEl(m));
      // The committer stores a batch's files before it commits the batch.
      if (Array.isArray(m.attachments) && m.attachments.length) {
        for (const a of m.attachments) a.stored = true;
        const files = x.li.querySelector('.files');
        if (files) files.replaceWith(el('div', { class: 'files' }, ...m.attachments.map(fileCard)));
      }
    }
  }

  async function loadPage(before) {
    const gen = S.gen;
    const conv = S.conv;
    const q = new URLSearchParams({ conversation: conv, limit: '50' });
    if (before != null) q.set('before', String(before));
    const r = await call('GET', '/messages?' + q);
    if (gen !== S.gen) return false;
    if (!r || !r.ok || !r.data) {
      if (r && !r.ok) $('composer-status').textContent = 'Cannot load messages: ' + SG.errText(r);
      return false;
    }
    S.hasMore = !!r.data.has_more;
    $('load-older').hidden = !S.hasMore;
    for (const m of r.data.messages || []) upsert(m);
    return true;
  }
  async function reloadMessages() {
    S.gen++;
    S.msgs.clear();
    S.editing = null;
    S.hasMore = false;
    $('messages').replaceChildren();
    $('load-older').hidden = true;
    const gen = S.gen;
    if (!(await loadPage(null))) return;
    // Posts of this node still waiting for a leader.
    const r = await call('GET', '/outbox');
    if (gen === S.gen && r && r.ok && r.data)
      for (const p of r.data.pending || [])
        if (p.conversation === S.conv && !S.msgs.has(p.id)) upsert(Object.assign({ index: null, sync_state: 'pending' }, p));
    toBottom();
  }
  async function loadOlder() {
    const min = minIndex();
    if (min == null) return;
    const l = $('messages');
    const h = l.scrollHeight;
    const b = $('load-older');
    b.disabled = true;
    await loadPage(min);
    b.disabled = false;
    l.scrollTop += l.scrollHeight - h;
  }

  // ---- composer, edit, delete -----------------------------------------
  async function send(ev) {
    if (ev) ev.preventDefault();
    const box = $('composer');
    const status = $('composer-status');
    if (S.staged.some((f) => !f.att && !f.error)) {
      status.textContent = 'Wait for the files to finish uploading.';
      return;
    }
    const files = S.staged.filter((f) => f.att);
    const attachments = files.map((f) => f.att);
    const content = box.value.trim() ? box.value : files.map((f) => f.name).join(', ');
    if (!content.trim()) return;
    const conv = S.conv;
    status.textContent = '';
    status.title = '';
    status.className = 'msg';
    // Without a reachable leader the node may take seconds to answer.
    const slow = setTimeout(() => {
      status.textContent = 'Sending…';
    }, 500);
    const body = { content, conversation: conv };
    if (attachments.length) body.attachments = attachments;
    const r = await call('POST', '/messages', body);
    clearTimeout(slow);
    if (status.textContent === 'Sending…') status.textContent = '';
    if (!r) {
      status.textContent = 'Not sent: the node cannot be reached.';
      status.className = 'msg error';
      return;
    }
    const d = r.data || {};
    if (r.ok || (r.status === 503 && d.status === 'queued')) {
      S.staged = S.staged.filter((f) => !files.includes(f));
      renderStaged();
    }
    if (r.ok) {
      if (box.value === content) box.value = '';
      if (d.message && conv === S.conv) {
        const stick = nearBottom();
        upsert(d.message);
        if (stick) toBottom();
      }
      return;
    }
    if (r.status === 503 && d.status === 'queued') {
      if (box.value === content) box.value = '';
      outboxWarning(
        'No leader reachable: kept in the outbox (' + (d.outbox_len ?? '?') + ' waiting) and sent when a leader is back.',
        d);
      if (conv === S.conv && d.message_id)
        upsert(Object.assign(
          { id: d.message_id, conversation: conv, sender: S.user, content, created_at: new Date().toISOString() },
          d.message || {}, { index: null, last_change_index: null, sync_state: 'pending' }));
      toBottom();
      return;
    }
    status.textContent =
      (r.status === 413 ? 'Too large: ' : 'Not sent: ') + SG.errText(r);
    status.className = 'msg error';
  }

  function startEdit(id) {
    const x = S.msgs.get(id);
    if (!x || S.editing) return;
    S.editing = id;
    const content = x.li.querySelector('.content');
    const actions = x.li.querySelector('.actions');
    const ta = el('textarea', { class: 'edit-box', 'aria-label': 'Edit message', rows: 2 });
    ta.value = x.m.content;
    const err = el('p', { class: 'msg', role: 'status' });
    const done = (focusEdit) => {
      S.editing = null;
      const cur = S.msgs.get(id);
      if (!cur) return;
      cur.stale = false;
      fill(cur.li, cur.m);
      if (focusEdit) {
        const b = cur.li.querySelector('button.edit');
        if (b) b.focus();
      }
    };
    const save = async () => {
      if (ta.value === x.m.content) return done(true);
      err.textContent = 'saving…';
      const r = await call('PATCH', '/messages/' + encodeURIComponent(id), { content: ta.value });
      if (!r) return void (err.textContent = 'Not saved: the node cannot be reached.');
      if (r.status === 503 && r.data && r.data.status === 'queued') {
        // Kept in the outbox: it applies when a leader is reachable, and
        // the event stream then brings the new text.
        done(true);
        queuedNote('The edit', r.data);
        return;
      }
      if (!r.ok) return void (err.textContent = 'Not saved: ' + SG.errText(r));
      if (r.data && r.data.message) S.msgs.get(id).m = r.data.message;
      done(true);
    };
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        done(true);
      } else if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        save();
      }
    });
    const form = el('div', { class: 'edit-form' }, ta,
      el('button', { type: 'button', onclick: save }, 'Save'),
      el('button', { type: 'button', onclick: () => done(true) }, 'Cancel'), err);
    content.replaceWith(form);
    if (actions) actions.remove();
    ta.focus();
  }

  /** A change kept in the outbox until a leader is reachable. */
  function queuedNote(what, d) {
    outboxWarning(what + ' waits in the outbox: no leader is reachable; it applies when one is.', d);
  }
  /** The composer's warning for a request answered `queued`; the node's reason as its tooltip. */
  function outboxWarning(text, d) {
    const status = $('composer-status');
    status.textContent = text;
    status.title = (d && d.reason) || '';
    status.className = 'msg warn';
    S.warnedAt = Date.now();
  }

  async function del(id) {
    const x = S.msgs.get(id);
    if (!x || !window.confirm('Delete this message?')) return;
    const r = await call('DELETE', '/messages/' + encodeURIComponent(id));
    const status = $('composer-status');
    if (!r) status.textContent = 'Not deleted: the node cannot be reached.';
    else if (r.status === 503 && r.data && r.data.status === 'queued') queuedNote('The delete', r.data);
    else if (!r.ok) status.textContent = 'Not deleted: ' + SG.errText(r);
    else if (r.data && r.data.message) {
      upsert(r.data.message);
      // The focused Delete button is gone: keep the keyboard in the list.
      if (!document.activeElement || document.activeElement === document.body) $('messages').focus();
    }
  }

  // ---- settings -------------------------------------------------------
  async function loadSettings() {
    const r = await call('GET', '/settings');
    if (!r || !r.ok || !r.data) return;
    showSettings(r.data);
  }
  /** Fills the form (unless it is being edited) and names this node's overrides. */
  function showSettings(d) {
    const form = $('settings-form');
    if (!form.contains(document.activeElement)) {
      const room = d.room || {};
      $('commit-interval').value = room.commit_interval_secs ?? d.commit_interval_secs ?? '';
      $('voters').value = String(room.voters ?? d.voters ?? '');
      // Only what the user changes is sent.
      S.settingsShown = { ci: $('commit-interval').value, voters: $('voters').value };
    }
    const o = d.node_overrides || {};
    const own = [];
    if (o.commit_interval_secs != null) own.push('a commit interval of ' + o.commit_interval_secs + ' s');
    if (o.voters != null) own.push(o.voters + ' voters');
    $('settings-note').textContent = own.length
      ? 'This node was started with ' + own.join(' and ') + ', which it keeps when it leads.'
      : '';
  }
  async function saveSettings(ev) {
    ev.preventDefault();
    const body = {};
    const ci = $('commit-interval').value;
    const v = $('voters').value;
    const shown = S.settingsShown || {};
    if (ci !== '' && ci !== shown.ci) body.commit_interval_secs = Number(ci);
    if (v !== '' && v !== shown.voters) body.voters = Number(v);
    const msg = $('settings-msg');
    if (!Object.keys(body).length) {
      msg.textContent = 'Nothing changed.';
      return;
    }
    const r = await call('PUT', '/settings', body);
    if (!r) msg.textContent = 'Not saved: the node cannot be reached.';
    else if (r.status === 503 && r.data && r.data.status === 'queued')
      msg.textContent = 'Kept in the outbox: no leader is reachable; the room takes it when one is.';
    else if (!r.ok) msg.textContent = 'Not saved: ' + SG.errText(r);
    else {
      msg.textContent = 'Saved.';
      S.settingsShown = { ci, voters: v };
      if (r.data) showSettings(r.data);
    }
  }

  // ---- live events ----------------------------------------------------
  function onEvent(type, d) {
    if (type === 'message') onMessageEvent(d);
    else if (type === 'synced') onSynced(d);
    else if (type === 'settings') loadSettings();
    else if (type === 'conversation') {
      if (d && d.id) {
        S.convs.set(d.id, d);
        renderConvs();
      }
    } else if (type === 'lagged') resync();
    else if ((type === 'call' || type === 'call_signal') && window.SGCall) SGCall.onEvent(type, d);
  }
  function resync() {
    loadConvs();
    reloadMessages();
    if (window.SGCall) SGCall.resume();
  }
  async function eventsLoop() {
    let delay = 500;
    let first = true;
    for (;;) {
      if (SG.authFailed) {
        await SG.sleep(500);
        continue;
      }
      try {
        await SG.stream('/events', onEvent, () => {
          // A hook for tests and styles: the live stream is open.
          document.documentElement.dataset.events = 'open';
          delay = 500;
          S.streamDown = false;
          showOffline();
          // Anything may have happened while the stream was down.
          if (!first) resync();
          first = false;
        });
      } catch (e) {
        /* reconnect below */
      }
      document.documentElement.dataset.events = 'down';
      if (!SG.authFailed) {
        S.streamDown = true;
        showOffline();
      }
      await SG.sleep(delay * (1 + Math.random() / 2));
      delay = Math.min(delay * 2, 10000);
    }
  }

  function start() {
    $('dashboard-link').setAttribute('href', SG.pageLink('/dashboard'));
    if (!S.started) {
      S.started = true;
      setInterval(pollStatus, 2000);
      setInterval(pollPeers, 2000);
      setInterval(() => {
        if (S.fetchDown) loadConvs();
      }, 5000);
      eventsLoop();
    }
    // Status first: it names this user (for the edit buttons).
    pollStatus().then(() => {
      loadConvs();
      reloadMessages();
    });
    pollPeers();
    loadSettings();
    if (window.SGCall) SGCall.resume();
  }

  function init() {
    renderConvs();
    if (window.SGCall) SGCall.setConversation(S.conv);
    $('composer-form').addEventListener('submit', send);
    $('composer').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    });
    $('attach').addEventListener('click', () => $('attach-input').click());
    $('attach-input').addEventListener('change', (e) => {
      addFiles(Array.from(e.target.files || []));
      e.target.value = '';
    });
    $('composer').addEventListener('paste', (e) => {
      const files = Array.from((e.clipboardData && e.clipboardData.files) || []);
      if (files.length) {
        e.preventDefault();
        addFiles(files);
      }
    });
    const form = $('composer-form');
    form.addEventListener('dragover', (e) => {
      e.preventDefault();
      form.classList.add('dropping');
    });
    form.addEventListener('dragleave', () => form.classList.remove('dropping'));
    form.addEventListener('drop', (e) => {
      e.preventDefault();
      form.classList.remove('dropping');
      addFiles(Array.from((e.dataTransfer && e.dataTransfer.files) || []));
    });
    $('load-older').addEventListener('click', loadOlder);
    $('new-conv').addEventListener('submit', createConv);
    $('settings-form').addEventListener('submit', saveSettings);
    SG.initAuth(start);
  }
  init();
})();
