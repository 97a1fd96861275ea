'use strict';
// examples/dashboard in headless Chromium: the chart fills from the cache channel on load, then
// grows with every sample. On a cluster the page of the cache test is on node 0, the publisher on
// node 1. Screenshots: target/test-artifacts/clients/<mode>/dashboard-*.png.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startExample, useBrowser, screenshot, pageLog } = require('./lib');

const ctx = h.useServer();
const chromium = useBrowser();
const MS = 15000; // generous: Chromium on a shared 2-core machine; a pass does not wait for it

async function dashboard(env) {
  const d = await startExample('dashboard', { RELAYMESH_PORT: String(ctx.server.port), DASHBOARD_PORT: '0', DASHBOARD_INTERVAL_MS: '200', ...env });
  ctx.defer(() => d.stop());
  return d;
}

async function page(url) {
  const context = await chromium.browser.newContext({ viewport: { width: 1000, height: 600 } });
  ctx.defer(() => context.close());
  const p = await context.newPage();
  p.log = pageLog(p);
  await p.goto(url);
  return p;
}

const points = (p) => p.$$eval('figure[data-series]', (figs) => figs.map((f) => Number(f.dataset.points || 0)));

async function until(what, fn, describe) {
  const deadline = Date.now() + MS;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) assert.fail(`${what} within ${MS} ms\n${describe()}`);
    await h.sleep(50);
  }
}

test('dashboard: a page opened after the publisher stopped draws every sample from the cache', async () => {
  const d = await dashboard({ DASHBOARD_SAMPLES: '3' });
  const describe = () => `--- dashboard output ---\n${d.output.join('\n')}`;
  await until('the publisher published 3 samples and stopped', () => d.output.some((l) => l.includes('stopped publishing')), describe);

  // Nothing is published any more: whatever the page draws came from the channel's cache.
  const node = h.CLUSTER_SIZE ? ctx.server.nodes[0] : ctx.server;
  const p = await page(`${d.url}?port=${node.port}`);
  const more = () => `${describe()}\n--- page console ---\n${p.log.join('\n')}\n--- relaymesh ---\n${ctx.server.logTail(20)}`;
  await p.waitForSelector('body[data-first-event]', { timeout: MS }).catch((e) => assert.fail(`${e.message}\n${more()}`));
  assert.equal(await p.getAttribute('body', 'data-first-event'), 'cache', more());
  assert.deepEqual(await points(p), [3, 3, 3, 3], more());
  assert.match(await p.textContent('#source'), /Filled from the channel's cache on load: 3 samples/);
  const line = await p.getAttribute('figure[data-series=cpu] polyline', 'points');
  assert.equal(line.trim().split(/\s+/).length, 3, `the CPU chart is not drawn: points="${line}"`);
  await screenshot(p, 'dashboard-1-filled-from-cache');
});

test('dashboard: live samples every interval, the connections chart counts the page', async () => {
  const d = await dashboard({});
  const p = await page(d.url);
  const describe = () => `--- dashboard output ---\n${d.output.join('\n')}\n--- page console ---\n${p.log.join('\n')}`;
  await until('the chart has a sample', async () => (await points(p))[0] >= 1, describe);
  const start = (await points(p))[0];
  await until('two more samples arrived', async () => (await points(p))[0] >= start + 2, describe);
  await until('the connections chart counts this page', async () => Number(await p.textContent('figure[data-series=connections] .value')) >= 1, describe);
  await screenshot(p, 'dashboard-2-live');
});
