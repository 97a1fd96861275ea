"""Fixtures for the Python client-library tests.

One relaymesh server for the session, started by the compat harness through
node/tests/compat/clients/serve.js (one node, or with RELAYMESH_COMPAT_CLUSTER=3 a 3-node
cluster), with webhooks pointed at a small HTTP server of ours that also plays the app's
channel-authorization endpoint. Pysher clients spread over the nodes like the harness's
pusher-js clients: client number k connects to node k % N.
"""

import itertools
import json
import os
import pathlib
import queue
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pusher
import pysher
import pytest

HERE = pathlib.Path(__file__).resolve().parent
SERVE = HERE.parent / "compat" / "clients" / "serve.js"
# The library accepts numeric app ids only (ValueError "Invalid app id" for the node's
# development app, `app-id`), so the node serves this app instead.
APP = {"id": "424242", "key": "app-key", "secret": "app-secret"}
TIMEOUT = 10 if os.environ.get("RELAYMESH_COMPAT_CLUSTER") else 5

# Who is asking, for the auth endpoint: pysher sends these as headers (auth_endpoint_headers).
USERS = {
    "ann": {"user_id": "u-ann", "user_info": {"name": "Ann"}},
    "ben": {"user_id": "u-ben", "user_info": {"name": "Ben"}},
}


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def wait_for(predicate, what, timeout=TIMEOUT, describe=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{describe()}")
        time.sleep(0.02)


class AppServer(ThreadingHTTPServer):
    """The app's side: POST /pusher/auth (signed with the pusher library), POST /webhooks (recorded)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), AppHandler)
        self.library = None  # set once the relaymesh port is known
        self.webhooks = []  # {"headers", "body"}
        self.auth_requests = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class AppHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        if self.path == "/webhooks":
            self.server.webhooks.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            return self.answer(200, {})
        if self.path == "/pusher/auth":
            form = {k: v[0] for k, v in parse_qs(body).items()}
            user = USERS.get(self.headers.get("x-user", ""))
            self.server.auth_requests.append({"user": self.headers.get("x-user"), **form})
            if user is None:
                return self.answer(403, {"error": "who are you?"})
            channel = form["channel_name"]
            custom = user if channel.startswith("presence-") else None
            return self.answer(200, self.server.library.authenticate(channel, form["socket_id"], custom))
        self.answer(404, {})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Relaymesh:
    """The running server: its nodes, the app endpoint, libraries and clients bound to them."""

    def __init__(self, app_server):
        self.app = app_server
        spec = {
            "apps": [{**APP, "client_events": True, "webhooks": [f"{app_server.url}/webhooks"]}],
            # Webhooks at once: channel_vacated comes after vacate_delay_ms.
            "extraToml": "[webhooks]\nbatch_ms = 20\nvacate_delay_ms = 200\n",
        }
        self.proc = subprocess.Popen(
            ["node", str(SERVE), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"serve.js exited with {self.proc.returncode} before the server was ready (its errors are above)")
        info = json.loads(line)
        self.port = info["port"]
        self.nodes = [n["port"] for n in info["nodes"]]
        self._next_node = itertools.count()
        self.clients = []

    def library(self, **options):
        return pusher.Pusher(app_id=APP["id"], key=APP["key"], secret=APP["secret"], ssl=False, host="127.0.0.1", port=self.port, **options)

    def logs(self):
        """The last lines of every relaymesh process, for failure messages."""
        try:
            self.proc.stdin.write("logs\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())["logs"]
        except Exception as err:  # the server may be the thing that failed
            return f"(no logs: {err})"

    def client(self, user=None, user_data=None):
        """A connected Pysher client on the next node; `user` is who the auth endpoint sees."""
        port = self.nodes[next(self._next_node) % len(self.nodes)]
        headers = {"X-User": user} if user else {}
        c = Client(
            APP["key"],
            secure=False,
            custom_host="127.0.0.1",
            port=port,
            auth_endpoint=f"{self.app.url}/pusher/auth",
            auth_endpoint_headers=headers,
            user_data=user_data or (USERS[user] if user else None),
        )
        self.clients.append(c)
        c.connect()
        wait_for(lambda: c.connection.state == "connected" and c.connection.socket_id, f"pysher on port {port} to connect", describe=c.describe)
        return c

    def close_clients(self):
        # Close the sockets without joining Pysher's threads: they sit in a 100 s select() after
        # the close, and are daemon threads.
        for c in self.clients:
            c.disconnect(timeout=0)
        self.clients = []

    def close(self):
        self.close_clients()
        self.proc.stdin.close()  # serve.js stops every process it started
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its exit handler still SIGKILLs the nodes
            self.proc.wait()


class Client(pysher.Pusher):
    """A Pysher client that records every frame it receives, for waiting and failure messages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames = []  # parsed, in order of arrival
        self.raw = []
        self.arrived = threading.Condition()
        on_message = self.connection._on_message

        def record(*args):
            message = args[-1]
            with self.arrived:
                self.raw.append(message)
                self.frames.append(json.loads(message))
                self.arrived.notify_all()
            on_message(*args)

        self.connection._on_message = record  # read when Pysher opens its socket

    def describe(self):
        return f"pysher ({self.url}) state={self.connection.state} frames received:\n" + "\n".join(f"  << {m}" for m in self.raw)

    def frame(self, predicate, what, since=0, timeout=TIMEOUT):
        """The first frame from index `since` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = next((f for f in self.frames[since:] if predicate(f)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.describe()}")
                self.arrived.wait(left)

    def subscribed(self, channel_name, auth=None):
        """Subscribes and waits for pusher_internal:subscription_succeeded; returns (channel, data)."""
        since = len(self.frames)
        channel = self.subscribe(channel_name, auth=auth)
        answer = self.frame(
            lambda f: f.get("channel") == channel_name and f["event"] in ("pusher_internal:subscription_succeeded", "pusher:subscription_error"),
            f"an answer to the subscription of {channel_name}",
            since,
        )
        assert answer["event"] == "pusher_internal:subscription_succeeded", f"subscription to {channel_name} failed: {answer}\n{self.describe()}"
        return channel, json.loads(answer["data"])


@pytest.fixture(scope="session")
def relaymesh():
    app_server = AppServer()
    threading.Thread(target=app_server.serve_forever, daemon=True).start()
    server = Relaymesh(app_server)
    app_server.library = server.library()
    try:
        yield server
    finally:
        server.close()
        app_server.shutdown()
        app_server.server_close()


@pytest.fixture(autouse=True)
def close_clients(relaymesh):
    """Every test's Pysher clients are closed after it."""
    yield
    relaymesh.close_clients()


@pytest.fixture
def events():
    """A queue and a callback that puts (data decoded when it is JSON) into it."""
    q = queue.Queue()

    def put(data, *_):
        try:
            q.put(json.loads(data) if isinstance(data, str) else data)
        except ValueError:
            q.put(data)

    return q, put
