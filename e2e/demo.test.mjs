// End-to-end: the demo page at `/` in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core; no browser is downloaded).
// e2e/run.sh starts the server and sets BACHATA_URL; see docs/clients.md.
//
// alice and bob log in on two pages, chat both ways and watch the ticks
// (sending, ✓ stored, ✓✓ delivered); bob leaves the page while alice writes
// and gets everything when he comes back; a refused message shows why; a
// server out of room for pending messages refuses with store_full.

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

const BASE = process.env.BACHATA_URL;
// A second server with --max-retained-bytes 1KiB: out of room at once.
const FULL = process.env.BACHATA_FULL_URL;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.E2E_SCREENSHOT ?? null;
const WAIT = 10_000; // every browser wait is bounded by this

let context;
let userDataDir;
const consoleErrors = [];

before(async () => {
  assert.ok(BASE, 'BACHATA_URL is not set: run this through e2e/run.sh');
  userDataDir = mkdtempSync(join(tmpdir(), 'bachata-e2e-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 960, height: 640 },
  });
  context.setDefaultTimeout(WAIT);
  // Loopback only: any request that leaves the server under test fails the run.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    const ours = [BASE, FULL].filter(Boolean).map((u) => new URL(u).origin);
    if (ours.includes(url.origin) || url.protocol === 'data:') return route.continue();
    consoleErrors.push(`external request: ${url.href}`);
    return route.abort();
  });
});

after(async () => {
  await context?.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

async function login(name, { device = '', viewport, base = BASE } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(`${name}: ${msg.text()}`);
  });
  page.on('pageerror', (err) => consoleErrors.push(`${name}: ${err.message}`));
  await page.goto(base);
  await page.locator('#login-channel').fill(name);
  if (device) await page.locator('#login-device').fill(device);
  await page.locator('#login-submit').click();
  await page.locator('#app').waitFor({ state: 'visible' });
  await online(page);
  return page;
}

function online(page) {
  return page.locator('#conn[data-state="open"]').waitFor();
}

async function openChat(page, kind, name) {
  await page.locator('#new-kind').selectOption(kind);
  await page.locator('#new-name').fill(name);
  await page.locator('#new-chat button[type="submit"]').click();
  await page.locator('#chat-name').filter({ hasText: kind === 'group' ? `#${name}` : name }).waitFor();
}

async function say(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
  return page.locator('#messages li.msg.mine').filter({ hasText: text }).last();
}

function theirs(page, text) {
  return page.locator('#messages li.msg.theirs').filter({ hasText: text });
}

async function expectState(msg, state, tick) {
  await msg.and(msg.page().locator(`[data-state="${state}"]`)).waitFor();
  if (tick) assert.equal(await msg.locator('.tick').textContent(), tick);
}

test('two people chat: ticks, offline delivery, refusals', { timeout: 180_000 }, async () => {
  const alice = await login('alice', { device: 'laptop' });
  const bob = await login('bob', { viewport: { width: 390, height: 640 } });
  assert.equal(await alice.locator('#me').textContent(), 'alice · laptop');

  // alice -> bob: ✓ then ✓✓ (bob's page acks on its own).
  await openChat(alice, 'user', 'bob');
  const hi = await say(alice, 'Hi Bob! Are you there?');
  await expectState(hi, 'delivered', '✓✓');
  assert.match(await hi.locator('.tick').getAttribute('title'), /delivered to bob/);

  // bob sees a new conversation with an unread badge, opens it, answers.
  const conv = bob.locator('[data-conv="user:alice"]');
  await conv.waitFor();
  assert.equal(await conv.locator('.badge').textContent(), '1');
  await conv.click();
  await theirs(bob, 'Hi Bob! Are you there?').waitFor();
  const reply = await say(bob, 'Hey Alice, here I am.');
  await expectState(reply, 'delivered', '✓✓');
  await theirs(alice, 'Hey Alice, here I am.').waitFor();

  // bob leaves (the page and its socket are gone); alice's messages are
  // stored (✓) but not delivered while he is away.
  await bob.goto('about:blank');
  const while1 = await say(alice, 'I will write while you are away.');
  const while2 = await say(alice, 'Second message while you are offline.');
  await expectState(while1, 'stored', '✓');
  await expectState(while2, 'stored', '✓');
  await alice.waitForTimeout(500);
  assert.equal(await while2.getAttribute('data-state'), 'stored', 'no ✓✓ while bob is away');

  // bob comes back to the same tab: logged in again, the missed messages
  // arrive, alice gets ✓✓.
  await bob.goto(BASE);
  await online(bob);
  await theirs(bob, 'I will write while you are away.').waitFor();
  await theirs(bob, 'Second message while you are offline.').waitFor();
  await expectState(while1, 'delivered', '✓✓');
  await expectState(while2, 'delivered', '✓✓');
  // Each message shows once (the history survives the reload; redeliveries are dropped).
  assert.equal(await theirs(bob, 'Hi Bob! Are you there?').count(), 1);
  assert.equal(await theirs(bob, 'I will write while you are away.').count(), 1);

  // A group: not a member yet, so the server refuses (400 forbidden)...
  await openChat(alice, 'group', 'team');
  const early = await say(alice, 'Anyone in the team?');
  await expectState(early, 'failed');
  assert.match(await early.locator('.meta').textContent(), /failed: .*member/i);
  // ...join (HTTP API, open on loopback in anonymous mode) and retry.
  await alice.locator('#join').click();
  await alice.locator('#chat-note').filter({ hasText: 'member of #team' }).waitFor();
  await bob.locator('#back').click();
  await openChat(bob, 'group', 'team');
  await bob.locator('#join').click();
  await bob.locator('#chat-note').filter({ hasText: 'member of #team' }).waitFor();
  await early.locator('button', { hasText: 'Retry' }).click();
  await expectState(early, 'delivered', '✓✓');
  await theirs(bob, 'Anyone in the team?').waitFor();
  assert.equal(await theirs(bob, 'Anyone in the team?').locator('.who').textContent(), 'alice');
  const groupReply = await say(bob, 'Me! Group chat works.');
  await expectState(groupReply, 'delivered', '✓✓');
  await theirs(alice, 'Group chat works.').waitFor();

  // Back to the direct conversation for the picture.
  await alice.locator('[data-conv="user:bob"]').click();
  await bob.locator('#back').click();
  await bob.locator('[data-conv="user:alice"]').click();
  const last = await say(alice, 'Everything arrived. ✓✓ means delivered.');
  await expectState(last, 'delivered', '✓✓');
  await theirs(bob, 'Everything arrived.').waitFor();

  assert.deepEqual(consoleErrors, []);

  if (SCREENSHOT) await screenshot(alice, bob, SCREENSHOT);
});

test('a server out of room: the message fails with store_full and can be retried', async () => {
  assert.ok(FULL, 'BACHATA_FULL_URL is not set: run this through e2e/run.sh');
  const carol = await login('carol', { base: FULL });
  await openChat(carol, 'user', 'dave');
  const long = await say(carol, `A long message: ${'la '.repeat(400)}`);
  await expectState(long, 'failed');
  assert.match(await long.locator('.meta').textContent(), /failed: .*max_retained_bytes/);
  assert.equal(await long.locator('button', { hasText: 'Retry' }).count(), 1, 'retryable, like queue_full');
  assert.deepEqual(consoleErrors, []);
  await carol.close();
});

test('the assets come from the server, with their content types', async () => {
  const page = await context.newPage();
  for (const [path, type] of [
    ['/', 'text/html'],
    ['/bachata.js', 'text/javascript'],
    ['/app.js', 'text/javascript'],
    ['/app.css', 'text/css'],
  ]) {
    const res = await page.request.get(new URL(path, BASE).href, { timeout: WAIT });
    assert.equal(res.status(), 200, path);
    assert.ok(res.headers()['content-type'].startsWith(type), `${path}: ${res.headers()['content-type']}`);
  }
  await page.close();
});

/** Both pages side by side in one picture: alice on a laptop, bob on a phone. */
async function screenshot(alice, bob, path) {
  const a = (await alice.screenshot()).toString('base64');
  const b = (await bob.screenshot()).toString('base64');
  const page = await context.newPage();
  await page.setViewportSize({ width: 1440, height: 720 });
  await page.setContent(`<!doctype html><html><body style="margin:0;background:linear-gradient(135deg,#e0e7ff,#fce7f3);
    display:flex;gap:40px;align-items:center;justify-content:center;height:720px;font-family:sans-serif">
    <figure style="margin:0"><img src="data:image/png;base64,${a}" width="960" height="640"
      style="display:block;border-radius:12px;box-shadow:0 10px 30px rgba(0,0,0,.18)"></figure>
    <figure style="margin:0"><img src="data:image/png;base64,${b}" width="390" height="640"
      style="display:block;border-radius:28px;border:8px solid #1f2937;box-shadow:0 10px 30px rgba(0,0,0,.25)"></figure>
    </body></html>`);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, await page.screenshot());
  await page.close();
}
