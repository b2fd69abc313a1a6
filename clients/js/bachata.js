// bachata.js: a client for the bachata chat server (docs/protocol.md).
//
// One ES module, no dependencies, no build step. Runs in browsers and in
// Node 20+ (give Node 20 a WebSocket constructor, e.g. the `ws` package:
// `new Bachata({ WebSocket, ... })`). The API is described in docs/clients.md.
//
//   const chat = new Bachata({ url: 'ws://127.0.0.1:8000/messages', channel: 'alice' });
//   chat.on('message', (msg) => console.log(msg.from, msg.data));
//   await chat.connect({ timeout: 10_000 });
//   const { stored, delivered } = chat.send({ type: 'direct', dest: 'bob', data: { text: 'hi' } });
//   await stored;                       // 100: on the server's disk
//   const { from } = await delivered;   // 300: bob's device acknowledged it

/** Connection states, as reported by `client.state` and the `state` event. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  CLOSED: 'closed',
});

/** Error codes a caller may retry later (server 400 codes and client ones). */
const RETRYABLE = new Set(['queue_full', 'store_full', 'rate_limited', 'unavailable', 'timeout', 'closed']);

/**
 * A refused or failed operation. `code` is the server's 400 `error` code
 * (`no_route`, `forbidden`, `queue_full`, `store_full`, ...) or one of the client's own:
 * `timeout` (no answer in time) and `closed` (the client was closed).
 */
export class BachataError extends Error {
  constructor(code, reason, id = null) {
    super(reason ? `${code}: ${reason}` : String(code));
    this.name = 'BachataError';
    this.code = code;
    this.reason = reason || String(code);
    this.id = id;
    this.retryable = RETRYABLE.has(code);
  }
}

export const DEFAULTS = Object.freeze({
  autoAck: true,
  storedTimeout: 30_000,
  deliveredTimeout: 120_000,
  connectTimeout: 10_000,
  pingInterval: 20_000,
  pongTimeout: 10_000,
  reconnect: true,
  minReconnectDelay: 500,
  maxReconnectDelay: 30_000,
  reconnectFactor: 2,
  stableAfter: 5_000,
  dedupeSize: 10_000,
});

const OPEN_READY_STATE = 1;
const EVENTS = ['state', 'message', 'stored', 'delivered', 'rejected', 'duplicate', 'error'];
const MAX_ID_BYTES = 128;

function noop() {}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

/** A random message id: a UUID where the platform offers one. */
export function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try {
      return c.randomUUID();
    } catch {
      // not a secure context: fall through
    }
  }
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') {
    c.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Marks the promise handled: a caller that ignores `delivered` must not
  // get an unhandled rejection (which ends a Node process).
  promise.catch(noop);
  return { promise, resolve, reject };
}

function frameText(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

/**
 * A connection to a bachata server that survives disconnects.
 *
 * Options (all but the identity are optional):
 * - `url`: the WebSocket endpoint, e.g. `ws://127.0.0.1:8000/messages`
 *   (`http(s)://` works too; a bare origin gets `/messages`). In a browser it
 *   defaults to `/messages` on the page's own host.
 * - identity: `channel` (anonymous mode) or `token` (a JWT), and `device`.
 * - `WebSocket`: the constructor to use (default `globalThis.WebSocket`).
 * - `autoAck` (true): send 200 for each data message once the `message`
 *   handlers have run (and their promises settled); else call `ack()`.
 * - `storedTimeout` (30 s), `deliveredTimeout` (120 s): how long `send()`'s
 *   promises wait for 100 / 300, from the call; 0 waits forever.
 * - `connectTimeout` (10 s): from opening a socket to the ready message.
 * - `pingInterval` (20 s), `pongTimeout` (10 s): keepalive; no pong in time
 *   drops the socket and reconnects. `pingInterval: 0` turns pings off.
 * - `reconnect` (true), `minReconnectDelay` (500 ms), `maxReconnectDelay`
 *   (30 s), `reconnectFactor` (2): exponential backoff with jitter;
 *   `stableAfter` (5 s): a connection open that long resets the backoff.
 * - `dedupeSize` (10000): how many received message ids to remember.
 */
export class Bachata {
  #opts;
  #WS;
  #listeners = new Map(EVENTS.map((e) => [e, new Set()]));
  #state = State.CLOSED;
  #ws = null;
  #gen = 0;
  #attempt = 0;
  #wanted = false; // connect() called and close() not since
  #openedAt = 0;
  #ready = null;
  #connectTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #retryTimer = null;
  #sends = new Map(); // id -> entry, in send order
  #seen = new Map(); // from + "\0" + id -> { id, acked }
  #iterators = new Set();
  #openWaiters = new Set();

  constructor(options = {}) {
    this.#opts = { ...DEFAULTS, ...options };
    if (this.#opts.token == null && this.#opts.channel == null) {
      throw new TypeError('bachata: give a channel (anonymous mode) or a token');
    }
    this.#WS = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== 'function') {
      throw new TypeError(
        'bachata: no WebSocket here; pass one as the WebSocket option (Node 20: the "ws" package)',
      );
    }
    this.url = this.#buildUrl();
  }

  // ---- public API ------------------------------------------------------

  /** `connecting`, `open` (the ready message arrived) or `closed`. */
  get state() {
    return this.#state;
  }

  /** The ready message's data (`{channel, device?, secret?}`) of the current connection. */
  get ready() {
    return this.#ready;
  }

  /** How many sent messages are not stored yet (no 100); they are resent on reconnect. */
  get unconfirmed() {
    let n = 0;
    for (const e of this.#sends.values()) if (!e.stored) n++;
    return n;
  }

  /**
   * Subscribes to an event; returns a function that unsubscribes.
   * Events: `state` ({state, previous, attempt, code, reason, retryIn}),
   * `message` (a data message), `stored` ({id}), `delivered` ({id, from}),
   * `rejected` (a BachataError), `duplicate` (a redelivered message that
   * was dropped), `error` (an Error).
   */
  on(event, fn) {
    const set = this.#listeners.get(event);
    if (!set) throw new TypeError(`bachata: unknown event ${event}`);
    set.add(fn);
    return () => set.delete(fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /**
   * Starts connecting (and reconnecting) unless already doing so. Returns a
   * promise of the ready data of the next open connection; with `timeout`
   * (ms) it rejects with code `timeout` (the client keeps trying).
   */
  connect({ timeout = 0 } = {}) {
    const opened = this.opened({ timeout });
    if (!this.#wanted) {
      this.#wanted = true;
      this.#attempt = 0;
      this.#open();
    }
    return opened;
  }

  /** A promise of the ready data once the client is open (now, or next). */
  opened({ timeout = 0 } = {}) {
    if (this.#state === State.OPEN) return Promise.resolve(this.#ready);
    const d = deferred();
    const waiter = { d, timer: null };
    if (timeout > 0) {
      waiter.timer = setTimeout(() => {
        this.#openWaiters.delete(waiter);
        d.reject(new BachataError('timeout', `not connected within ${timeout} ms`));
      }, timeout);
    }
    this.#openWaiters.add(waiter);
    return d.promise;
  }

  /**
   * Sends a data message (`type` is required; `id` is generated when
   * absent). Returns `{ id, stored, delivered }`: `stored` resolves with
   * `{id}` on the server's 100, `delivered` with `{id, from}` on the first
   * 300 (a group message gets one 300 per member: see the `delivered`
   * event). Both reject with a BachataError: the 400's code, `timeout` or
   * `closed`. Until its 100 the message is resent with the same id on every
   * reconnect (the server dedupes); after a `stored` timeout (or a 400) it
   * is not, and `delivered` rejects too. A `delivered` timeout only rejects
   * `delivered`: a 300 that comes later still fires the `delivered` event.
   * Options: `storedTimeout`, `deliveredTimeout` (ms, 0 = none).
   */
  send(message, options = {}) {
    if (message === null || typeof message !== 'object' || Array.isArray(message)) {
      throw new TypeError('bachata: a message is an object');
    }
    if (typeof message.type !== 'string') {
      throw new TypeError('bachata: message.type must be a string');
    }
    const id = message.id ?? newId();
    if (typeof id !== 'string' || id.length === 0 || utf8Length(id) > MAX_ID_BYTES) {
      throw new TypeError('bachata: message.id must be a string of 1..=128 bytes');
    }
    const existing = this.#sends.get(id);
    if (existing) return existing.handle;

    const out = { id };
    for (const [k, v] of Object.entries(message)) if (k !== 'id') out[k] = v;
    const entry = {
      id,
      frame: JSON.stringify(out),
      stored: false, // a 100 (or 300) came
      delivered: false, // `delivered` settled
      storedD: deferred(),
      deliveredD: deferred(),
      storedTimer: null,
      deliveredTimer: null,
      handle: null,
    };
    entry.handle = { id, stored: entry.storedD.promise, delivered: entry.deliveredD.promise };
    const storedTimeout = options.storedTimeout ?? this.#opts.storedTimeout;
    const deliveredTimeout = options.deliveredTimeout ?? this.#opts.deliveredTimeout;
    if (storedTimeout > 0) {
      entry.storedTimer = setTimeout(() => {
        this.#fail(entry, new BachataError('timeout', `not stored within ${storedTimeout} ms`, id));
      }, storedTimeout);
    }
    if (deliveredTimeout > 0) {
      entry.deliveredTimer = setTimeout(() => {
        // Only `delivered` gives up: a message not stored yet is still
        // resent until its own `stored` timeout.
        entry.delivered = true;
        entry.deliveredD.reject(new BachataError('timeout', `not delivered within ${deliveredTimeout} ms`, id));
        if (entry.stored) this.#forget(entry);
      }, deliveredTimeout);
    }
    this.#sends.set(id, entry);
    if (this.#state === State.OPEN) this.#write(entry.frame);
    return entry.handle;
  }

  /**
   * Sends a data message without id: no 100/300, at most once, to the live
   * connections of its destinations only (typing indicators and the like).
   * Returns whether it was written (false while not open).
   */
  sendLive(message) {
    if (message === null || typeof message !== 'object' || typeof message.type !== 'string') {
      throw new TypeError('bachata: a message is an object with a string type');
    }
    const out = {};
    for (const [k, v] of Object.entries(message)) if (k !== 'id') out[k] = v;
    return this.#state === State.OPEN && this.#write(JSON.stringify(out));
  }

  /**
   * Acknowledges a received message (200): give the message, or its id.
   * Only needed with `autoAck: false`. Returns whether it was written; an
   * ack lost to a disconnect is repeated when the message comes again.
   */
  ack(messageOrId) {
    let id;
    if (typeof messageOrId === 'string') {
      id = messageOrId;
      for (const s of this.#seen.values()) if (s.id === id) s.acked = true;
    } else if (messageOrId && typeof messageOrId.id === 'string') {
      id = messageOrId.id;
      const s = this.#seen.get(seenKey(messageOrId));
      if (s) s.acked = true;
    } else {
      throw new TypeError('bachata: ack takes a message or its id');
    }
    return this.#sendAck(id);
  }

  /**
   * Received data messages as an async iterator (each iterator gets every
   * message from its creation on, buffered). Ends when the client closes.
   */
  messages() {
    const queue = [];
    let waiting = null;
    let done = false;
    const it = {
      push(msg) {
        if (done) return;
        if (waiting) {
          const w = waiting;
          waiting = null;
          w({ value: msg, done: false });
        } else {
          queue.push(msg);
        }
      },
      end: () => {
        done = true;
        this.#iterators.delete(it);
        if (waiting) {
          const w = waiting;
          waiting = null;
          w({ value: undefined, done: true });
        }
      },
    };
    this.#iterators.add(it);
    return {
      next() {
        if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          waiting = resolve;
        });
      },
      return() {
        it.end();
        queue.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  [Symbol.asyncIterator]() {
    return this.messages();
  }

  /**
   * Drops the current socket (if any) and connects again now, without
   * backoff: e.g. when the browser says it is back `online`.
   */
  reconnect() {
    this.#wanted = true;
    this.#attempt = 0;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#ws) this.#drop(4000, 'reconnect', false);
    this.#open();
  }

  /**
   * Closes for good: no more reconnects; unfinished sends reject with code
   * `closed`, iterators end. `connect()` may start it again.
   */
  close() {
    this.#wanted = false;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#ws) this.#drop(1000, 'client closed', false);
    else if (this.#state !== State.CLOSED) this.#setState(State.CLOSED, {});
    const err = () => new BachataError('closed', 'the client was closed');
    for (const entry of [...this.#sends.values()]) this.#fail(entry, err());
    for (const w of this.#openWaiters) {
      clearTimeout(w.timer);
      w.d.reject(err());
    }
    this.#openWaiters.clear();
    for (const it of [...this.#iterators]) it.end();
  }

  // ---- connection ------------------------------------------------------

  #buildUrl() {
    const o = this.#opts;
    let base = o.url;
    if (base == null) {
      if (typeof location === 'undefined') throw new TypeError('bachata: give a url');
      base = '/messages';
    }
    const url =
      typeof location !== 'undefined' ? new URL(base, location.href) : new URL(String(base));
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.pathname === '/' || url.pathname === '') url.pathname = '/messages';
    if (o.token != null) url.searchParams.set('token', o.token);
    else url.searchParams.set('channel', o.channel);
    if (o.device != null && o.device !== '') url.searchParams.set('device', o.device);
    return url.toString();
  }

  #open() {
    if (!this.#wanted || this.#ws) return;
    const gen = ++this.#gen;
    this.#setState(State.CONNECTING, { attempt: this.#attempt });
    let ws;
    try {
      ws = new this.#WS(this.url);
    } catch (e) {
      this.#emit('error', e);
      this.#closed(gen, 0, String(e?.message ?? e));
      return;
    }
    this.#ws = ws;
    try {
      ws.binaryType = 'arraybuffer';
    } catch {
      // not supported: text frames only then
    }
    this.#connectTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      this.#emit('error', new BachataError('timeout', `no ready message within ${this.#opts.connectTimeout} ms`));
      this.#drop(4000, 'connect timeout', true);
    }, this.#opts.connectTimeout);
    ws.onmessage = (ev) => {
      if (gen === this.#gen) this.#onFrame(frameText(ev.data));
    };
    ws.onclose = (ev) => {
      if (gen === this.#gen) this.#closed(gen, ev.code, ev.reason);
    };
    ws.onerror = (ev) => {
      if (gen !== this.#gen) return;
      const err = ev?.error instanceof Error ? ev.error : new Error(ev?.message || 'WebSocket error');
      this.#emit('error', err);
    };
  }

  /** Abandons the current socket: its late events are ignored from now on. */
  #drop(code, reason, retry) {
    const ws = this.#ws;
    const gen = ++this.#gen; // the old socket's handlers check the generation
    try {
      ws?.close(code, reason);
    } catch {
      // already closing
    }
    this.#closed(gen, code, reason, retry);
  }

  #closed(gen, code, reason, retry = true) {
    if (gen !== this.#gen) return;
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#pingTimer);
    clearTimeout(this.#pongTimer);
    this.#connectTimer = this.#pingTimer = this.#pongTimer = null;
    this.#ws = null;
    this.#ready = null;
    if (this.#openedAt && Date.now() - this.#openedAt >= this.#opts.stableAfter) this.#attempt = 0;
    this.#openedAt = 0;
    let retryIn = null;
    if (retry && this.#wanted && this.#opts.reconnect) {
      const o = this.#opts;
      const base = Math.min(o.maxReconnectDelay, o.minReconnectDelay * o.reconnectFactor ** this.#attempt);
      retryIn = Math.round(base / 2 + (Math.random() * base) / 2);
      this.#attempt++;
      clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = null;
        this.#open();
      }, retryIn);
    }
    this.#setState(State.CLOSED, { code, reason, retryIn });
  }

  #setState(state, info) {
    const previous = this.#state;
    this.#state = state;
    this.#emit('state', { state, previous, attempt: this.#attempt, code: null, reason: null, retryIn: null, ...info });
  }

  #write(text) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN_READY_STATE) return false;
    try {
      ws.send(text);
      return true;
    } catch (e) {
      this.#emit('error', e);
      return false;
    }
  }

  #schedulePing() {
    clearTimeout(this.#pingTimer);
    if (!(this.#opts.pingInterval > 0)) return;
    const gen = this.#gen;
    this.#pingTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      this.#write('{"type":1001}');
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => {
        if (gen !== this.#gen) return;
        this.#emit('error', new BachataError('timeout', `no pong within ${this.#opts.pongTimeout} ms`));
        this.#drop(4000, 'no pong', true);
      }, this.#opts.pongTimeout);
    }, this.#opts.pingInterval);
  }

  // ---- frames ----------------------------------------------------------

  #onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this.#emit('error', new Error(`bachata: a frame that is not JSON: ${text.slice(0, 100)}`));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return;
    if (typeof msg.type === 'string') {
      this.#onData(msg);
      return;
    }
    switch (msg.type) {
      case 100:
        this.#onStored(msg.data);
        break;
      case 300:
        this.#onDelivered(msg.data, msg.from ?? null);
        break;
      case 400:
        this.#onRejected(msg);
        break;
      case 1000:
        this.#onReady(msg.data ?? {});
        break;
      case 1001:
        this.#write('{"type":1002}');
        break;
      case 1002:
        clearTimeout(this.#pongTimer);
        this.#pongTimer = null;
        this.#schedulePing();
        break;
      default:
        break;
    }
  }

  #onReady(data) {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#ready = data;
    this.#openedAt = Date.now();
    this.#setState(State.OPEN, { attempt: this.#attempt });
    // Everything not stored yet goes again, in send order, with its id.
    for (const entry of this.#sends.values()) {
      if (!entry.stored) this.#write(entry.frame);
    }
    this.#schedulePing();
    for (const w of this.#openWaiters) {
      clearTimeout(w.timer);
      w.d.resolve(data);
    }
    this.#openWaiters.clear();
  }

  #onStored(id) {
    if (typeof id !== 'string') return;
    const entry = this.#sends.get(id);
    if (entry && !entry.stored) {
      entry.stored = true;
      clearTimeout(entry.storedTimer);
      entry.storedD.resolve({ id });
      if (entry.delivered) this.#forget(entry);
    }
    this.#emit('stored', { id });
  }

  #onDelivered(id, from) {
    if (typeof id !== 'string') return;
    const entry = this.#sends.get(id);
    if (entry) {
      if (!entry.stored) {
        entry.stored = true;
        entry.storedD.resolve({ id });
      }
      entry.deliveredD.resolve({ id, from });
      this.#forget(entry);
    }
    this.#emit('delivered', { id, from });
  }

  #onRejected(msg) {
    const id = typeof msg.data === 'string' ? msg.data : null;
    const err = new BachataError(String(msg.error ?? 'rejected'), msg.reason ?? '', id);
    const entry = id == null ? null : this.#sends.get(id);
    if (entry && !entry.stored) this.#fail(entry, err);
    this.#emit('rejected', err);
  }

  #fail(entry, err) {
    entry.storedD.reject(err);
    entry.deliveredD.reject(err);
    this.#forget(entry);
  }

  #forget(entry) {
    clearTimeout(entry.storedTimer);
    clearTimeout(entry.deliveredTimer);
    if (this.#sends.get(entry.id) === entry) this.#sends.delete(entry.id);
  }

  #onData(msg) {
    if (typeof msg.id !== 'string') {
      this.#dispatch(msg); // no id: at most once, nothing to ack
      return;
    }
    const key = seenKey(msg);
    const seen = this.#seen.get(key);
    if (seen) {
      // Redelivered (at-least-once): the app has it already. If it was
      // acked, that 200 was lost on the way; send it again.
      if (seen.acked) this.#sendAck(msg.id);
      this.#emit('duplicate', msg);
      return;
    }
    const record = { id: msg.id, acked: false };
    this.#seen.set(key, record);
    if (this.#seen.size > this.#opts.dedupeSize) {
      this.#seen.delete(this.#seen.keys().next().value);
    }
    const results = this.#dispatch(msg);
    if (!this.#opts.autoAck) return;
    const settle = results.some((r) => r && typeof r.then === 'function') ? Promise.all(results) : null;
    const ack = () => {
      record.acked = true;
      this.#sendAck(msg.id);
    };
    if (!settle) {
      if (results.includes(FAILED)) this.#unsee(key, record);
      else ack();
      return;
    }
    settle.then(
      (rs) => (rs.includes(FAILED) ? this.#unsee(key, record) : ack()),
      (e) => {
        this.#emit('error', e);
        this.#unsee(key, record);
      },
    );
  }

  /** A handler failed: not acked, and a redelivery is handed over again. */
  #unsee(key, record) {
    if (this.#seen.get(key) === record) this.#seen.delete(key);
  }

  #dispatch(msg) {
    const results = [];
    for (const fn of [...this.#listeners.get('message')]) {
      try {
        results.push(fn(msg));
      } catch (e) {
        this.#emit('error', e);
        results.push(FAILED);
      }
    }
    for (const it of this.#iterators) it.push(msg);
    return results;
  }

  #sendAck(id) {
    return this.#write(JSON.stringify({ type: 200, data: id }));
  }

  #emit(event, value) {
    for (const fn of [...this.#listeners.get(event)]) {
      try {
        fn(value);
      } catch (e) {
        if (event === 'error') {
          // An error handler that throws has nowhere else to go.
          if (typeof console !== 'undefined') console.error(e);
        } else {
          this.#emit('error', e);
        }
      }
    }
  }
}

const FAILED = Symbol('handler failed');

function seenKey(msg) {
  return `${msg.from ?? ''}\u0000${msg.id}`;
}

/** `new Bachata(options)` and `connect()` in one call; returns the client. */
export function connect(options) {
  const client = new Bachata(options);
  client.connect();
  return client;
}

export default Bachata;
