'use strict';
// 16. Subscription counting (§13.1): pusher-js emits pusher:subscription_count with the
// channel's count when the app has the feature on.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer({ apps: [{ ...h.DEFAULT_APP, subscription_count: true }] });

test('pusher-js receives the subscription count of a channel and keeps it on the channel', async () => {
  const name = h.uniqueName('counted-');
  const a = await h.connected(ctx.client());
  const channelA = a.subscribe(name);
  const first = h.nextEvent(channelA, 'pusher:subscription_count');
  await h.nextEvent(channelA, 'pusher:subscription_succeeded').catch(() => {});
  assert.deepEqual((await first).data, { subscription_count: 1 });

  const second = h.nextEvent(channelA, 'pusher:subscription_count');
  const b = await h.connected(ctx.client());
  b.subscribe(name);
  assert.deepEqual((await second).data, { subscription_count: 2 });
  assert.equal(channelA.subscriptionCount, 2);
});
