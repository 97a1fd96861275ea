'use strict';
// Test harness for the relaymesh-node compatibility suite.
//
// - starts the real `relaymesh-node` binary on a free loopback port with a generated TOML config,
// - builds real `pusher-js` clients and real `pusher` (pusher-http-node) server-library instances,
// - runs a tiny local auth endpoint that signs with the library's own helpers,
// - records every frame a client receives so that failures can show what the server actually sent,
// - tears everything down (clients, auth servers, server process) after every test.

const { spawn } = require('node:child_process');
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

const DEFAULT_APP = Object.freeze({
  id: 'app-id',
  key: 'app-key',
  secret: 'app-secret',
  client_events: true,
  max_presence_members: 100,
  max_event_bytes: 10240,
});

const STARTUP_TIMEOUT_MS = 15000;
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

function appToToml(app) {
  const lines = ['[[apps]]'];
  for (const [k, v] of Object.entries(app)) {
    if (v === undefined || v === null) continue;
    if (typeof v === 'string') lines.push(`${k} = ${tomlString(v)}`);
    else if (typeof v === 'boolean' || typeof v === 'number') lines.push(`${k} = ${v}`);
    else if (Array.isArray(v)) lines.push(`${k} = [${v.map(tomlString).join(', ')}]`);
    else throw new Error(`unsupported config value for ${k}`);
  }
  return lines.join('\n') + '\n';
}

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

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
process.on('exit', () => {
  // Safety net: never leave a server behind, even if a teardown was skipped.
  for (const child of liveProcesses) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
});

class RelaymeshServer {
  constructor({ apps, port, dir, extraToml = '' }) {
    this.apps = apps;
    this.extraToml = extraToml; // top-level settings and tables written before the apps
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
    fs.writeFileSync(this.configPath, this.extraToml + this.apps.map(appToToml).join('\n'));
    const listenAddr = `127.0.0.1:${this.port}`;
    // RELAYMESH_* variables configure the node, which refuses unknown ones: keep ours out.
    const { RELAYMESH_NODE_BIN: _bin, ...env } = process.env;
    const child = spawn(BIN, ['--config', this.configPath, '--listen', listenAddr], {
      cwd: this.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info' },
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
          console.error(`WARNING: relaymesh-node (pid ${child.pid}, port ${this.port}) exited on its own: code ${code}, signal ${signal}\n${this.logTail(20)}`);
        }
        liveProcesses.delete(child);
        resolve(exited);
      });
    });
    this.exitPromise = exitPromise;

    let sawListening;
    const listening = new Promise((resolve) => (sawListening = resolve));
    const onData = (stream) => {
      let buf = '';
      child[stream].setEncoding('utf8');
      child[stream].on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(ANSI, '');
          buf = buf.slice(i + 1);
          this.log.push(`[${stream}] ${line}`);
          if (this.log.length > 500) this.log.shift();
          if (line.includes(`listening on ${listenAddr}`)) sawListening('log');
          if (/shutting down/i.test(line) && !this.killRequested) {
            this.unexpected.push(line);
            console.error(`WARNING: relaymesh-node (pid ${child.pid}, port ${this.port}) is shutting down although the harness did not stop it: ${line}`);
          }
        }
      });
    };
    onData('stdout');
    onData('stderr');

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

  /** Stops the process (SIGTERM, then SIGKILL after `graceMs`). Idempotent. */
  async kill(signal = 'SIGTERM', graceMs = 2000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.killRequested = true;
    try {
      child.kill(signal);
    } catch {}
    let timer;
    const done = await Promise.race([
      this.exitPromise.then(() => true),
      new Promise((resolve) => (timer = setTimeout(() => resolve(false), graceMs))),
    ]);
    clearTimeout(timer);
    if (!done) {
      try {
        child.kill('SIGKILL');
      } catch {}
      await withTimeout(this.exitPromise, 5000, 'relaymesh-node to exit after SIGKILL').catch(() => {});
    }
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

function serverLib(server, app = DEFAULT_APP, overrides = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    timeout: DEFAULT_TIMEOUT_MS,
    ...overrides,
  });
}

/** A pusher-js client that records every frame it receives (decoded, as pusher-js sees it). */
function client(server, opts = {}, app = DEFAULT_APP) {
  const c = new PusherClient(app.key, {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    ...opts,
  });
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
    `${label}: socket_id=${c.connection.socket_id} state=${c.connection.state} states=${c.states.join('>')}` +
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

/**
 * Registers beforeEach/afterEach hooks in the current suite/file. Returns a context whose fields
 * are (re)filled before each test:
 *   ctx.server   - the running RelaymeshServer
 *   ctx.pusher   - pusher (server library) for the default app
 *   ctx.client(opts) - a new pusher-js client, disconnected automatically after the test
 *   ctx.defer(fn)    - run fn in teardown
 * `apps` is the list of app configs (default: [DEFAULT_APP]) or a function returning it, called
 * before each test (so it can use ports opened in a `before` hook).
 */
function useServer({ apps } = {}) {
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
    ctx.server = await startServer({ apps: typeof apps === 'function' ? await apps() : apps });
    const srv = ctx.server;
    ctx.defer(async () => {
      await srv.kill('SIGTERM');
      fs.rmSync(srv.dir, { recursive: true, force: true });
    });
    ctx.pusher = serverLib(ctx.server);
  });

  afterEach(async () => {
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
  DEFAULT_APP,
  DEFAULT_TIMEOUT_MS,
  PusherClient,
  PusherServer,
  sleep,
  withTimeout,
  freePort,
  rawFrames,
  rawReceived,
  startServer,
  serverLib,
  client,
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
