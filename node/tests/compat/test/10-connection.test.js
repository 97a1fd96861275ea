'use strict';
// 10. Connection-level behaviour pusher-js depends on (§2, §3, §17): handshake, ping/pong, unknown key.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

test('connection_established: socket_id format and a positive activity_timeout', async () => {
  const c = await h.connected(ctx.client());
  const first = h.rawReceived(c)[0];
  assert.equal(first.event, 'pusher:connection_established', h.describeClient(c));
  assert.equal(typeof first.data, 'string', 'connection_established data must be a JSON string (§2.3)');
  const data = JSON.parse(first.data);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0, `activity_timeout ${data.activity_timeout}`);
  // socket ids are unique per connection
  const d = await h.connected(ctx.client());
  assert.notEqual(d.connection.socket_id, c.connection.socket_id);
});

test('pusher-js pings an idle connection and the server answers pusher:pong, so it stays connected', async () => {
  // pusher-js pings after activityTimeout ms without a received frame and drops the connection when
  // nothing arrives within pongTimeout ms.
  const c = await h.connected(ctx.client({ activityTimeout: 500, pongTimeout: 1000 }));
  await h.sleep(3200);
  assert.equal(c.connection.state, 'connected', h.describeClient(c));
  assert.equal(c.states.filter((st) => st === 'connected').length, 1, `connection dropped\n${h.describeClient(c)}`);
  assert.equal(c.socketIds.length, 1, `pusher-js reconnected\n${h.describeClient(c)}`);
  const raw = h.rawFrames(c).join('\n');
  assert.match(raw, />> \{"event":"pusher:ping"/, 'pusher-js should have pinged');
  assert.match(raw, /<< \{"event":"pusher:pong"/, `server should have answered pusher:pong\n${raw}`);
});

test('unknown app key: pusher:error 4001, pusher-js gives up (state disconnected, no reconnect)', async () => {
  const c = ctx.client({}, { ...h.DEFAULT_APP, key: 'no-such-key' });
  await h.waitForState(c, 'disconnected', 5000);
  await h.sleep(1500);
  assert.equal(c.connection.state, 'disconnected', h.describeClient(c));
  assert.ok(!c.states.includes('connected'), h.describeClient(c));
  // pusher-js wraps it: {type:'WebSocketError', error:{type:'PusherError', data:{code, message}}}
  const codes = c.errors.map((e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code));
  assert.ok(codes.includes(4001), `expected error code 4001, got ${JSON.stringify(c.errors)}`);
});
