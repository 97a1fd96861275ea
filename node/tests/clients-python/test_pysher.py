"""Pysher (PyPI), a Python client of the Pusher protocol, against relaymesh: the connection
(Pysher announces protocol 6), its ping, public / private / presence subscriptions, member events
and client events. Events are published with the `pusher` library."""

import json
import queue

from conftest import TIMEOUT, unique, wait_for


def test_connects_with_protocol_6_and_gets_its_pong(relaymesh):
    c = relaymesh.client()
    assert "protocol=6" in c.url
    established = c.frame(lambda f: f["event"] == "pusher:connection_established", "connection_established")
    data = json.loads(established["data"])
    assert data["socket_id"] == c.connection.socket_id
    assert data["activity_timeout"] > 0
    # Pysher pings as soon as the socket opens and reconnects when no pong comes within 30 s.
    wait_for(lambda: c.connection.pong_received, "pusher:pong to Pysher's ping", describe=c.describe)


def test_public_channel_event(relaymesh, events):
    c = relaymesh.client()
    channel = unique("py-public-")
    q, put = events
    c.subscribed(channel)[0].bind("greeting", put)
    relaymesh.library().trigger(channel, "greeting", {"hello": "pysher"})
    assert q.get(timeout=TIMEOUT) == {"hello": "pysher"}


def test_presence_members_and_client_events(relaymesh, events):
    room = unique("presence-py-")
    ann = relaymesh.client("ann")
    ann_room, members = ann.subscribed(room)
    assert members["presence"]["count"] == 1

    added = queue.Queue()
    ann_room.bind("pusher_internal:member_added", lambda d: added.put(json.loads(d)))
    ben = relaymesh.client("ben")
    ben_room, _ = ben.subscribed(room)
    assert added.get(timeout=TIMEOUT) == {"user_id": "u-ben", "user_info": {"name": "Ben"}}

    # A client event from Ben reaches Ann with Ben's user_id added by the server, not Ben himself.
    since = len(ann.frames)
    ben_room.trigger("client-wave", {"hand": "left"})
    frame = ann.frame(lambda f: f["event"] == "client-wave", "client-wave on Ann", since)
    assert frame["channel"] == room
    assert frame["user_id"] == "u-ben"
    data = json.loads(frame["data"]) if isinstance(frame["data"], str) else frame["data"]
    assert data == {"hand": "left"}
    relaymesh.library().trigger(room, "marker", {})
    ben.frame(lambda f: f["event"] == "marker", "marker on Ben")
    assert not [f for f in ben.frames if f["event"] == "client-wave"], f"Ben received his own client event\n{ben.describe()}"

    removed = queue.Queue()
    ann_room.bind("pusher_internal:member_removed", lambda d: removed.put(json.loads(d)))
    ben.disconnect(timeout=0)
    assert removed.get(timeout=TIMEOUT) == {"user_id": "u-ben"}


def test_private_channel_client_event(relaymesh, events):
    channel = unique("private-py-")
    a, b = relaymesh.client("ann"), relaymesh.client("ben")
    a_ch, _ = a.subscribed(channel)
    b_ch, _ = b.subscribed(channel)
    q, put = events
    b_ch.bind("client-note", put)
    a_ch.trigger("client-note", {"text": "hi"})
    assert q.get(timeout=TIMEOUT) == {"text": "hi"}
