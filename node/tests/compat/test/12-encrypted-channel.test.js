'use strict';
// 12. End-to-end encrypted channel (§6.3): the library encrypts, the server relays, pusher-js decrypts
//     with the shared_secret the library's authorizeChannel returned.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const h = require('../lib/harness');

const ctx = h.useServer();

test('private-encrypted channel: triggered data is decrypted by pusher-js; the server only sees ciphertext', async () => {
  const masterKey = crypto.randomBytes(32).toString('base64');
  const lib = h.serverLib(ctx.server, h.DEFAULT_APP, { encryptionMasterKeyBase64: masterKey });
  const auth = await ctx.authServer(lib);
  const c = await h.connected(ctx.client({ channelAuthorization: { endpoint: auth.endpoint(), transport: 'ajax' } }));
  const name = h.uniqueName('private-encrypted-');
  const { channel } = await h.subscribe(c, name);

  // pusher-js strips shared_secret before subscribing
  const sub = h.rawFrames(c).find((l) => l.includes('"pusher:subscribe"'));
  assert.ok(sub && !sub.includes('shared_secret'), sub);

  const got = h.nextEvent(channel, 'secret-event', { describe: () => h.describeClient(c) });
  await lib.trigger(name, 'secret-event', { message: 'hello' });
  assert.deepEqual((await got).data, { message: 'hello' });

  const raw = h.rawReceived(c).find((f) => f.event === 'secret-event');
  const payload = JSON.parse(raw.data);
  assert.deepEqual(Object.keys(payload).sort(), ['ciphertext', 'nonce']);
  assert.ok(!raw.data.includes('hello'));
});
