#!/usr/bin/env node
// How much server memory one large frame per connection leaves behind
// (docs/security.md, "Hostile and careless clients"; run by .ci/run).
//
//   node scripts/frame-buffer-probe.js BINARY [CONNECTIONS] [FRAME_BYTES] [MAX_KB]
//
// Starts `BINARY serve --store memory` on a free loopback port, opens
// CONNECTIONS (default 1000) WebSockets, then has each in turn send one
// frame of FRAME_BYTES (default 60000; not JSON, so answered with a 400)
// and wait for the answer: one frame in flight at a time, so what the
// server's RSS gains is what the connections keep, not a peak. Prints the
// RSS before and after the frames, per connection, and exits with 1 when
// that is more than MAX_KB per connection. Needs the `ws` package
// of clients/js (`npm ci` there). Linux only (reads /proc).
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const WebSocket = require(path.join(__dirname, '../clients/js/node_modules/ws'));

const [binary, n = '1000', size = '60000', maxKb] = process.argv.slice(2);
if (!binary) {
  console.error('usage: frame-buffer-probe.js BINARY [CONNECTIONS] [FRAME_BYTES] [MAX_KB]');
  process.exit(2);
}
const rssKb = (pid) =>
  Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const freePort = () =>
  new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
const within = (ms, what, promise) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
  ]);

async function main() {
  const port = await freePort();
  const server = spawn(binary, ['serve', '--listen', `127.0.0.1:${port}`, '--store', 'memory'], {
    stdio: 'ignore',
  });
  try {
    const url = `ws://127.0.0.1:${port}/messages`;
    const open = (i) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`${url}?channel=probe${i}`, { perMessageDeflate: false });
        ws.once('message', () => resolve(ws)); // `ready`
        ws.once('error', reject);
      });
    // The server may still be starting: retry the first connection.
    let first;
    for (let tries = 0; !first; tries++) {
      first = await open(0).catch((e) => {
        if (tries > 50) throw e;
        return new Promise((r) => setTimeout(r, 100));
      });
    }
    const socks = [first];
    for (let i = 1; i < +n; i++) socks.push(await within(10000, 'connect', open(i)));
    await new Promise((r) => setTimeout(r, 2000));
    const before = rssKb(server.pid);
    const frame = 'x'.repeat(+size);
    for (const ws of socks) {
      await within(10000, 'answer', new Promise((resolve) => {
        ws.once('message', resolve); // the 400
        ws.send(frame);
      }));
    }
    await new Promise((r) => setTimeout(r, 2000));
    const after = rssKb(server.pid);
    const kept = (after - before) / +n;
    console.log(
      `${n} connections, one ${size}-byte frame each: server RSS ${before} KB -> ${after} KB: ` +
        `${kept.toFixed(1)} KB kept per connection`,
    );
    for (const ws of socks) ws.terminate();
    if (maxKb !== undefined && kept > +maxKb) {
      console.error(`more than ${maxKb} KB kept per connection`);
      process.exitCode = 1;
    }
  } finally {
    server.kill();
  }
}
main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
