'use strict';
// What the browser examples' servers share: static files, the pusher-js browser bundle from
// node_modules (no CDN), request bodies, and a listening port.

const fs = require('node:fs');
const path = require('node:path');

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };

/** The pusher-js browser bundle installed in `exampleDir`, with an actionable error when it is missing. */
function pusherBundle(exampleDir) {
  const file = path.join(exampleDir, 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run \`npm ci\` in ${exampleDir} first`);
  return file;
}

/**
 * Serves GET `/` and the files of `publicDir` by name, and `/vendor/pusher.min.js`. Returns true when
 * it answered the request.
 */
function serveStatic(req, res, publicDir, bundle) {
  if (req.method !== 'GET') return false;
  const url = new URL(req.url, 'http://localhost');
  let file;
  if (url.pathname === '/vendor/pusher.min.js') file = bundle;
  else if (url.pathname === '/') file = path.join(publicDir, 'index.html');
  else if (/^\/[\w.-]+$/.test(url.pathname) && !url.pathname.startsWith('/.')) file = path.join(publicDir, url.pathname.slice(1));
  if (!file || !fs.existsSync(file)) return false;
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
  fs.createReadStream(file).pipe(res);
  return true;
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

/** The request body as a string, at most `limit` bytes (then the promise rejects with status 413). */
function readBody(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      body += d;
      if (body.length > limit) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
      }
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

/**
 * Listens on `envVar` (a port; 0 = any free port) or on `defaultPort`, and on any free port when the
 * default is taken. Resolves with the URL.
 */
function listen(server, envVar, defaultPort, host = '127.0.0.1') {
  const explicit = process.env[envVar] !== undefined && process.env[envVar] !== '';
  const port = explicit ? Number(process.env[envVar]) : defaultPort;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`${envVar} must be a TCP port number, got ${JSON.stringify(process.env[envVar])}`);
  const attempt = (p) =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(p, host, () => {
        server.off('error', reject);
        resolve(`http://${host}:${server.address().port}/`);
      });
    });
  return attempt(port).catch((err) => {
    if (err.code === 'EADDRINUSE' && !explicit) {
      console.log(`port ${port} is taken; using a free port instead (set ${envVar} to choose one)`);
      return attempt(0);
    }
    throw new Error(`cannot listen on ${host}:${port}: ${err.message}${err.code === 'EADDRINUSE' ? ` (set ${envVar} to another port)` : ''}`);
  });
}

module.exports = { pusherBundle, serveStatic, sendJson, readBody, listen };
