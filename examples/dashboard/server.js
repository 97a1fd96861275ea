'use strict';
// The dashboard's backend: every second it samples the host's CPU and the relaymesh node's own
// /metrics, and publishes the last minute of samples to a cache channel. A cache channel keeps
// its last event and hands it to every new subscriber, so a page that opens draws the whole
// chart at once instead of waiting for the next samples.
//
//   npm start                     # node on 127.0.0.1:6001 (started when none answers), page on :3001
//   DASHBOARD_PORT=0              # any free port
//   DASHBOARD_INTERVAL_MS=1000    # sampling period
//   DASHBOARD_SAMPLES=0           # stop publishing after this many samples (0: never), page stays up

const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const Pusher = require('pusher');
const { ensureNode, stopOnSignals } = require('../lib/local-node');
const { pusherBundle, serveStatic, sendJson, listen } = require('../lib/web');

const CHANNEL = 'cache-dashboard';
const HISTORY = 60; // samples per event: about 4.5 KB, under the node's 10 KB event limit

function intEnv(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number, got ${JSON.stringify(v)}`);
  return n;
}

/** CPU busy % of the whole host since the previous call. */
function cpuMeter() {
  const totals = () => os.cpus().reduce((acc, c) => {
    const t = c.times;
    acc.busy += t.user + t.nice + t.sys + t.irq;
    acc.all += t.user + t.nice + t.sys + t.irq + t.idle;
    return acc;
  }, { busy: 0, all: 0 });
  let last = totals();
  return () => {
    const now = totals();
    const pct = now.all > last.all ? (100 * (now.busy - last.busy)) / (now.all - last.all) : 0;
    last = now;
    return pct;
  };
}

/** Sums of the node's Prometheus metrics we chart, over all their labels. */
async function nodeMetrics(node) {
  const res = await fetch(`http://${node.host}:${node.port}/metrics`, { signal: AbortSignal.timeout(2000) });
  if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`);
  const sums = { relaymesh_connections: 0, relaymesh_messages_out_total: 0, relaymesh_events_published_total: 0 };
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-z_]+)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] in sums) sums[m[1]] += Number(m[2]);
  }
  return sums;
}

const round1 = (x) => Math.round(x * 10) / 10;

async function main() {
  const intervalMs = intEnv('DASHBOARD_INTERVAL_MS', 1000) || 1000;
  const maxSamples = intEnv('DASHBOARD_SAMPLES', 0);
  const node = await ensureNode();
  const pusher = new Pusher({ appId: node.appId, key: node.key, secret: node.secret, host: node.host, port: String(node.port), useTLS: false });
  const bundle = pusherBundle(__dirname);
  const publicDir = path.join(__dirname, 'public');

  const server = http.createServer((req, res) => {
    if (serveStatic(req, res, publicDir, bundle)) return;
    if (req.method === 'GET' && req.url === '/config') {
      return sendJson(res, 200, { key: node.key, wsHost: node.host, wsPort: node.port, channel: CHANNEL, intervalMs });
    }
    sendJson(res, 404, { error: 'not found' });
  });
  const url = await listen(server, 'DASHBOARD_PORT', 3001);
  stopOnSignals(node, server);
  console.log(`dashboard: ${url}  (publishing to ${CHANNEL} every ${intervalMs} ms)`);

  const cpu = cpuMeter();
  const samples = [];
  let previous = await nodeMetrics(node);
  let previousAt = Date.now();
  let published = 0;
  const timer = setInterval(async () => {
    try {
      const now = Date.now();
      const m = await nodeMetrics(node);
      const secs = Math.max(0.001, (now - previousAt) / 1000);
      samples.push({
        t: now,
        cpu: round1(cpu()),
        connections: m.relaymesh_connections,
        messages_out: round1((m.relaymesh_messages_out_total - previous.relaymesh_messages_out_total) / secs),
        published: round1((m.relaymesh_events_published_total - previous.relaymesh_events_published_total) / secs),
      });
      if (samples.length > HISTORY) samples.shift();
      previous = m;
      previousAt = now;
      await pusher.trigger(CHANNEL, 'metrics', { samples, sent_at: Date.now(), interval_ms: intervalMs });
      published += 1;
      console.log(`published sample ${published} (${samples.length} in the window)`);
      if (maxSamples && published >= maxSamples) {
        clearInterval(timer);
        console.log(`published ${published} samples; stopped publishing (DASHBOARD_SAMPLES), the page is still served`);
      }
    } catch (err) {
      console.error(`sample not published: ${err.message}`);
    }
  }, intervalMs);
}

main().catch((err) => {
  console.error(`dashboard: ${err.message}`);
  process.exit(1);
});
