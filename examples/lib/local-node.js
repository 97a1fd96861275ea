'use strict';
// The examples' connection to relaymesh: which node and app to use (environment variables), and
// a local node started on demand, so that `npm start` is the only command a newcomer runs.
//
//   RELAYMESH_HOST, RELAYMESH_PORT          the node (default 127.0.0.1:6001)
//   RELAYMESH_APP_ID, _APP_KEY, _APP_SECRET the app (default: the node's development app)
//   RELAYMESH_NODE_BIN                      the relaymesh-node binary to start when no node answers
//
// When nothing answers on RELAYMESH_PORT and the host is local, the newest of RELAYMESH_NODE_BIN,
// target/debug/relaymesh-node and target/release/relaymesh-node is started there (else
// `cargo run -p relaymesh-node`, which builds it first), and stopped when the example stops.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..');
// Our own variables: the node refuses unknown RELAYMESH_* variables, so they stay out of its environment.
const OWN_VARS = ['RELAYMESH_HOST', 'RELAYMESH_PORT', 'RELAYMESH_APP_ID', 'RELAYMESH_APP_KEY', 'RELAYMESH_APP_SECRET', 'RELAYMESH_NODE_BIN'];

function settings(env = process.env) {
  const port = Number(env.RELAYMESH_PORT || 6001);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`RELAYMESH_PORT must be a TCP port number, got ${JSON.stringify(env.RELAYMESH_PORT)}`);
  }
  return {
    host: env.RELAYMESH_HOST || '127.0.0.1',
    port,
    appId: env.RELAYMESH_APP_ID || 'app-id',
    key: env.RELAYMESH_APP_KEY || 'app-key',
    secret: env.RELAYMESH_APP_SECRET || 'app-secret',
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Status of GET http://host:port/path, 0 when nothing answers. */
function httpStatus(host, port, urlPath, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const req = http.get({ host, port, path: urlPath, timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/** The newest built relaymesh-node binary, or null. */
function findBinary(env = process.env) {
  const candidates = [
    env.RELAYMESH_NODE_BIN,
    env.CARGO_TARGET_DIR && path.join(env.CARGO_TARGET_DIR, 'debug', 'relaymesh-node'),
    env.CARGO_TARGET_DIR && path.join(env.CARGO_TARGET_DIR, 'release', 'relaymesh-node'),
    path.join(REPO, 'target', 'debug', 'relaymesh-node'),
    path.join(REPO, 'target', 'release', 'relaymesh-node'),
  ].filter(Boolean);
  if (env.RELAYMESH_NODE_BIN && !fs.existsSync(env.RELAYMESH_NODE_BIN)) {
    throw new Error(`RELAYMESH_NODE_BIN=${env.RELAYMESH_NODE_BIN} does not exist`);
  }
  const found = candidates.filter((p) => fs.existsSync(p)).map((p) => ({ p, mtime: fs.statSync(p).mtimeMs }));
  found.sort((a, b) => b.mtime - a.mtime);
  return found.length ? found[0].p : null;
}

/**
 * Returns the node settings once a node answers /healthz on host:port, starting one when none does.
 * `node.started` tells whether this process started it; `node.stop()` stops it (no-op otherwise).
 */
async function ensureNode({ log = console.log } = {}) {
  const node = { ...settings(), started: false, stop: async () => {} };
  if ((await httpStatus(node.host, node.port, '/healthz')) === 200) {
    log(`using the relaymesh node at ${node.host}:${node.port}`);
    return node;
  }
  if (!['127.0.0.1', 'localhost', '::1'].includes(node.host)) {
    throw new Error(`no relaymesh node answers at http://${node.host}:${node.port}/healthz (only a local node is started on demand)`);
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relaymesh-example-'));
  const config = path.join(dir, 'node.toml');
  // The app the example signs with, so that RELAYMESH_APP_* work with a node started here too.
  fs.writeFileSync(config, `[[apps]]\nid = ${JSON.stringify(node.appId)}\nkey = ${JSON.stringify(node.key)}\nsecret = ${JSON.stringify(node.secret)}\n`);
  const nodeArgs = ['--config', config, '--listen', `${node.host === 'localhost' ? '127.0.0.1' : node.host}:${node.port}`];
  const env = { ...process.env };
  for (const k of OWN_VARS) delete env[k];
  if (!process.stdout.isTTY) env.NO_COLOR = '1'; // its log lines are copied below, colours would be noise

  const bin = findBinary();
  let child;
  let waitMs;
  if (bin) {
    log(`no node answers on ${node.host}:${node.port}: starting ${path.relative(process.cwd(), bin) || bin}`);
    child = spawn(bin, nodeArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    waitMs = 15000;
  } else {
    log(`no node answers on ${node.host}:${node.port} and no built relaymesh-node was found: running \`cargo run -p relaymesh-node\` (the first build takes a few minutes)`);
    child = spawn('cargo', ['run', '--quiet', '-p', 'relaymesh-node', '--', ...nodeArgs], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    waitMs = 20 * 60 * 1000;
  }
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    let buf = '';
    stream.on('data', (chunk) => {
      buf += chunk;
      const lines = buf.split('\n');
      buf = lines.pop();
      for (const line of lines) log(`[relaymesh-node] ${line}`);
    });
  }
  let exited = null;
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exited = { code, signal }))));
  child.once('error', (err) => log(`cannot start the node: ${err.message}`));

  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  // Never leave the node behind, even when the example dies.
  process.once('exit', () => {
    if (!exited) child.kill('SIGKILL');
    cleanup();
  });
  node.started = true;
  node.stop = async () => {
    if (exited) return;
    child.kill('SIGTERM'); // the node drains; its clients are the example's own pages
    const done = await Promise.race([exit, sleep(3000).then(() => false)]);
    if (!done) child.kill('SIGKILL');
    await exit;
    cleanup();
  };

  const deadline = Date.now() + waitMs;
  while ((await httpStatus(node.host, node.port, '/healthz', 500)) !== 200) {
    if (exited) {
      cleanup();
      throw new Error(`relaymesh-node exited before it answered on ${node.host}:${node.port} (code ${exited.code}, signal ${exited.signal}); its output is above`);
    }
    if (Date.now() > deadline) {
      await node.stop();
      throw new Error(`relaymesh-node did not answer on ${node.host}:${node.port} within ${waitMs / 1000} s`);
    }
    await sleep(200);
  }
  return node;
}

/** Stops `servers` (node:http) and the node on SIGINT / SIGTERM, then exits. */
function stopOnSignals(node, ...servers) {
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, async () => {
      if (stopping) return;
      stopping = true;
      for (const s of servers) {
        s.closeAllConnections?.();
        s.close();
      }
      await node.stop();
      process.exit(0);
    });
  }
}

module.exports = { settings, ensureNode, stopOnSignals, httpStatus };
