'use strict';
// 7. User sign-in with pusher.authenticateUser, sendToUser, terminateUserConnections.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

function signedInClient(userData, label) {
  const c = ctx.client({
    userAuthentication: {
      customHandler: (params, cb) => cb(null, ctx.pusher.authenticateUser(params.socketId, userData)),
    },
  });
  c.label = label;
  return c;
}

/** signin() and wait for signin_success and for the automatic #server-to-user-{id} subscription. */
async function signin(c, id) {
  await h.connected(c, undefined, c.label);
  c.signin();
  await h.waitForFrame(c, (f) => f.event === 'pusher:signin_success', { what: 'pusher:signin_success', label: c.label });
  await h.withTimeout(c.user.signinDonePromise, 5000, 'signinDonePromise');
  assert.equal(c.user.user_data && c.user.user_data.id, id, `user_data after sign-in: ${JSON.stringify(c.user.user_data)}`);
  await h.waitForFrame(
    c,
    (f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === `#server-to-user-${id}`,
    { what: `subscription_succeeded for #server-to-user-${id}`, label: c.label },
  );
}

test('sign-in: signin_success echoes user_data; sendToUser reaches client.user.bind handlers of that user only', async () => {
  const u1 = signedInClient({ id: 'u1', user_info: { name: 'A' } }, 'u1');
  const u2 = signedInClient({ id: 'u2', user_info: { name: 'B' } }, 'u2');
  const anon = await h.connected(ctx.client(), undefined, 'anonymous');
  await signin(u1, 'u1');
  await signin(u2, 'u2');
  assert.deepEqual(u1.user.user_data, { id: 'u1', user_info: { name: 'A' } });

  const u2Seen = [];
  u2.user.bind('my-event', (d) => u2Seen.push(d));
  const got = new Promise((resolve) => u1.user.bind('my-event', resolve));
  const res = await ctx.pusher.sendToUser('u1', 'my-event', { x: 1 });
  assert.equal(res.status, 200);
  assert.deepEqual(await h.withTimeout(got, 5000, 'my-event on u1.user', () => h.describeClient(u1, 'u1')), { x: 1 });

  // Marker to u2 so that anything misrouted to u2 would have arrived by now.
  const marker = new Promise((resolve) => u2.user.bind('marker', resolve));
  await ctx.pusher.sendToUser('u2', 'marker', {});
  await h.withTimeout(marker, 5000, 'marker on u2.user', () => h.describeClient(u2, 'u2'));
  assert.deepEqual(u2Seen, [], 'event for u1 delivered to u2');
  assert.equal(anon.frames.filter((f) => f.event === 'my-event').length, 0, 'event for u1 delivered to an anonymous socket');
});

test('sign-in: every connection of the user receives sendToUser events', async () => {
  const c1 = signedInClient({ id: 'u1' }, 'u1-a');
  const c2 = signedInClient({ id: 'u1' }, 'u1-b');
  await signin(c1, 'u1');
  await signin(c2, 'u1');
  const got = [c1, c2].map((c) => h.withTimeout(new Promise((r) => c.user.bind('hello', r)), 5000, `hello on ${c.label}`, () => h.describeClient(c, c.label)));
  await ctx.pusher.sendToUser('u1', 'hello', { all: true });
  for (const g of got) assert.deepEqual(await g, { all: true });
});

test('sign-in: a socket that is not signed in as u1 cannot subscribe to #server-to-user-u1', async () => {
  const u2 = signedInClient({ id: 'u2' }, 'u2');
  await signin(u2, 'u2');
  // pusher-js refuses '#' channels from application code, so send the raw frame.
  u2.send_event('pusher:subscribe', { auth: '', channel: '#server-to-user-u1' });
  const marker = new Promise((resolve) => u2.user.bind('marker', resolve));
  await h.sleep(200);
  await ctx.pusher.sendToUser('u1', 'secret', { for: 'u1' });
  await ctx.pusher.sendToUser('u2', 'marker', {});
  await h.withTimeout(marker, 5000, 'marker on u2.user', () => h.describeClient(u2, 'u2'));
  assert.equal(
    u2.frames.filter((f) => f.channel === '#server-to-user-u1' && f.event === 'pusher_internal:subscription_succeeded').length,
    0,
    `subscription to another user's channel succeeded\n${h.describeClient(u2, 'u2')}`,
  );
  assert.equal(u2.frames.filter((f) => f.event === 'secret').length, 0, `u1's event reached u2\n${h.describeClient(u2, 'u2')}`);
});

test('terminateUserConnections disconnects the user (and only that user) for good', async () => {
  const u1 = signedInClient({ id: 'u1', user_info: { name: 'A' } }, 'u1');
  const u2 = signedInClient({ id: 'u2' }, 'u2');
  await signin(u1, 'u1');
  await signin(u2, 'u2');

  const left = h.withTimeout(
    new Promise((resolve) => u1.connection.bind('state_change', ({ current }) => current !== 'connected' && resolve(current))),
    5000,
    'u1 to leave the connected state',
    () => h.describeClient(u1, 'u1'),
  );
  const res = await ctx.pusher.terminateUserConnections('u1');
  assert.equal(res.status, 200);
  await left;

  // pusher-js must not come back by itself (close code 4009, §10.2): still not connected 2 s later.
  await h.sleep(2000);
  assert.notEqual(u1.connection.state, 'connected', `u1 reconnected by itself\n${h.describeClient(u1, 'u1')}`);
  assert.equal(u1.connection.state, 'disconnected', `u1 state\n${h.describeClient(u1, 'u1')}`);

  // The other user is untouched.
  assert.equal(u2.connection.state, 'connected');
  const got = new Promise((resolve) => u2.user.bind('still-here', resolve));
  await ctx.pusher.sendToUser('u2', 'still-here', { ok: true });
  assert.deepEqual(await h.withTimeout(got, 5000, 'still-here on u2', () => h.describeClient(u2, 'u2')), { ok: true });
});
