// Test helpers: a real `bachata serve` process on a loopback port, and small
// bounded waits. Not a test file itself (node --test only runs *.test.mjs).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const BIN =
  process.env.BACHATA_BIN ?? fileURLToPath(new URL('../../../target/debug/bachata', import.meta.url));

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/**
 * Starts `bachata serve` and resolves once it logs
 * `accepting connections addr=127.0.0.1:PORT`. Options: `port` (default 0:
 * any free one), `dataDir` (embedded store there; default: memory store),
 * `args` (more flags), `timeout` (ms to wait for the log line).
 */
export async function startServer({ port = 0, dataDir = null, args = [], timeout = 15_000 } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`no server binary at ${BIN}: run cargo build -p bachata-server (or set BACHATA_BIN)`);
  }
  const argv = ['serve', '--listen', `127.0.0.1:${port}`];
  if (dataDir) argv.push('--store', 'embedded', '--data-dir', dataDir);
  else argv.push('--store', 'memory');
  argv.push(...args);
  // A port just freed by a stopped server may take a moment: a few tries.
  let lastError;
  for (let attempt = 0; attempt < 10; attempt++) {
    try {
      return await spawnServer(argv, timeout);
    } catch (e) {
      lastError = e;
      if (port === 0 || !/in use|bind/i.test(e.message)) throw e;
      await sleep(300);
    }
  }
  throw lastError;
}

function spawnServer(argv, timeout) {
  const env = { ...process.env, BACHATA_LOG: 'info' };
  for (const k of Object.keys(env)) if (k.startsWith('BACHATA_') && k !== 'BACHATA_LOG') delete env[k];
  const child = spawn(BIN, argv, { stdio: ['ignore', 'ignore', 'pipe'], env });
  children.add(child);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  let log = '';
  let started = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bachata did not start within ${timeout} ms:\n${log}`));
    }, timeout);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /accepting connections addr=127\.0\.0\.1:(\d+)/.exec(log);
      if (m && !started) {
        started = true;
        clearTimeout(timer);
        const port = Number(m[1]);
        resolve(server(child, port, exited, () => log));
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      reject(new Error(`bachata exited before accepting connections:\n${log}`));
    });
  });
}

function server(child, port, exited, log) {
  return {
    port,
    url: `ws://127.0.0.1:${port}/messages`,
    http: `http://127.0.0.1:${port}`,
    log,
    exited,
    /** SIGTERM (graceful: sockets close with 1001), SIGKILL after `timeout`. */
    async stop(timeout = 12_000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
    /** SIGKILL: a crash. */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
}

export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), 'bachata-js-test-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A loopback port nothing listens on (bound, then released). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `predicate` every 10 ms until it is truthy; rejects after `timeout`. */
export async function waitFor(predicate, timeout = 5_000, what = 'condition') {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Resolves with the first `event` value from `client` that passes `filter`. */
export function nextEvent(client, event, filter = () => true, timeout = 5_000) {
  return new Promise((resolve, reject) => {
    const off = client.on(event, (value) => {
      if (!filter(value)) return;
      off();
      clearTimeout(timer);
      resolve(value);
    });
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeout} ms waiting for the ${event} event`));
    }, timeout);
  });
}

/** Rejects if `promise` has not settled within `ms`. */
export function within(promise, ms, what = 'promise') {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Whether `promise` is still pending after `ms`. */
export async function stillPending(promise, ms) {
  const marker = Symbol('pending');
  let timer;
  const result = await Promise.race([
    promise.then(
      () => 'resolved',
      () => 'rejected',
    ),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve(marker), ms);
    }),
  ]);
  clearTimeout(timer);
  return result === marker;
}

/** A `fetch` with a timeout. */
export async function http(method, url, body) {
  const res = await fetch(url, {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5_000),
  });
  return { status: res.status, text: await res.text() };
}

/** A `ws` WebSocket that can drop frames in either direction. */
export function lossyWebSocket({ dropOut = () => false, dropIn = () => false }) {
  return class LossyWebSocket extends WebSocket {
    send(data, ...rest) {
      if (dropOut(String(data))) return;
      super.send(data, ...rest);
    }
    get onmessage() {
      return super.onmessage;
    }
    set onmessage(fn) {
      super.onmessage = (ev) => {
        if (!dropIn(String(ev.data))) fn(ev);
      };
    }
  };
}
