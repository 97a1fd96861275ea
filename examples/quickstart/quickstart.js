// The newcomer's walk-through: two "tabs" (pusher-js clients) join a presence channel,
// authorized through the pusher library's own helper, and a server-side trigger reaches
// both. `npm ci && npm start`: it uses the node on 127.0.0.1:6001, or starts one there.
const Pusher = require('pusher');
const PusherClient = require('pusher-js');
const { ensureNode } = require('../lib/local-node');

let server;
let host;
let port;
let key;

function tab(userId, name) {
  return new PusherClient(key, {
    wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'], disableStats: true, cluster: 'mt1',
    channelAuthorization: {
      // In a web app this is your backend's /pusher/auth endpoint calling the same helper.
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, server.authorizeChannel(socketId, channelName, { user_id: userId, user_info: { name } })),
    },
  });
}

const once = (channel, event) => new Promise((resolve) => channel.bind(event, resolve));

async function main() {
  const node = await ensureNode();
  ({ host, port, key } = node);
  server = new Pusher({ appId: node.appId, key, secret: node.secret, host, port: String(port), useTLS: false });
  const timeout = setTimeout(() => {
    console.error(`timed out: the walk-through did not finish within 15 s against ${host}:${port}`);
    process.exit(1);
  }, 15000);
  await walkThrough();
  clearTimeout(timeout);
  await node.stop();
}

async function walkThrough() {
  const alice = tab('1', 'Alice');
  const aliceRoom = alice.subscribe('presence-room');
  const aliceMembers = await once(aliceRoom, 'pusher:subscription_succeeded');
  console.log(`alice joined presence-room with ${aliceMembers.count} member(s)`);

  const joined = once(aliceRoom, 'pusher:member_added');
  const bob = tab('2', 'Bob');
  const bobRoom = bob.subscribe('presence-room');
  const bobMembers = await once(bobRoom, 'pusher:subscription_succeeded');
  console.log(`bob joined presence-room with ${bobMembers.count} member(s)`);
  console.log(`alice saw member_added: ${(await joined).info.name}`);

  const received = Promise.all([once(aliceRoom, 'greeting'), once(bobRoom, 'greeting')]);
  await server.trigger('presence-room', 'greeting', { text: 'hello from the server' });
  for (const data of await received) console.log(`received greeting: ${data.text}`);

  const info = await server.get({ path: '/channels/presence-room', params: { info: 'user_count' } });
  console.log(`HTTP API says: ${JSON.stringify(await info.json())}`);

  const left = once(aliceRoom, 'pusher:member_removed');
  bob.disconnect();
  console.log(`alice saw member_removed: ${(await left).id}`);
  alice.disconnect();
}

main().then(
  () => process.exit(0),
  (e) => { console.error(e.message || e); process.exit(1); },
);
