'use strict';
// Laravel Echo (npm laravel-echo) with pusher-js as its broadcaster, configured the way a Laravel
// app configures it for a self-hosted server (wsHost, wsPort, forceTLS false, authEndpoint), and
// events named the way Laravel's broadcaster names them (App\Events\...).

const { test, before } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();
const USERS = {
  alice: { user_id: '1', user_info: { id: 1, name: 'Alice' } },
  bob: { user_id: '2', user_info: { id: 2, name: 'Bob' } },
};

let Echo;
before(async () => {
  // laravel-echo 2 is an ES module package; its CommonJS file does not load under require().
  ({ default: Echo } = await import('laravel-echo'));
});

/** An Echo instance signed in as `user` (through `auth`, the app's auth endpoint), on the next node. */
async function echo(auth, user) {
  const node = h.clientNode(ctx.server);
  const e = new Echo({
    broadcaster: 'pusher',
    key: h.DEFAULT_APP.key,
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: node.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    authEndpoint: auth.endpoint(user), // Laravel's is /broadcasting/auth
    Pusher: h.PusherClient,
  });
  const c = h.track(e.connector.pusher, node !== ctx.server ? node : null);
  ctx.defer(() => e.disconnect());
  e.user = user;
  e.describe = () => h.describeClient(c, user);
  await h.connected(c, undefined, user);
  return e;
}

/** Resolves with the arguments of the first call of the callback that `register(cb)` installs. */
function firstCall(register, what, describe) {
  return h.withTimeout(new Promise((resolve) => register((...args) => resolve(args))), h.DEFAULT_TIMEOUT_MS, what, describe);
}

/** The app's auth endpoint, and Alice's and Bob's Echo, connected. */
async function aliceAndBob() {
  const auth = await ctx.authServer(ctx.pusher, { users: USERS });
  return { auth, alice: await echo(auth, 'alice'), bob: await echo(auth, 'bob') };
}

/** Waits until each [echo, channel] pair's subscription has succeeded. */
function subscribed(...pairs) {
  return Promise.all(pairs.map(([e, ch]) => firstCall((cb) => ch.subscribed(cb), `${e.user} subscribed to ${ch.name}`, e.describe)));
}

test('Echo: public channel listen (namespaced and dot-prefixed events), toOthers exclusion', async () => {
  const { auth, alice, bob } = await aliceAndBob();
  const name = h.uniqueName('orders-');
  const aCh = alice.channel(name);
  const bCh = bob.channel(name);
  await subscribed([alice, aCh], [bob, bCh]);

  // broadcast(new OrderShipped($order)) arrives as App\Events\OrderShipped.
  const shipped = firstCall((cb) => aCh.listen('OrderShipped', cb), 'OrderShipped on alice', alice.describe);
  const raw = firstCall((cb) => aCh.listen('.order.status', cb), '.order.status on alice', alice.describe);
  await ctx.pusher.trigger(name, 'App\\Events\\OrderShipped', { order: { id: 7 } });
  await ctx.pusher.trigger(name, 'order.status', { status: 'packed' });
  assert.deepEqual((await shipped)[0], { order: { id: 7 } });
  assert.deepEqual((await raw)[0], { status: 'packed' });

  // broadcast(...)->toOthers(): the request carries Echo's socketId(), whose connection is left out.
  assert.match(alice.socketId(), /^\d+\.\d+$/);
  const seenByAlice = [];
  aCh.listen('.chat.message', (d) => seenByAlice.push(d));
  const bobGets = firstCall((cb) => bCh.listen('.chat.message', cb), 'chat.message on bob', bob.describe);
  await ctx.pusher.trigger(name, 'chat.message', { text: 'from alice' }, { socket_id: alice.socketId() });
  assert.deepEqual((await bobGets)[0], { text: 'from alice' });
  // Ordering marker: published after the excluded event, so alice has had it if she was sent it.
  const marker = firstCall((cb) => aCh.listen('.marker', cb), 'marker on alice', alice.describe);
  await ctx.pusher.trigger(name, 'marker', {});
  await marker;
  assert.deepEqual(seenByAlice, [], `toOthers: the sender received its own event\n${alice.describe()}`);
});

test('Echo: private channel (authorized via authEndpoint), events, whispers, a refused subscription reaches .error()', async () => {
  const { auth, alice, bob } = await aliceAndBob();
  const name = h.uniqueName('orders.');
  const aCh = alice.private(name);
  const bCh = bob.private(name);
  assert.equal(aCh.name, `private-${name}`);
  await subscribed([alice, aCh], [bob, bCh]);
  assert.ok(auth.requests.some((r) => r.channelName === `private-${name}` && r.user === 'alice'), 'Echo did not call the auth endpoint');

  const updated = firstCall((cb) => bCh.listen('OrderUpdated', cb), 'OrderUpdated on bob', bob.describe);
  await ctx.pusher.trigger(`private-${name}`, 'App\\Events\\OrderUpdated', { id: 1 });
  assert.deepEqual((await updated)[0], { id: 1 });

  // whisper = a client event (client-typing), relayed to the others, not back to the sender.
  const ownWhispers = [];
  aCh.listenForWhisper('typing', (d) => ownWhispers.push(d));
  const whisper = firstCall((cb) => bCh.listenForWhisper('typing', cb), 'whisper on bob', bob.describe);
  aCh.whisper('typing', { name: 'Alice' });
  assert.deepEqual((await whisper)[0], { name: 'Alice' });
  const back = firstCall((cb) => aCh.listenForWhisper('typing', cb), 'whisper back on alice', alice.describe);
  bCh.whisper('typing', { name: 'Bob' });
  assert.deepEqual((await back)[0], { name: 'Bob' });
  assert.deepEqual(ownWhispers, [{ name: 'Bob' }], `alice received her own whisper\n${alice.describe()}`);

  // The app's endpoint refuses an unknown user's presence subscription: Echo reports it.
  const stranger = await echo(auth, 'mallory');
  const refused = await firstCall((cb) => stranger.join(h.uniqueName('room.')).error(cb), '.error() on mallory', stranger.describe);
  assert.equal(refused[0].status, 403, JSON.stringify(refused[0]));
});

test('Echo: presence channel here / joining / leaving, whispers between members', async () => {
  const { auth, alice, bob } = await aliceAndBob();
  const room = h.uniqueName('chat.');

  const aRoom = alice.join(room);
  assert.equal(aRoom.name, `presence-${room}`);
  const [aliceHere] = await firstCall((cb) => aRoom.here(cb), 'here() on alice', alice.describe);
  assert.deepEqual(aliceHere, [USERS.alice.user_info]);

  const joining = firstCall((cb) => aRoom.joining(cb), 'joining() on alice', alice.describe);
  const bRoom = bob.join(room);
  const [bobHere] = await firstCall((cb) => bRoom.here(cb), 'here() on bob', bob.describe);
  assert.deepEqual(bobHere.map((u) => u.name).sort(), ['Alice', 'Bob']);
  assert.deepEqual((await joining)[0], USERS.bob.user_info);

  const whisper = firstCall((cb) => aRoom.listenForWhisper('typing', cb), 'whisper on alice', alice.describe);
  bRoom.whisper('typing', { typing: true });
  assert.deepEqual((await whisper)[0], { typing: true });

  // Bob leaves the room (Echo.leave unsubscribes): alice is told who left.
  const leaving = firstCall((cb) => aRoom.leaving(cb), 'leaving() on alice', alice.describe);
  bob.leave(room);
  assert.deepEqual((await leaving)[0], USERS.bob.user_info);
});
