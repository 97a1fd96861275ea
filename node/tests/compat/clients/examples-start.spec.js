'use strict';
// Each example starts with one command, `npm start`, also when no node runs: it then starts the
// built relaymesh-node on RELAYMESH_PORT itself, and stops it when it stops. Independent of the
// cluster mode (the examples start a single node), so scripts/test-clients runs it once.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');
const { REPO, exampleEnv, startExample } = require('./lib');

const healthz = async (port) => (await h.httpGet(`http://127.0.0.1:${port}/healthz`, 500)).status;

test('chat: npm start starts a node when none answers, serves the page, stops the node with itself', async (t) => {
  const port = await h.freePort();
  const chat = await startExample('chat', { RELAYMESH_PORT: String(port), RELAYMESH_NODE_BIN: h.BIN, CHAT_PORT: '0' });
  t.after(() => chat.stop());
  const describe = () => `--- chat output ---\n${chat.output.join('\n')}`;
  assert.ok(chat.output.some((l) => l.includes(`no node answers on 127.0.0.1:${port}: starting`)), describe());
  assert.ok(chat.output.some((l) => l.includes(`relaymesh-node listening on 127.0.0.1:${port}`)), describe());
  assert.equal(await healthz(port), 200, describe());

  const config = JSON.parse((await h.httpGet(new URL('/config', chat.url).href)).body);
  assert.deepEqual(config, { key: 'app-key', wsHost: '127.0.0.1', wsPort: port, room: 'presence-chat' });
  const page = await h.httpGet(chat.url);
  assert.equal(page.status, 200);
  assert.match(page.body, /<title>relaymesh chat<\/title>/);
  const bundle = await h.httpGet(new URL('/vendor/pusher.min.js', chat.url).href);
  assert.equal(bundle.status, 200);
  const installed = fs.readFileSync(path.join(REPO, 'examples', 'chat', 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js'), 'utf8');
  assert.ok(bundle.body === installed, 'the page is not served the installed pusher-js bundle');
  const c = h.client({ port });
  t.after(() => h.disconnectClient(c));
  await h.connected(c);

  c.disconnect();
  await chat.stop();
  assert.equal(await healthz(port), 0, `the node on ${port} is still up after the chat stopped\n${describe()}`);
});

test('dashboard: npm start starts a node when none answers and publishes to it', async (t) => {
  const port = await h.freePort();
  const d = await startExample('dashboard', { RELAYMESH_PORT: String(port), RELAYMESH_NODE_BIN: h.BIN, DASHBOARD_PORT: '0', DASHBOARD_INTERVAL_MS: '200' });
  t.after(() => d.stop());
  const describe = () => `--- dashboard output ---\n${d.output.join('\n')}`;
  assert.ok(d.output.some((l) => l.includes(`no node answers on 127.0.0.1:${port}: starting`)), describe());
  const deadline = Date.now() + 5000;
  while (!d.output.some((l) => l.includes('published sample 2 '))) {
    if (Date.now() > deadline) assert.fail(`no samples published within 5 s\n${describe()}`);
    await h.sleep(50);
  }
  // A subscriber gets the cached window of samples at once.
  const c = h.client({ port });
  t.after(() => h.disconnectClient(c));
  const ch = c.subscribe('cache-dashboard');
  const { data } = await h.nextEvent(ch, 'metrics', { describe });
  assert.ok(data.samples.length >= 2, JSON.stringify(data));
  assert.deepEqual(Object.keys(data.samples[0]).sort(), ['connections', 'cpu', 'messages_out', 'published', 't']);
  c.disconnect();
  await d.stop();
  assert.equal(await healthz(port), 0, `the node on ${port} is still up after the dashboard stopped\n${describe()}`);
});

test('quickstart: npm start runs the walk-through against a node it starts, and exits 0', async () => {
  const port = await h.freePort();
  const env = exampleEnv({ RELAYMESH_PORT: String(port), RELAYMESH_NODE_BIN: h.BIN });
  const { code, out } = await new Promise((resolve) =>
    execFile('npm', ['start', '--silent'], { cwd: path.join(REPO, 'examples', 'quickstart'), env, timeout: 30000 }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, out: stdout + stderr }),
    ),
  );
  assert.equal(code, 0, out);
  for (const line of ['alice joined presence-room with 1 member(s)', 'bob joined presence-room with 2 member(s)', 'alice saw member_added: Bob', 'HTTP API says: {"occupied":true,"user_count":2}', 'alice saw member_removed: 2']) {
    assert.ok(out.includes(line), `missing "${line}" in:\n${out}`);
  }
  assert.equal(await healthz(port), 0, `the node on ${port} is still up after the quickstart exited\n${out}`);
});
