// The bachata demo page: a small chat on top of /bachata.js (clients/js).
// No framework, no build step. History is kept in localStorage per
// channel and device; the login in sessionStorage (so a reload, or leaving
// and coming back in the same tab, logs in again).

import { Bachata, State, newId } from '/bachata.js';

const LOGIN_KEY = 'bachata-demo:login';
const ACTIVE_KEY = 'bachata-demo:active';
const HISTORY = 200; // messages kept per conversation
const CONNECT_WAIT = 6_000; // how long an explicit login waits for the server

const $ = (id) => document.getElementById(id);

let client = null;
let me = null; // { mode, channel, device, token }
let store = null; // { convs: { key: conv } }
let active = null; // key of the open conversation
let connInfo = { state: State.CONNECTING };
let connTimer = null;

// ---- helpers ---------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'style') for (const [p, val] of Object.entries(v)) node.style.setProperty(p, val);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function bytes(s) {
  return new TextEncoder().encode(s).length;
}

function validName(s, max) {
  // eslint-disable-next-line no-control-regex
  return s.length > 0 && bytes(s) <= max && !/[\u0000-\u001f\u007f]/.test(s);
}

function jwtSubject(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''),
    );
    const claims = JSON.parse(json);
    return { sub: typeof claims.sub === 'string' ? claims.sub : null, device: claims.device ?? null };
  } catch {
    return { sub: null, device: null };
  }
}

function textOf(data) {
  if (data && typeof data === 'object' && typeof data.text === 'string') return data.text;
  if (typeof data === 'string') return data;
  return JSON.stringify(data);
}

function hue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });

// ---- storage ---------------------------------------------------------

function historyKey() {
  return `bachata-demo:v1:${me.channel}:${me.device ?? ''}`;
}

function loadStore() {
  try {
    const s = JSON.parse(localStorage.getItem(historyKey()));
    if (s && typeof s.convs === 'object') return s;
  } catch {
    // fall through: a fresh store
  }
  return { convs: {} };
}

let saveQueued = false;
function save() {
  if (saveQueued) return;
  saveQueued = true;
  queueMicrotask(() => {
    saveQueued = false;
    try {
      localStorage.setItem(historyKey(), JSON.stringify(store));
    } catch {
      // storage full or off: history lives for this page only
    }
  });
}

function convKey(kind, name) {
  return `${kind}:${name}`;
}

function ensureConv(kind, name) {
  const key = convKey(kind, name);
  store.convs[key] ??= { key, kind, name, messages: [], unread: 0, updated: Date.now() };
  return store.convs[key];
}

function findMine(id) {
  for (const conv of Object.values(store.convs)) {
    for (const rec of conv.messages) if (rec.mine && rec.id === id) return { conv, rec };
  }
  return null;
}

function push(conv, rec) {
  conv.messages.push(rec);
  if (conv.messages.length > HISTORY) conv.messages.splice(0, conv.messages.length - HISTORY);
  conv.updated = Date.now();
}

// ---- login -----------------------------------------------------------

let loginMode = 'name';

function setLoginMode(mode) {
  loginMode = mode;
  for (const tab of document.querySelectorAll('.tab')) {
    tab.setAttribute('aria-selected', String(tab.dataset.mode === mode));
  }
  $('field-channel').hidden = mode !== 'name';
  $('field-token').hidden = mode !== 'token';
}

function showLoginError(text) {
  $('login-error').textContent = text;
  $('login-error').hidden = !text;
}

async function onLoginSubmit(ev) {
  ev.preventDefault();
  showLoginError('');
  const device = $('login-device').value.trim();
  if (device && !validName(device, 64)) return showLoginError('A device is 1 to 64 bytes, no control characters.');
  let params;
  if (loginMode === 'name') {
    const channel = $('login-channel').value.trim();
    if (!validName(channel, 128)) return showLoginError('Type a name: 1 to 128 bytes, no control characters.');
    params = { mode: 'name', channel, device: device || null };
  } else {
    const token = $('login-token').value.trim();
    if (!token) return showLoginError('Paste a JWT.');
    const claims = jwtSubject(token);
    params = { mode: 'token', token, channel: claims.sub ?? 'me', device: device || claims.device || null };
  }
  const button = $('login-submit');
  button.disabled = true;
  button.textContent = 'Connecting…';
  try {
    start(params);
    await client.connect({ timeout: CONNECT_WAIT });
    sessionStorage.setItem(LOGIN_KEY, JSON.stringify(params));
    showApp();
  } catch {
    stop();
    showLoginError(
      params.mode === 'name'
        ? 'Could not connect. The server may be down, or it refuses anonymous names (then log in with a token).'
        : 'Could not connect. The server may be down, or it refused the token (expired? wrong key?).',
    );
  } finally {
    button.disabled = false;
    button.textContent = 'Log in';
  }
}

function showLogin() {
  $('app').hidden = true;
  $('login').hidden = false;
  setLoginMode(loginMode);
  (loginMode === 'name' ? $('login-channel') : $('login-token')).focus();
}

function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('me').textContent = me.device ? `${me.channel} · ${me.device}` : me.channel;
  $('me').title = me.device ? `channel ${me.channel}, device ${me.device}` : `channel ${me.channel}`;
  renderConvs();
  renderChat();
}

function logout() {
  sessionStorage.removeItem(LOGIN_KEY);
  sessionStorage.removeItem(ACTIVE_KEY);
  stop();
  active = null;
  showLogin();
}

// ---- the client ------------------------------------------------------

function start(params) {
  stop();
  me = params;
  store = loadStore();
  client = new Bachata({
    ...(params.mode === 'token' ? { token: params.token } : { channel: params.channel }),
    device: params.device ?? undefined,
    // A chat waits as long as it takes: a message stays "sending" and is
    // resent on every reconnect until the server stores it.
    storedTimeout: 0,
  });
  client.on('state', onState);
  client.on('message', onIncoming);
  client.on('stored', ({ id }) => setState(id, 'stored'));
  client.on('delivered', ({ id, from }) => setState(id, 'delivered', { from }));
  client.on('rejected', (err) => {
    if (err.id) setState(err.id, 'failed', { reason: err.reason, code: err.code });
  });
  client.on('error', (err) => console.debug('bachata:', err.message ?? err));
  client.connect();
  resendUnconfirmed();
}

function stop() {
  client?.close();
  client = null;
  clearInterval(connTimer);
  connTimer = null;
}

/** Messages that were still "sending" when the page went away go again (same id: no duplicates). */
function resendUnconfirmed() {
  for (const conv of Object.values(store.convs)) {
    for (const rec of conv.messages) {
      if (rec.mine && rec.state === 'sending') sendRecord(conv, rec);
    }
  }
}

function onState(info) {
  connInfo = { ...info, at: Date.now() };
  if (info.state === State.OPEN && client.ready?.channel && client.ready.channel !== me.channel) {
    // A token whose subject the page could not read: adopt the server's word.
    me = { ...me, channel: client.ready.channel, device: client.ready.device ?? me.device };
    store = loadStore();
    sessionStorage.setItem(LOGIN_KEY, JSON.stringify(me));
    showApp();
  }
  renderConn();
  clearInterval(connTimer);
  connTimer = info.state === State.CLOSED && info.retryIn ? setInterval(renderConn, 1000) : null;
}

function onIncoming(m) {
  const group = m.type === 'group' && typeof m.dest === 'string';
  const conv = ensureConv(group ? 'group' : 'user', group ? m.dest : (m.from ?? 'system'));
  if (m.id != null && conv.messages.some((r) => !r.mine && r.id === m.id && r.from === (m.from ?? null))) {
    return; // seen before this page load: delivery is at least once
  }
  push(conv, {
    id: m.id ?? null,
    mine: false,
    from: m.from ?? null,
    text: textOf(m.data),
    time: typeof m.time === 'number' ? m.time : Date.now(),
  });
  if (conv.key !== active || document.hidden) conv.unread += 1;
  save();
  renderConvs();
  if (conv.key === active) renderMessages();
}

const RANK = { failed: 0, sending: 1, stored: 2, delivered: 3 };

function setState(id, state, extra = {}) {
  const found = findMine(id);
  if (!found) return;
  const { conv, rec } = found;
  if (state === 'failed') {
    if (rec.state === 'stored' || rec.state === 'delivered') return;
    rec.reason = extra.reason || extra.code || 'refused';
    rec.code = extra.code ?? null;
  } else if (RANK[state] < RANK[rec.state] && rec.state !== 'failed') {
    return; // receipts only move forward
  }
  rec.state = state;
  if (state === 'delivered' && extra.from) {
    rec.to ??= [];
    if (!rec.to.includes(extra.from)) rec.to.push(extra.from);
  }
  save();
  if (conv.key === active) renderMessages();
  renderConvs();
}

function sendRecord(conv, rec) {
  const message = {
    id: rec.id,
    type: conv.kind === 'group' ? 'group' : 'direct',
    dest: conv.name,
    data: { text: rec.text },
  };
  const handle = client.send(message);
  handle.stored.catch((err) => {
    // `closed`: logged out or reloading; the message is resent next time.
    if (err.code !== 'closed') setState(rec.id, 'failed', { reason: err.reason, code: err.code });
  });
}

function onSend(ev) {
  ev.preventDefault();
  const input = $('text');
  const text = input.value.trim();
  if (!text || !active || !client) return;
  const conv = store.convs[active];
  const rec = {
    id: newId(),
    mine: true,
    from: me.channel,
    text,
    time: Date.now(),
    state: 'sending',
    to: [],
  };
  push(conv, rec);
  save();
  input.value = '';
  renderMessages(true);
  renderConvs();
  sendRecord(conv, rec);
}

function retry(conv, rec) {
  rec.state = 'sending';
  rec.reason = null;
  save();
  renderMessages();
  sendRecord(conv, rec);
}

async function joinGroup() {
  const conv = store.convs[active];
  if (!conv || conv.kind !== 'group') return;
  const url = `/api/groups/${encodeURIComponent(conv.name)}/members/${encodeURIComponent(me.channel)}`;
  try {
    const res = await fetch(url, { method: 'PUT', signal: AbortSignal.timeout(10_000) });
    if (res.ok) {
      conv.joined = true;
      save();
      note(`You are a member of #${conv.name}.`);
    } else {
      let reason = `${res.status}`;
      try {
        const body = await res.json();
        reason = body.reason || body.error || reason;
      } catch {
        // not JSON
      }
      note(`Could not join: ${reason}. Group members are managed by the application backend (HTTP API).`);
    }
  } catch (e) {
    note(`Could not join: ${e.message}`);
  }
}

function note(text) {
  $('chat-note').textContent = text;
  $('chat-note').hidden = !text;
}

// ---- rendering -------------------------------------------------------

function renderConn() {
  const button = $('conn');
  const { state, retryIn, at } = connInfo;
  button.dataset.state = state;
  let text;
  if (state === State.OPEN) text = 'Online';
  else if (state === State.CONNECTING) text = 'Connecting…';
  else if (retryIn) {
    const left = Math.max(0, Math.ceil((at + retryIn - Date.now()) / 1000));
    text = left > 0 ? `Offline · retry in ${left}s` : 'Offline';
  } else text = 'Offline';
  $('conn-text').textContent = text;
}

function avatar(conv) {
  return el('span', {
    class: `avatar ${conv.kind}`,
    style: { background: `hsl(${hue(conv.name)} 55% 50%)` },
    text: conv.kind === 'group' ? '#' : [...conv.name][0] ?? '?',
  });
}

function renderConvs() {
  const list = $('convs');
  const convs = Object.values(store.convs).sort((a, b) => b.updated - a.updated);
  list.replaceChildren(
    ...convs.map((conv) => {
      const last = conv.messages.at(-1);
      const preview = last ? `${last.mine ? 'You: ' : ''}${last.text}` : conv.kind === 'group' ? 'Group' : 'No messages yet';
      return el(
        'li',
        {},
        el(
          'button',
          {
            class: 'conv',
            type: 'button',
            'data-conv': conv.key,
            'aria-current': String(conv.key === active),
            onclick: () => open(conv.key),
          },
          avatar(conv),
          el('span', { class: 'conv-name', text: conv.kind === 'group' ? `#${conv.name}` : conv.name }),
          conv.unread ? el('span', { class: 'badge', text: String(conv.unread) }) : el('span'),
          el('span', { class: 'conv-last', text: preview }),
        ),
      );
    }),
  );
  $('convs-empty').hidden = convs.length > 0;
}

function open(key) {
  active = key;
  sessionStorage.setItem(ACTIVE_KEY, key);
  const conv = store.convs[key];
  if (conv) conv.unread = 0;
  save();
  note('');
  $('layout').dataset.view = 'chat';
  renderConvs();
  renderChat();
  $('text').focus();
}

function renderChat() {
  const conv = active ? store.convs[active] : null;
  $('chat').hidden = !conv;
  $('chat-empty').hidden = !!conv;
  if (!conv) return;
  $('chat-name').textContent = conv.kind === 'group' ? `#${conv.name}` : conv.name;
  $('chat-kind').textContent = conv.kind === 'group' ? 'group' : conv.name === me.channel ? 'you' : 'user';
  $('join').hidden = conv.kind !== 'group';
  renderMessages(true);
}

function tick(rec) {
  switch (rec.state) {
    case 'sending':
      return el('span', { class: 'state', text: 'sending…' });
    case 'stored':
      return el('span', { class: 'tick', title: 'stored on the server', text: '✓' });
    case 'delivered':
      return el('span', {
        class: 'tick',
        title: rec.to?.length ? `delivered to ${rec.to.join(', ')}` : 'delivered',
        text: '✓✓',
      });
    case 'failed':
      return el('span', { class: 'state', text: `failed: ${rec.reason}` });
    default:
      return null;
  }
}

function renderMessages(forceBottom = false) {
  const conv = store.convs[active];
  if (!conv) return;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = [];
  let lastDay = null;
  for (const rec of conv.messages) {
    const day = dayFmt.format(rec.time);
    if (day !== lastDay) {
      items.push(el('li', { class: 'day', text: day }));
      lastDay = day;
    }
    const showWho = !rec.mine && conv.kind === 'group';
    const meta = el('div', { class: 'meta' }, el('time', { text: timeFmt.format(rec.time) }));
    if (rec.mine) {
      meta.append(tick(rec));
      if (rec.state === 'failed' && rec.code !== 'no_route' && rec.code !== 'invalid_message') {
        meta.append(el('button', { class: 'link', type: 'button', text: 'Retry', onclick: () => retry(conv, rec) }));
      }
      if (rec.state === 'failed' && rec.code === 'forbidden' && conv.kind === 'group') {
        meta.append(el('button', { class: 'link', type: 'button', text: 'Join', onclick: joinGroup }));
      }
    }
    items.push(
      el(
        'li',
        { class: `msg ${rec.mine ? 'mine' : 'theirs'}`, 'data-id': rec.id ?? '', 'data-state': rec.state ?? 'received' },
        showWho ? el('span', { class: 'who', text: rec.from ?? 'system' }) : null,
        el('div', { class: 'bubble', text: rec.text }),
        meta,
      ),
    );
  }
  list.replaceChildren(...items);
  if (forceBottom || atBottom) list.scrollTop = list.scrollHeight;
}

// ---- wiring ----------------------------------------------------------

function init() {
  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => setLoginMode(tab.dataset.mode));
  }
  $('login-form').addEventListener('submit', onLoginSubmit);
  $('logout').addEventListener('click', logout);
  $('conn').addEventListener('click', () => client?.reconnect());
  $('composer').addEventListener('submit', onSend);
  $('join').addEventListener('click', joinGroup);
  $('back').addEventListener('click', () => {
    $('layout').dataset.view = 'list';
  });
  $('new-chat').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const kind = $('new-kind').value === 'group' ? 'group' : 'user';
    const name = $('new-name').value.trim();
    if (!validName(name, 128)) return;
    ensureConv(kind, name);
    $('new-name').value = '';
    save();
    open(convKey(kind, name));
  });
  $('new-kind').addEventListener('change', () => {
    $('new-name').placeholder = $('new-kind').value === 'group' ? 'e.g. team' : 'e.g. bob';
  });
  // Back online (or back to this tab): do not wait for the backoff.
  window.addEventListener('online', () => client?.reconnect());
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && client && client.state === State.CLOSED) client.reconnect();
    if (!document.hidden && active && store?.convs[active]?.unread) {
      store.convs[active].unread = 0;
      save();
      renderConvs();
    }
  });

  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(LOGIN_KEY));
  } catch {
    saved = null;
  }
  if (saved && (saved.channel || saved.token)) {
    // Back in the same tab: straight to the chat, online or not.
    loginMode = saved.mode === 'token' ? 'token' : 'name';
    start(saved);
    showApp();
    const last = sessionStorage.getItem(ACTIVE_KEY);
    if (last && store.convs[last]) open(last);
  } else {
    showLogin();
  }
}

init();
