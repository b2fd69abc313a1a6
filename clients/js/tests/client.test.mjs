// The JS client against a real `bachata serve` (memory store): receipts,
// refusals, acks, dedupe, groups, the async iterator, tokens.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import { Bachata, BachataError, State } from '../bachata.js';
import { http, lossyWebSocket, nextEvent, sleep, startServer, stillPending, waitFor, within } from './server.mjs';


let server;
const clients = [];

function client(options) {
  const c = new Bachata({
    url: server.url,
    WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 400,
    ...options,
  });
  clients.push(c);
  return c;
}

async function online(options) {
  const c = client(options);
  await c.connect({ timeout: 5_000 });
  return c;
}

/** Collects the data messages a client receives. */
function inbox(c) {
  const got = [];
  c.on('message', (m) => {
    got.push(m);
  });
  return got;
}

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

describe('connecting', () => {
  test('reports connecting then open, with the ready data', async () => {
    const c = client({ channel: 'state-alice', device: 'laptop' });
    const states = [];
    c.on('state', (s) => states.push(s.state));
    const ready = await c.connect({ timeout: 5_000 });
    assert.deepEqual(ready, { channel: 'state-alice', device: 'laptop' });
    assert.deepEqual(states, [State.CONNECTING, State.OPEN]);
    assert.equal(c.state, State.OPEN);
    c.close();
    assert.equal(c.state, State.CLOSED);
    assert.deepEqual(states, [State.CONNECTING, State.OPEN, State.CLOSED]);
  });

  test('builds the URL from http:// and a bare origin', () => {
    const c = new Bachata({ url: `http://127.0.0.1:${server.port}`, channel: 'a b', device: 'd', WebSocket });
    assert.equal(c.url, `ws://127.0.0.1:${server.port}/messages?channel=a+b&device=d`);
    const t = new Bachata({ url: server.url, token: 'xyz', WebSocket });
    assert.equal(t.url, `${server.url}?token=xyz`);
  });

  test('needs an identity and a WebSocket', () => {
    assert.throws(() => new Bachata({ url: server.url, WebSocket }), TypeError);
    if (typeof globalThis.WebSocket !== 'function') {
      assert.throws(() => new Bachata({ url: server.url, channel: 'x' }), /WebSocket/);
    }
  });
});

describe('sending', () => {
  test('stored on 100, delivered on 300 with the receiver', async () => {
    const alice = await online({ channel: 'alice1' });
    const bob = await online({ channel: 'bob1' });
    const got = inbox(bob);
    const { id, stored, delivered } = alice.send({ type: 'direct', dest: 'bob1', data: { text: 'hi bob' } });
    assert.equal(typeof id, 'string');
    assert.deepEqual(await within(stored, 5_000, 'stored'), { id });
    assert.deepEqual(await within(delivered, 5_000, 'delivered'), { id, from: 'bob1' });
    assert.equal(got.length, 1);
    assert.equal(got[0].id, id);
    assert.equal(got[0].from, 'alice1');
    assert.equal(got[0].dest, 'bob1');
    assert.deepEqual(got[0].data, { text: 'hi bob' });
    assert.equal(typeof got[0].time, 'number');
    assert.equal(alice.unconfirmed, 0);
  });

  test('keeps a given id and extra fields', async () => {
    const alice = await online({ channel: 'alice2' });
    const bob = await online({ channel: 'bob2' });
    const got = inbox(bob);
    const { id, delivered } = alice.send({ id: 'my-id-1', type: 'direct', dest: 'bob2', data: 'x', extra: [1, 2] });
    assert.equal(id, 'my-id-1');
    await within(delivered, 5_000, 'delivered');
    assert.equal(got[0].id, 'my-id-1');
    assert.deepEqual(got[0].extra, [1, 2]);
  });

  test('refused with 400: rejects with code and reason', async () => {
    const alice = await online({ channel: 'alice3' });
    const rejected = [];
    alice.on('rejected', (e) => rejected.push(e));
    const { id, stored, delivered } = alice.send({ type: 'direct', data: { text: 'to nobody' } });
    const err = await stored.then(
      () => assert.fail('stored should reject'),
      (e) => e,
    );
    assert.ok(err instanceof BachataError);
    assert.equal(err.code, 'no_route');
    assert.equal(err.id, id);
    assert.equal(typeof err.reason, 'string');
    assert.ok(err.reason.length > 0);
    assert.equal(err.retryable, false);
    await assert.rejects(delivered, (e) => e.code === 'no_route');
    assert.equal(rejected.length, 1);
    assert.equal(alice.unconfirmed, 0);

    // A group message from a non-member: forbidden.
    const g = alice.send({ type: 'group', dest: 'nobody-group', data: 1 });
    await assert.rejects(g.stored, (e) => e.code === 'forbidden');
  });

  test('rejects a message without a type before sending', async () => {
    const alice = await online({ channel: 'alice4' });
    assert.throws(() => alice.send({ dest: 'x' }), TypeError);
    assert.throws(() => alice.send('hi'), TypeError);
    assert.throws(() => alice.send({ type: 'direct', id: '' }), TypeError);
    assert.throws(() => alice.send({ type: 'direct', id: 'x'.repeat(129) }), TypeError);
  });

  test('the same id twice gives the same handle', async () => {
    const alice = await online({ channel: 'alice5' });
    const a = alice.send({ id: 'same', type: 'direct', dest: 'bob5', data: 1 });
    const b = alice.send({ id: 'same', type: 'direct', dest: 'bob5', data: 1 });
    assert.equal(a, b);
    await within(a.stored, 5_000, 'stored');
  });

  test('group: one 300 per member; delivered resolves on the first', async () => {
    for (const member of ['galice', 'gbob', 'gcarol']) {
      const res = await http('PUT', `${server.http}/api/groups/team/members/${member}`);
      assert.ok(res.status < 300, `PUT member: ${res.status} ${res.text}`);
    }
    const alice = await online({ channel: 'galice' });
    const bob = await online({ channel: 'gbob' });
    const carol = await online({ channel: 'gcarol' });
    const bobGot = inbox(bob);
    const carolGot = inbox(carol);
    const receipts = [];
    alice.on('delivered', (r) => receipts.push(r));
    const { id, delivered } = alice.send({ type: 'group', dest: 'team', data: { text: 'hi all' } });
    const first = await within(delivered, 5_000, 'delivered');
    assert.equal(first.id, id);
    assert.ok(['gbob', 'gcarol'].includes(first.from));
    await waitFor(() => receipts.length === 2, 5_000, 'two 300s');
    assert.deepEqual(receipts.map((r) => r.from).sort(), ['gbob', 'gcarol']);
    assert.equal(bobGot.length, 1);
    assert.equal(carolGot.length, 1);
    assert.equal(bobGot[0].from, 'galice');
    assert.equal(bobGot[0].dest, 'team');
  });

  test('sendLive: no id, no receipts, only to live connections', async () => {
    const alice = await online({ channel: 'alice6' });
    const bob = await online({ channel: 'bob6' });
    const got = inbox(bob);
    assert.equal(alice.sendLive({ type: 'direct', dest: 'bob6', data: { typing: true } }), true);
    await waitFor(() => got.length === 1, 5_000, 'the live message');
    assert.equal(got[0].id, undefined);
    assert.deepEqual(got[0].data, { typing: true });
  });
});

describe('receiving', () => {
  test('auto-ack: the sender learns delivery without ack()', async () => {
    const alice = await online({ channel: 'alice7' });
    const bob = await online({ channel: 'bob7' });
    inbox(bob);
    const { delivered } = alice.send({ type: 'direct', dest: 'bob7', data: 1 });
    assert.equal((await within(delivered, 5_000, 'delivered')).from, 'bob7');
  });

  test('autoAck: false waits for ack()', async () => {
    const alice = await online({ channel: 'alice8' });
    const bob = await online({ channel: 'bob8', autoAck: false });
    const got = inbox(bob);
    const { stored, delivered } = alice.send({ type: 'direct', dest: 'bob8', data: 1 });
    await within(stored, 5_000, 'stored');
    await waitFor(() => got.length === 1, 5_000, 'the message');
    assert.ok(await stillPending(delivered, 300), 'no 300 before the ack');
    assert.equal(bob.ack(got[0]), true);
    assert.equal((await within(delivered, 5_000, 'delivered')).from, 'bob8');
  });

  test('auto-ack waits for an async handler; a failing handler does not ack', async () => {
    const alice = await online({ channel: 'alice9' });
    const bob = await online({ channel: 'bob9' });
    let release;
    const gate = new Promise((r) => {
      release = r;
    });
    const errors = [];
    bob.on('error', (e) => errors.push(e));
    bob.on('message', async (m) => {
      if (m.data === 'slow') await gate;
      if (m.data === 'bad') throw new Error('handler failed');
    });
    const slow = alice.send({ type: 'direct', dest: 'bob9', data: 'slow' });
    await within(slow.stored, 5_000, 'stored');
    assert.ok(await stillPending(slow.delivered, 300), 'no 300 while the handler runs');
    release();
    await within(slow.delivered, 5_000, 'delivered');

    const bad = alice.send({ type: 'direct', dest: 'bob9', data: 'bad' });
    await within(bad.stored, 5_000, 'stored');
    await waitFor(() => errors.length === 1, 5_000, 'the handler error');
    assert.equal(errors[0].message, 'handler failed');
    assert.ok(await stillPending(bad.delivered, 300), 'no 300 after a failed handler');
  });

  test('async iterator yields messages in order', async () => {
    const alice = await online({ channel: 'alice10' });
    const bob = await online({ channel: 'bob10' });
    const it = bob.messages();
    const sends = [1, 2, 3].map((n) => alice.send({ type: 'direct', dest: 'bob10', data: n }));
    const got = [];
    for await (const m of it) {
      got.push(m.data);
      if (got.length === 3) break;
    }
    assert.deepEqual(got, [1, 2, 3]);
    await within(Promise.all(sends.map((s) => s.delivered)), 5_000, 'delivered');
  });

  test('iterators end when the client closes', async () => {
    const bob = await online({ channel: 'bob11' });
    const it = bob[Symbol.asyncIterator]();
    const next = it.next();
    bob.close();
    assert.deepEqual(await within(next, 1_000, 'next'), { value: undefined, done: true });
  });

  test('dedupe: a redelivered message is handed over once', async () => {
    const alice = await online({ channel: 'alice12' });
    const bob = await online({ channel: 'bob12', autoAck: false });
    const got = inbox(bob);
    const dups = [];
    bob.on('duplicate', (m) => dups.push(m));
    const m1 = alice.send({ type: 'direct', dest: 'bob12', data: 'once' });
    await waitFor(() => got.length === 1, 5_000, 'the message');
    // No ack, new connection: the server sends m1 again; the client drops it.
    bob.reconnect();
    await waitFor(() => dups.length === 1, 5_000, 'the redelivery');
    assert.equal(dups[0].id, m1.id);
    assert.equal(got.length, 1);
    // Now ack; after another reconnect nothing comes back.
    bob.ack(m1.id);
    await within(m1.delivered, 5_000, 'delivered');
    bob.reconnect();
    await bob.opened({ timeout: 5_000 });
    const m2 = alice.send({ type: 'direct', dest: 'bob12', data: 'marker' });
    await waitFor(() => got.length === 2, 5_000, 'the marker');
    assert.equal(got[1].id, m2.id);
    assert.equal(dups.length, 1);
  });

  test('dedupe: an ack lost on the way is sent again on redelivery', async () => {
    const alice = await online({ channel: 'alice13' });
    let dropped = 0;
    const bob = await online({
      channel: 'bob13',
      WebSocket: lossyWebSocket({
        dropOut: (text) => text.includes('"type":200') && dropped++ === 0,
      }),
    });
    const got = inbox(bob);
    const dups = [];
    bob.on('duplicate', (m) => dups.push(m));
    const { delivered } = alice.send({ type: 'direct', dest: 'bob13', data: 'x' });
    await waitFor(() => got.length === 1 && dropped === 1, 5_000, 'the message and the lost ack');
    assert.ok(await stillPending(delivered, 200));
    bob.reconnect();
    assert.equal((await within(delivered, 5_000, 'delivered')).from, 'bob13');
    assert.equal(got.length, 1);
    assert.equal(dups.length, 1);
  });

  test('same id from two senders: both handed over', async () => {
    const a = await online({ channel: 'same-a' });
    const b = await online({ channel: 'same-b' });
    const carol = await online({ channel: 'same-carol' });
    const got = inbox(carol);
    a.send({ id: 'x1', type: 'direct', dest: 'same-carol', data: 'from a' });
    b.send({ id: 'x1', type: 'direct', dest: 'same-carol', data: 'from b' });
    await waitFor(() => got.length === 2, 5_000, 'both messages');
    assert.deepEqual(got.map((m) => m.from).sort(), ['same-a', 'same-b']);
  });
});

describe('a full server', () => {
  let full;

  before(async () => {
    full = await startServer({ args: ['--max-retained-bytes', '2KiB'] });
  });

  after(async () => {
    await full?.stop();
  });

  test('store_full rejects, retryable, and a retry succeeds once there is room', async () => {
    const alice = new Bachata({ url: full.url, WebSocket, channel: 'full-alice' });
    clients.push(alice);
    await alice.connect({ timeout: 5_000 });
    const big = 'x'.repeat(1500);
    const f1 = alice.send({ id: 'f1', type: 'direct', dest: 'full-bob', data: big });
    await within(f1.stored, 5_000, 'f1 stored');
    const { stored } = alice.send({ id: 'f2', type: 'direct', dest: 'full-bob', data: big });
    const err = await stored.then(
      () => assert.fail('stored should reject'),
      (e) => e,
    );
    assert.ok(err instanceof BachataError);
    assert.equal(err.code, 'store_full');
    assert.equal(err.retryable, true);
    assert.equal(err.id, 'f2');
    // bob gets and acks f1; its 300 comes once the ack freed f1's bytes, and
    // f2 sent again is stored.
    const bob = new Bachata({ url: full.url, WebSocket, channel: 'full-bob' });
    clients.push(bob);
    await bob.connect({ timeout: 5_000 });
    await within(f1.delivered, 5_000, 'f1 delivered');
    const again = alice.send({ id: 'f2', type: 'direct', dest: 'full-bob', data: big });
    await within(again.stored, 5_000, 'f2 stored after the ack');
  });
});

describe('tokens', () => {
  let jwtServer;
  const secret = 'test-secret-for-the-js-client-32b';

  function jwt(claims) {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
    const sig = createHmac('sha256', secret).update(head).digest('base64url');
    return `${head}.${sig}`;
  }

  before(async () => {
    jwtServer = await startServer({ args: ['--jwt-secret', secret] });
  });

  after(async () => {
    await jwtServer?.stop();
  });

  test('connects with a token and a device', async () => {
    const exp = Math.floor(Date.now() / 1000) + 600;
    const c = new Bachata({ url: jwtServer.url, WebSocket, token: jwt({ sub: 'tina', exp }), device: 'tab' });
    clients.push(c);
    const ready = await c.connect({ timeout: 5_000 });
    assert.deepEqual(ready, { channel: 'tina', device: 'tab' });
  });

  test('a refused token: errors, retries, connect() times out', async () => {
    const c = new Bachata({
      url: jwtServer.url,
      WebSocket,
      token: 'not-a-jwt',
      minReconnectDelay: 50,
      maxReconnectDelay: 100,
    });
    clients.push(c);
    const errors = [];
    c.on('error', (e) => errors.push(e));
    await assert.rejects(c.connect({ timeout: 500 }), (e) => e instanceof BachataError && e.code === 'timeout');
    assert.ok(errors.length >= 1);
    assert.match(String(errors[0].message), /401/);
    c.close();
    await sleep(50);
  });
});
