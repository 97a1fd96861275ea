'use strict';
// 6. Channel queries through the server library: GET /channels, /channels/{name}, /channels/{name}/users.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

const USERS = {
  alice: { user_id: 'u-alice', user_info: { name: 'Alice' } },
  bob: { user_id: 'u-bob', user_info: { name: 'Bob' } },
};

async function getJson(path, params) {
  const res = await ctx.pusher.get({ path, params });
  assert.equal(res.status, 200, `${path}`);
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    assert.fail(`${path} returned a non-JSON body: ${text}`);
  }
}

async function populate() {
  const auth = await ctx.authServer(ctx.pusher, { users: USERS });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const presence = h.uniqueName('presence-room-');
  const pub = h.uniqueName('public-room-');
  // alice twice, bob once on the presence channel; two of them also on the public channel
  const clients = [];
  for (const [user, alsoPublic] of [['alice', true], ['alice', false], ['bob', true]]) {
    const c = await h.connected(ctx.client(opts(user)), undefined, user);
    await h.subscribe(c, presence, { label: user });
    if (alsoPublic) await h.subscribe(c, pub, { label: user });
    clients.push(c);
  }
  return { presence, pub, clients };
}

test('GET /channels?filter_by_prefix=presence-&info=user_count lists occupied presence channels with user counts', async () => {
  const { presence } = await populate();
  const body = await getJson('/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.deepEqual(body, { channels: { [presence]: { user_count: 2 } } });
});

test('GET /channels without parameters lists every occupied channel', async () => {
  const { presence, pub } = await populate();
  const body = await getJson('/channels');
  assert.deepEqual(Object.keys(body.channels || {}).sort(), [presence, pub].sort(), JSON.stringify(body));
  assert.deepEqual(body.channels[pub], {});
});

test('GET /channels/{name}?info=subscription_count counts connections', async () => {
  const { pub } = await populate();
  assert.deepEqual(await getJson(`/channels/${pub}`, { info: 'subscription_count' }), {
    occupied: true,
    subscription_count: 2,
  });
  assert.deepEqual(await getJson(`/channels/${pub}`), { occupied: true });
});

test('GET /channels/{presence}?info=user_count counts distinct users', async () => {
  const { presence } = await populate();
  assert.deepEqual(await getJson(`/channels/${presence}`, { info: 'user_count' }), { occupied: true, user_count: 2 });
});

test('GET /channels/{presence}?info=user_count,subscription_count (literal comma, §16.5d)', async () => {
  const { presence } = await populate();
  assert.deepEqual(await getJson(`/channels/${presence}`, { info: 'user_count,subscription_count' }), {
    occupied: true,
    user_count: 2,
    subscription_count: 3,
  });
});

test('GET /channels/{presence}/users lists distinct user ids', async () => {
  const { presence } = await populate();
  const body = await getJson(`/channels/${presence}/users`);
  assert.ok(Array.isArray(body.users), JSON.stringify(body));
  assert.deepEqual(body.users.map((u) => u.id).sort(), ['u-alice', 'u-bob']);
  assert.deepEqual(body.users.map((u) => Object.keys(u)), [['id'], ['id']]);
});

test('an unoccupied channel reports occupied:false, and channels disappear once everybody left', async () => {
  const { presence, pub, clients } = await populate();
  assert.deepEqual(await getJson(`/channels/${h.uniqueName('public-empty-')}`), { occupied: false });

  for (const c of clients) c.disconnect();
  const deadline = Date.now() + 5000;
  let body;
  for (;;) {
    body = await getJson('/channels');
    if (Object.keys(body.channels || {}).length === 0 || Date.now() > deadline) break;
    await h.sleep(100);
  }
  assert.deepEqual(body, { channels: {} }, 'channels still listed 5 s after all clients disconnected');
  assert.deepEqual(await getJson(`/channels/${pub}`), { occupied: false });
  assert.deepEqual(await getJson(`/channels/${presence}`), { occupied: false });
});

test('info=user_count on GET /channels without a presence- prefix filter is a 400 (§11.4)', async () => {
  await populate();
  await assert.rejects(ctx.pusher.get({ path: '/channels', params: { info: 'user_count' } }), (err) => {
    assert.equal(err.status, 400, `status ${err.status}, body ${err.body}`);
    return true;
  });
});
