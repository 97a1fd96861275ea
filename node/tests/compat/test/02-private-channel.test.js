'use strict';
// 2. Private channel authorized through the server library's own helper (pusher.authorizeChannel),
//    served by a local auth endpoint that pusher-js calls over ajax.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

test('private channel: ajax auth endpoint signs with authorizeChannel, subscription succeeds, trigger reaches the handler', async () => {
  const auth = await ctx.authServer(ctx.pusher);
  const c = await h.connected(
    ctx.client({ channelAuthorization: { endpoint: auth.endpoint(), transport: 'ajax' } }),
  );
  const name = h.uniqueName('private-');
  const { channel } = await h.subscribe(c, name);

  // pusher-js really went through the auth endpoint with its own socket id.
  assert.equal(auth.requests.length, 1);
  assert.deepEqual(
    { socketId: auth.requests[0].socketId, channelName: auth.requests[0].channelName },
    { socketId: c.connection.socket_id, channelName: name },
  );

  const got = h.nextEvent(channel, 'my-event', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(name, 'my-event', { hello: 'private' });
  assert.deepEqual((await got).data, { hello: 'private' });
});

test('private channel: a signature made with the wrong secret is refused (subscription_error, connection stays open, no events)', async () => {
  const wrong = h.serverLib(ctx.server, { ...h.DEFAULT_APP, secret: 'not-the-secret' });
  const c = await h.connected(
    ctx.client({
      channelAuthorization: {
        customHandler: (params, cb) => cb(null, wrong.authorizeChannel(params.socketId, params.channelName)),
      },
    }),
  );
  const name = h.uniqueName('private-');
  const channel = c.subscribe(name);
  const errors = h.record(channel, 'pusher:subscription_error');
  const ok = h.record(channel, 'pusher:subscription_succeeded');
  const myEvents = h.record(channel, 'my-event');

  // relaymesh (§6.5): channel-scoped pusher:subscription_error {type:"AuthError", status:401}.
  await h.waitForFrame(c, (f) => f.event === 'pusher:subscription_error' && f.channel === name, {
    what: `pusher:subscription_error for ${name}`,
  });
  assert.equal(ok.length, 0, 'subscription must not succeed with a bad signature');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].data.status, 401, `subscription_error data: ${JSON.stringify(errors[0].data)}`);
  assert.equal(errors[0].data.type, 'AuthError');

  // The connection stays open and events on that channel are not delivered.
  const { channel: marker } = await h.subscribe(c, h.uniqueName('public-marker-'));
  const markerGot = h.nextEvent(marker, 'marker', { describe: () => h.describeClient(c) });
  await ctx.pusher.trigger(name, 'my-event', { leaked: true });
  await ctx.pusher.trigger(marker.name, 'marker', {});
  await markerGot;
  assert.equal(c.connection.state, 'connected');
  assert.equal(myEvents.length, 0, `event leaked to an unauthorized subscriber\n${h.describeClient(c)}`);
});
