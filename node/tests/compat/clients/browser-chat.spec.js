'use strict';
// pusher-js in a real browser: headless Chromium (Debian's) drives examples/chat, started with
// `npm start`, as two users in two browser contexts (two separate cookie jars, like two people).
// On a cluster Alice's tab is on node 0 and Bob's on node 1 (the page's ?port=).
// Screenshots: target/test-artifacts/clients/<mode>/chat-*.png.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startExample, useBrowser, screenshot, pageLog } = require('./lib');

const ctx = h.useServer();
const chromium = useBrowser();
const MS = 15000; // generous: Chromium on a shared 2-core machine; a pass does not wait for it

/** A signed-in chat tab of `name` connected to the node on `port`. */
async function join(browser, chatUrl, port, name) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  ctx.defer(() => context.close().catch(() => {}));
  const page = await context.newPage();
  page.log = pageLog(page);
  await page.goto(`${chatUrl}?port=${port}`);
  await page.fill('#name', name);
  await page.click('#login button');
  await page.locator('#status', { hasText: `connected to 127.0.0.1:${port}` }).waitFor({ timeout: MS });
  await member(page, `${name} (you)`).waitFor({ timeout: MS });
  return { context, page, name };
}

const member = (page, name) => page.locator('#members li', { hasText: name });

test('chat in Chromium: presence list, room and private messages, typing indicators, a closed tab leaves', async () => {
  const nodes = h.CLUSTER_SIZE ? ctx.server.nodes : [ctx.server, ctx.server];
  const chat = await startExample('chat', { RELAYMESH_PORT: String(ctx.server.port), CHAT_PORT: '0' });
  ctx.defer(() => chat.stop());
  let alice;
  let bob;
  const context = () =>
    `\n--- chat output ---\n${chat.output.join('\n')}` +
    [alice, bob].filter(Boolean).map((u) => `\n--- ${u.name}'s page console ---\n${u.page.log.join('\n')}`).join('') +
    `\n--- relaymesh ---\n${ctx.server.logTail(20)}`;

  try {
    alice = await join(chromium.browser, chat.url, nodes[0].port, 'Alice');
    bob = await join(chromium.browser, chat.url, nodes[1].port, 'Bob');

    // Both see each other online.
    await member(alice.page, 'Bob').waitFor({ timeout: MS });
    await member(bob.page, 'Alice').waitFor({ timeout: MS });
    assert.equal(await alice.page.locator('#online-count').textContent(), '(2)');
    assert.equal(await bob.page.locator('#online-count').textContent(), '(2)');
    await screenshot(alice.page, 'chat-1-alice-sees-bob');
    await screenshot(bob.page, 'chat-1-bob-sees-alice');

    // The room: typing indicator (a client event on the presence channel), then the message.
    await alice.page.type('#text', 'hello everyone');
    await bob.page.locator('#typing', { hasText: 'Alice is typing…' }).waitFor({ timeout: MS });
    await screenshot(bob.page, 'chat-2-bob-sees-alice-typing');
    await alice.page.press('#text', 'Enter');
    const roomMessage = bob.page.locator('#messages li.message', { hasText: 'hello everyone' });
    await roomMessage.waitFor({ timeout: MS });
    assert.equal(await roomMessage.locator('.from').textContent(), 'Alice');
    await alice.page.locator('#messages li.message', { hasText: 'hello everyone' }).waitFor({ timeout: MS });

    // A private conversation: Alice opens it; Bob, still in the room, sees "typing…" and an unread
    // badge next to Alice, then reads the message in their conversation, and answers.
    await member(alice.page, 'Bob').click();
    await alice.page.locator('#title', { hasText: 'Bob (private)' }).waitFor({ timeout: MS });
    await alice.page.type('#text', 'just between us');
    await member(bob.page, 'Alice').locator('.typing').waitFor({ timeout: MS });
    await screenshot(bob.page, 'chat-3-bob-sees-alice-typing-privately');
    await alice.page.press('#text', 'Enter');
    await member(bob.page, 'Alice').locator('.unread', { hasText: '1' }).waitFor({ timeout: MS });
    assert.equal(await bob.page.locator('#messages li', { hasText: 'just between us' }).count(), 0, 'a private message showed in the room');
    await member(bob.page, 'Alice').click();
    await bob.page.locator('#messages li.message', { hasText: 'just between us' }).waitFor({ timeout: MS });
    await bob.page.type('#text', 'sure, Alice');
    await alice.page.locator('#typing', { hasText: 'Bob is typing…' }).waitFor({ timeout: MS });
    await bob.page.press('#text', 'Enter');
    await alice.page.locator('#messages li.message', { hasText: 'sure, Alice' }).waitFor({ timeout: MS });
    await screenshot(alice.page, 'chat-4-alice-private-conversation');

    // Nobody else may join their private channel: the backend refuses to authorize it.
    const channel = await alice.page.evaluate(() => document.querySelector('#members li[data-user-id]:not(.me)').dataset.channel);
    assert.match(channel, /^private-dm-[0-9a-f]{16}-[0-9a-f]{16}$/);
    const login = await fetch(new URL('/login', chat.url), { method: 'POST', body: JSON.stringify({ name: 'Mallory' }) });
    const cookie = login.headers.get('set-cookie').split(';')[0];
    const auth = await fetch(new URL('/pusher/auth', chat.url), {
      method: 'POST',
      headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ socket_id: '1.1', channel_name: channel }).toString(),
    });
    assert.equal(auth.status, 403, `a third user was authorized for ${channel}`);

    // Bob closes his tab: Alice's list drops him (pusher:member_removed).
    await bob.context.close();
    await member(alice.page, 'Bob').waitFor({ state: 'detached', timeout: MS });
    assert.equal(await alice.page.locator('#online-count').textContent(), '(1)');
    await alice.page.locator('#messages li.system', { hasText: 'Bob went offline' }).waitFor({ timeout: MS });
    await screenshot(alice.page, 'chat-5-alice-after-bob-left');
  } catch (err) {
    err.message += context();
    throw err;
  }
});
