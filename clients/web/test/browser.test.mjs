// The web app in Debian's Chromium (playwright-core, the system browser),
// served by a real `chatpipe all --dev --app-dir dist` on loopback ports:
// two browser contexts as two users create a conversation, exchange
// messages, see typing and read state; one goes offline and back and shows
// every message exactly once; search finds a message. Then the message
// lifecycle and the inbox: one user edits, deletes, reacts and replies, the
// other sees each; the inbox's order, previews and unread and mention
// counts follow the activity, live and from the server after a reload, and
// membership changes add and remove conversations. Saves
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

/** Searches until a highlighted hit shows (the index trails the ack by its batch). */
async function searchUntilFound(page, query) {
  await page.fill('#search-input', query);
  const deadline = Date.now() + 30_000;
  for (;;) {
    await page.press('#search-input', 'Enter');
    const found = await page.waitForSelector('#search-results li[data-message-id] em', { timeout: 2_000 }).catch(() => null);
    if (found) return;
    assert.ok(Date.now() < deadline, `search did not find ${query}`);
  }
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
  await searchUntilFound(alice.page, 'quinoa');
  const highlight = await alice.page.$eval('#search-results li[data-message-id] .highlight', (node) => node.innerHTML);
  assert.match(highlight, /<em>quinoa<\/em>/);
  assert.match(highlight, /&lt;b&gt;not bold&lt;\/b&gt;/);
  assert.equal(await alice.page.$$eval('#search-results b', (nodes) => nodes.length), 0, 'no markup but <em>');
  await alice.context.close();
  await bob.context.close();
});

/** The inbox as shown: `title unread @mentions`, top to bottom. */
function inbox(page) {
  return page.$$eval('#conversations li', (items) =>
    items.map((li) => [li.querySelector('.title').textContent, li.querySelector('.unread').textContent, li.querySelector('.mentions').textContent].join(' ').trim()),
  );
}

async function waitForInbox(page, expected, what) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify([...document.querySelectorAll('#conversations li')].map((li) => [li.querySelector('.title').textContent, li.querySelector('.unread').textContent, li.querySelector('.mentions').textContent].join(' ').trim())) === JSON.stringify(want),
      expected,
      { timeout: 20_000 },
    );
  } catch {
    assert.deepEqual(await inbox(page), expected, what);
  }
}

/** A message of the open conversation, by a piece of its own text (not of a quote). */
const messageWith = (text) => `#messages li[data-message-id]:has(.body:has-text(${JSON.stringify(text)}))`;

async function send(page, body) {
  await page.fill('#composer-input', body);
  await page.click('#composer-send');
  await page.waitForSelector(`${messageWith(body)}:not(.pending)`);
}

it('edits, deletes, reactions, replies and mentions reach the other user; the inbox follows the activity', async () => {
  const carolName = stack.user('carol');
  const daveName = stack.user('dave');
  const carol = await signIn(carolName);
  const dave = await signIn(daveName);
  const api = async (user, method, path, body) => {
    const response = await fetch(`${stack.apiUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${await stack.token(user)}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    assert.ok(response.ok, `${method} ${path}: ${response.status}`);
    const text = await response.text();
    return text ? JSON.parse(text) : undefined;
  };

  // Two conversations; carol writes in both, mentioning dave once.
  for (const title of ['Project', 'Weekend']) {
    await carol.page.fill('#new-members', daveName);
    await carol.page.fill('#new-title', title);
    await carol.page.click('#new-submit');
    await carol.page.waitForSelector(`#conversation-title:has-text("${title}")`);
  }
  await carol.page.click('#conversations li:has-text("Project")');
  await send(carol.page, `status update for @${daveName} here`);
  await send(carol.page, 'typo mesage');
  await carol.page.click('#conversations li:has-text("Weekend")');
  await send(carol.page, 'hiking on saturday?');

  // Dave's inbox: the newest activity first, unread and mention counts.
  await waitForInbox(dave.page, ['Weekend 1', 'Project 2 @1'], 'dave\'s inbox after carol wrote');
  assert.equal(await dave.page.$eval('#conversations li:has-text("Weekend") .preview', (node) => node.textContent), `${carolName}: hiking on saturday?`);
  await dave.page.click('#conversations li:has-text("Project")');
  await dave.page.waitForSelector(`${messageWith('status update')} .mention.me:text-is("@${daveName}")`);
  await waitForInbox(dave.page, ['Weekend 1', 'Project'], 'opening a conversation reads it');

  // Carol edits her typo: dave sees the new text, marked edited.
  await carol.page.click('#conversations li:has-text("Project")');
  await carol.page.click(`${messageWith('typo mesage')} [data-action="edit"]`);
  await carol.page.waitForSelector('#composing:has-text("Editing")');
  await carol.page.fill('#composer-input', 'typo message, fixed');
  await carol.page.click('#composer-send');
  await dave.page.waitForSelector(`${messageWith('typo message, fixed')} .edited`, { timeout: 15_000 });
  assert.equal(await dave.page.$$eval(messageWith('typo mesage'), (nodes) => nodes.length), 0);

  // Dave reacts, carol adds hers by clicking the count: both see 2, each
  // with their own marked; dave takes his back.
  await dave.page.click(`${messageWith('typo message, fixed')} [data-action="react"][data-reaction="👍"]`);
  await carol.page.waitForSelector(`${messageWith('typo message, fixed')} .reaction[data-reaction="👍"]:text-is("👍 1")`, { timeout: 15_000 });
  await carol.page.click(`${messageWith('typo message, fixed')} .reaction[data-reaction="👍"]`);
  for (const { page } of [carol, dave]) {
    await page.waitForSelector(`${messageWith('typo message, fixed')} .reaction.mine[data-reaction="👍"]:text-is("👍 2")`, { timeout: 15_000 });
  }
  await dave.page.click(`${messageWith('typo message, fixed')} .reaction[data-reaction="👍"]`);
  await carol.page.waitForSelector(`${messageWith('typo message, fixed')} .reaction.mine[data-reaction="👍"]:text-is("👍 1")`, { timeout: 15_000 });
  await dave.page.waitForSelector(`${messageWith('typo message, fixed')} .reaction:not(.mine)[data-reaction="👍"]:text-is("👍 1")`);

  // Dave replies to the fixed message: carol sees it quoted.
  await dave.page.click(`${messageWith('typo message, fixed')} [data-action="reply"]`);
  await dave.page.waitForSelector('#composing:has-text("Replying to")');
  await send(dave.page, 'looks good now');
  await carol.page.waitForSelector(`${messageWith('looks good now')} .quote:has-text("typo message, fixed")`, { timeout: 15_000 });

  // Carol deletes her first message: a placeholder on both sides, the text gone.
  await carol.page.click(`${messageWith('status update')} [data-action="delete"]`);
  for (const { page } of [carol, dave]) {
    await page.waitForFunction(() => [...document.querySelectorAll('#messages li.deleted .body')].some((node) => node.textContent === '(deleted)'), null, { timeout: 15_000 });
    assert.equal(await page.$$eval(messageWith('status update'), (nodes) => nodes.length), 0, 'the body is gone');
  }
  // Only carol's own messages offer edit and delete.
  assert.equal(await dave.page.$$eval(`${messageWith('typo message, fixed')} [data-action="edit"]`, (nodes) => nodes.length), 0);

  // Activity moves conversations up: dave's reply put Project on top; a
  // new message in Weekend moves it back, with 2 unread.
  await waitForInbox(dave.page, ['Project', 'Weekend 1'], 'dave replied in Project');
  await carol.page.click('#conversations li:has-text("Weekend")');
  await send(carol.page, 'or sunday');
  await waitForInbox(dave.page, ['Weekend 2', 'Project'], 'carol wrote in Weekend');
  // From the server after a reload: the same order and counts.
  await dave.page.waitForTimeout(1_000);
  await dave.page.reload();
  await dave.page.waitForSelector('#status[data-state="open"]', { timeout: 30_000 });
  await waitForInbox(dave.page, ['Weekend 2', 'Project'], 'the inbox from the server');
  assert.equal(await dave.page.$eval('#conversations li:has-text("Project") .preview', (node) => node.textContent), 'you: looks good now');

  // Membership: a conversation dave is added to appears; one he is removed from goes.
  const { conversation_id: later } = await api(carolName, 'POST', '/v1/conversations', { members: [], title: 'Later' });
  await api(carolName, 'POST', `/v1/conversations/${later}/members`, { user_id: daveName });
  await waitForInbox(dave.page, ['Later', 'Weekend 2', 'Project'], 'added to Later');
  const weekend = await dave.page.$eval('#conversations li:has-text("Weekend")', (node) => node.dataset.conversationId);
  await api(carolName, 'DELETE', `/v1/conversations/${weekend}/members/${daveName}`);
  await waitForInbox(dave.page, ['Later', 'Project'], 'removed from Weekend');

  // The screenshot: carol's view of Project (edit, reactions, reply,
  // delete, previews) with a search highlight.
  await carol.page.click('#conversations li:has-text("Project")');
  await searchUntilFound(carol.page, 'hiking');
  await carol.page.screenshot({ path: join(root, 'screenshot.png') });
});
