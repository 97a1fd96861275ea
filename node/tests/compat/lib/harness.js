'use strict';
// Test harness for the relaymesh-node compatibility suite.
//
// - starts the real `relaymesh-node` binary on a free loopback port with a generated TOML config,
// - builds real `pusher-js` clients and real `pusher` (pusher-http-node) server-library instances,
// - runs a tiny local auth endpoint that signs with the library's own helpers,
// - records every frame a client receives so that failures can show what the server actually sent,
// - tears everything down (clients, auth servers, server process) after every test.
//
// Cluster mode (RELAYMESH_COMPAT_CLUSTER=N, e.g. 3): every test's server is a real cluster instead
// of one node: a `relaymesh-control` control plane and N `relaymesh-node` processes joined by mesh
// links (RelaymeshCluster below). Clients are spread over the nodes; see README.md.

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { beforeEach, afterEach } = require('node:test');

const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const COMPAT_DIR = path.resolve(__dirname, '..');
const BIN = path.resolve(
  COMPAT_DIR,
  process.env.RELAYMESH_NODE_BIN || path.join('..', '..', '..', 'target', 'debug', 'relaymesh-node'),
);
const CONTROL_BIN = path.resolve(
  COMPAT_DIR,
  process.env.RELAYMESH_CONTROL_BIN || path.join('..', '..', '..', 'target', 'debug', 'relaymesh-control'),
);

/** Number of nodes per test server: 0 = single-node mode (the default), N = an N-node cluster. */
const CLUSTER_SIZE = (() => {
  const v = (process.env.RELAYMESH_COMPAT_CLUSTER || '').trim();
  if (v === '' || v === '0') return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 26) {
    throw new Error(`RELAYMESH_COMPAT_CLUSTER must be a node count from 1 to 26, got ${JSON.stringify(v)}`);
  }
  return n;
})();
/** Mesh transport of cluster mode: quic (default) or grpc. */
const MESH_TRANSPORT = (() => {
  const v = (process.env.RELAYMESH_COMPAT_TRANSPORT || 'quic').trim();
  if (v !== 'quic' && v !== 'grpc') throw new Error(`RELAYMESH_COMPAT_TRANSPORT must be quic or grpc, got ${JSON.stringify(v)}`);
  return v;
})();

const DEFAULT_APP = Object.freeze({
  id: 'app-id',
  key: 'app-key',
  secret: 'app-secret',
  client_events: true,
  max_presence_members: 100,
  max_event_bytes: 10240,
});

const STARTUP_TIMEOUT_MS = 15000;
const CLUSTER_READY_TIMEOUT_MS = 20000;
// After a restart: shorter than the 20 s tests give pusher-js to come back (test 08), so that a
// cluster that does not recover fails with its own message rather than with the test's timeout.
const CLUSTER_RESTART_READY_TIMEOUT_MS = 15000;
const DEFAULT_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------------------------
// small utilities

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects with a descriptive error if `promise` does not settle within `ms`. */
function withTimeout(promise, ms, what, detail) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const extra = typeof detail === 'function' ? detail() : detail;
      reject(new Error(`timed out after ${ms} ms waiting for ${what}${extra ? `\n${extra}` : ''}`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Binds 127.0.0.1:0, reads the port, closes the listener. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tomlString(s) {
  return JSON.stringify(String(s)); // JSON string escapes are valid TOML basic-string escapes
}

function tomlKeyValue(k, v) {
  if (typeof v === 'string') return `${k} = ${tomlString(v)}`;
  if (typeof v === 'boolean' || typeof v === 'number') return `${k} = ${v}`;
  if (Array.isArray(v)) return `${k} = [${v.map(tomlString).join(', ')}]`;
  throw new Error(`unsupported config value for ${k}`);
}

function appToToml(app) {
  const lines = ['[[apps]]'];
  for (const [k, v] of Object.entries(app)) {
    if (v === undefined || v === null) continue;
    lines.push(tomlKeyValue(k, v));
  }
  return lines.join('\n') + '\n';
}

const TOML_TABLE_HEADER = /^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$/; // [table], not [[array]]
const TOML_ANY_HEADER = /^\s*\[/;
const TOML_KEY = /^\s*([A-Za-z0-9_-]+)\s*=/;

/**
 * The node's config file: `extraToml` (the test's top-level keys first, then its own tables), the
 * `[[apps]]`, then the harness's `tables` ({ name: { key: value } }, cluster mode only). A table the
 * test already has (e.g. `[control_plane]` or `[mesh]`) is not repeated, which TOML forbids: the
 * harness's keys are added to it, except the keys the test sets itself (the test wins).
 */
function composeToml(extraToml, apps, tables = {}) {
  let text = extraToml || '';
  const pending = new Map(Object.entries(tables));
  if (pending.size) {
    const lines = text.split('\n');
    const out = [];
    for (let i = 0; i < lines.length; i++) {
      out.push(lines[i]);
      const m = TOML_TABLE_HEADER.exec(lines[i]);
      if (!m || !pending.has(m[1])) continue;
      let end = i + 1;
      while (end < lines.length && !TOML_ANY_HEADER.test(lines[end])) end++;
      const own = new Set(lines.slice(i + 1, end).map((l) => TOML_KEY.exec(l)).filter(Boolean).map((k) => k[1]));
      for (const [k, v] of Object.entries(pending.get(m[1]))) if (!own.has(k)) out.push(tomlKeyValue(k, v));
      pending.delete(m[1]);
    }
    text = out.join('\n');
  }
  if (text && !text.endsWith('\n')) text += '\n';
  text += apps.map(appToToml).join('\n');
  for (const [name, keys] of pending) {
    text += `\n[${name}]\n` + Object.entries(keys).map(([k, v]) => tomlKeyValue(k, v)).join('\n') + '\n';
  }
  return text;
}

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** GET url: { status, body }; status 0 when the request failed. */
function httpGet(url, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', () => resolve({ status: 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, body: '', error: err.message }));
  });
}

/**
 * Parses Prometheus text: [{ name, labels: {..}, value }]. `filter(name)` picks the metric names kept.
 */
function parseMetrics(text, filter = () => true) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || !filter(m[1])) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

/** The /metrics of a node or of the control plane (anything with a `metricsUrl` or a `baseUrl`), parsed. */
async function metrics(target, filter) {
  const url = target.metricsUrl || `${target.baseUrl}/metrics`;
  const res = await httpGet(url, 2000);
  if (res.status !== 200) throw new Error(`GET ${url} answered ${res.status || res.error}`);
  return parseMetrics(res.body, filter);
}

/** Environment of the processes the harness starts: the node refuses unknown RELAYMESH_* variables. */
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'RELAYMESH_NODE_BIN' || k === 'RELAYMESH_CONTROL_BIN' || k.startsWith('RELAYMESH_COMPAT_')) continue;
    env[k] = v;
  }
  return { ...env, NO_COLOR: '1', ...extra };
}

function httpGetStatus(url, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
  });
}

// ---------------------------------------------------------------------------------------------
// the server process

const liveProcesses = new Set();
const liveDirs = new Set(); // temp dirs of cluster mode (CA, cluster folders), removed at exit too
function killEverything() {
  // Safety net: never leave a server (node or control plane) behind, even if a teardown was skipped.
  for (const child of liveProcesses) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  for (const dir of liveDirs) {
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch {}
  }
}
process.on('exit', killEverything);
// 'exit' does not run when the test process is killed by a signal (Ctrl-C, the runner cancelling a
// file): clean up, then die of the same signal.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killEverything();
    process.kill(process.pid, signal);
  });
}

/** Reads a child's stdout/stderr line by line into `log` (capped), calling onLine(line, stream). */
function captureLines(child, log, onLine = () => {}) {
  for (const stream of ['stdout', 'stderr']) {
    let buf = '';
    child[stream].setEncoding('utf8');
    child[stream].on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(ANSI, '');
        buf = buf.slice(i + 1);
        log.push(`[${stream}] ${line}`);
        if (log.length > 500) log.shift();
        onLine(line, stream);
      }
    });
  }
}

/** Sends `signal`, then SIGKILL if the child has not exited after graceMs. */
async function stopChild(child, exitPromise, signal, graceMs, what) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  try {
    child.kill(signal);
  } catch {}
  let timer;
  const done = await Promise.race([
    exitPromise.then(() => true),
    new Promise((resolve) => (timer = setTimeout(() => resolve(false), graceMs))),
  ]);
  clearTimeout(timer);
  if (!done) {
    try {
      child.kill('SIGKILL');
    } catch {}
    await withTimeout(exitPromise, 5000, `${what} to exit after SIGKILL`).catch(() => {});
  }
}

class RelaymeshServer {
  constructor({ apps, port, dir, extraToml = '', tables = {}, name = null }) {
    this.apps = apps;
    this.extraToml = extraToml; // top-level settings and tables written before the apps
    this.tables = tables; // cluster mode: [control_plane] and [mesh], see composeToml
    this.name = name; // cluster mode: the node id
    this.port = port;
    this.dir = dir;
    this.configPath = path.join(dir, 'server.toml');
    this.child = null;
    this.log = []; // last lines of stdout/stderr, for failure messages
  }

  get host() {
    return '127.0.0.1';
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  logTail(n = 40) {
    return this.log.slice(-n).join('\n');
  }

  async start() {
    if (!fs.existsSync(BIN)) {
      throw new Error(
        `relaymesh-node binary not found at ${BIN} (build it with \`cargo build -p relaymesh-node\` ` +
          `or set RELAYMESH_NODE_BIN)`,
      );
    }
    fs.writeFileSync(this.configPath, composeToml(this.extraToml, this.apps, this.tables));
    const listenAddr = `127.0.0.1:${this.port}`;
    // RELAYMESH_* variables configure the node, which refuses unknown ones: keep ours out.
    const child = spawn(BIN, ['--config', this.configPath, '--listen', listenAddr], {
      cwd: this.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv({ RUST_LOG: process.env.RUST_LOG || 'info' }),
    });
    this.child = child;
    this.killRequested = false;
    this.unexpected = [];
    liveProcesses.add(child);

    let exited = null;
    const exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exited = { code, signal };
        if (!this.killRequested) {
          this.unexpected.push(`exited (code ${code}, signal ${signal})`);
          console.error(`WARNING: relaymesh-node ${this.label} exited on its own: code ${code}, signal ${signal}\n${this.logTail(20)}`);
        }
        liveProcesses.delete(child);
        resolve(exited);
      });
    });
    this.exitPromise = exitPromise;

    let sawListening;
    const listening = new Promise((resolve) => (sawListening = resolve));
    captureLines(child, this.log, (line) => {
      if (line.includes(`listening on ${listenAddr}`)) sawListening('log');
      if (/shutting down/i.test(line) && !this.killRequested) {
        this.unexpected.push(line);
        console.error(`WARNING: relaymesh-node ${this.label} is shutting down although the harness did not stop it: ${line}`);
      }
    });

    // Fallback: poll /healthz.
    let stopPolling = false;
    const polled = (async () => {
      while (!stopPolling && !exited) {
        if ((await httpGetStatus(`${this.baseUrl}/healthz`, 500)) === 200) return 'healthz';
        await sleep(100);
      }
      return new Promise(() => {});
    })();

    try {
      await withTimeout(
        Promise.race([
          listening,
          polled,
          exitPromise.then((e) => {
            throw new Error(`relaymesh-node exited during startup (code ${e.code}, signal ${e.signal})`);
          }),
        ]),
        STARTUP_TIMEOUT_MS,
        `relaymesh-node to listen on ${listenAddr}`,
      );
    } catch (err) {
      stopPolling = true;
      await this.kill('SIGKILL');
      err.message += `\n--- server output ---\n${this.logTail()}`;
      throw err;
    }
    stopPolling = true;
    return this;
  }

  /** "(pid P, port N)", with the node id in cluster mode; for messages. */
  get label() {
    return `${this.name ? `${this.name} ` : ''}(pid ${this.child && this.child.pid}, port ${this.port})`;
  }

  /** Stops the process (SIGTERM, then SIGKILL after `graceMs`). Idempotent. */
  async kill(signal = 'SIGTERM', graceMs = 2000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.killRequested = true;
    await stopChild(child, this.exitPromise, signal, graceMs, 'relaymesh-node');
  }

  /** Kills the process and starts a new one on the same port with the same config. */
  async restart({ signal = 'SIGKILL', downMs = 0 } = {}) {
    await this.kill(signal);
    if (downMs) await sleep(downMs);
    // The port was just released by the killed process; the new one must bind it again.
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        return await this.start();
      } catch (err) {
        lastErr = err;
        await sleep(300);
      }
    }
    throw lastErr;
  }
}

async function startServer({ apps = [DEFAULT_APP], extraToml = '' } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rmcompat-'));
  const port = await freePort();
  const server = new RelaymeshServer({ apps, port, dir, extraToml });
  try {
    await server.start();
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return server;
}

// ---------------------------------------------------------------------------------------------
// the control plane process

class ControlPlane {
  constructor({ dir, grpcPort, httpPort, heartbeatMs = 200, leaseTtlMs = 1000 }) {
    this.dir = dir; // --data-dir
    this.grpcPort = grpcPort;
    this.httpPort = httpPort;
    this.heartbeatMs = heartbeatMs;
    this.leaseTtlMs = leaseTtlMs;
    this.child = null;
    this.log = [];
  }

  /** gRPC endpoint, for a node's control_plane.endpoint and for `ctl --endpoint`. */
  get endpoint() {
    return `http://127.0.0.1:${this.grpcPort}`;
  }

  get metricsUrl() {
    return `http://127.0.0.1:${this.httpPort}/metrics`;
  }

  get label() {
    return `(pid ${this.child && this.child.pid}, gRPC port ${this.grpcPort})`;
  }

  logTail(n = 40) {
    return this.log.slice(-n).join('\n');
  }

  async start() {
    if (!fs.existsSync(CONTROL_BIN)) {
      throw new Error(
        `relaymesh-control binary not found at ${CONTROL_BIN} (build it with \`cargo build -p relaymesh-control\` ` +
          `or set RELAYMESH_CONTROL_BIN)`,
      );
    }
    fs.mkdirSync(this.dir, { recursive: true });
    const child = spawn(
      CONTROL_BIN,
      [
        'serve',
        '--listen', `127.0.0.1:${this.grpcPort}`,
        '--http-listen', `127.0.0.1:${this.httpPort}`,
        '--data-dir', this.dir,
        '--heartbeat-ms', String(this.heartbeatMs),
        '--lease-ttl-ms', String(this.leaseTtlMs),
      ],
      { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'], env: childEnv({ RUST_LOG: process.env.RUST_LOG || 'info' }) },
    );
    this.child = child;
    this.killRequested = false;
    this.unexpected = [];
    liveProcesses.add(child);
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        if (!this.killRequested) {
          this.unexpected.push(`exited (code ${code}, signal ${signal})`);
          console.error(`WARNING: relaymesh-control ${this.label} exited on its own: code ${code}, signal ${signal}\n${this.logTail(20)}`);
        }
        liveProcesses.delete(child);
        resolve({ code, signal });
      });
    });
    let sawListening;
    const listening = new Promise((resolve) => (sawListening = resolve));
    captureLines(child, this.log, (line) => {
      if (line.includes('listening on')) sawListening();
    });
    try {
      await withTimeout(
        Promise.race([
          listening,
          this.exitPromise.then((e) => {
            throw new Error(`relaymesh-control exited during startup (code ${e.code}, signal ${e.signal})`);
          }),
        ]),
        STARTUP_TIMEOUT_MS,
        `relaymesh-control to listen on 127.0.0.1:${this.grpcPort}`,
      );
    } catch (err) {
      await this.kill('SIGKILL');
      err.message += `\n--- control plane output ---\n${this.logTail()}`;
      throw err;
    }
    return this;
  }

  /** Stops the process (SIGTERM, then SIGKILL after `graceMs`). Idempotent. */
  async kill(signal = 'SIGTERM', graceMs = 2000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.killRequested = true;
    await stopChild(child, this.exitPromise, signal, graceMs, 'relaymesh-control');
  }
}

/**
 * Starts `relaymesh-control serve` on free loopback ports (gRPC and /metrics) with a fast heartbeat
 * (200 ms) and lease (1 s). Its data dir is `dir` (created), or a new temp dir; the caller kills it
 * and removes `cp.dir`.
 */
async function startControlPlane({ dir, heartbeatMs, leaseTtlMs } = {}) {
  const ownDir = !dir;
  if (ownDir) dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rmcompat-cp-'));
  const cp = new ControlPlane({ dir, grpcPort: await freePort(), httpPort: await freePort(), heartbeatMs, leaseTtlMs });
  try {
    await cp.start();
  } catch (err) {
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return cp;
}

/** `relaymesh-control ctl --json ARGS...` against a control plane (or its gRPC port); parsed output. */
function ctl(controlPlane, ...args) {
  const endpoint = typeof controlPlane === 'object' ? controlPlane.endpoint : `http://127.0.0.1:${controlPlane}`;
  return new Promise((resolve, reject) => {
    execFile(CONTROL_BIN, ['ctl', '--endpoint', endpoint, '--json', ...args], { timeout: 10000, env: childEnv() }, (err, stdout, stderr) =>
      err ? reject(new Error(`ctl ${args.join(' ')} failed: ${stderr || err.message}`)) : resolve(JSON.parse(stdout)),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// cluster mode: a control plane and N nodes behind the RelaymeshServer interface

/** The development cluster CA (ca.pem, ca.key), made once per test process, removed at exit. */
let caDirPromise = null;
function clusterCa() {
  if (!caDirPromise) {
    caDirPromise = new Promise((resolve, reject) => {
      if (!fs.existsSync(BIN)) {
        reject(new Error(`relaymesh-node binary not found at ${BIN} (build it with \`cargo build -p relaymesh-node\`)`));
        return;
      }
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rmcompat-ca-'));
      liveDirs.add(dir);
      execFile(BIN, ['certs', 'ca', '--out', dir], { timeout: 30000, env: childEnv() }, (err, stdout, stderr) => {
        if (err) reject(new Error(`relaymesh-node certs ca --out ${dir} failed: ${stderr || err.message}`));
        else resolve(dir);
      });
    });
    caDirPromise.catch(() => (caDirPromise = null));
  }
  return caDirPromise;
}

const NODE_LETTERS = 'abcdefghijklmnopqrstuvwxyz';
const CLUSTER_LOGS = '--- cluster logs';

/**
 * A real cluster in one folder: `control/` (the control plane's data), `compat-a/`, `compat-b/`, ...
 * (each node's config). It has the interface of RelaymeshServer (host, port, baseUrl, dir, start,
 * kill, restart, logTail, unexpected) so that tests run unchanged:
 *   - client(cluster) connects client number k (creation order) to node k % N,
 *   - serverLib(cluster) uses nodes round robin starting at node 1 (ctx.pusher is on node 1),
 *   - port / baseUrl are node 1's, the node of ctx.pusher,
 *   - restart() restarts every node (same ports and ids; the control plane stays up) and waits until
 *     the cluster is ready again; restartNode(i) restarts one.
 */
class RelaymeshCluster {
  constructor({ apps, extraToml = '', size, transport = MESH_TRANSPORT, dir, caDir }) {
    this.apps = apps;
    this.extraToml = extraToml;
    this.size = size;
    this.transport = transport;
    this.dir = dir;
    this.caDir = caDir;
    this.controlPlane = null;
    this.nodes = [];
    this.clientsCreated = 0;
    this.libsCreated = 0;
  }

  get host() {
    return '127.0.0.1';
  }

  /** Node 1 (node 0 when alone): where ctx.pusher sends its requests. */
  get apiNode() {
    return this.nodes[1 % this.size];
  }

  get port() {
    return this.apiNode.port;
  }

  get baseUrl() {
    return this.apiNode.baseUrl;
  }

  get nodeIds() {
    return this.nodes.map((n) => n.name);
  }

  /** Unexpected exits / shutdowns of any process of the cluster. */
  get unexpected() {
    return [
      ...(this.controlPlane && this.controlPlane.unexpected ? this.controlPlane.unexpected.map((u) => `control plane: ${u}`) : []),
      ...this.nodes.flatMap((n) => (n.unexpected || []).map((u) => `${n.name}: ${u}`)),
    ];
  }

  /** The node the next pusher-js client connects to: k % N for the k-th client (from 0). */
  nextClientNode() {
    return this.nodes[this.clientsCreated++ % this.size];
  }

  /** The node the next pusher (server library) instance talks to: round robin from node 1. */
  nextApiNode() {
    return this.nodes[(1 + this.libsCreated++) % this.size];
  }

  /** The last `n` lines of every node and of the control plane, under a CLUSTER_LOGS header. */
  logTail(n = 40) {
    const parts = [`${CLUSTER_LOGS} (last ${n} lines of each process) ---`];
    parts.push(...this.nodes.map((node) => `--- node ${node.label} ---\n${node.logTail(n) || '(no output)'}`));
    if (this.controlPlane) parts.push(`--- control plane ${this.controlPlane.label} ---\n${this.controlPlane.logTail(n) || '(no output)'}`);
    return parts.join('\n');
  }

  async start() {
    try {
      if (!this.controlPlane) {
        this.controlPlane = new ControlPlane({ dir: path.join(this.dir, 'control'), grpcPort: await freePort(), httpPort: await freePort() });
      }
      if (!this.controlPlane.child || this.controlPlane.child.exitCode !== null || this.controlPlane.child.signalCode !== null) {
        await this.controlPlane.start();
      }
      if (!this.nodes.length) {
        for (let i = 0; i < this.size; i++) {
          const name = `compat-${NODE_LETTERS[i]}`;
          const dir = path.join(this.dir, name);
          fs.mkdirSync(dir, { recursive: true });
          this.nodes.push(
            new RelaymeshServer({
              apps: this.apps,
              extraToml: this.extraToml,
              port: await freePort(),
              dir,
              name,
              tables: {
                control_plane: { endpoint: this.controlPlane.endpoint, region: 'compat', node_id: name },
                mesh: { listen: '127.0.0.1:0', transport: this.transport, dev_ca_dir: this.caDir },
              },
            }),
          );
        }
      }
      // A free port can be taken between freePort() and the node binding it: try another one.
      await allOrFirstError(this.nodes.map((node) => startWithRetry(node, { newPort: true })));
      await this.waitReady();
    } catch (err) {
      await this.kill('SIGKILL');
      if (!String(err.message).includes(CLUSTER_LOGS)) err.message += `\n${this.logTail()}`;
      throw err;
    }
    return this;
  }

  /**
   * Polls until every node answers /readyz 200 and reports a mesh link up to every other node
   * (relaymesh_mesh_link_up{peer=...} 1), and the control plane counts all of them active.
   */
  async waitReady(timeoutMs = CLUSTER_READY_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    let status = [];
    for (;;) {
      const exited = this.nodes.find((n) => !n.child || n.child.exitCode !== null || n.child.signalCode !== null);
      if (exited) throw new Error(`cluster not ready: node ${exited.label} exited (${(exited.unexpected || []).join('; ')})\n${this.logTail()}`);
      if (this.controlPlane.child.exitCode !== null || this.controlPlane.child.signalCode !== null) {
        throw new Error(`cluster not ready: the control plane exited\n${this.logTail()}`);
      }
      status = await Promise.all(this.nodes.map((node) => this.nodeStatus(node)));
      const cp = await this.controlPlaneStatus();
      if (status.every((s) => s.ready) && cp.ready) return;
      if (Date.now() > deadline) {
        throw new Error(
          `cluster of ${this.size} (${this.transport}) not ready after ${timeoutMs} ms:\n` +
            status.map((s) => `  ${s.name}: ${s.detail}`).join('\n') +
            `\n  control plane: ${cp.detail}\n${this.logTail()}`,
        );
      }
      await sleep(50);
    }
  }

  async nodeStatus(node) {
    const ready = await httpGet(`${node.baseUrl}/readyz`, 500);
    const m = await httpGet(`${node.baseUrl}/metrics`, 1000);
    const up = new Set(
      parseMetrics(m.body || '', (name) => name === 'relaymesh_mesh_link_up')
        .filter((x) => x.value === 1)
        .map((x) => x.labels.peer),
    );
    const missing = this.nodes.filter((o) => o !== node && !up.has(o.name)).map((o) => o.name);
    return {
      name: node.name,
      ready: ready.status === 200 && missing.length === 0,
      detail: `/readyz ${ready.status || ready.error}${missing.length ? `, no mesh link up to ${missing.join(', ')}` : ', linked to every other node'}`,
    };
  }

  async controlPlaneStatus() {
    const res = await httpGet(this.controlPlane.metricsUrl, 1000);
    const active = parseMetrics(res.body || '', (name) => name === 'relaymesh_control_nodes')
      .filter((x) => x.labels.state === 'active')
      .reduce((sum, x) => sum + x.value, 0);
    return { ready: active === this.size, detail: `${active} of ${this.size} nodes active (/metrics ${res.status || res.error})` };
  }

  /** Stops every node, then the control plane (SIGTERM, then SIGKILL after `graceMs`). Idempotent. */
  async kill(signal = 'SIGTERM', graceMs = 2000) {
    await Promise.all(this.nodes.map((node) => node.kill(signal, graceMs)));
    if (this.controlPlane) await this.controlPlane.kill(signal, graceMs);
  }

  /**
   * Restarts every node on its port with its id and config (the control plane stays up), and waits
   * until the cluster is ready again: every client sees its node go away, as with one server.
   */
  async restart({ signal = 'SIGKILL', downMs = 0 } = {}) {
    await Promise.all(this.nodes.map((node) => node.kill(signal)));
    if (downMs) await sleep(downMs);
    await allOrFirstError(this.nodes.map((node) => startWithRetry(node, { newPort: false })));
    await this.waitReady(CLUSTER_RESTART_READY_TIMEOUT_MS);
    return this;
  }

  /** Restarts node i only (same port and id), then waits until the cluster is ready again. */
  async restartNode(i, { signal = 'SIGKILL', downMs = 0 } = {}) {
    const node = this.nodes[i];
    await node.kill(signal);
    if (downMs) await sleep(downMs);
    await startWithRetry(node, { newPort: false });
    await this.waitReady(CLUSTER_RESTART_READY_TIMEOUT_MS);
    return this;
  }
}

/** Like Promise.all, but waits for every promise to settle before rejecting (nothing left running). */
async function allOrFirstError(promises) {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => r.value);
}

/** node.start(), retried on failure: on a new free port (first start) or on the same one (restart). */
async function startWithRetry(node, { newPort, attempts = 5 }) {
  let lastErr;
  for (let attempt = 0; attempt < attempts; attempt++) {
    try {
      return await node.start();
    } catch (err) {
      lastErr = err;
      await sleep(300);
      if (newPort) node.port = await freePort();
    }
  }
  throw lastErr;
}

/** A running cluster of `size` nodes (default RELAYMESH_COMPAT_CLUSTER) serving `apps`. */
async function startCluster({ apps = [DEFAULT_APP], extraToml = '', size = CLUSTER_SIZE || 3, transport = MESH_TRANSPORT } = {}) {
  const caDir = await clusterCa();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rmcompat-cluster-'));
  liveDirs.add(dir);
  const cluster = new RelaymeshCluster({ apps, extraToml, size, transport, dir, caDir });
  try {
    await cluster.start();
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
    throw err;
  }
  return cluster;
}

/** Removes a server's or cluster's folder (after kill). */
function removeServerDir(server) {
  fs.rmSync(server.dir, { recursive: true, force: true });
  liveDirs.delete(server.dir);
}

// ---------------------------------------------------------------------------------------------
// raw frame capture: wrap pusher-js's WebSocket factory so failures can show the exact wire frames

const rawBySocketId = new Map();
{
  const Runtime = PusherClient.Runtime;
  const origCreate = Runtime.createWebSocket;
  Runtime.createWebSocket = function (url) {
    const ws = origCreate.call(this, url);
    const log = [];
    try {
      ws.addEventListener('message', (ev) => {
        const text = typeof ev.data === 'string' ? ev.data : `<binary ${ev.data && ev.data.length} bytes>`;
        log.push(`<< ${text}`);
        if (log.socketId === undefined) {
          log.socketId = null;
          try {
            const m = JSON.parse(text);
            if (m.event === 'pusher:connection_established') {
              const d = typeof m.data === 'string' ? JSON.parse(m.data) : m.data;
              log.socketId = d.socket_id;
              rawBySocketId.set(d.socket_id, log);
            }
          } catch {}
        }
      });
      ws.addEventListener('close', (ev) => log.push(`-- close code=${ev.code} reason=${JSON.stringify(ev.reason)}`));
      // faye-websocket arms a 30 s close-handshake timer even when the peer has already closed the
      // socket (pusher-js calls close() again after a 4009 "refused" close). Do not let that timer
      // keep the test process alive; behaviour is unchanged.
      const close = ws.close;
      ws.close = function () {
        const r = close.apply(this, arguments);
        if (this._closeTimer && typeof this._closeTimer.unref === 'function') this._closeTimer.unref();
        return r;
      };
      const send = ws.send;
      ws.send = function (data) {
        log.push(`>> ${data}`);
        return send.apply(this, arguments);
      };
    } catch {}
    return ws;
  };
}

/** Raw received frames (parsed once, not data-decoded) of the client's current socket. */
function rawReceived(c) {
  const log = rawBySocketId.get(c.connection.socket_id) || [];
  return log.filter((l) => l.startsWith('<< ')).map((l) => {
    try {
      return JSON.parse(l.slice(3));
    } catch {
      return { unparsable: l.slice(3) };
    }
  });
}

/** Raw frames (">>" sent, "<<" received) of every socket this client had, oldest first. */
function rawFrames(c) {
  const out = [];
  for (const sid of c.socketIds || []) {
    const log = rawBySocketId.get(sid);
    if (log) out.push(`  [socket ${sid}]`, ...log.map((l) => `    ${l}`));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// libraries

/** A pusher (server library) instance for `app` on `server`; on a cluster, the nodes round robin from node 1. */
function serverLib(server, app = DEFAULT_APP, overrides = {}) {
  const target = typeof server.nextApiNode === 'function' ? server.nextApiNode() : server;
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(target.port),
    useTLS: false,
    timeout: DEFAULT_TIMEOUT_MS,
    ...overrides,
  });
}

/** The node the next client connects to: on a cluster, client number k goes to node k % N. */
function clientNode(server) {
  return typeof server.nextClientNode === 'function' ? server.nextClientNode() : server;
}

/**
 * A pusher-js client that records every frame it receives (decoded, as pusher-js sees it). On a
 * cluster, client number k connects to node k % N (`c.node` is that node). `Pusher` is the client
 * class (another pusher-js version, say); its options are this one's plus `opts`.
 */
function client(server, opts = {}, app = DEFAULT_APP, Pusher = PusherClient) {
  const target = clientNode(server);
  const c = new Pusher(app.key, {
    wsHost: '127.0.0.1',
    wsPort: target.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    ...opts,
  });
  return track(c, target !== server ? target : null);
}

/**
 * Records a pusher-js client's received frames, states and errors (for waitForFrame and
 * describeClient); for clients made elsewhere (Laravel Echo's). `node`: the cluster node it is on.
 */
function track(c, node = null) {
  if (node) c.node = node;
  c.frames = [];
  c.states = [c.connection.state];
  c.errors = [];
  c.connection.bind('message', (m) => c.frames.push({ at: Date.now(), ...m }));
  c.socketIds = [];
  c.connection.bind('state_change', ({ current }) => {
    c.states.push(current);
    if (current === 'connected') c.socketIds.push(c.connection.socket_id);
  });
  c.connection.bind('error', (e) => c.errors.push(e));
  return c;
}

function describeClient(c, label = 'client') {
  let frames = rawFrames(c);
  if (!frames.length) {
    frames = c.frames.map((f) => `  ${JSON.stringify({ event: f.event, channel: f.channel, data: f.data, user_id: f.user_id })}`);
  }
  return (
    `${label}${c.node ? ` (on node ${c.node.name}, port ${c.node.port})` : ''}: socket_id=${c.connection.socket_id} state=${c.connection.state} states=${c.states.join('>')}` +
    `${c.errors.length ? `\n  errors: ${JSON.stringify(c.errors)}` : ''}\n  frames (>> sent, << received):\n${frames.join('\n') || '  (none)'}`
  );
}

function waitForState(c, state, ms = DEFAULT_TIMEOUT_MS, label = 'client') {
  if (c.connection.state === state) return Promise.resolve();
  let handler;
  const p = new Promise((resolve) => {
    handler = ({ current }) => {
      if (current === state) resolve();
    };
    c.connection.bind('state_change', handler);
  });
  return withTimeout(p, ms, `${label} connection state "${state}"`, () => describeClient(c, label)).finally(() =>
    c.connection.unbind('state_change', handler),
  );
}

async function connected(c, ms = DEFAULT_TIMEOUT_MS, label = 'client') {
  await waitForState(c, 'connected', ms, label);
  return c;
}

/**
 * Resolves with the arguments of the next `event` on `emitter` (a channel, `client.user`, ...).
 * Call it BEFORE doing whatever causes the event.
 */
function nextEvent(emitter, event, { ms = DEFAULT_TIMEOUT_MS, describe, filter } = {}) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (data, metadata) => {
      if (filter && !filter(data, metadata)) return;
      resolve({ data, metadata });
    };
    emitter.bind(event, handler);
  });
  return withTimeout(p, ms, `event "${event}"${emitter.name ? ` on ${emitter.name}` : ''}`, describe).finally(() =>
    emitter.unbind(event, handler),
  );
}

/** Resolves with the first received (decoded) frame matching `pred`, including ones already received. */
function waitForFrame(c, pred, { ms = DEFAULT_TIMEOUT_MS, what = 'a matching frame', label = 'client', since = 0 } = {}) {
  const old = c.frames.slice(since).find(pred);
  if (old) return Promise.resolve(old);
  let handler;
  const p = new Promise((resolve) => {
    handler = (m) => {
      if (pred(m)) resolve(m);
    };
    c.connection.bind('message', handler);
  });
  return withTimeout(p, ms, `${label}: ${what}`, () => describeClient(c, label)).finally(() =>
    c.connection.unbind('message', handler),
  );
}

/** Subscribes and waits for pusher:subscription_succeeded; rejects on pusher:subscription_error. */
async function subscribe(c, channelName, { ms = DEFAULT_TIMEOUT_MS, label = 'client' } = {}) {
  const channel = c.subscribe(channelName);
  let okH, errH;
  const p = new Promise((resolve, reject) => {
    okH = (members) => resolve(members);
    errH = (err) => reject(new Error(`${label}: pusher:subscription_error on ${channelName}: ${JSON.stringify(err)}\n${describeClient(c, label)}`));
    channel.bind('pusher:subscription_succeeded', okH);
    channel.bind('pusher:subscription_error', errH);
  });
  try {
    const members = await withTimeout(p, ms, `${label} subscription to ${channelName}`, () => describeClient(c, label));
    return { channel, members };
  } finally {
    channel.unbind('pusher:subscription_succeeded', okH);
    channel.unbind('pusher:subscription_error', errH);
  }
}

/** Collects every occurrence of `event` on `emitter` into an array. */
function record(emitter, event) {
  const seen = [];
  emitter.bind(event, (data, metadata) => seen.push({ data, metadata }));
  return seen;
}

function disconnectClient(c) {
  if (!c) return Promise.resolve();
  try {
    c.disconnect();
  } catch {}
  return Promise.resolve();
}

// ---------------------------------------------------------------------------------------------
// the application's auth endpoint (what a real app would run), signing with the library's helpers

/**
 * Starts node:http on a free loopback port serving
 *   POST /pusher/auth       -> pusher.authorizeChannel(socket_id, channel_name, presenceData?)
 *   POST /pusher/user-auth  -> pusher.authenticateUser(socket_id, userData)
 * `presence(req)` returns the presence data for the requesting client; the client tells us who it is
 * through the `user` query parameter of the endpoint URL.
 */
async function startAuthServer(pusher, { users = {} } = {}) {
  const requests = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const url = new URL(req.url, 'http://127.0.0.1');
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const channelName = form.get('channel_name');
      const user = url.searchParams.get('user');
      requests.push({ path: url.pathname, socketId, channelName, user });
      try {
        let out;
        if (req.method === 'POST' && url.pathname === '/pusher/auth') {
          if (channelName.startsWith('presence-')) {
            const presenceData = users[user];
            if (!presenceData) throw new Error(`unknown user ${user}`);
            out = pusher.authorizeChannel(socketId, channelName, presenceData);
          } else {
            out = pusher.authorizeChannel(socketId, channelName);
          }
        } else if (req.method === 'POST' && url.pathname === '/pusher/user-auth') {
          const userData = users[user];
          if (!userData) throw new Error(`unknown user ${user}`);
          out = pusher.authenticateUser(socketId, { id: userData.user_id, user_info: userData.user_info });
        } else {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json', connection: 'close' });
        res.end(JSON.stringify(out));
      } catch (err) {
        res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' });
        res.end(String(err && err.message));
      }
    });
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const port = srv.address().port;
  return {
    port,
    requests,
    endpoint: (user) => `http://127.0.0.1:${port}/pusher/auth${user ? `?user=${encodeURIComponent(user)}` : ''}`,
    close: () =>
      new Promise((resolve) => {
        srv.closeAllConnections?.();
        srv.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// per-test scope: a fresh server for every test, and LIFO cleanup of everything the test created

/** A fresh server for one test: one node, or with RELAYMESH_COMPAT_CLUSTER=N an N-node cluster. */
function startTestServer({ apps = [DEFAULT_APP], extraToml = '' } = {}) {
  return CLUSTER_SIZE ? startCluster({ apps, extraToml, size: CLUSTER_SIZE }) : startServer({ apps, extraToml });
}

/**
 * Registers beforeEach/afterEach hooks in the current suite/file. Returns a context whose fields
 * are (re)filled before each test:
 *   ctx.server   - the running RelaymeshServer
 *   ctx.pusher   - pusher (server library) for the default app
 *   ctx.client(opts) - a new pusher-js client, disconnected automatically after the test
 *   ctx.defer(fn)    - run fn in teardown
 * `apps` is the list of app configs (default: [DEFAULT_APP]) or a function returning it, called
 * before each test (so it can use ports opened in a `before` hook); `extraToml` is added to the
 * node's config file.
 * With RELAYMESH_COMPAT_CLUSTER=N, ctx.server is a RelaymeshCluster of N nodes instead (same
 * interface; clients and server-library instances are spread over its nodes).
 */
function useServer({ apps, extraToml = '' } = {}) {
  const ctx = { server: null, pusher: null, cleanups: [] };
  ctx.defer = (fn) => ctx.cleanups.push(fn);
  ctx.client = (opts, app) => {
    const c = client(ctx.server, opts, app);
    ctx.defer(() => disconnectClient(c));
    return c;
  };
  ctx.authServer = async (pusher, options) => {
    const a = await startAuthServer(pusher, options);
    ctx.defer(() => a.close());
    return a;
  };

  beforeEach(async () => {
    ctx.cleanups = [];
    ctx.server = null;
    const appList = typeof apps === 'function' ? await apps() : apps;
    ctx.server = await startTestServer({ apps: appList, extraToml });
    const srv = ctx.server;
    ctx.defer(async () => {
      await srv.kill('SIGTERM');
      removeServerDir(srv);
    });
    ctx.pusher = serverLib(ctx.server);
  });

  afterEach(async (t) => {
    // Cluster mode: a failed test's message ends with the log tails of every node and the control plane.
    if (CLUSTER_SIZE && ctx.server && t && t.passed === false && t.error) {
      const err = t.error.cause || t.error;
      if (!String(err.message).includes(CLUSTER_LOGS)) {
        const extra = `\n${ctx.server.logTail(30)}`;
        try {
          err.message += extra;
          if (typeof err.stack === 'string') err.stack += extra;
        } catch {}
      }
    }
    const fns = ctx.cleanups.splice(0).reverse();
    for (const fn of fns) {
      try {
        await withTimeout(Promise.resolve().then(fn), 8000, 'teardown step');
      } catch (err) {
        // keep tearing down; a failed step must not leave the server running
        console.error('teardown:', err && err.message);
      }
    }
    // give pusher-js a tick to drop its sockets before the next test
    await sleep(20);
  });

  return ctx;
}

let counter = 0;
/** A channel/user name unique within this process. */
function uniqueName(prefix) {
  counter += 1;
  return `${prefix}${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

module.exports = {
  BIN,
  CONTROL_BIN,
  CLUSTER_SIZE,
  MESH_TRANSPORT,
  DEFAULT_APP,
  DEFAULT_TIMEOUT_MS,
  PusherClient,
  PusherServer,
  sleep,
  withTimeout,
  freePort,
  captureLines,
  rawFrames,
  rawReceived,
  startServer,
  startControlPlane,
  startCluster,
  startTestServer,
  removeServerDir,
  ctl,
  httpGet,
  metrics,
  parseMetrics,
  serverLib,
  clientNode,
  client,
  track,
  describeClient,
  waitForState,
  connected,
  nextEvent,
  subscribe,
  waitForFrame,
  record,
  disconnectClient,
  startAuthServer,
  useServer,
  uniqueName,
};
