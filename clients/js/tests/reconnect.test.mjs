// The JS client when things go wrong: the server stops and comes back on the
// same port (embedded store), frames get lost, nothing answers: reconnects,
// resends, backoff, keepalive and timeouts.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';

import { Bachata, BachataError, State } from '../bachata.js';
import { freePort, lossyWebSocket, nextEvent, sleep, startServer, stillPending, tempDir, waitFor, within } from './server.mjs';

const cleanups = [];
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

function client(url, options) {
  const c = new Bachata({ url, WebSocket, minReconnectDelay: 50, maxReconnectDelay: 400, ...options });
  cleanups.push(() => c.close());
  return c;
}


describe('server restarts', () => {
  test('reconnects after the server closes the socket; offline sends and messages arrive', async () => {
    const data = tempDir();
    cleanups.push(data.remove);
    let server = await startServer({ dataDir: data.dir });
    cleanups.push(() => server.stop());
    const url = server.url;

    const alice = client(url, { channel: 'alice' });
    await alice.connect({ timeout: 5_000 });
    const bob = client(url, { channel: 'bob' });
    await bob.connect({ timeout: 5_000 });
    bob.close(); // bob is offline from here on

    // Stored while bob is offline.
    const m1 = alice.send({ type: 'direct', dest: 'bob', data: 'sent while bob was offline' });
    await within(m1.stored, 5_000, 'm1 stored');

    // The server goes away: alice sees the 1001 close and retries.
    const closed = nextEvent(alice, 'state', (s) => s.state === State.CLOSED, 15_000);
    await server.stop();
    const info = await closed;
    assert.equal(info.code, 1001);
    assert.equal(typeof info.retryIn, 'number');

    // Sent while the server is down: waits in the client.
    const m2 = alice.send({ type: 'direct', dest: 'bob', data: 'sent while the server was down' });
    assert.equal(alice.unconfirmed, 1);
    assert.ok(await stillPending(m2.stored, 300));

    // Back on the same port with the same data: alice reconnects and resends.
    server = await startServer({ port: server.port, dataDir: data.dir });
    await within(m2.stored, 10_000, 'm2 stored after the restart');
    assert.equal(alice.state, State.OPEN);
    assert.equal(alice.unconfirmed, 0);

    // bob comes back and gets both, in order, once.
    const bob2 = client(url, { channel: 'bob' });
    const got = [];
    bob2.on('message', (m) => got.push(m));
    await bob2.connect({ timeout: 5_000 });
    await waitFor(() => got.length >= 2, 5_000, "bob's two messages");
    assert.deepEqual(
      got.map((m) => m.data),
      ['sent while bob was offline', 'sent while the server was down'],
    );
    assert.equal((await within(m1.delivered, 5_000, 'm1 delivered')).from, 'bob');
    assert.equal((await within(m2.delivered, 5_000, 'm2 delivered')).from, 'bob');
    await sleep(100);
    assert.equal(got.length, 2);
  });

  test('survives a crash (SIGKILL): a 100 means it is on disk', async () => {
    const data = tempDir();
    cleanups.push(data.remove);
    let server = await startServer({ dataDir: data.dir });
    cleanups.push(() => server.stop());
    const alice = client(server.url, { channel: 'alice' });
    await alice.connect({ timeout: 5_000 });
    const sends = [1, 2, 3].map((n) => alice.send({ type: 'direct', dest: 'bob', data: n }));
    await within(Promise.all(sends.map((s) => s.stored)), 5_000, 'stored');
    await server.kill();
    server = await startServer({ port: server.port, dataDir: data.dir });
    const bob = client(server.url, { channel: 'bob' });
    const got = [];
    bob.on('message', (m) => got.push(m.data));
    await bob.connect({ timeout: 5_000 });
    await waitFor(() => got.length === 3, 5_000, 'three messages');
    assert.deepEqual(got, [1, 2, 3]);
    // alice reconnected on her own and gets the 300s.
    const from = await within(Promise.all(sends.map((s) => s.delivered)), 10_000, 'delivered');
    assert.deepEqual(
      from.map((d) => d.from),
      ['bob', 'bob', 'bob'],
    );
  });
});

describe('lost frames', () => {
  test('a lost 100: resent with the same id on reconnect, delivered once', async () => {
    const server = await startServer();
    cleanups.push(() => server.stop());
    let dropped = 0;
    const alice = client(server.url, {
      channel: 'alice',
      WebSocket: lossyWebSocket({ dropIn: (text) => /^\{"type":100,/.test(text) && dropped++ === 0 }),
    });
    await alice.connect({ timeout: 5_000 });
    // bob does not ack (a 300 would confirm the message too), and counts
    // what the server sends him twice.
    const bob = client(server.url, { channel: 'bob', autoAck: false });
    const got = [];
    bob.on('message', (m) => got.push(m));
    const dups = [];
    bob.on('duplicate', (m) => dups.push(m));
    await bob.connect({ timeout: 5_000 });

    const sent = [];
    alice.on('state', (s) => sent.push(s.state));
    const m1 = alice.send({ type: 'direct', dest: 'bob', data: 'once' });
    await waitFor(() => dropped === 1 && got.length === 1, 5_000, 'the lost 100');
    assert.ok(await stillPending(m1.stored, 100));
    alice.reconnect();
    await within(m1.stored, 5_000, 'stored after the resend');
    const marker = alice.send({ type: 'direct', dest: 'bob', data: 'marker' });
    await waitFor(() => got.length === 2, 5_000, 'the marker');
    assert.deepEqual(
      got.map((m) => m.data),
      ['once', 'marker'],
    );
    assert.equal(dups.length, 0, 'the server stored the resent message once');
    bob.ack(got[0]);
    assert.equal((await within(m1.delivered, 5_000, 'delivered')).from, 'bob');
    assert.ok(await stillPending(marker.delivered, 100));
    assert.deepEqual(sent, [State.CLOSED, State.CONNECTING, State.OPEN]);
  });
});

describe('keepalive and timeouts', () => {
  test('pings keep a healthy connection open', async () => {
    const server = await startServer();
    cleanups.push(() => server.stop());
    const pongs = [];
    const c = client(server.url, {
      channel: 'pinger',
      pingInterval: 50,
      pongTimeout: 500,
      WebSocket: lossyWebSocket({ dropIn: (t) => (t === '{"type":1002}' ? (pongs.push(t), false) : false) }),
    });
    await c.connect({ timeout: 5_000 });
    const states = [];
    c.on('state', (s) => states.push(s.state));
    await waitFor(() => pongs.length >= 5, 5_000, 'five pongs');
    assert.deepEqual(states, []);
  });

  test('no pong: the client drops the socket and reconnects', async () => {
    const server = await startServer();
    cleanups.push(() => server.stop());
    const c = client(server.url, {
      channel: 'nopong',
      pingInterval: 100,
      pongTimeout: 200,
      WebSocket: lossyWebSocket({ dropOut: (t) => t === '{"type":1001}' }),
    });
    const errors = [];
    c.on('error', (e) => errors.push(e));
    await c.connect({ timeout: 5_000 });
    const states = [];
    c.on('state', (s) => states.push(s.state));
    await waitFor(() => states.length >= 3, 5_000, 'a reconnect');
    assert.deepEqual(states.slice(0, 3), [State.CLOSED, State.CONNECTING, State.OPEN]);
    assert.ok(errors.some((e) => e.code === 'timeout' && /pong/.test(e.reason)));
  });

  test('no ready message: connect timeout, then backoff with jitter', async () => {
    // A TCP server that accepts and never answers the WebSocket handshake.
    const sockets = new Set();
    const silent = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise((resolve) => {
          for (const s of sockets) s.destroy();
          silent.close(resolve);
        }),
    );
    const c = client(`ws://127.0.0.1:${silent.address().port}/messages`, {
      channel: 'patient',
      connectTimeout: 100,
      minReconnectDelay: 40,
      maxReconnectDelay: 160,
    });
    const closes = [];
    c.on('state', (s) => {
      if (s.state === State.CLOSED) closes.push(s);
    });
    const errors = [];
    c.on('error', (e) => errors.push(e));
    c.connect();
    await waitFor(() => closes.length >= 5, 5_000, 'five attempts');
    c.close();
    assert.ok(errors.some((e) => e.code === 'timeout'));
    // attempt k waits between base/2 and base, base = min(160, 40 * 2^k).
    closes.slice(0, 5).forEach((s, k) => {
      const base = Math.min(160, 40 * 2 ** k);
      assert.ok(s.retryIn >= base / 2 && s.retryIn <= base, `attempt ${k}: ${s.retryIn} not in [${base / 2}, ${base}]`);
    });
  });

  test('nothing listening: stored times out, connect() times out', async () => {
    const port = await freePort();
    const c = client(`ws://127.0.0.1:${port}/messages`, { channel: 'alone' });
    await assert.rejects(c.connect({ timeout: 300 }), (e) => e instanceof BachataError && e.code === 'timeout');
    const { stored, delivered } = c.send({ type: 'direct', dest: 'x', data: 1 }, { storedTimeout: 200 });
    const err = await stored.then(
      () => assert.fail('stored should time out'),
      (e) => e,
    );
    assert.equal(err.code, 'timeout');
    assert.equal(err.retryable, true);
    await assert.rejects(delivered, (e) => e.code === 'timeout');
    assert.equal(c.unconfirmed, 0, 'a timed-out message is not resent');
  });

  test('no 100 on an open connection: stored times out', async () => {
    const server = await startServer();
    cleanups.push(() => server.stop());
    const c = client(server.url, {
      channel: 'muted',
      WebSocket: lossyWebSocket({ dropOut: (t) => t.includes('"dest"') }),
    });
    await c.connect({ timeout: 5_000 });
    const { stored } = c.send({ type: 'direct', dest: 'x', data: 1 }, { storedTimeout: 200 });
    await assert.rejects(stored, (e) => e.code === 'timeout');
  });

  test('no 300: delivered times out, stored still resolves', async () => {
    const server = await startServer();
    cleanups.push(() => server.stop());
    const c = client(server.url, { channel: 'lonely', deliveredTimeout: 300 });
    await c.connect({ timeout: 5_000 });
    const { stored, delivered } = c.send({ type: 'direct', dest: 'away', data: 1 });
    await within(stored, 5_000, 'stored');
    await assert.rejects(delivered, (e) => e instanceof BachataError && e.code === 'timeout');
  });

  test('a delivered timeout before the 100 leaves the message to be resent', async () => {
    const port = await freePort();
    const c = client(`ws://127.0.0.1:${port}/messages`, { channel: 'early', storedTimeout: 0, deliveredTimeout: 200 });
    c.connect();
    const { id, stored, delivered } = c.send({ type: 'direct', dest: 'late', data: 1 });
    await assert.rejects(delivered, (e) => e.code === 'timeout');
    assert.equal(c.unconfirmed, 1);
    const server = await startServer({ port });
    cleanups.push(() => server.stop());
    assert.deepEqual(await within(stored, 10_000, 'stored'), { id });
    assert.equal(c.unconfirmed, 0);
  });

  test('close() rejects unfinished sends with closed', async () => {
    const port = await freePort();
    const c = client(`ws://127.0.0.1:${port}/messages`, { channel: 'quitter' });
    c.connect();
    const opened = c.opened();
    const { stored, delivered } = c.send({ type: 'direct', dest: 'x', data: 1 });
    c.close();
    await assert.rejects(stored, (e) => e.code === 'closed');
    await assert.rejects(delivered, (e) => e.code === 'closed');
    await assert.rejects(opened, (e) => e.code === 'closed');
    assert.equal(c.state, State.CLOSED);
  });
});
