"""The Python server library (PyPI `pusher`) against relaymesh: trigger, batch trigger, channel
queries, channel authorization and webhook validation. Subscribers are Pysher clients."""

import json
import queue
import time

import pytest

from conftest import APP, TIMEOUT, USERS, unique, wait_for


def get(q, what, describe=lambda: ""):
    try:
        return q.get(timeout=TIMEOUT)
    except queue.Empty:
        raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what}\n{describe()}") from None


def test_trigger_to_one_and_several_channels_and_socket_exclusion(relaymesh, events):
    lib = relaymesh.library()
    a, b = relaymesh.client(), relaymesh.client()
    one, two = unique("py-news-"), unique("py-news-")
    q, put = events
    a.subscribed(one)[0].bind("headline", put)
    b.subscribed(two)[0].bind("headline", put)

    assert lib.trigger(one, "headline", {"title": "one"}) == {}
    assert get(q, "headline on one", a.describe) == {"title": "one"}
    lib.trigger([one, two], "headline", {"title": "both"})
    assert sorted(get(q, "headline", a.describe)["title"] for _ in range(2)) == ["both", "both"]

    # socket_id leaves that connection out; a later event proves it would have arrived by now.
    lib.trigger(one, "headline", {"title": "not for a"}, socket_id=a.connection.socket_id)
    lib.trigger(one, "headline", {"title": "marker"})
    assert get(q, "marker", a.describe) == {"title": "marker"}
    assert q.empty(), f"unexpected: {q.get()}"


def test_trigger_batch(relaymesh, events):
    lib = relaymesh.library()
    c = relaymesh.client()
    one, two = unique("py-batch-"), unique("py-batch-")
    q, put = events
    c.subscribed(one)[0].bind("e", lambda d: put({"channel": one, **json.loads(d)}))
    c.subscribed(two)[0].bind("e", lambda d: put({"channel": two, **json.loads(d)}))
    assert lib.trigger_batch(
        [
            {"channel": one, "name": "e", "data": {"n": 1}},
            {"channel": two, "name": "e", "data": {"n": 2}},
            {"channel": one, "name": "e", "data": {"n": 3}},
        ]
    ) == {}
    got = [get(q, "a batch event", c.describe) for _ in range(3)]
    assert [g for g in got if g["channel"] == one] == [{"channel": one, "n": 1}, {"channel": one, "n": 3}]
    assert [g for g in got if g["channel"] == two] == [{"channel": two, "n": 2}]


def test_channel_queries(relaymesh):
    lib = relaymesh.library()
    room = unique("presence-py-")
    public = unique("py-public-")
    ann, ben, ben2 = relaymesh.client("ann"), relaymesh.client("ben"), relaymesh.client("ben")
    for c in (ann, ben, ben2):
        c.subscribed(room)
    ann.subscribed(public)
    ben.subscribed(public)

    listed = lib.channels_info(prefix_filter="presence-py-", attributes=["user_count"])
    assert listed["channels"][room] == {"user_count": 2}, listed
    assert lib.channel_info(room, ["user_count", "subscription_count"]) == {"occupied": True, "user_count": 2, "subscription_count": 3}
    assert lib.channel_info(public, ["subscription_count"]) == {"occupied": True, "subscription_count": 2}
    assert sorted(u["id"] for u in lib.users_info(room)["users"]) == ["u-ann", "u-ben"]
    assert public in lib.channels_info()["channels"]
    assert lib.channel_info(unique("py-empty-")) == {"occupied": False}


def test_channel_authorization(relaymesh, events):
    lib = relaymesh.library()
    c = relaymesh.client()
    q, put = events

    # A private channel, signed with authenticate() and handed to the client.
    private = unique("private-py-")
    auth = lib.authenticate(private, c.connection.socket_id)
    assert auth["auth"].startswith(f"{APP['key']}:")
    c.subscribed(private, auth=auth["auth"])[0].bind("e", put)
    lib.trigger(private, "e", {"ok": True})
    assert get(q, "event on the private channel", c.describe) == {"ok": True}

    # A signature for another channel, or made with another secret, is refused.
    for wrong in (
        lib.authenticate(private + "-x", c.connection.socket_id)["auth"],
        type(lib)(app_id=APP["id"], key=APP["key"], secret="not-the-secret").authenticate(unique("private-py-"), c.connection.socket_id)["auth"],
    ):
        name = unique("private-py-")
        since = len(c.frames)
        c.subscribe(name, auth=wrong)
        frame = c.frame(lambda f: f.get("channel") == name, f"an answer to the subscription of {name}", since)
        assert frame["event"] == "pusher:subscription_error", frame
        data = frame["data"] if isinstance(frame["data"], dict) else json.loads(frame["data"])
        assert data.get("status") == 401, frame

    # A presence channel through the app's endpoint: authenticate() with the user's data.
    room = unique("presence-py-")
    ann, ben = relaymesh.client("ann"), relaymesh.client("ben")
    _, members = ann.subscribed(room)
    assert members["presence"]["ids"] == ["u-ann"]
    _, members = ben.subscribed(room)
    assert sorted(members["presence"]["ids"]) == ["u-ann", "u-ben"]
    assert members["presence"]["hash"]["u-ann"] == USERS["ann"]["user_info"]
    assert {r["user"] for r in relaymesh.app.auth_requests if r["channel_name"] == room} == {"ann", "ben"}


def test_webhook_validation(relaymesh):
    lib = relaymesh.library()
    channel = unique("py-hooked-")
    c = relaymesh.client()
    c.subscribed(channel)

    def hook_with(name):
        for h in relaymesh.app.webhooks:
            body = json.loads(h["body"])
            if any(e["name"] == name and e.get("channel") == channel for e in body["events"]):
                return h
        return None

    wait_for(lambda: hook_with("channel_occupied"), f"a channel_occupied webhook for {channel}", describe=relaymesh.logs)
    hook = hook_with("channel_occupied")
    key, signature = hook["headers"]["x-pusher-key"], hook["headers"]["x-pusher-signature"]
    valid = lib.validate_webhook(key, signature, hook["body"])
    assert valid is not None, f"validate_webhook refused the node's webhook: {hook}"
    assert abs(valid["time_ms"] - time.time() * 1000) < 60000
    assert {"name": "channel_occupied", "channel": channel} in valid["events"]

    # The library's checks hold: another body, signature or key is refused.
    assert lib.validate_webhook(key, signature, hook["body"].replace(channel, channel + "x")) is None
    assert lib.validate_webhook(key, "0" * 64, hook["body"]) is None
    assert lib.validate_webhook("another-key", signature, hook["body"]) is None

    c.unsubscribe(channel)
    wait_for(lambda: hook_with("channel_vacated"), f"a channel_vacated webhook for {channel}", describe=relaymesh.logs)
    hook = hook_with("channel_vacated")
    assert lib.validate_webhook(hook["headers"]["x-pusher-key"], hook["headers"]["x-pusher-signature"], hook["body"]) is not None


@pytest.mark.parametrize("payload", [{"text": "héllo ✓"}, "a plain string"])
def test_trigger_data_round_trip(relaymesh, events, payload):
    lib = relaymesh.library()
    c = relaymesh.client()
    channel = unique("py-data-")
    q, put = events
    c.subscribed(channel)[0].bind("e", put)
    lib.trigger(channel, "e", payload)
    assert get(q, "the event", c.describe) == payload
