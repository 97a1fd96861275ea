'use strict';
// 9. HTTP API request signing: a wrong secret (or key) is rejected with 401.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

function expectStatus(status) {
  return (err) => {
    assert.equal(err.status, status, `expected HTTP ${status}, got ${err.status} (${err.message}) body=${JSON.stringify(err.body)}`);
    return true;
  };
}

test('trigger signed with a wrong secret is rejected with 401 and not delivered', async () => {
  const c = await h.connected(ctx.client());
  const name = h.uniqueName('public-');
  const { channel } = await h.subscribe(c, name);
  const seen = h.record(channel, 'my-event');

  const wrong = h.serverLib(ctx.server, h.DEFAULT_APP, { secret: 'wrong' });
  await assert.rejects(wrong.trigger(name, 'my-event', { hello: 'world' }), expectStatus(401));

  // the correctly signed request still works, and the forged one was not delivered
  const got = h.nextEvent(channel, 'ok-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(name, 'ok-event', {});
  await got;
  assert.equal(seen.length, 0, `event from a badly signed request was delivered\n${h.describeClient(c)}`);
});

test('other API calls with a wrong secret are rejected with 401', async () => {
  const wrong = h.serverLib(ctx.server, h.DEFAULT_APP, { secret: 'wrong' });
  await assert.rejects(wrong.get({ path: '/channels' }), expectStatus(401));
  await assert.rejects(wrong.triggerBatch([{ channel: 'public-x', name: 'e', data: {} }]), expectStatus(401));
  await assert.rejects(wrong.sendToUser('u1', 'e', {}), expectStatus(401));
});

test('a wrong key for the app id is rejected with 401', async () => {
  const wrong = h.serverLib(ctx.server, h.DEFAULT_APP, { key: 'not-the-key' });
  await assert.rejects(wrong.trigger('public-x', 'e', {}), expectStatus(401));
});
