'use strict';
// 1. Public channel: subscribe with pusher-js, publish with the pusher server library.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

test('public channel: subscription_succeeded fires and a triggered event reaches the handler', async () => {
  const c = await h.connected(ctx.client());
  assert.match(c.connection.socket_id, /^\d+\.\d+$/, 'socket_id must be two integers joined by a dot');

  const name = h.uniqueName('public-');
  const { channel } = await h.subscribe(c, name);
  assert.equal(channel.subscribed, true);

  const got = h.nextEvent(channel, 'my-event', { describe: () => h.describeClient(c) });
  const res = await ctx.pusher.trigger(name, 'my-event', { hello: 'world' });
  assert.equal(res.status, 200);
  const { data } = await got;
  assert.deepEqual(data, { hello: 'world' });
});

test('public channel: on the wire, event data is the published JSON string, relayed verbatim (§1, §11.2)', async () => {
  const c = await h.connected(ctx.client());
  const name = h.uniqueName('public-');
  const { channel } = await h.subscribe(c, name);
  const got = h.nextEvent(channel, 'my-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(name, 'my-event', { hello: 'world', n: 1.5, list: [1, 'two'] });
  await got;
  const raw = h.rawReceived(c).find((f) => f.event === 'my-event');
  assert.ok(raw, `raw frame not captured\n${h.describeClient(c)}`);
  assert.equal(raw.channel, name);
  assert.equal(raw.data, JSON.stringify({ hello: 'world', n: 1.5, list: [1, 'two'] }));
});

test('public channel: events on other channels are not delivered, unsubscribe stops delivery', async () => {
  const c = await h.connected(ctx.client());
  const a = h.uniqueName('public-a-');
  const b = h.uniqueName('public-b-');
  const { channel } = await h.subscribe(c, a);
  const seen = h.record(channel, 'my-event');

  await ctx.pusher.trigger(b, 'my-event', { n: 0 });
  const got = h.nextEvent(channel, 'my-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(a, 'my-event', { n: 1 });
  await got;
  assert.deepEqual(seen.map((s) => s.data), [{ n: 1 }]);
  assert.equal(c.frames.filter((f) => f.channel === b).length, 0, `no frame for ${b} expected`);

  // Unsubscribe, then publish to the old channel and to a marker channel; the marker arrives,
  // the old channel's event must not.
  c.unsubscribe(a);
  const { channel: marker } = await h.subscribe(c, h.uniqueName('public-marker-'));
  const markerGot = h.nextEvent(marker, 'marker', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(a, 'my-event', { n: 2 });
  await ctx.pusher.trigger(marker.name, 'marker', {});
  await markerGot;
  assert.equal(
    c.frames.filter((f) => f.channel === a && f.event === 'my-event').length,
    1,
    `after unsubscribe no further events on ${a} expected\n${h.describeClient(c)}`,
  );
});
