'use strict';
// The oldest and the newest major version of pusher-js that the npm registry has and that speaks
// protocol 7, each through the core of the protocol: connect, subscribe to public, private and
// presence channels, receive a trigger, send and receive a client event.
//   - 3.x (3.2.4, installed as "pusher-js-v3"): the first major of the registry's pusher-js;
//     3.0.0 to 3.1.x have no Node build, 3.2 does. Its options predate channelAuthorization.
//   - 8.x (8.6.0, the suite's own "pusher-js").

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();
const USERS = {
  ann: { user_id: 'u-ann', user_info: { name: 'Ann' } },
  ben: { user_id: 'u-ben', user_info: { name: 'Ben' } },
};

const VERSIONS = [
  {
    label: 'pusher-js 3',
    Pusher: require('pusher-js-v3/node'),
    version: require('pusher-js-v3/package.json').version,
    // 3.x: TLS off by default (its `encrypted` option), auth through authEndpoint / authTransport.
    auth: (endpoint) => ({ authEndpoint: endpoint, authTransport: 'ajax' }),
  },
  {
    label: 'pusher-js 8',
    Pusher: h.PusherClient,
    version: require('pusher-js/package.json').version,
    auth: (endpoint) => ({ channelAuthorization: { endpoint, transport: 'ajax' } }),
  },
];

function memberIds(members) {
  const ids = [];
  members.each((m) => ids.push(m.id));
  return ids.sort();
}

for (const v of VERSIONS) {
  test(`${v.label} (${v.version}): connect, public / private / presence, trigger, client event`, async () => {
    const auth = await ctx.authServer(ctx.pusher, { users: USERS });
    const connect = async (user) => {
      const c = h.client(ctx.server, v.auth(auth.endpoint(user)), h.DEFAULT_APP, v.Pusher);
      ctx.defer(() => h.disconnectClient(c));
      await h.connected(c, undefined, user);
      assert.match(c.connection.socket_id, /^\d+\.\d+$/);
      return c;
    };
    const ann = await connect('ann');
    const ben = await connect('ben');
    const describe = () => `${h.describeClient(ann, 'ann')}\n${h.describeClient(ben, 'ben')}`;

    // Public channel: a trigger from the server library arrives with its data.
    const pub = h.uniqueName('news-');
    const { channel: annPub } = await h.subscribe(ann, pub, { label: 'ann' });
    const news = h.nextEvent(annPub, 'headline', { describe });
    await ctx.pusher.trigger(pub, 'headline', { title: 'v7' });
    assert.deepEqual((await news).data, { title: 'v7' });

    // Private channel through the auth endpoint; a client event from ann reaches ben only.
    const priv = h.uniqueName('private-desk-');
    const [{ channel: annPriv }, { channel: benPriv }] = await Promise.all([
      h.subscribe(ann, priv, { label: 'ann' }),
      h.subscribe(ben, priv, { label: 'ben' }),
    ]);
    assert.ok(auth.requests.some((r) => r.channelName === priv && r.user === 'ann'), 'the auth endpoint was not asked');
    const annOwn = h.record(annPriv, 'client-note');
    const note = h.nextEvent(benPriv, 'client-note', { describe });
    assert.notEqual(annPriv.trigger('client-note', { text: 'hi ben' }), false, 'pusher-js refused to send the client event');
    assert.deepEqual((await note).data, { text: 'hi ben' });
    const privMsg = h.nextEvent(benPriv, 'update', { describe });
    await ctx.pusher.trigger(priv, 'update', { n: 1 });
    await privMsg;
    assert.deepEqual(annOwn, [], `ann received her own client event\n${describe()}`);

    // Presence channel: the member list, member_added, a client event carrying the sender's user id.
    const room = h.uniqueName('presence-room-');
    const { channel: annRoom, members: annMembers } = await h.subscribe(ann, room, { label: 'ann' });
    assert.deepEqual(memberIds(annMembers), ['u-ann']);
    assert.equal(annMembers.me.id, 'u-ann');
    const added = h.nextEvent(annRoom, 'pusher:member_added', { describe });
    const { channel: benRoom, members: benMembers } = await h.subscribe(ben, room, { label: 'ben' });
    assert.deepEqual(memberIds(benMembers), ['u-ann', 'u-ben']);
    assert.deepEqual((await added).data.info, { name: 'Ben' });
    const wave = h.nextEvent(annRoom, 'client-wave', { describe });
    benRoom.trigger('client-wave', { hand: 'right' });
    const got = await wave;
    assert.deepEqual(got.data, { hand: 'right' });
    // pusher-js 8 hands the sender's user_id to the callback; 3.x has no metadata argument.
    if (got.metadata) assert.equal(got.metadata.user_id, 'u-ben');
    assert.ok(
      ann.frames.some((f) => f.event === 'client-wave' && f.user_id === 'u-ben'),
      `the node did not add user_id to the presence client event\n${describe()}`,
    );
    const removed = h.nextEvent(annRoom, 'pusher:member_removed', { describe });
    ben.disconnect();
    assert.equal((await removed).data.id, 'u-ben');
  });
}
