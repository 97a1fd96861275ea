'use strict';
// The chat's backend: serves the page, signs users in (a name, kept in a cookie), authorizes
// their channel subscriptions with the `pusher` library, and publishes the messages they post.
// Realtime traffic (presence, messages, typing) goes between the browsers and the relaymesh node.
//
//   npm start             # node on 127.0.0.1:6001 (started when none answers), chat on :3000
//   CHAT_PORT=0 npm start # any free port; see ../lib/local-node.js for the RELAYMESH_* variables

const crypto = require('node:crypto');
const http = require('node:http');
const path = require('node:path');
const Pusher = require('pusher');
const { ensureNode, stopOnSignals } = require('../lib/local-node');
const { pusherBundle, serveStatic, sendJson, readBody, listen } = require('../lib/web');

// Everyone online is a member of this presence channel: it is the "who is online" list and the
// shared room. Each pair of users talks on its own private channel, `private-dm-<id>-<id>`.
const ROOM = 'presence-chat';
const MAX_TEXT = 1000;

const dmChannel = (a, b) => `private-dm-${[a, b].sort().join('-')}`;
const DM = /^private-dm-([0-9a-f]{16})-([0-9a-f]{16})$/;

/** The users a channel is for: null for anyone signed in (the room), or the pair of a conversation. */
function audience(channel) {
  if (channel === ROOM) return null;
  const m = DM.exec(channel);
  if (!m || dmChannel(m[1], m[2]) !== channel) return undefined; // not one of ours
  return [m[1], m[2]];
}

function mayUse(user, channel) {
  const who = audience(channel);
  return who === null || (Array.isArray(who) && who.includes(user.id));
}

async function main() {
  const node = await ensureNode();
  const pusher = new Pusher({ appId: node.appId, key: node.key, secret: node.secret, host: node.host, port: String(node.port), useTLS: false });
  const bundle = pusherBundle(__dirname);
  const publicDir = path.join(__dirname, 'public');
  const sessions = new Map(); // cookie value -> { id, name }
  let nextMessageId = 1;

  const userOf = (req) => {
    const m = /(?:^|;\s*)chat_sid=([0-9a-f]{32})/.exec(req.headers.cookie || '');
    return m ? sessions.get(m[1]) : undefined;
  };

  async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    if (serveStatic(req, res, publicDir, bundle)) return;
    if (req.method === 'GET' && url.pathname === '/config') {
      return sendJson(res, 200, { key: node.key, wsHost: node.host, wsPort: node.port, room: ROOM });
    }
    if (req.method === 'GET' && url.pathname === '/me') {
      const user = userOf(req);
      return user ? sendJson(res, 200, user) : sendJson(res, 401, { error: 'not signed in' });
    }
    if (req.method === 'POST' && url.pathname === '/login') {
      const name = String(JSON.parse((await readBody(req)) || '{}').name || '').trim();
      if (!name || name.length > 32) return sendJson(res, 400, { error: 'a name of 1 to 32 characters, please' });
      const sid = crypto.randomBytes(16).toString('hex');
      const user = { id: crypto.randomBytes(8).toString('hex'), name };
      sessions.set(sid, user);
      res.setHeader('set-cookie', `chat_sid=${sid}; Path=/; HttpOnly; SameSite=Strict`);
      return sendJson(res, 200, user);
    }
    if (req.method === 'POST' && url.pathname === '/pusher/auth') {
      // pusher-js posts socket_id and channel_name as a form; the cookie says who asks.
      const user = userOf(req);
      const form = new URLSearchParams(await readBody(req));
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      if (!user) return sendJson(res, 403, { error: 'not signed in' });
      if (!mayUse(user, channel)) return sendJson(res, 403, { error: `${user.name} may not join ${channel}` });
      const presence = channel === ROOM ? { user_id: user.id, user_info: { name: user.name } } : undefined;
      return sendJson(res, 200, pusher.authorizeChannel(socketId, channel, presence));
    }
    if (req.method === 'POST' && url.pathname === '/messages') {
      const user = userOf(req);
      const { channel, text } = JSON.parse((await readBody(req)) || '{}');
      if (!user) return sendJson(res, 403, { error: 'not signed in' });
      if (!mayUse(user, channel)) return sendJson(res, 403, { error: `${user.name} may not post to ${channel}` });
      const body = String(text || '').trim();
      if (!body || body.length > MAX_TEXT) return sendJson(res, 400, { error: `a message of 1 to ${MAX_TEXT} characters, please` });
      const message = { id: nextMessageId++, from: user, text: body, at: Date.now() };
      await pusher.trigger(channel, 'message', message);
      return sendJson(res, 200, message);
    }
    sendJson(res, 404, { error: 'not found' });
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error(`${req.method} ${req.url}: ${err.message}`);
      if (!res.headersSent) sendJson(res, err.status || (err instanceof SyntaxError ? 400 : 502), { error: err.message });
    });
  });
  const url = await listen(server, 'CHAT_PORT', 3000);
  stopOnSignals(node, server);
  console.log(`chat: ${url}  (open it in two browser windows, or a normal and a private one, to chat with yourself)`);
}

main().catch((err) => {
  console.error(`chat: ${err.message}`);
  process.exit(1);
});
