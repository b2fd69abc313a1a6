// The client over wss:// against `bachata serve --tls-cert --tls-key`: a
// throw-away self-signed certificate for localhost (made with openssl),
// trusted through the `ws` package's `ca` option.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';

import { Bachata } from '../bachata.js';
import { startServer, within } from './server.mjs';

function certificate(dir) {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { cert, key };
}

test('send and receive over wss://, the certificate checked', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bachata-js-tls-'));
  const { cert, key } = certificate(dir);
  const ca = readFileSync(cert);
  const server = await startServer({ args: ['--tls-cert', cert, '--tls-key', key] });
  // `ws` takes TLS options as its third argument.
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  }
  const url = `wss://localhost:${server.port}/messages`;
  const alice = new Bachata({ url, channel: 'alice', WebSocket: TrustingWebSocket, reconnect: false });
  const bob = new Bachata({ url, channel: 'bob', WebSocket: TrustingWebSocket, reconnect: false });
  try {
    await within(alice.connect(), 10_000, 'alice connects over wss');
    await within(bob.connect(), 10_000, 'bob connects over wss');
    const got = new Promise((resolve) => bob.on('message', resolve));
    const { stored, delivered } = alice.send({ type: 'direct', dest: 'bob', data: { text: 'over TLS' } });
    await within(stored, 10_000, '100');
    assert.deepEqual((await within(got, 10_000, 'the message')).data, { text: 'over TLS' });
    assert.equal((await within(delivered, 10_000, '300')).from, 'bob');
    // Without the certificate, the client does not connect.
    const doubter = new Bachata({ url, channel: 'eve', WebSocket, reconnect: false, connectTimeout: 3_000 });
    await assert.rejects(within(doubter.connect({ timeout: 3_000 }), 10_000, 'refused'));
    doubter.close();
  } finally {
    alice.close();
    bob.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
