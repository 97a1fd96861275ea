'use strict';
// 15. Apps from the control plane (issue 4): an app created with `relaymesh-control ctl apps create`
// is usable by pusher-js and the pusher library on a node within a second; a deleted one is refused.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const h = require('../lib/harness');

// This test starts its own control plane and a single node on purpose (it does not use
// h.useServer), so it runs the same in single-node and in cluster mode.
async function startControlPlane(t) {
  const cp = await h.startControlPlane();
  t.after(async () => {
    await cp.kill('SIGKILL');
    fs.rmSync(cp.dir, { recursive: true, force: true });
  });
  return cp.grpcPort;
}

const ctl = (grpcPort, ...args) => h.ctl(grpcPort, ...args);

test('an app created through the CLI serves pusher-js within a second; deleting it refuses its clients', async (t) => {
  const grpcPort = await startControlPlane(t);
  const node = await h.startServer({
    apps: [],
    extraToml: `[control_plane]\nendpoint = "http://127.0.0.1:${grpcPort}"\nregion = "compat"\n\n`,
  });
  t.after(async () => {
    await node.kill('SIGKILL');
    fs.rmSync(node.dir, { recursive: true, force: true });
  });
  // The node joins the cluster.
  for (let i = 0; ; i++) {
    const { nodes } = await ctl(grpcPort, 'nodes');
    if (nodes.length === 1 && nodes[0].state === 'active') break;
    assert.ok(i < 50, `node never became active: ${JSON.stringify(nodes)}`);
    await h.sleep(100);
  }

  const [created] = await ctl(grpcPort, 'apps', 'create');
  const createdAt = Date.now();
  const app = { id: created.id, key: created.key, secret: created.secret };
  assert.match(app.key, /^[0-9a-f]{20}$/);

  // The app reaches the node through the watch stream: retry until it is served, for 1 s at most.
  let c;
  for (;;) {
    c = h.client(node, {}, app);
    t.after(() => h.disconnectClient(c));
    await Promise.race([h.waitForState(c, 'connected', 1000), h.waitForState(c, 'disconnected', 1000)]).catch(() => {});
    if (c.connection.state === 'connected') break;
    assert.ok(Date.now() - createdAt < 1000, `not served 1 s after creation\n${h.describeClient(c)}`);
    await h.sleep(20);
  }
  const servedAfter = Date.now() - createdAt;
  assert.ok(servedAfter < 1000, `served ${servedAfter} ms after creation`);

  const channel = c.subscribe(h.uniqueName('news-'));
  await h.nextEvent(channel, 'pusher:subscription_succeeded');
  const got = h.nextEvent(channel, 'greeting');
  await h.serverLib(node, app).trigger(channel.name, 'greeting', { hello: 'cluster' });
  assert.deepEqual((await got).data, { hello: "cluster" });

  // Deleting the app closes its clients with 4001 (pusher-js stops) and refuses new ones.
  await ctl(grpcPort, 'apps', 'delete', app.id);
  await h.waitForState(c, 'disconnected', 2000, 'client of the deleted app');
  const codes = (x) => x.errors.map((e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code));
  assert.ok(codes(c).includes(4001), `expected 4001, got ${JSON.stringify(c.errors)}`);
  const late = h.client(node, {}, app);
  t.after(() => h.disconnectClient(late));
  await h.waitForState(late, 'disconnected', 2000, 'client connecting after deletion');
  assert.ok(!late.states.includes('connected'), h.describeClient(late));
  assert.ok(codes(late).includes(4001), `expected 4001, got ${JSON.stringify(late.errors)}`);
});
