'use strict';
// 13. Cache channels (§9): the last API event is replayed on subscribe, pusher:cache_miss otherwise.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

test('cache channel: empty -> pusher:cache_miss; after a trigger a new subscriber gets the last event', async () => {
  const name = h.uniqueName('cache-');
  const a = await h.connected(ctx.client(), undefined, 'A');
  const chA = a.subscribe(name);
  const miss = h.nextEvent(chA, 'pusher:cache_miss', { describe: () => h.describeClient(a, 'A') });
  const ok = h.nextEvent(chA, 'pusher:subscription_succeeded', { describe: () => h.describeClient(a, 'A') });
  await ok;
  await miss;

  await ctx.pusher.trigger(name, 'price', { v: 1 });
  await ctx.pusher.trigger(name, 'price', { v: 2 });

  const b = await h.connected(ctx.client(), undefined, 'B');
  const chB = b.subscribe(name);
  const missB = h.record(chB, 'pusher:cache_miss');
  const replay = h.nextEvent(chB, 'price', { describe: () => h.describeClient(b, 'B') });
  assert.deepEqual((await replay).data, { v: 2 });
  assert.equal(missB.length, 0);
  assert.equal(b.frames.filter((f) => f.event === 'price').length, 1, h.describeClient(b, 'B'));

  const res = await ctx.pusher.get({ path: `/channels/${name}`, params: { info: 'cache' } });
  const body = await res.json();
  assert.equal(body.occupied, true);
  assert.ok(body.cache && JSON.parse(body.cache.data).v === 2, JSON.stringify(body));
  assert.ok(body.cache.ttl > 0 && body.cache.ttl <= 1800, JSON.stringify(body));
});
