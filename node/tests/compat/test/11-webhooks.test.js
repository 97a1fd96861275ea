'use strict';
// 11. Webhooks, verified with the server library's own checker (pusher.webhook(req).isValid()).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('../lib/harness');

let receiver;
const hooks = []; // { valid, contentType, events, time_ms }
const waiters = [];

before(async () => {
  receiver = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const lib = h.serverLib({ port: 1 }); // only used for verification, never sends
      let entry;
      try {
        const wh = lib.webhook({ headers: req.headers, rawBody: body });
        const valid = wh.isValid();
        entry = { valid, contentType: req.headers['content-type'], key: req.headers['x-pusher-key'], body, events: valid ? wh.getEvents() : JSON.parse(body).events, time_ms: JSON.parse(body).time_ms };
      } catch (err) {
        entry = { valid: false, error: String(err && err.message), body, events: [] };
      }
      hooks.push(entry);
      for (const w of waiters.splice(0)) w();
      res.writeHead(200, { connection: 'close' }).end('{}');
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  receiver.closeAllConnections?.();
  await new Promise((resolve) => receiver.close(() => resolve()));
});

const ctx = h.useServer({
  apps: () => [{ ...h.DEFAULT_APP, webhooks: [`http://127.0.0.1:${receiver.address().port}/hook`] }],
});

function allEvents() {
  return hooks.flatMap((x) => x.events || []);
}

async function waitForHook(pred, what, ms = 6000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const found = allEvents().find(pred);
    if (found) return found;
    if (Date.now() > deadline) assert.fail(`no webhook event ${what} within ${ms} ms; received: ${JSON.stringify(hooks, null, 1)}`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 100);
      waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

test('webhooks: channel_occupied / member_added / client_event / channel_vacated, each validly signed', async () => {
  hooks.length = 0;
  const auth = await ctx.authServer(ctx.pusher, {
    users: { alice: { user_id: 'u-alice', user_info: { name: 'Alice' } }, bob: { user_id: 'u-bob' } },
  });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const pub = h.uniqueName('public-hook-');
  const pres = h.uniqueName('presence-hook-');

  const a = await h.connected(ctx.client(opts('alice')), undefined, 'alice');
  const b = await h.connected(ctx.client(opts('bob')), undefined, 'bob');
  await h.subscribe(a, pub, { label: 'alice' });
  await waitForHook((e) => e.name === 'channel_occupied' && e.channel === pub, `channel_occupied ${pub}`);

  const { channel: aPres } = await h.subscribe(a, pres, { label: 'alice' });
  await h.subscribe(b, pres, { label: 'bob' });
  await waitForHook((e) => e.name === 'member_added' && e.channel === pres && e.user_id === 'u-bob', 'member_added u-bob');

  aPres.trigger('client-ping', { n: 1 });
  const ce = await waitForHook((e) => e.name === 'client_event' && e.channel === pres, 'client_event');
  assert.equal(ce.event, 'client-ping');
  assert.equal(ce.socket_id, a.connection.socket_id);
  assert.equal(ce.user_id, 'u-alice');
  assert.deepEqual(typeof ce.data === 'string' ? JSON.parse(ce.data) : ce.data, { n: 1 });

  a.unsubscribe(pub);
  await waitForHook((e) => e.name === 'channel_vacated' && e.channel === pub, `channel_vacated ${pub}`, 8000);

  for (const x of hooks) {
    assert.equal(x.valid, true, `webhook not valid for pusher.webhook().isValid(): ${JSON.stringify(x)}`);
    assert.equal(x.contentType, 'application/json');
    assert.equal(x.key, h.DEFAULT_APP.key);
    assert.ok(Number.isInteger(x.time_ms) && Math.abs(Date.now() - x.time_ms) < 60000, `time_ms ${x.time_ms}`);
  }
  // exactly one channel_occupied for the public channel
  assert.equal(allEvents().filter((e) => e.name === 'channel_occupied' && e.channel === pub).length, 1);
});
