'use strict';
// 14. Limits and API errors surfaced through the libraries (§11, §14).

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer({
  apps: [
    { ...h.DEFAULT_APP, max_presence_members: 2, max_event_bytes: 1024 },
    { id: 'app-2', key: 'app-2-key', secret: 'app-2-secret', client_events: false, max_presence_members: 100, max_event_bytes: 10240 },
  ],
});

const APP2 = { id: 'app-2', key: 'app-2-key', secret: 'app-2-secret' };

function expectStatus(status) {
  return (err) => {
    assert.equal(err.status, status, `expected HTTP ${status}, got ${err.status} (${err.message}) body=${JSON.stringify(err.body)}`);
    return true;
  };
}

test('event data over max_event_bytes is rejected with 413; at the limit it is accepted', async () => {
  await assert.rejects(ctx.pusher.trigger('public-big', 'e', 'x'.repeat(1025)), expectStatus(413));
  const res = await ctx.pusher.trigger('public-big', 'e', 'x'.repeat(1024));
  assert.equal(res.status, 200);
});

test('triggerBatch with more than 10 events is rejected with 400', async () => {
  const batch = Array.from({ length: 11 }, (_, i) => ({ channel: 'public-x', name: 'e', data: { i } }));
  await assert.rejects(ctx.pusher.triggerBatch(batch), expectStatus(400));
});

test('trigger with info=subscription_count returns the channel counts (§11.2)', async () => {
  const name = h.uniqueName('public-info-');
  for (let i = 0; i < 2; i++) await h.subscribe(await h.connected(ctx.client()), name);
  const res = await ctx.pusher.trigger(name, 'e', {}, { info: 'subscription_count' });
  assert.deepEqual(await res.json(), { channels: { [name]: { subscription_count: 2 } } });
});

test('presence channel full (max_presence_members): the next user gets subscription_error, others unaffected', async () => {
  const users = { u1: { user_id: 'u1' }, u2: { user_id: 'u2' }, u3: { user_id: 'u3' } };
  const auth = await ctx.authServer(ctx.pusher, { users });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const name = h.uniqueName('presence-full-');
  await h.subscribe(await h.connected(ctx.client(opts('u1'))), name);
  await h.subscribe(await h.connected(ctx.client(opts('u2'))), name);
  // another connection of an existing member does not count against the cap
  await h.subscribe(await h.connected(ctx.client(opts('u2'))), name, { label: 'u2-second' });

  const c3 = await h.connected(ctx.client(opts('u3')), undefined, 'u3');
  const ch = c3.subscribe(name);
  const err = await h.nextEvent(ch, 'pusher:subscription_error', { describe: () => h.describeClient(c3, 'u3') });
  assert.equal(err.data.type, 'LimitReached', JSON.stringify(err.data));
  assert.equal(c3.connection.state, 'connected');
  const res = await ctx.pusher.get({ path: `/channels/${name}`, params: { info: 'user_count' } });
  assert.deepEqual(await res.json(), { occupied: true, user_count: 2 });
});

test('client event rate limit: excess events get pusher:error 4301, connection stays open (§8)', async () => {
  const auth = await ctx.authServer(ctx.pusher);
  const opts = { channelAuthorization: { endpoint: auth.endpoint(), transport: 'ajax' } };
  const name = h.uniqueName('private-rate-');
  const a = await h.connected(ctx.client(opts), undefined, 'A');
  const b = await h.connected(ctx.client(opts), undefined, 'B');
  const { channel: aCh } = await h.subscribe(a, name, { label: 'A' });
  const { channel: bCh } = await h.subscribe(b, name, { label: 'B' });
  const got = h.record(bCh, 'client-burst');
  for (let i = 0; i < 20; i++) aCh.trigger('client-burst', { i });
  await h.waitForFrame(a, (f) => f.event === 'pusher:error' && f.data && f.data.code === 4301, { what: 'pusher:error 4301', label: 'A' });
  await h.sleep(300);
  assert.equal(a.connection.state, 'connected');
  assert.ok(got.length >= 1 && got.length < 20, `B received ${got.length} of 20 burst events`);
});

test('apps are isolated, and client events are not relayed when the app disables them', async () => {
  const lib2 = h.serverLib(ctx.server, APP2);
  const auth2 = await ctx.authServer(lib2);
  const opts2 = { channelAuthorization: { endpoint: auth2.endpoint(), transport: 'ajax' } };
  const name = h.uniqueName('private-iso-');

  // same channel name in both apps
  const auth1 = await ctx.authServer(ctx.pusher);
  const c1 = await h.connected(ctx.client({ channelAuthorization: { endpoint: auth1.endpoint(), transport: 'ajax' } }), undefined, 'app1');
  const { channel: ch1 } = await h.subscribe(c1, name, { label: 'app1' });
  const c2a = await h.connected(ctx.client(opts2, APP2), undefined, 'app2-a');
  const c2b = await h.connected(ctx.client(opts2, APP2), undefined, 'app2-b');
  const { channel: ch2a } = await h.subscribe(c2a, name, { label: 'app2-a' });
  const { channel: ch2b } = await h.subscribe(c2b, name, { label: 'app2-b' });
  const leaked = h.record(ch1, 'iso');

  const got = h.nextEvent(ch2b, 'iso', { describe: () => h.describeClient(c2b, 'app2-b') });
  await lib2.trigger(name, 'iso', { app: 2 });
  await got;
  const marker = h.nextEvent(ch1, 'marker', { describe: () => h.describeClient(c1, 'app1') });
  await ctx.pusher.trigger(name, 'marker', {});
  await marker;
  assert.equal(leaked.length, 0, 'app-2 event delivered to an app-1 subscriber');

  // app-2 has client_events = false
  const relayed = h.record(ch2b, 'client-x');
  ch2a.trigger('client-x', {});
  await h.sleep(300);
  const m2 = h.nextEvent(ch2b, 'marker', { describe: () => h.describeClient(c2b, 'app2-b') });
  await lib2.trigger(name, 'marker', {});
  await m2;
  assert.equal(relayed.length, 0, 'client event relayed although the app disables client events');
  assert.equal(c2a.connection.state, 'connected');
});
