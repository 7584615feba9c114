"""WebSocket (and HTTP) transport for browsers and Node, inside a node's own loop.

Used by the brokers (nodes/broker/node.py: WebSocket, the HTTP long-poll fallback,
the page, the HTTP API -- their paths in nodes/broker/webroutes.py) and by the relays
(nodes/relay.py: WebSocket only, so a browser uploads and downloads files).  Why inside
the node and not a gateway node: a frame that arrives here is handed to the same
dispatcher the node's ZeroMQ client endpoint uses (``node.web_frame``), so login,
limits, sessions and replies have one implementation and a web session costs no extra
hop.  A closed connection ends its session at once (``node.web_gone(ident, slow)``:
slow when it could not keep up); a ``kicked`` notice closes its connection after the
notice.  Replies and pushes for an ident of this transport come back through ``put``
and leave at the end of the loop turn, batched per connection like the ZeroMQ outbox.

What a node's HTTP paths do is its ``routes`` object (``PlainRoutes`` below: none,
WebSocket only; the brokers' ``Routes``): ``handle`` a whole request, ``origin_ok``
for the upgrade, and the long-poll hooks ``channel_put``/``poll_gone``/``housekeeping``.

Parsing is never hand-written: h11 (sans-I/O HTTP/1.1) reads every request
head and body; a ``GET`` with ``Upgrade: websocket`` is handed (re-serialized
by websockets' own ``Request``) to websockets' sans-I/O ``ServerProtocol``,
which checks the handshake and does the framing.  h11
and not websockets' own request parser for plain HTTP, because that parser
refuses request bodies and the fallback's POSTs have one.

Idents: ``WEB_IDENT`` + ``ws:<n>`` for a WebSocket connection and
``WEB_IDENT`` + ``http:<channel>`` for an HTTP long-poll channel.  The
prefix starts with a zero byte, which ZeroMQ forbids in identities a peer
sets itself, and is longer than the 5-byte identities ROUTER generates: no
ZeroMQ client can pose as a web connection.
"""
from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

import h11
import zmq
from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from nodes.protocol import wire
from nodes.runtime.outbox import MAX_BATCH

log = logging.getLogger(__name__)
ws_log = logging.getLogger(__name__ + ".ws")     # websockets' own per-connection lines
ws_log.setLevel(logging.WARNING)                 # (one INFO per open would flood the log)

WEB_IDENT = b"\x00web-"
OUT_BOUND = 1 << 20            # bytes queued to one slow client before it is dropped (too slow)
MAX_HEAD = 16 * 1024           # bytes of one HTTP request head
HEAD_TIMEOUT = 10.0            # seconds for a connection to send a complete request
KEEPALIVE_IDLE = 60.0          # seconds an idle keep-alive HTTP connection stays open
ACCEPT_BATCH = 64
RECV_SIZE = 65536


def parse_ws_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint[len("ws://"):].rstrip("/").rpartition(":")
    return host.strip("[]"), int(port)


def page_origins(topo, spec) -> tuple[set, set]:
    """(host:port of every broker's web endpoint, the origins a browser page may come from):
    any broker's own page (the page fails over to the other brokers) and the origins the
    topology lists for this node."""
    brokers = {n.endpoints["ws"][5:].rstrip("/") for n in topo.of_type("broker") if "ws" in n.endpoints}
    return brokers, {"http://" + b for b in brokers} | set(spec.origins)


def origin_allowed(headers: dict, origins: set) -> bool:
    """Non-browser clients send no Origin; a browser page may come from this endpoint itself
    (same origin) or one of ``origins``."""
    origin = headers.get(b"origin")
    if origin is None:
        return True
    origin = origin.decode("latin-1")
    return origin == "http://" + headers.get(b"host", b"").decode("latin-1") or origin in origins


class PlainRoutes:
    """The routes of a WebSocket-only endpoint (a relay's): every plain HTTP request gets 404."""

    def __init__(self, gate: WebGate, origins: set, what: str):
        self.gate, self.origins, self.what = gate, origins, what

    def origin_ok(self, headers: dict) -> bool:
        return origin_allowed(headers, self.origins)

    def handle(self, conn: Conn, req: h11.Request, _body: bytes) -> None:
        self.gate.respond(conn, 404, f"{self.what}: WebSocket clients connect to /ws\n")

    def channel_put(self, _target, _items, ending: bool) -> None:      # no long-poll channels here
        raise AssertionError("a WebSocket-only endpoint has no HTTP channels")

    def poll_gone(self, _conn: Conn) -> None:
        pass

    def housekeeping(self, _now: float) -> None:
        pass

    def status(self) -> dict:
        return {}


class Conn:
    """One TCP connection: HTTP (h11) until it upgrades to a WebSocket."""

    __slots__ = ("sock", "fd", "out", "writing", "closed", "close_when_sent", "h11",
                 "ws", "ident", "parts", "req", "body", "parked", "cors", "last_active", "opened")

    def __init__(self, sock, now):
        self.sock, self.fd = sock, sock.fileno()
        self.out = bytearray()
        self.writing = self.closed = self.close_when_sent = False
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.ws = self.ident = self.req = self.parked = None
        self.cors = ()                     # CORS headers for the answer to the current request
        self.parts = []                    # fragments of a WebSocket message being received
        self.body = bytearray()
        self.last_active = self.opened = now


class WebGate:
    """Listens on a node's ``ws`` endpoint; serves WebSocket clients and what ``routes`` says of HTTP.

    ``node``: its ``loop``, ``web_frame(ident, payload)`` and ``web_gone(ident, slow)``;
    ``routes(gate)`` makes the routes; ``max_frame`` bounds one message or body;
    ``ws_idle``: seconds a silent WebSocket stays open; ``out_bound``: bytes queued to
    one client before it is dropped as too slow."""

    WEB_IDENT = WEB_IDENT

    def __init__(self, node, endpoint: str, routes, max_frame: int, ws_idle: float, out_bound: int = OUT_BOUND):
        self.node, self.loop = node, node.loop
        self.max_frame, self.ws_idle, self.OUT_BOUND = max_frame, ws_idle, out_bound
        self.conns: dict[int, Conn] = {}                 # fd -> Conn
        self.targets: dict[bytes, Any] = {}              # ident -> Conn (WebSocket) or the routes' channel
        self.queued: dict[bytes, list[bytes]] = {}       # ident -> [packed, ...] this turn
        self.ending: dict[bytes, tuple[int, str]] = {}   # ident -> (close code, reason): close once this turn's
        # frames are out
        self.counter = 0
        self.stats = {"ws_opened": 0, "http_requests": 0, "too_slow": 0, "refused_origin": 0,
                      "http_flooded": 0, "http_failed": 0, "flush_failed": 0}
        self.routes = routes(self)
        host, port = parse_ws_endpoint(endpoint)
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as exc:             # name the endpoint: the node has several to check
            self.listener.close()
            raise OSError(exc.errno, f"{exc.strerror} (ws endpoint {endpoint})") from None
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.loop.add_fd(self.listener.fileno(), self._accept)
        self.loop.on_turn_end(self.flush)
        self.loop.every(1.0, self.housekeeping)

    # --- out (called by the broker for idents of this transport) ------------
    @staticmethod
    def owns(ident: bytes) -> bool:
        return ident[:5] == WEB_IDENT

    def put(self, ident: bytes, packed: bytes, end: tuple | None = None) -> None:
        """Queue a packed message; ``end`` = (close code, reason) closes the connection after it."""
        batch = self.queued.get(ident)
        if batch is None:
            self.queued[ident] = [packed]
        else:
            batch.append(packed)
        if end:
            self.ending[ident] = end

    def reply(self, ident: bytes, msg: dict, packed: bytes | None = None) -> None:
        """A reply or notice (``packed``: its ``wire.pack``, when the caller already has it);
        ``kicked`` ends the connection once it is sent."""
        self.put(ident, wire.pack(msg) if packed is None else packed,
                 end=(1000, "kicked") if msg.get("t") == "kicked" else None)

    def flush(self) -> None:
        """Send this turn's frames (a turn-end hook: an error here costs that connection only --
        an exception out of a turn-end hook would stop the broker)."""
        queued, self.queued = self.queued, {}
        ending, self.ending = self.ending, {}
        for ident, items in queued.items():
            target = self.targets.get(ident)
            if target is None:
                continue                               # the connection is gone
            try:
                self._flush_one(ident, target, items, ident in ending and ending[ident])
            except Exception:
                log.exception("sending to a web connection failed; closing it")
                self.stats["flush_failed"] += 1
                conn = target if isinstance(target, Conn) else target.waiter     # a parked long poll
                if isinstance(conn, Conn):
                    self.close(conn)

    def _flush_one(self, ident, target, items, end) -> None:
        """One connection's frames of this turn; ``end`` = (close code, reason) to close after them."""
        if not isinstance(target, Conn):
            self.routes.channel_put(target, items, ending=bool(end))      # an HTTP long-poll channel
            return
        ws = target.ws
        if ws.state is not State.OPEN:
            return                                 # closing: the client said goodbye or was told to
        for i in range(0, len(items), MAX_BATCH):          # frames as the ZeroMQ outbox joins them
            chunk = items[i:i + MAX_BATCH]
            ws.send_binary(chunk[0] if len(chunk) == 1 else wire.array_of_packed(chunk))
        if end:
            ws.send_close(*end)
            target.close_when_sent = True
        self._write(target, b"".join(ws.data_to_send()))

    # --- sockets -------------------------------------------------------------
    def _accept(self, _events) -> None:
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, now)
            self.conns[conn.fd] = conn
            self.loop.add_fd(conn.fd, lambda ev, c=conn: self._on_event(c, ev))

    def _on_event(self, conn: Conn, events: int) -> None:
        if events & zmq.POLLOUT:
            self._write(conn, b"")
        if conn.closed or not events & (zmq.POLLIN | zmq.POLLERR):
            return
        for _ in range(4):
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close(conn)
                return
            if not data:
                self.close(conn)
                return
            conn.last_active = time.monotonic()
            if conn.ws is not None:
                self._ws_data(conn, data)
            else:
                conn.h11.receive_data(data)
                if conn.parked is not None and len(conn.h11.trailing_data[0]) > MAX_HEAD + self.max_frame:
                    self.stats["http_flooded"] += 1      # pipelining behind a parked poll: bounded
                    self.close(conn)
                    return
                self.http_events(conn)
            if conn.closed or len(data) < RECV_SIZE:
                return

    def _write(self, conn: Conn, data: bytes) -> None:
        """Send what the socket takes now; poll for writability while bytes wait."""
        if conn.closed:
            return
        conn.out += data
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close(conn)
                return
            del conn.out[:sent]
        if conn.out:
            if len(conn.out) > self.OUT_BOUND:
                self.stats["too_slow"] += 1
                log.info("web client %s too slow (%d bytes waiting): dropped", conn.ident, len(conn.out))
                self.close(conn, slow=True)
            elif not conn.writing:
                conn.writing = True
                self.loop.add_fd(conn.fd, lambda ev, c=conn: self._on_event(c, ev), zmq.POLLIN | zmq.POLLOUT)
        else:
            if conn.writing:
                conn.writing = False
                self.loop.add_fd(conn.fd, lambda ev, c=conn: self._on_event(c, ev))
            if conn.close_when_sent:
                self.close(conn)

    def close(self, conn: Conn, slow: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        try:
            self.loop.remove_fd(conn.fd)
        except KeyError:
            pass
        try:
            conn.sock.close()
        except OSError as exc:                          # pragma: no cover
            if exc.errno != errno.EBADF:
                raise
        if conn.parked is not None:
            self.routes.poll_gone(conn)
        if conn.ident is not None and self.targets.get(conn.ident) is conn:
            del self.targets[conn.ident]
            self.node.web_gone(conn.ident, slow)

    # --- WebSocket -----------------------------------------------------------
    def upgrade(self, conn: Conn, req: h11.Request, origin_ok: bool) -> None:
        """Hand an upgrade request (as h11 parsed it) to websockets' handshake."""
        ws = ServerProtocol(max_size=self.max_frame, logger=ws_log)
        headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers)
        ws.receive_data(Request(req.target.decode("ascii", "replace"), headers).serialize())
        request = next((e for e in ws.events_received()), None)
        if not isinstance(request, Request):           # None: the handshake did not parse
            self.close(conn)
            return
        if origin_ok:
            response = ws.accept(request)
        else:
            self.stats["refused_origin"] += 1
            response = ws.reject(403, "origin not allowed (the brokers' pages and the topology's "
                                 "'origins' are)\n")
        ws.send_response(response)
        conn.ws = ws
        if response.status_code == 101:
            conn.h11 = None                            # HTTP is over on this connection
            self.counter += 1
            conn.ident = WEB_IDENT + b"ws:%d" % self.counter
            self.targets[conn.ident] = conn
            self.stats["ws_opened"] += 1
        else:
            conn.close_when_sent = True
        self._write(conn, b"".join(ws.data_to_send()))

    def _ws_data(self, conn: Conn, data: bytes) -> None:
        ws = conn.ws
        ws.receive_data(data)
        for frame in ws.events_received():
            if getattr(frame, "opcode", None) is None or conn.ident is None:
                continue
            op = frame.opcode
            if op is Opcode.TEXT:
                self.put(conn.ident, wire.pack(wire.error(None, wire.Err.BAD_FRAME, "send binary messages "
                                                          "holding msgpack, not text")),
                         end=(1003, "binary messages only"))
            elif op is Opcode.BINARY or op is Opcode.CONT:
                conn.parts.append(bytes(frame.data))
                if frame.fin:
                    payload = conn.parts[0] if len(conn.parts) == 1 else b"".join(conn.parts)
                    conn.parts = []
                    self.node.web_frame(conn.ident, payload)
        out = ws.data_to_send()
        if out:
            if b"" in out:                      # the protocol ended the connection (close, bad frame)
                conn.close_when_sent = True
            self._write(conn, b"".join(out))

    # --- HTTP ----------------------------------------------------------------
    def http_events(self, conn: Conn) -> None:
        """Run h11 over what arrived; each complete request goes to the routes."""
        while not conn.closed and conn.ws is None and conn.parked is None:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.respond(conn, exc.error_status_hint, f"bad HTTP request: {exc}\n", close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                    conn.h11.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self.stats["http_requests"] += 1
                conn.req, conn.body = event, bytearray()
                headers = {k.lower(): v for k, v in event.headers}
                if event.method == b"GET" and b"websocket" in headers.get(b"upgrade", b"").lower():
                    self.upgrade(conn, event, self.routes.origin_ok(headers))
                    return
            elif isinstance(event, h11.Data):
                conn.body += event.data
                if len(conn.body) > self.max_frame:
                    self.respond(conn, 413, f"body over {self.max_frame} bytes\n", close=True)
                    return
            elif isinstance(event, h11.EndOfMessage):
                try:
                    self.routes.handle(conn, conn.req, bytes(conn.body))
                except Exception:                       # a bug must cost one connection, never the broker
                    log.exception("HTTP request %r failed", conn.req.target[:200])
                    self.stats["http_failed"] += 1
                    self.respond(conn, 500, "internal error\n", close=True)
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self.close(conn)
                return

    def respond(self, conn: Conn, status: int, body, ctype: str = "text/plain; charset=utf-8",
                headers=(), close: bool = False) -> None:
        """One whole HTTP response; then the next request on a keep-alive connection."""
        if isinstance(body, str):
            body = body.encode()
        hdrs = [("content-type", ctype), ("content-length", str(len(body))), ("cache-control", "no-store"),
                *headers]
        if close:
            hdrs.append(("connection", "close"))
        try:
            data = conn.h11.send(h11.Response(status_code=status, headers=hdrs))
            data += conn.h11.send(h11.Data(data=body)) if body else b""
            data += conn.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.close(conn)
            return
        if close or conn.h11.our_state is h11.MUST_CLOSE:
            conn.close_when_sent = True
        self._write(conn, data)
        if not conn.closed and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()

    # --- housekeeping --------------------------------------------------------
    def housekeeping(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.ws is not None:
                if conn.ident is not None and now - conn.last_active > self.ws_idle:
                    self.close(conn)
            elif conn.parked is None:
                idle = conn.h11.their_state is h11.IDLE and not conn.h11.trailing_data[0]
                limit = KEEPALIVE_IDLE if idle else HEAD_TIMEOUT
                if now - conn.last_active > limit:
                    self.close(conn)
        self.routes.housekeeping(now)

    def status(self) -> dict:
        return dict(self.stats, ws=sum(1 for t in self.targets.values() if isinstance(t, Conn)),
                    **self.routes.status())

    def shutdown(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        self.listener.close()
