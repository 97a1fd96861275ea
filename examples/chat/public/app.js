'use strict';
// The chat page. Everyone online is a member of the presence channel (the "Online" list and the
// shared room); each pair of users has its own private channel, which both subscribe to as soon as
// they see each other online. Messages are posted to the backend, which publishes them with the
// `pusher` library; typing indicators are client events (`client-typing`) sent browser to browser.
//
// `?port=N` connects this tab to the node on port N instead of the configured one (for trying a
// cluster: two tabs on two nodes).

const $ = (id) => document.getElementById(id);
const TYPING_SEND_EVERY_MS = 1000; // client events are rate limited (10/s per connection)
const TYPING_SHOWN_MS = 3000;

const conversations = new Map(); // channel name -> { title, peer, channel, messages, unread, typing }
let me;
let current;
let pusher;

async function getJson(url, options) {
  const res = await fetch(url, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.error || `${url}: HTTP ${res.status}`), { status: res.status });
  return body;
}

const postJson = (url, body) => getJson(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

function signIn() {
  $('login').hidden = false;
  return new Promise((resolve) => {
    $('login').addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const user = await postJson('/login', { name: $('name').value });
        $('login').hidden = true;
        resolve(user);
      } catch (err) {
        $('login-error').textContent = err.message;
      }
    });
  });
}

const dmChannel = (a, b) => `private-dm-${[a, b].sort().join('-')}`;

function conversation(name, title, peer) {
  if (!conversations.has(name)) conversations.set(name, { name, title, peer, channel: null, messages: [], unread: 0, typing: new Map() });
  return conversations.get(name);
}

// ---- rendering

function renderSidebar() {
  const room = conversations.get(config.room);
  $('rooms').replaceChildren(listItem(room, '# everyone'));
  const members = [];
  room.channel.members.each((m) => members.push(m));
  members.sort((a, b) => (a.id === me.id ? -1 : b.id === me.id ? 1 : a.info.name.localeCompare(b.info.name)));
  $('members').replaceChildren(
    ...members.map((m) => {
      if (m.id === me.id) {
        const li = document.createElement('li');
        li.className = 'me';
        li.dataset.userId = m.id;
        li.textContent = `${m.info.name} (you)`;
        return li;
      }
      const li = listItem(conversation(dmChannel(me.id, m.id), m.info.name, m.id), m.info.name);
      li.dataset.userId = m.id;
      return li;
    }),
  );
  $('online-count').textContent = `(${members.length})`;
}

function listItem(conv, label) {
  const li = document.createElement('li');
  li.dataset.channel = conv.name;
  li.classList.toggle('current', conv === current);
  li.append(label);
  if (conv.typing.size && conv !== current) {
    const t = document.createElement('span');
    t.className = 'typing';
    t.textContent = 'typing…';
    li.append(t);
  }
  if (conv.unread) {
    const u = document.createElement('span');
    u.className = 'unread';
    u.textContent = conv.unread;
    li.append(u);
  }
  li.addEventListener('click', () => open(conv));
  return li;
}

function renderConversation() {
  $('title').textContent = current.peer ? `${current.title} (private)` : '# everyone';
  $('messages').replaceChildren(
    ...current.messages.map((m) => {
      const li = document.createElement('li');
      li.className = m.system ? 'system' : 'message';
      if (m.system) {
        li.textContent = m.text;
      } else {
        const from = document.createElement('span');
        from.className = 'from';
        from.textContent = m.from.name;
        const text = document.createElement('span');
        text.className = 'text';
        text.textContent = m.text;
        const time = document.createElement('time');
        time.textContent = new Date(m.at).toLocaleTimeString();
        li.append(from, text, time);
      }
      return li;
    }),
  );
  $('messages').scrollTop = $('messages').scrollHeight;
  const names = [...current.typing.values()].map((t) => t.name);
  $('typing').textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
}

function render() {
  renderSidebar();
  renderConversation();
}

function open(conv) {
  current = conv;
  conv.unread = 0;
  render();
  $('text').focus();
}

// ---- realtime

function typing(conv, userId, name) {
  clearTimeout(conv.typing.get(userId)?.timer);
  const timer = setTimeout(() => {
    conv.typing.delete(userId);
    render();
  }, TYPING_SHOWN_MS);
  conv.typing.set(userId, { name, timer });
  render();
}

function received(conv, message) {
  clearTimeout(conv.typing.get(message.from.id)?.timer);
  conv.typing.delete(message.from.id);
  conv.messages.push(message);
  if (conv !== current) conv.unread += 1;
  render();
}

function subscribe(conv, onTyping) {
  conv.channel = pusher.subscribe(conv.name);
  conv.channel.bind('message', (m) => received(conv, m));
  conv.channel.bind('client-typing', onTyping);
  conv.channel.bind('pusher:subscription_error', (e) => status(`cannot join ${conv.name}: ${e.error || e.status}`));
}

function joinConversationWith(member) {
  const conv = conversation(dmChannel(me.id, member.id), member.info.name, member.id);
  // On a private channel client events carry no user id: the channel says who it is from.
  if (!conv.channel) subscribe(conv, () => typing(conv, member.id, member.info.name));
}

function leaveConversationWith(member) {
  const conv = conversations.get(dmChannel(me.id, member.id));
  if (!conv || !conv.channel) return;
  pusher.unsubscribe(conv.name);
  conv.channel = null;
  conv.typing.clear();
  conv.messages.push({ system: true, text: `${member.info.name} went offline` });
}

function status(text) {
  $('status').textContent = text;
}

let config;
let lastTypingSent = 0;

async function main() {
  config = await getJson('/config');
  me = await getJson('/me').catch((err) => (err.status === 401 ? signIn() : Promise.reject(err)));
  $('me').textContent = `signed in as ${me.name}`;
  $('chat').hidden = false;

  const port = Number(new URLSearchParams(location.search).get('port')) || config.wsPort;
  pusher = new Pusher(config.key, {
    wsHost: config.wsHost,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1', // required by pusher-js, unused with wsHost
    channelAuthorization: { endpoint: '/pusher/auth', transport: 'ajax' }, // the backend, with our cookie
  });
  pusher.connection.bind('state_change', ({ current: state }) =>
    status(state === 'connected' ? `connected to ${config.wsHost}:${port} (socket ${pusher.connection.socket_id})` : state),
  );

  const room = conversation(config.room, 'everyone', null);
  current = room;
  // On a presence channel the server adds the sender's user_id to client events.
  subscribe(room, (data, meta) => typing(room, meta.user_id, data.name));
  room.channel.bind('pusher:subscription_succeeded', (members) => {
    members.each((m) => m.id !== me.id && joinConversationWith(m));
    render();
  });
  room.channel.bind('pusher:member_added', (m) => {
    joinConversationWith(m);
    render();
  });
  room.channel.bind('pusher:member_removed', (m) => {
    leaveConversationWith(m);
    render();
  });

  $('text').addEventListener('input', () => {
    const ch = current.channel;
    if (!ch || !ch.subscribed || Date.now() - lastTypingSent < TYPING_SEND_EVERY_MS) return;
    lastTypingSent = Date.now();
    ch.trigger('client-typing', { name: me.name });
  });
  $('composer').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = $('text').value.trim();
    if (!text) return;
    if (!current.channel) return status(`${current.title} is offline`);
    try {
      await postJson('/messages', { channel: current.name, text });
      $('text').value = '';
      lastTypingSent = 0;
    } catch (err) {
      status(`not sent: ${err.message}`);
    }
  });
}

main().catch((err) => status(`error: ${err.message}`));
