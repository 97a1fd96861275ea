'use strict';
// 5. Publishing through the server library: socket_id exclusion, several channels, triggerBatch.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

async function twoSubscribers(...names) {
  const a = await h.connected(ctx.client(), undefined, 'A');
  const b = await h.connected(ctx.client(), undefined, 'B');
  const aChs = [];
  const bChs = [];
  for (const n of names) {
    aChs.push((await h.subscribe(a, n, { label: 'A' })).channel);
    bChs.push((await h.subscribe(b, n, { label: 'B' })).channel);
  }
  return { a, b, aChs, bChs };
}

test('trigger with socket_id excludes that connection only', async () => {
  const name = h.uniqueName('public-');
  const { a, b, aChs: [aCh], bChs: [bCh] } = await twoSubscribers(name);
  const aSeen = h.record(aCh, 'my-event');

  const bGot = h.nextEvent(bCh, 'my-event', { describe: () => h.describeClient(b, 'B') });
  const res = await ctx.pusher.trigger(name, 'my-event', { n: 1 }, { socket_id: a.connection.socket_id });
  assert.equal(res.status, 200);
  assert.deepEqual((await bGot).data, { n: 1 });

  // Marker to both; once A has it, anything sent to A before it has arrived too.
  const aMarker = h.nextEvent(aCh, 'marker', { describe: () => h.describeClient(a, 'A') });
  await ctx.pusher.trigger(name, 'marker', {});
  await aMarker;
  assert.equal(aSeen.length, 0, `excluded socket received the event\n${h.describeClient(a, 'A')}`);
});

test('trigger to several channels at once reaches each channel', async () => {
  const n1 = h.uniqueName('public-one-');
  const n2 = h.uniqueName('public-two-');
  const { a, b, aChs, bChs } = await twoSubscribers(n1, n2);
  const waits = [...aChs, ...bChs].map((ch, i) =>
    h.nextEvent(ch, 'multi', { describe: () => h.describeClient(i < 2 ? a : b, i < 2 ? 'A' : 'B') }),
  );
  await ctx.pusher.trigger([n1, n2], 'multi', { both: true });
  for (const w of waits) assert.deepEqual((await w).data, { both: true });
  // exactly one delivery per channel per client
  await h.sleep(200);
  for (const c of [a, b]) {
    assert.equal(c.frames.filter((f) => f.event === 'multi').length, 2, h.describeClient(c));
  }
});

test('triggerBatch delivers every event of the batch, in order, with its data', async () => {
  const n1 = h.uniqueName('public-b1-');
  const n2 = h.uniqueName('public-b2-');
  const { a, b, aChs, bChs } = await twoSubscribers(n1, n2);

  const order = [];
  for (const [c, chs, label] of [[a, aChs, 'A'], [b, bChs, 'B']]) {
    for (const ch of chs) ch.bind_global((ev, data) => !ev.startsWith('pusher') && order.push({ label, ch: ch.name, ev, data }));
  }
  const last = [h.nextEvent(aChs[0], 'third', { describe: () => h.describeClient(a, 'A') }),
    h.nextEvent(bChs[0], 'third', { describe: () => h.describeClient(b, 'B') })];
  const res = await ctx.pusher.triggerBatch([
    { channel: n1, name: 'first', data: { i: 1 } },
    { channel: n2, name: 'second', data: { i: 2, nested: { ok: true } } },
    { channel: n1, name: 'third', data: 'plain string' },
  ]);
  assert.equal(res.status, 200);
  await Promise.all(last);
  // In order per channel: in a cluster the two channels have their own owners, so events
  // of different channels may overtake each other (as with Pusher, order is per channel).
  const expected = [
    { ch: n1, ev: 'first', data: { i: 1 } },
    { ch: n2, ev: 'second', data: { i: 2, nested: { ok: true } } },
    { ch: n1, ev: 'third', data: 'plain string' },
  ];
  for (const label of ['A', 'B']) {
    for (const name of [n1, n2]) {
      assert.deepEqual(
        order.filter((o) => o.label === label && o.ch === name).map(({ ch, ev, data }) => ({ ch, ev, data })),
        expected.filter((e) => e.ch === name),
        `client ${label} on ${name}`,
      );
    }
  }
});

test('triggerBatch honours a per-event socket_id', async () => {
  const name = h.uniqueName('public-');
  const { a, b, aChs: [aCh], bChs: [bCh] } = await twoSubscribers(name);
  const aSeen = h.record(aCh, 'excluded');
  const bGot = h.nextEvent(bCh, 'excluded', { describe: () => h.describeClient(b, 'B') });
  const aMarker = h.nextEvent(aCh, 'marker', { describe: () => h.describeClient(a, 'A') });
  await ctx.pusher.triggerBatch([
    { channel: name, name: 'excluded', data: { x: 1 }, socket_id: a.connection.socket_id },
    { channel: name, name: 'marker', data: {} },
  ]);
  await bGot;
  await aMarker;
  assert.equal(aSeen.length, 0, `excluded socket received the batch event\n${h.describeClient(a, 'A')}`);
});
