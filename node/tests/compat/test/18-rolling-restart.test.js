'use strict';
// 18. Cluster mode only (RELAYMESH_COMPAT_CLUSTER=N): a rolling restart with drain. Each node in
// turn gets SIGTERM (it drains: leaves the ring, hands its channels over, closes its clients with
// 4200) and is started again on the same port. The pusher-js clients of that node reconnect and
// resubscribe by themselves; the clients of the other nodes stay connected and miss none of the
// events the HTTP API acknowledged meanwhile.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.CLUSTER_SIZE ? h.useServer() : null;

/** Publishes `tick` events with numbers through `libs` (round robin) every `everyMs` until stopped. */
function publisher(libs, channel, everyMs) {
  const acked = new Set();
  let n = 0;
  let stopped = false;
  const running = (async () => {
    while (!stopped) {
      const k = n++;
      const lib = libs[k % libs.length];
      // A node that is draining or down refuses: not acknowledged, not expected.
      await lib.trigger(channel, 'tick', { n: k }).then(
        () => acked.add(k),
        () => {},
      );
      await h.sleep(everyMs);
    }
  })();
  return {
    acked,
    async stop() {
      stopped = true;
      await running;
    },
  };
}

test('cluster mode: rolling restart with drain: pusher-js clients of each restarted node reconnect and resubscribe by themselves; the others miss no acknowledged event', async (t) => {
  if (!ctx) return t.skip('single-node mode');
  const cluster = ctx.server;
  const channel = h.uniqueName('rolling-');
  const clients = [];
  for (let k = 0; k < cluster.size; k++) clients.push(await h.connected(ctx.client()));
  const received = [];
  const resubscribed = [];
  for (const c of clients) {
    const { channel: ch } = await h.subscribe(c, channel);
    const seen = new Map(); // n -> the socket that received it
    ch.bind('tick', (data) => seen.set(data.n, c.connection.socket_id));
    received.push(seen);
    const count = { n: 0 };
    ch.bind('pusher:subscription_succeeded', () => count.n++);
    resubscribed.push(count);
  }
  // One server library per node, so that publishing goes on through the nodes that are up.
  const libs = cluster.nodes.map(() => h.serverLib(cluster));
  const pub = publisher(libs, channel, 20);

  for (let i = 0; i < cluster.size; i++) {
    const node = cluster.nodes[i];
    const own = clients.filter((c) => c.node === node);
    const socketsBefore = own.map((c) => c.connection.socket_id);
    const subscribedBefore = own.map((c) => resubscribed[clients.indexOf(c)].n);
    await cluster.restartNode(i, { signal: 'SIGTERM' });
    for (const [j, c] of own.entries()) {
      // pusher-js retries by itself; while the node drains and restarts it is refused (4200),
      // goes "unavailable" and tries again some seconds later.
      const deadline = Date.now() + 30000;
      while (resubscribed[clients.indexOf(c)].n === subscribedBefore[j]) {
        assert.ok(Date.now() < deadline, `a client of ${node.name} did not resubscribe within 30 s\n${h.describeClient(c)}`);
        await h.sleep(50);
      }
      assert.notEqual(c.connection.socket_id, socketsBefore[j], `a client of ${node.name} must have reconnected after the drain`);
    }
    // The restarted node's clients are subscribed again: a fresh event reaches every client.
    const marker = `after-${node.name}`;
    const arrivals = clients.map((c) =>
      h.nextEvent(c.channel(channel), 'marker', { ms: 20000, describe: () => h.describeClient(c) }),
    );
    await h.serverLib(cluster).trigger(channel, 'marker', { marker });
    for (const arrival of arrivals) assert.deepEqual((await arrival).data, { marker });
  }
  await h.sleep(300);
  await pub.stop();
  await h.sleep(500);

  assert.ok(pub.acked.size > 50, `too few publishes were acknowledged (${pub.acked.size}) to mean anything`);
  for (const [k, c] of clients.entries()) {
    assert.ok(resubscribed[k].n >= 1, `client ${k} (on ${c.node.name}) did not resubscribe`);
    // Per connection (socket): every acknowledged event between the first and the last it got
    // arrived. What was published while the client was between connections is not expected.
    const bySocket = new Map();
    for (const [n, socket] of received[k]) {
      const range = bySocket.get(socket) || [n, n];
      bySocket.set(socket, [Math.min(range[0], n), Math.max(range[1], n)]);
    }
    assert.ok(bySocket.size >= 2, `client ${k} (on ${c.node.name}) received on ${bySocket.size} connection(s), expected 2`);
    for (const [socket, [first, last]] of bySocket) {
      const missed = [...pub.acked].filter((n) => n >= first && n <= last && received[k].get(n) !== socket);
      assert.deepEqual(missed, [], `client ${k} (on ${c.node.name}, socket ${socket}) missed acknowledged events while connected`);
    }
  }
});
