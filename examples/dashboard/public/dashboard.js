'use strict';
// Subscribes to the dashboard's cache channel. On subscription the node sends the channel's last
// event at once (or pusher:cache_miss when there is none yet); each event carries the last minute
// of samples, so that first event draws the whole chart. Charts are plain SVG polylines.

const SERIES = [
  { key: 'connections', title: 'WebSocket connections on the node', unit: '' },
  { key: 'messages_out', title: 'messages sent to clients', unit: '/s' },
  { key: 'published', title: 'events published', unit: '/s' },
  { key: 'cpu', title: 'host CPU', unit: '%' },
];
const W = 300;
const H = 100;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const svgEl = (name, attrs) => {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
};

function chart(series) {
  const fig = document.createElement('figure');
  fig.dataset.series = series.key;
  fig.innerHTML = `<figcaption><span>${series.title}</span><span class="value">–</span></figcaption>`;
  const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
  for (const y of [0, H / 2, H]) svg.append(svgEl('line', { class: 'grid', x1: 0, x2: W, y1: y, y2: y }));
  const max = svgEl('text', { class: 'axis', x: 2, y: 10 });
  const line = svgEl('polyline', { points: '' });
  svg.append(max, line);
  fig.append(svg);
  $('charts').append(fig);
  return { fig, max, line, value: fig.querySelector('.value') };
}

const charts = new Map(SERIES.map((s) => [s.key, chart(s)]));

function draw(samples, intervalMs) {
  const span = Math.max(1, 59 * intervalMs); // a minute of samples across the width
  const end = samples[samples.length - 1].t;
  for (const s of SERIES) {
    const c = charts.get(s.key);
    const values = samples.map((x) => x[s.key]);
    const top = Math.max(1, ...values) * 1.1;
    c.line.setAttribute('points', samples.map((x) => `${(W - ((end - x.t) / span) * W).toFixed(1)},${(H - (x[s.key] / top) * H).toFixed(1)}`).join(' '));
    c.max.textContent = `${Math.round(top)}${s.unit}`;
    c.value.textContent = `${values[values.length - 1]}${s.unit}`;
    c.fig.dataset.points = samples.length;
  }
}

async function main() {
  const config = await (await fetch('/config')).json();
  const pusher = new Pusher(config.key, {
    wsHost: config.wsHost,
    wsPort: Number(new URLSearchParams(location.search).get('port')) || config.wsPort,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1', // required by pusher-js, unused with wsHost
  });
  pusher.connection.bind('state_change', ({ current }) => ($('status').textContent = current));

  const subscribedAt = Date.now();
  const channel = pusher.subscribe(config.channel);
  let first = true;
  channel.bind('pusher:cache_miss', () => ($('source').textContent = 'Nothing cached yet: waiting for the first sample.'));
  channel.bind('metrics', (data) => {
    if (first) {
      first = false;
      // Only the cache can deliver an event published before this page subscribed.
      const fromCache = data.sent_at < subscribedAt;
      document.body.dataset.firstEvent = fromCache ? 'cache' : 'live';
      $('source').textContent = fromCache
        ? `Filled from the channel's cache on load: ${data.samples.length} samples, the newest published ${((subscribedAt - data.sent_at) / 1000).toFixed(1)} s before this page subscribed. Live from here on.`
        : `Live: ${data.samples.length} samples.`;
    }
    draw(data.samples, data.interval_ms);
  });
}

main().catch((err) => ($('status').textContent = `error: ${err.message}`));
