#!/usr/bin/env python3
"""An application backend for bachata's HTTP hooks, standard library only.

- a cookie login page (GET /, POST /login);
- the connect hook (POST /hooks/connect): the session cookie names the
  channel; no session, no connection (401);
- the route hook (POST /hooks/route) for messages of type "room": a room's
  message goes to the room's other members, rude words masked in its data;
  a muted user gets `app_muted`; other types pass to bachata's own routes;
- the undelivered webhook (POST /hooks/undelivered): prints the push it
  would send;
- POST /join (room=...) puts the logged-in user in a room; POST /mute
  (user=..., with `Authorization: Bearer <api key>`) mutes a user.

Every hook request is checked against X-Bachata-Signature when an API key
is given (--api-key or BACHATA_API_KEY): hex(HMAC-SHA256(key, body)).

    python3 examples/hooks/app.py --port 8001 --api-key dev-key
"""

import argparse
import hashlib
import hmac
import html
import json
import os
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUDE = {"darn", "heck"}


class State:
    """Sessions, rooms and mutes, in memory (a real application has a
    database)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = {}  # token -> user
        self.rooms = {}  # room -> set of users
        self.muted = set()
        self.pushed = set()  # (id, from, dest) already pushed


def signed(api_key, body, header):
    if not api_key:
        return True
    expected = hmac.new(api_key.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


def mask(text):
    return " ".join("*" * len(w) if w.lower() in RUDE else w for w in text.split(" "))


def session_user(state, cookie_header):
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "session":
            with state.lock:
                return state.sessions.get(value)
    return None


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as bachata's hook client expects of a backend.
    protocol_version = "HTTP/1.1"
    state = None
    api_key = None

    def log_message(self, fmt, *args):  # quiet; hooks print what matters
        pass

    def reply(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        # One write: headers and body in separate segments meet Nagle and
        # delayed ACKs (40 ms per call on Linux).
        head = f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        self.wfile.write(head.encode() + b"\r\n" + data)
        self.wfile.flush()

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self):
        if self.path != "/":
            return self.reply(404, {"error": "not found"})
        page = """<!doctype html><title>bachata hooks example</title>
<h1>Log in</h1>
<form method=post action=/login><input name=name placeholder=name autofocus>
<button>Log in</button></form>
<p>Then open the chat page of bachata (http://localhost:8000/): the
connect hook knows you by this page's cookie.</p>"""
        self.reply(200, page.encode(), "text/html; charset=utf-8")

    def do_POST(self):
        body = self.body()
        routes = {
            "/login": self.login,
            "/join": self.join,
            "/mute": self.mute,
            "/hooks/connect": self.connect_hook,
            "/hooks/route": self.route_hook,
            "/hooks/undelivered": self.undelivered_hook,
        }
        handler = routes.get(urllib.parse.urlparse(self.path).path)
        if handler is None:
            return self.reply(404, {"error": "not found"})
        if self.path.startswith("/hooks/") and not signed(
            self.api_key, body, self.headers.get("X-Bachata-Signature")
        ):
            return self.reply(401, {"reason": "bad signature"})
        handler(body)

    def form(self, body):
        return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}

    def login(self, body):
        name = self.form(body).get("name", "").strip()
        if not name or len(name) > 64:
            return self.reply(400, {"error": "a name of 1 to 64 characters"})
        token = secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.sessions[token] = name
        page = f"<p>Logged in as {html.escape(name)}.</p>".encode()
        cookie = f"session={token}; Path=/; HttpOnly; SameSite=Lax"
        self.reply(200, page, "text/html; charset=utf-8", [("Set-Cookie", cookie)])

    def join(self, body):
        user = session_user(self.state, self.headers.get("Cookie"))
        room = self.form(body).get("room", "")
        if not user or not room:
            return self.reply(401, {"error": "log in, and name a room"})
        with self.state.lock:
            self.state.rooms.setdefault(room, set()).add(user)
        self.reply(200, {"room": room, "user": user})

    def mute(self, body):
        if self.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.reply(401, {"error": "the API key, please"})
        user = self.form(body).get("user", "")
        with self.state.lock:
            self.state.muted.add(user)
        self.reply(200, {"muted": user})

    def connect_hook(self, body):
        request = json.loads(body)
        user = session_user(self.state, request["headers"].get("cookie"))
        if user is None:
            return self.reply(401, {"reason": "log in first"})
        self.reply(200, {"channel": user, "groups": ["everyone"]})

    def route_hook(self, body):
        request = json.loads(body)
        sender, message = request["from"], request["message"]
        if message.get("type") != "room":
            return self.reply(200, {"pass": True})
        with self.state.lock:
            if sender in self.state.muted:
                return self.reply(200, {"error": "app_muted", "reason": "you are muted"})
            members = self.state.rooms.get(message.get("dest"), set())
            if sender not in members:
                return self.reply(200, {"error": "forbidden", "reason": "join the room first"})
            others = sorted(members - {sender})
        data = message.get("data")
        answer = {"channels": others}
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            answer["data"] = dict(data, text=mask(data["text"]))
        self.reply(200, answer)

    def undelivered_hook(self, body):
        event = json.loads(body)
        # Calls come at least once: a server that crashed after a POST makes
        # it again. One push per (id, from, dest). (A real application keeps
        # this in its database, for a day or so.)
        key = (event["id"], event["from"], event["dest"])
        line = f"push to {event['dest']}: message {event['id']} from {event['from']} is waiting"
        # One line at a time: the server's threads print concurrently.
        with self.state.lock:
            if key not in self.state.pushed:
                self.state.pushed.add(key)
                print(line, flush=True)
        self.reply(200, {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--api-key", default=os.environ.get("BACHATA_API_KEY"))
    args = parser.parse_args()
    Handler.state = State()
    Handler.api_key = args.api_key
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"hooks example listening on http://127.0.0.1:{server.server_port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
