// The web app in Debian's Chromium (playwright-core, the system browser),
// served by a real `chatpipe all --dev --app-dir dist` on loopback ports:
// two browser contexts as two users create a conversation, exchange
// messages, see typing and read state; one goes offline and back and shows
// every message exactly once; search finds a message. Saves
// clients/web/screenshot.png (shown in the README).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { startStack } from '../../typescript/dist/test/support/stack.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let stack;
let browser;

before(async () => {
  const executablePath = execFileSync(join(root, 'scripts', 'ensure-chromium.sh'), { encoding: 'utf8' }).trim();
  stack = await startStack({ dev: true, appDir: join(root, 'dist'), name: 'web' });
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function signIn(name) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 720 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[${name}] page error: ${error.message}`));
  await page.goto(`${stack.apiUrl}/app/`);
  await page.fill('#signin-name', name);
  await page.click('#signin-submit');
  await page.waitForSelector('#status[data-state="open"]', { timeout: 30_000 });
  return { context, page };
}

/** The message bodies the page shows as delivered (not pending), in order. */
function delivered(page) {
  return page.$$eval('#messages li[data-message-id] .body', (nodes) => nodes.map((node) => node.textContent));
}

it('two users chat, go offline and back, and search, in a real browser', async () => {
  const aliceName = stack.user('alice');
  const bobName = stack.user('bob');
  const alice = await signIn(aliceName);
  const bob = await signIn(bobName);

  // Alice creates a conversation with bob and says hello.
  await alice.page.fill('#new-members', bobName);
  await alice.page.fill('#new-title', 'Lunch plans');
  await alice.page.click('#new-submit');
  await alice.page.waitForSelector('#conversation-title:has-text("Lunch plans")');
  await alice.page.fill('#composer-input', 'hello bob, lunch at noon?');
  await alice.page.click('#composer-send');
  await alice.page.waitForSelector('#messages li[data-message-id]:has-text("lunch at noon")');

  // Bob sees it with an unread count, opens it: alice sees the read marker.
  await bob.page.waitForSelector('#conversations li:has-text("Lunch plans") .unread:text("1")', { timeout: 15_000 });
  await bob.page.click('#conversations li:has-text("Lunch plans")');
  await bob.page.waitForSelector('#messages li[data-message-id]:has-text("lunch at noon")');
  await alice.page.waitForSelector(`#messages .read-marker:has-text("read by ${bobName}")`, { timeout: 15_000 });

  // Typing, both ways.
  await bob.page.type('#composer-input', 'sure');
  await alice.page.waitForSelector(`#typing:has-text("${bobName} is typing")`, { timeout: 10_000 });
  await bob.page.click('#composer-send');
  await alice.page.waitForSelector('#messages li[data-message-id]:has-text("sure")');
  // Alice's typing is throttled (one frame per 3 s): her last one was the
  // first message.
  await alice.page.waitForTimeout(3_100);
  await alice.page.type('#composer-input', 'great');
  await bob.page.waitForSelector(`#typing:has-text("${aliceName} is typing")`, { timeout: 10_000 });
  await alice.page.click('#composer-send');
  await bob.page.waitForSelector('#messages li[data-message-id]:has-text("great")');

  // Bob goes offline: the app says so; alice keeps writing; bob writes too
  // (shown pending); back online, everything shows exactly once.
  await bob.context.setOffline(true);
  await bob.page.waitForSelector('#status[data-state="offline"]', { timeout: 10_000 });
  const whileAway = ['one while you were away', 'two: <b>not bold</b> & quinoa salad', 'three'];
  for (const body of whileAway) {
    await alice.page.fill('#composer-input', body);
    await alice.page.click('#composer-send');
  }
  await bob.page.fill('#composer-input', 'typed offline');
  await bob.page.click('#composer-send');
  await bob.page.waitForSelector('#messages li.pending:has-text("typed offline")');
  await alice.page.waitForFunction(() => document.querySelectorAll('#messages li.pending').length === 0);
  await bob.context.setOffline(false);
  await bob.page.waitForSelector('#status[data-state="open"]', { timeout: 30_000 });
  const expected = ['hello bob, lunch at noon?', 'sure', 'great', ...whileAway, 'typed offline'];
  for (const { page } of [alice, bob]) {
    await page.waitForFunction((count) => document.querySelectorAll('#messages li[data-message-id]').length >= count && document.querySelectorAll('#messages li.pending').length === 0, expected.length, { timeout: 30_000 });
    assert.deepEqual(await delivered(page), expected);
  }

  // Search finds the message; the highlight is escaped except for <em>.
  await alice.page.fill('#search-input', 'quinoa');
  const deadline = Date.now() + 30_000;
  for (;;) {
    await alice.page.press('#search-input', 'Enter');
    const found = await alice.page.waitForSelector('#search-results li[data-message-id] em', { timeout: 2_000 }).catch(() => null);
    if (found) break;
    assert.ok(Date.now() < deadline, 'search did not find the message');
  }
  const highlight = await alice.page.$eval('#search-results li[data-message-id] .highlight', (node) => node.innerHTML);
  assert.match(highlight, /<em>quinoa<\/em>/);
  assert.match(highlight, /&lt;b&gt;not bold&lt;\/b&gt;/);
  assert.equal(await alice.page.$$eval('#search-results b', (nodes) => nodes.length), 0, 'no markup but <em>');

  await alice.page.screenshot({ path: join(root, 'screenshot.png') });
});
