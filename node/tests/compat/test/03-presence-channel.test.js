'use strict';
// 3. Presence channel authorized through pusher.authorizeChannel(socket_id, channel, presenceData):
//    members, member_added once per user, member_removed only when the user's last connection leaves.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ctx = h.useServer();

const USERS = {
  alice: { user_id: 'u-alice', user_info: { name: 'Alice' } },
  bob: { user_id: 'u-bob', user_info: { name: 'Bob' } },
};

function memberIds(members) {
  const ids = [];
  members.each((m) => ids.push(m.id));
  return ids.sort();
}

test('presence channel: members, member_added once per user, member_removed after the last connection', async () => {
  const auth = await ctx.authServer(ctx.pusher, { users: USERS });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const name = h.uniqueName('presence-');

  // Alice joins alone.
  const alice = await h.connected(ctx.client(opts('alice')), undefined, 'alice');
  const { channel: aCh, members: aMembers } = await h.subscribe(alice, name, { label: 'alice' });
  assert.equal(aMembers.count, 1);
  assert.equal(aMembers.me.id, 'u-alice');
  assert.deepEqual(aMembers.me.info, { name: 'Alice' });
  const added = h.record(aCh, 'pusher:member_added');
  const removed = h.record(aCh, 'pusher:member_removed');
  const describe = () => h.describeClient(alice, 'alice');

  // Bob (first connection) joins: Alice sees member_added once, Bob sees both members.
  const bob1 = await h.connected(ctx.client(opts('bob')), undefined, 'bob1');
  const bobAdded = h.nextEvent(aCh, 'pusher:member_added', { describe });
  const { channel: b1Ch, members: b1Members } = await h.subscribe(bob1, name, { label: 'bob1' });
  assert.equal(b1Members.count, 2);
  assert.deepEqual(memberIds(b1Members), ['u-alice', 'u-bob']);
  assert.deepEqual(b1Members.get('u-alice').info, { name: 'Alice' });
  const { data: member } = await bobAdded;
  assert.deepEqual({ id: member.id, info: member.info }, { id: 'u-bob', info: { name: 'Bob' } });
  assert.equal(aCh.members.count, 2);
  const bob1Added = h.record(b1Ch, 'pusher:member_added');

  // Bob's second connection joins: nobody gets member_added, counts stay at 2 users.
  const bob2 = await h.connected(ctx.client(opts('bob')), undefined, 'bob2');
  const { members: b2Members } = await h.subscribe(bob2, name, { label: 'bob2' });
  assert.equal(b2Members.count, 2, 'a second connection of the same user is not a second member');
  assert.deepEqual(memberIds(b2Members), ['u-alice', 'u-bob']);
  // Ordering marker: an API event published after bob2's subscription succeeded.
  const marker = h.nextEvent(aCh, 'marker', { describe });
  await ctx.pusher.trigger(name, 'marker', {});
  await marker;
  assert.equal(added.length, 1, `member_added must fire once for u-bob, got ${JSON.stringify(added)}\n${describe()}`);
  assert.equal(bob1Added.length, 0, `bob1 must not see member_added for its own user's second connection\n${h.describeClient(bob1, 'bob1')}`);
  assert.equal(aCh.members.count, 2);

  // Bob's first connection leaves: Bob is still present through bob2, so no member_removed.
  bob1.disconnect();
  await h.sleep(1000);
  const marker2 = h.nextEvent(aCh, 'marker', { describe });
  await ctx.pusher.trigger(name, 'marker', {});
  await marker2;
  assert.equal(removed.length, 0, `member_removed fired while u-bob still had a connection\n${describe()}`);
  assert.equal(aCh.members.count, 2);

  // Bob's last connection leaves: member_removed fires once.
  const bobRemoved = h.nextEvent(aCh, 'pusher:member_removed', { describe });
  bob2.disconnect();
  const { data: gone } = await bobRemoved;
  assert.equal(gone.id, 'u-bob');
  assert.equal(aCh.members.count, 1);
  assert.deepEqual(memberIds(aCh.members), ['u-alice']);
  await h.sleep(300);
  assert.equal(removed.length, 1);
});

test('presence channel: member_removed when a member unsubscribes (connection kept open)', async () => {
  const auth = await ctx.authServer(ctx.pusher, { users: USERS });
  const opts = (user) => ({ channelAuthorization: { endpoint: auth.endpoint(user), transport: 'ajax' } });
  const name = h.uniqueName('presence-');
  const alice = await h.connected(ctx.client(opts('alice')), undefined, 'alice');
  const { channel: aCh } = await h.subscribe(alice, name, { label: 'alice' });
  const bob = await h.connected(ctx.client(opts('bob')), undefined, 'bob');
  const bobAdded = h.nextEvent(aCh, 'pusher:member_added', { describe: () => h.describeClient(alice, 'alice') });
  await h.subscribe(bob, name, { label: 'bob' });
  await bobAdded;

  const bobRemoved = h.nextEvent(aCh, 'pusher:member_removed', { describe: () => h.describeClient(alice, 'alice') });
  bob.unsubscribe(name);
  assert.equal((await bobRemoved).data.id, 'u-bob');
  assert.equal(bob.connection.state, 'connected');
});

test('presence channel joined by a signed-in user without channel_data (§7.1): member is the signed-in user', async () => {
  // pusher-js waits for sign-in and uses user_data.id when the auth response has no channel_data;
  // the library signs "{socket_id}:{channel}" when called without presence data.
  const opts = (id, name) => ({
    userAuthentication: {
      customHandler: (params, cb) => cb(null, ctx.pusher.authenticateUser(params.socketId, { id, user_info: { name } })),
    },
    channelAuthorization: {
      customHandler: (params, cb) => cb(null, ctx.pusher.authorizeChannel(params.socketId, params.channelName)),
    },
  });
  const name = h.uniqueName('presence-signed-');
  const alice = await h.connected(ctx.client(opts('u-alice', 'Alice')), undefined, 'alice');
  alice.signin();
  const { channel: aCh, members } = await h.subscribe(alice, name, { label: 'alice' });
  assert.equal(members.count, 1);
  assert.equal(members.me && members.me.id, 'u-alice', h.describeClient(alice, 'alice'));
  assert.deepEqual(members.me.info, { name: 'Alice' });

  const bob = await h.connected(ctx.client(opts('u-bob', 'Bob')), undefined, 'bob');
  bob.signin();
  const added = h.nextEvent(aCh, 'pusher:member_added', { describe: () => h.describeClient(alice, 'alice') });
  const { members: bMembers } = await h.subscribe(bob, name, { label: 'bob' });
  assert.equal(bMembers.count, 2);
  const { data: m } = await added;
  assert.deepEqual({ id: m.id, info: m.info }, { id: 'u-bob', info: { name: 'Bob' } });
});

test('presence channel: numeric user_id in channel_data is accepted and exposed as its decimal string (§7.1)', async () => {
  const c = await h.connected(
    ctx.client({
      channelAuthorization: {
        customHandler: (params, cb) =>
          cb(null, ctx.pusher.authorizeChannel(params.socketId, params.channelName, { user_id: 10, user_info: { name: 'Ten' } })),
      },
    }),
  );
  const name = h.uniqueName('presence-num-');
  const { members } = await h.subscribe(c, name);
  assert.equal(members.count, 1);
  const ids = [];
  members.each((m) => ids.push(m.id));
  assert.deepEqual(ids, ['10']);
  const res = await ctx.pusher.get({ path: `/channels/${name}/users` });
  assert.deepEqual(await res.json(), { users: [{ id: '10' }] });
});
