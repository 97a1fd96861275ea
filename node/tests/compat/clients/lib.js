'use strict';
// What the client-matrix tests share on top of ../lib/harness.js: the examples started the way a
// person starts them (`npm start`), headless Chromium through playwright-core, and screenshots.

const { spawn } = require('node:child_process');
const { before, after } = require('node:test');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const CHROMIUM = process.env.RELAYMESH_COMPAT_CHROMIUM || '/usr/bin/chromium';
const MODE = h.CLUSTER_SIZE ? `cluster-${h.CLUSTER_SIZE}-${h.MESH_TRANSPORT}` : 'single';
/** Screenshots of this run: target/test-artifacts/clients/<mode>/ (not committed). */
const ARTIFACTS = path.join(REPO, 'target', 'test-artifacts', 'clients', MODE);

const liveGroups = new Set();
process.on('exit', () => {
  for (const pid of liveGroups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
  }
});

/**
 * An example's environment: ours without RELAYMESH_* (a node the example starts would refuse the
 * harness's variables), plus `env`.
 */
function exampleEnv(env) {
  const out = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('RELAYMESH_')) out[k] = v;
  return { ...out, ...env };
}

/**
 * Runs `npm start` in examples/<name> with `env` added, in its own process group, and waits for
 * the line `<name>: http://...`. Returns { url, output, stop() }; stop() ends the whole group
 * (npm, the example, and a node the example started), SIGTERM then SIGKILL.
 */
async function startExample(name, env, { ms = 20000 } = {}) {
  const dir = path.join(REPO, 'examples', name);
  if (!fs.existsSync(path.join(dir, 'node_modules'))) throw new Error(`${dir}/node_modules is missing: run \`npm ci\` there (scripts/test-clients does)`);
  const child = spawn('npm', ['start', '--silent'], { cwd: dir, env: exampleEnv(env), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  liveGroups.add(child.pid);
  const output = [];
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let sawUrl;
  const urlSeen = new Promise((resolve) => (sawUrl = resolve));
  h.captureLines(child, output, (line) => {
    const m = new RegExp(`^${name}: (http://\\S+)`).exec(line);
    if (m) sawUrl(m[1]);
  });
  const groupAlive = () => {
    try {
      process.kill(-child.pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const stop = async () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {}
    // The whole group, not only npm: the example and a node it started clean up after npm exits.
    for (const deadline = Date.now() + 5000; groupAlive() && Date.now() < deadline; ) await h.sleep(50);
    if (groupAlive()) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }
    await exit;
    liveGroups.delete(child.pid);
  };
  try {
    const url = await h.withTimeout(
      Promise.race([urlSeen, exit.then((e) => Promise.reject(new Error(`npm start in examples/${name} exited (code ${e.code}, signal ${e.signal})`)))]),
      ms,
      `examples/${name} to print its URL`,
    );
    return { url, output, stop };
  } catch (err) {
    await stop();
    err.message += `\n--- examples/${name} output ---\n${output.join('\n')}`;
    throw err;
  }
}

/** Headless Chromium (Debian's) through playwright-core; close it in teardown. */
async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: \`apt-get install chromium\` (scripts/test-clients does)`);
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // The machine has no network but loopback: keep Chromium from calling home.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * One Chromium for the tests of a file (it takes seconds to start here): `b.browser` is set in
 * `before` and closed in `after`; tests make their own contexts (cookie jars) in it.
 */
function useBrowser() {
  const b = { browser: null };
  before(async () => {
    b.browser = await launchBrowser();
  });
  after(async () => {
    if (b.browser) await b.browser.close();
  });
  return b;
}

/** Saves a screenshot of `page` as ARTIFACTS/<test>-<step>.png; returns the path. */
async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Console messages and page errors of `page`, for failure messages. */
function pageLog(page) {
  const log = [];
  page.on('console', (m) => log.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log.push(`[pageerror] ${e.message}`));
  return log;
}

module.exports = { REPO, MODE, ARTIFACTS, exampleEnv, startExample, launchBrowser, useBrowser, screenshot, pageLog };
