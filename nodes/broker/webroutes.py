"""What each HTTP path of a broker's web endpoint does: the long-poll fallback, the page, dev login.

The fallback is for networks that pass plain HTTP but not WebSockets.  A
client opens a *channel* (``POST /h/open``), POSTs request frames to
``/h/send?c=…`` and holds one ``GET /h/poll?c=…`` open: it returns at once
with everything queued for the channel (replies and pushes, one msgpack
array or map, exactly as a WebSocket message would carry them) or after
``POLL_WAIT`` seconds with 204.  The channel's ident feeds the same
``BrokerCore`` as every other client, so sessions, limits and pushes are the
same.  A channel not polled for ``CHANNEL_IDLE`` seconds, or with more than
``OUT_BOUND`` bytes waiting, is closed and its session dropped; a poll on a
closed channel gets 410 and the client opens a new one and logs in again.
"""
from __future__ import annotations

import json
import mimetypes
import os
import secrets
import time
from urllib.parse import parse_qs, urlsplit

from nodes import PACKAGE_DIR
from nodes.broker.httpapi import Api
from nodes.protocol import auth, wire
from nodes.runtime.webgate import origin_allowed, page_origins

POLL_WAIT = 20.0               # seconds a long poll is held when nothing is queued
CHANNEL_IDLE = 60.0            # seconds without a poll or send before a channel is closed
LOGIN_GRACE = 5.0              # seconds an open channel may stay without a session (opening is free)
MAX_CHANNELS = 20000           # open HTTP channels per broker
_HERE = PACKAGE_DIR
# installed: nodes/clients (package data); in a checkout: clients/ beside nodes/
CLIENTS_DIR = next((d for d in (os.path.join(_HERE, "clients"), os.path.join(os.path.dirname(_HERE), "clients"))
                    if os.path.isdir(os.path.join(d, "web"))), os.path.join(os.path.dirname(_HERE), "clients"))
STATIC = {"web": os.path.join(CLIENTS_DIR, "web"), "js": os.path.join(CLIENTS_DIR, "js")}
STATIC_TYPES = {".html", ".js", ".mjs", ".css", ".svg", ".png", ".json"}


class HttpChannel:
    __slots__ = ("ident", "queue", "size", "waiter", "wait_until", "last_seen", "ended", "opened")

    def __init__(self, ident, now):
        self.ident, self.opened = ident, now
        self.queue, self.size = [], 0
        self.waiter, self.wait_until = None, 0.0
        self.last_seen = now
        self.ended = None                   # why the channel was closed (then polls get 410)


class Routes:
    def __init__(self, gate, node):
        self.gate, self.node = gate, node
        self.channels = {}                  # channel token (str) -> HttpChannel
        # host:port of every broker's web endpoint, and the pages a browser may come from
        self.brokers, self.origins = page_origins(node.topo, node.spec)
        self.table = {("GET", "/info"): self.info, ("POST", "/dev/token"): self.dev_token,
                      ("POST", "/h/open"): self.open, ("POST", "/h/send"): self.send,
                      ("GET", "/h/poll"): self.poll, ("POST", "/h/close"): self.close}
        self.api = Api(gate, node)          # the server HTTP API under /api/v1/ (nodes/broker/httpapi.py)

    # --- origin --------------------------------------------------------------
    def origin_ok(self, headers: dict) -> bool:
        """Non-browser clients send no Origin; a browser page may come from its own broker
        (same origin), any broker's page, or one of the topology's ``origins``."""
        return origin_allowed(headers, self.origins)

    def status(self) -> dict:
        return {"http_channels": len(self.channels)}

    # --- dispatch ------------------------------------------------------------
    def handle(self, conn, req, body: bytes) -> None:
        gate = self.gate
        headers = {k.lower(): v for k, v in req.headers}
        url = urlsplit(req.target.decode("ascii", "replace"))
        method = req.method.decode("ascii", "replace")
        cors: tuple[tuple[str, str], ...] = ()
        if b"origin" in headers:
            if not self.origin_ok(headers):
                gate.stats["refused_origin"] += 1
                gate.respond(conn, 403, "origin not allowed (the broker's own page and the topology's "
                             "'origins' are)\n")
                return
            cors = (("access-control-allow-origin", headers[b"origin"].decode("latin-1")),)
        conn.cors = cors
        if method == "OPTIONS":
            gate.respond(conn, 204, b"", headers=cors + (("access-control-allow-methods", "GET, POST, DELETE"),
                                                         ("access-control-allow-headers",
                                                          "content-type, authorization, idempotency-key")))
            return
        if self.api.owns(url.path):
            self.api.handle(conn, method, url.path, headers, body)
            return
        handler = self.table.get((method, url.path))
        if handler == self.dev_token and headers.get(b"host", b"").decode("latin-1") not in self.brokers:
            # minting tokens is for pages of this topology's brokers, reached by their own
            # address: a Host of another name is a page whose DNS now points here (rebinding)
            gate.respond(conn, 403, "dev login only at a broker's own address\n", headers=cors)
            return
        if handler is None:
            if method == "GET" and (url.path == "/" or url.path.lstrip("/").split("/", 1)[0] in STATIC):
                self.static(conn, url.path)
            elif any(path == url.path for _m, path in self.table):
                gate.respond(conn, 405, f"{method} not allowed on {url.path}\n", headers=cors)
            else:
                gate.respond(conn, 404, f"no such path {url.path}; WebSocket clients connect to /ws\n",
                             headers=cors)
            return
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        status, reply = handler(conn, query, body)
        if status is None:
            return                                              # a parked poll
        if isinstance(reply, dict):
            gate.respond(conn, status, json.dumps(reply), "application/json", headers=cors)
        else:
            gate.respond(conn, status, reply, "application/msgpack" if status == 200 else
                         "text/plain; charset=utf-8", headers=cors)

    # --- page and info -------------------------------------------------------
    def static(self, conn, path: str) -> None:
        """The chat page and the JS client (clients/ of the checkout, or nodes/clients installed)."""
        parts = ["web", "index.html"] if path == "/" else path.strip("/").split("/")
        root = STATIC[parts[0]]
        full = os.path.realpath(os.path.join(root, *parts[1:]))
        ext = os.path.splitext(full)[1]
        if not full.startswith(root + os.sep) or ext not in STATIC_TYPES or not os.path.isfile(full):
            self.gate.respond(conn, 404, f"no such file {path}\n")
            return
        with open(full, "rb") as f:
            data = f.read()
        ctype = "text/javascript" if ext in (".js", ".mjs") else mimetypes.types_map.get(ext, "text/plain")
        self.gate.respond(conn, 200, data, ctype + ("; charset=utf-8" if ctype.startswith("text/") else ""))

    def info(self, _conn, _query, _body):
        topo = self.node.topo
        return 200, {"broker": self.node.id, "ws": [n.endpoints["ws"] for n in topo.of_type("broker")
                                                    if "ws" in n.endpoints],
                     "relays": {n.id: n.endpoints["ws"] for n in topo.of_type("relay") if "ws" in n.endpoints},
                     "local": topo.local, "channels": sorted(topo.channels), "version": wire.PROTOCOL_VERSION}

    def dev_token(self, _conn, _query, body):
        """LOCAL TOPOLOGIES ONLY (``local: true``): mint a login token for any uin, so the page
        can log in without a login service.  Absent (404) on every other cluster."""
        if not self.node.topo.local:
            return 404, "no dev login: this cluster is not local; paste a token minted by its operator\n"
        try:
            uin = json.loads(body or b"{}")["uin"]
            if isinstance(uin, bool) or not isinstance(uin, int) or not 0 <= uin < 2**32:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return 400, 'send {"uin": <uint32>} as JSON\n'
        token = auth.mint(self.node.core.secret, uin, self.node.topo.limits["token_lifetime"])
        return 200, {"token": token, "uin": uin, "local_only": True}

    # --- long-poll channels --------------------------------------------------
    def open(self, _conn, _query, _body):
        if len(self.channels) >= MAX_CHANNELS:
            return 503, "too many HTTP channels on this broker; try another broker\n"
        token = secrets.token_hex(16)
        channel = HttpChannel(self.gate.WEB_IDENT + b"http:" + token.encode(), time.monotonic())
        self.channels[token] = channel
        self.gate.targets[channel.ident] = channel
        return 200, {"c": token, "poll_wait": POLL_WAIT}

    def _channel(self, query):
        channel = self.channels.get(query.get("c", ""))
        if channel is None:
            return None, (404, "no such channel (closed or never opened): POST /h/open\n")
        if channel.ended and not channel.queue:
            self._forget(channel)
            return None, (410, f"channel closed ({channel.ended}): POST /h/open and log in again\n")
        channel.last_seen = time.monotonic()
        return channel, None

    def send(self, _conn, query, body):
        channel, failed = self._channel(query)
        if failed:
            return failed
        if channel.ended:
            return 410, f"channel closed ({channel.ended}): POST /h/open and log in again\n"
        self.node.web_frame(channel.ident, body)
        return 202, b""

    def poll(self, conn, query, _body):
        channel, failed = self._channel(query)
        if failed:
            return failed
        if channel.queue:
            return 200, self._take(channel)
        if channel.waiter is not None:                         # a newer poll replaces the older
            self._answer(channel, 204, b"")
        channel.waiter, conn.parked = conn, channel
        channel.wait_until = time.monotonic() + POLL_WAIT
        return None, None

    def close(self, _conn, query, _body):
        channel = self.channels.get(query.get("c", ""))
        if channel is not None:
            self._end(channel, "closed by the client")
            self._forget(channel)
        return 204, b""

    # --- called by the gate --------------------------------------------------
    def channel_put(self, channel, items, ending: bool) -> None:
        if channel.ended:
            return
        channel.queue.extend(items)
        channel.size += sum(map(len, items))
        if channel.size > self.gate.OUT_BOUND:
            self.gate.stats["too_slow"] += 1
            channel.queue = [wire.pack({"t": "kicked", "reason": "too_slow",
                                        "msg": "more than the outbound bound waiting; log in again"})]
            self._end(channel, "too slow", slow=True)
        elif ending:
            self._end(channel, "kicked")
        if channel.waiter is not None:
            self._answer(channel, 200, self._take(channel))

    def poll_gone(self, conn) -> None:
        channel = conn.parked
        conn.parked = None
        if isinstance(channel, HttpChannel) and channel.waiter is conn:     # else an API call
            channel.waiter = None

    def housekeeping(self, now: float) -> None:
        for channel in list(self.channels.values()):
            if channel.waiter is not None:
                if now >= channel.wait_until:
                    self._answer(channel, 204, b"")
            elif now - channel.last_seen > CHANNEL_IDLE:
                self._end(channel, "not polled")
                self._forget(channel)
                continue
            if now - channel.opened > LOGIN_GRACE and channel.ident not in self.node.core.sessions.by_ident:
                # opened but never logged in (or logged out): anyone can open channels, so
                # they must not hold a slot of MAX_CHANNELS for long
                self._end(channel, "no login")
                self._forget(channel)

    # --- helpers -------------------------------------------------------------
    @staticmethod
    def _take(channel) -> bytes:
        items, channel.queue, channel.size = channel.queue, [], 0
        return items[0] if len(items) == 1 else wire.array_of_packed(items)

    def _answer(self, channel, status, body) -> None:
        conn, channel.waiter = channel.waiter, None
        conn.parked = None
        channel.last_seen = time.monotonic()
        self.gate.respond(conn, status, body, "application/msgpack" if status == 200 else "text/plain",
                          headers=conn.cors)
        self.gate.http_events(conn)                 # requests pipelined behind the poll

    def _end(self, channel, why: str, slow: bool = False) -> None:
        if channel.ended is None:
            channel.ended = why
            if self.gate.targets.get(channel.ident) is channel:
                del self.gate.targets[channel.ident]
            self.node.web_gone(channel.ident, slow)

    def _forget(self, channel) -> None:
        self.channels.pop(channel.ident.rpartition(b":")[2].decode(), None)
        if channel.waiter is not None:
            self._answer(channel, 410, f"channel closed ({channel.ended})\n".encode())
