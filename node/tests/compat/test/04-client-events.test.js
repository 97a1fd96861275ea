'use strict';
// 4. Client events between two pusher-js clients: relayed to others, never echoed to the sender,
//    and on presence channels tagged with the sender's user_id.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

const USERS = {
  alice: { user_id: 'u-alice', user_info: { name: 'Alice' } },
  bob: { user_id: 'u-bob', user_info: { name: 'Bob' } },
};

async function pair(name) {
  const auth = await ctx.authServer(ctx.pusher, { users: USERS });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const a = await h.connected(ctx.client(opts('alice')), undefined, 'A');
  const b = await h.connected(ctx.client(opts('bob')), undefined, 'B');
  const { channel: aCh } = await h.subscribe(a, name, { label: 'A' });
  const { channel: bCh } = await h.subscribe(b, name, { label: 'B' });
  return { a, b, aCh, bCh };
}

/** Publishes an API event on `name` and waits until `c` got it: everything the server queued to c earlier has arrived. */
async function flush(c, ch, label) {
  const got = h.nextEvent(ch, 'flush-marker', { describe: () => h.describeClient(c, label) });
  await ctx.pusher.trigger(ch.name, 'flush-marker', {});
  await got;
}

test('client events on a private channel: A -> B, not echoed to A, no user_id added', async () => {
  const name = h.uniqueName('private-chat-');
  const { a, b, aCh, bCh } = await pair(name);
  const echoed = h.record(aCh, 'client-typing');

  const got = h.nextEvent(bCh, 'client-typing', { describe: () => `${h.describeClient(b, 'B')}\n${h.describeClient(a, 'A')}` });
  assert.equal(aCh.trigger('client-typing', { typing: true }), true, 'pusher-js refused to send the client event');
  const { data, metadata } = await got;
  assert.deepEqual(data, { typing: true });
  assert.equal(metadata.user_id, undefined, 'user_id must only be added on presence channels');

  await flush(a, aCh, 'A');
  assert.equal(echoed.length, 0, `client event echoed to its sender\n${h.describeClient(a, 'A')}`);
});

test('client events on a presence channel: metadata.user_id is the sender, not echoed', async () => {
  const name = h.uniqueName('presence-chat-');
  const { a, b, aCh, bCh } = await pair(name);
  const echoed = h.record(aCh, 'client-typing');

  const got = h.nextEvent(bCh, 'client-typing', { describe: () => h.describeClient(b, 'B') });
  aCh.trigger('client-typing', { typing: true });
  const { data, metadata } = await got;
  assert.deepEqual(data, { typing: true });
  assert.equal(metadata && metadata.user_id, 'u-alice', `metadata: ${JSON.stringify(metadata)}`);

  // and the other way round
  const back = h.nextEvent(aCh, 'client-typing', { describe: () => h.describeClient(a, 'A') });
  bCh.trigger('client-typing', { typing: false });
  const r = await back;
  assert.deepEqual(r.data, { typing: false });
  assert.equal(r.metadata && r.metadata.user_id, 'u-bob');
  assert.equal(echoed.length, 1, 'A must have received only B\'s event');

  await flush(b, bCh, 'B');
  assert.equal(
    b.frames.filter((f) => f.event === 'client-typing').length,
    1,
    `B must not get its own client event back\n${h.describeClient(b, 'B')}`,
  );
});

test('client events on a public channel are not relayed (§8: private-/presence- only)', async () => {
  const name = h.uniqueName('public-chat-');
  const a = await h.connected(ctx.client(), undefined, 'A');
  const b = await h.connected(ctx.client(), undefined, 'B');
  const { channel: aCh } = await h.subscribe(a, name, { label: 'A' });
  const { channel: bCh } = await h.subscribe(b, name, { label: 'B' });
  const leaked = h.record(bCh, 'client-typing');
  aCh.trigger('client-typing', { typing: true });
  await h.sleep(300);
  await flush(b, bCh, 'B');
  assert.equal(leaked.length, 0, `client event relayed on a public channel\n${h.describeClient(b, 'B')}`);
  assert.equal(a.connection.state, 'connected', 'the sender must stay connected');
});
