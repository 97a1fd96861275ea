'use strict';
// 17. Cluster mode only (RELAYMESH_COMPAT_CLUSTER=N): the harness really runs a cluster (every node
// ready and linked to every other) and really spreads the clients: client k is served by node k % N,
// as each node's own /metrics shows, and the server library talks to node 1 first.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.CLUSTER_SIZE ? h.useServer() : null;

/** relaymesh_connections of the default app on one node. */
async function connectionsOn(node) {
  const m = await h.metrics(node, (name) => name === 'relaymesh_connections');
  return m.filter((x) => x.labels.app === h.DEFAULT_APP.id).reduce((sum, x) => sum + x.value, 0);
}

async function connectionCounts(cluster) {
  return Promise.all(cluster.nodes.map(connectionsOn));
}

/** Polls until every node's connection gauge equals `expected` (gauges follow the sockets). */
async function waitForCounts(cluster, expected, what) {
  const deadline = Date.now() + 3000;
  for (;;) {
    const counts = await connectionCounts(cluster);
    if (counts.every((n, i) => n === expected[i])) return;
    assert.ok(
      Date.now() < deadline,
      `${what}: connections per node ${JSON.stringify(counts)}, expected ${JSON.stringify(expected)} (nodes ${cluster.nodeIds.join(', ')})`,
    );
    await h.sleep(50);
  }
}

test('cluster mode: every node is ready and linked to every other node', async (t) => {
  if (!ctx) return t.skip('single-node mode');
  const cluster = ctx.server;
  assert.equal(cluster.nodes.length, h.CLUSTER_SIZE);
  assert.equal(new Set(cluster.nodes.map((n) => n.port)).size, h.CLUSTER_SIZE, 'every node has its own port');
  for (const node of cluster.nodes) {
    const ready = await h.httpGet(`${node.baseUrl}/readyz`);
    assert.equal(ready.status, 200, `${node.name} /readyz: ${ready.status} ${ready.body}`);
    const up = (await h.metrics(node, (name) => name === 'relaymesh_mesh_link_up')).filter((x) => x.value === 1).map((x) => x.labels.peer);
    assert.deepEqual(up.sort(), cluster.nodeIds.filter((id) => id !== node.name).sort(), `${node.name}: mesh links up`);
  }
  const nodes = await h.metrics(cluster.controlPlane, (name) => name === 'relaymesh_control_nodes');
  const active = nodes.filter((x) => x.labels.state === 'active' && x.labels.region === 'compat').reduce((s, x) => s + x.value, 0);
  assert.equal(active, h.CLUSTER_SIZE, `control plane: ${JSON.stringify(nodes)}`);
});

test('cluster mode: client k is served by node k % N (per the nodes\' own /metrics), server library from node 1', async (t) => {
  if (!ctx) return t.skip('single-node mode');
  const cluster = ctx.server;
  const n = cluster.nodes.length;
  await waitForCounts(cluster, Array(n).fill(0), 'before any client');

  // One client after the other: each one raises the gauge of exactly the node it should be on.
  const expected = Array(n).fill(0);
  const clients = [];
  for (let k = 0; k < n + 1; k++) {
    const c = await h.connected(ctx.client(), undefined, `client ${k}`);
    clients.push(c);
    assert.equal(c.node, cluster.nodes[k % n], `client ${k} should be given node ${k % n}`);
    expected[k % n] += 1;
    await waitForCounts(cluster, expected, `after client ${k} connected`);
  }
  // The first n clients are on n different nodes: socket ids start with a per-node random part.
  const prefixes = clients.slice(0, n).map((c) => c.connection.socket_id.split('.')[0]);
  assert.equal(new Set(prefixes).size, n, `socket ids ${clients.map((c) => c.connection.socket_id).join(', ')}`);
  assert.equal(clients[n].connection.socket_id.split('.')[0], prefixes[0], 'client n is on node 0 again');

  // ctx.pusher talks to node 1: its requests show up in node 1's HTTP API counters only.
  const apiRequests = async (node) =>
    (await h.metrics(node, (name) => name === 'relaymesh_http_requests_total'))
      .filter((x) => x.labels.kind !== 'ops')
      .reduce((s, x) => s + x.value, 0);
  const before = await Promise.all(cluster.nodes.map(apiRequests));
  await ctx.pusher.get({ path: '/channels' });
  const after = await Promise.all(cluster.nodes.map(apiRequests));
  const grew = after.map((v, i) => v - before[i]);
  assert.deepEqual(grew.map((d) => d > 0), cluster.nodes.map((_, i) => i === 1 % n), `API requests per node: ${JSON.stringify(grew)}`);
  // Further library instances go round robin: node 2, then node 0, ...
  assert.equal(Number(h.serverLib(cluster).config.port), cluster.nodes[2 % n].port);
});
