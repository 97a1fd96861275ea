'use strict';
// 8. Server restart: pusher-js reconnects by itself and resubscribes; events published after the
//    restart reach the handler.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

test('server killed and restarted on the same port: pusher-js reconnects, resubscribes, receives new events', async () => {
  const auth = await ctx.authServer(ctx.pusher);
  const c = await h.connected(ctx.client({ channelAuthorization: { endpoint: auth.endpoint(), transport: 'ajax' } }));
  const pub = h.uniqueName('public-');
  const priv = h.uniqueName('private-');
  const { channel: pubCh } = await h.subscribe(c, pub);
  const { channel: privCh } = await h.subscribe(c, priv);
  const firstSocket = c.connection.socket_id;

  const before = h.nextEvent(pubCh, 'my-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(pub, 'my-event', { phase: 'before' });
  assert.deepEqual((await before).data, { phase: 'before' });

  // Resubscription after the restart shows up as a second subscription_succeeded on each channel.
  const resubscribed = [pubCh, privCh].map((ch) =>
    h.nextEvent(ch, 'pusher:subscription_succeeded', { ms: 20000, describe: () => h.describeClient(c) }),
  );
  const lostConnection = h.withTimeout(
    new Promise((resolve) => c.connection.bind('state_change', ({ current }) => current !== 'connected' && resolve())),
    5000,
    'pusher-js to notice the server went away',
    () => h.describeClient(c),
  );

  await ctx.server.restart({ signal: 'SIGKILL', downMs: 300 });
  await lostConnection;
  await h.waitForState(c, 'connected', 20000);
  assert.notEqual(c.connection.socket_id, firstSocket, 'a new connection must get a new socket_id');
  await Promise.all(resubscribed);

  const afterPub = h.nextEvent(pubCh, 'my-event', { describe: () => h.describeClient(c) });
  const afterPriv = h.nextEvent(privCh, 'my-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger([pub, priv], 'my-event', { phase: 'after' });
  assert.deepEqual((await afterPub).data, { phase: 'after' });
  assert.deepEqual((await afterPriv).data, { phase: 'after' });
  // the private channel was re-authorized for the new socket id
  assert.equal(auth.requests.at(-1).socketId, c.connection.socket_id);
});
