"""Blocking client: one DEALER session to a broker, for scripts and protocol tests.

Applications should use ``nodes.client.aclient.AsyncClient``, which adds
heartbeats, gap sync and broker failover; this one does request/reply and
buffers pushes, nothing more.

    c = Client("tcp://127.0.0.1:7101")
    c.login(token, device=1)
    msg_id = c.send("lobby", "hello")          # blocks until acked (retries on timeout)
    msg = c.recv(timeout=5)                    # next pushed message, or None
    c.close()

Pushes that arrive while a request waits for its reply are kept in order
and returned by ``recv``.  The client time of each send is microseconds
since the epoch, made strictly increasing per client, and a retry reuses it,
so the server acks a retry with the original id instead of storing twice.
"""
from __future__ import annotations

import collections
import itertools
import time

import zmq

from nodes.protocol import wire
from nodes.runtime import curve

RETRYABLE = ("TIMEOUT", wire.Err.UNAVAILABLE)


class ClientClock:
    """Client times for sends: microseconds since the epoch, strictly increasing."""

    def __init__(self):
        self.last = 0

    def next(self) -> int:
        self.last = max(int(time.time() * 1_000_000), self.last + 1)
        return self.last


def login_request(token: str, device: int, net: str) -> dict:
    """The login map (brokers and relays take the same; nodes/client/connection.py's Link sends it too)."""
    return {"t": "login", "v": wire.PROTOCOL_VERSION, "token": token, "device": device, "net": net}


class ClientError(Exception):
    """The server answered with an error code (``code``), or did not answer at all."""

    def __init__(self, code: str, msg: str, reply: dict | None = None):
        super().__init__(f"{code}: {msg}")
        self.code, self.msg, self.reply = code, msg, reply or {}


class Client:
    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, timeout: float = 3.0,
                 retries: int = 2):
        self.endpoint = endpoint
        self.ctx = ctx or zmq.Context.instance()
        self.timeout = timeout
        self.retries = retries
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        curve.connect_client(self.sock, endpoint)     # CURVE when the endpoint carries a server key
        self.inbox: collections.deque[dict] = collections.deque()        # pushed messages not yet returned by recv
        self.events: collections.deque[dict] = collections.deque()   # replies not yet claimed, notices (kicked, ...)
        self._rids = itertools.count(1)
        self.clock = ClientClock()
        self.uin = self.device = None
        self.sid = None                         # the session's id from login_ok, sent on every request
        self.interval = None

    # --- plumbing ------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        """Read one frame if one comes within ``timeout``: pushes go to the inbox, the rest
        (replies, notices) to ``events``.  False if nothing came."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return False
        for m in wire.unpack_many(self.sock.recv(), 2**31, 1 << 16):
            (self.inbox if m.get("t") == "msg" else self.events).append(m)
        return True

    def request(self, msg: dict, timeout: float | None = None) -> dict:
        """Send one request and wait for the reply with its rid; ClientError on err or timeout."""
        msg = dict(msg, rid=next(self._rids))
        if self.sid is not None and msg["t"] not in wire.SESSIONLESS:
            msg.setdefault("sid", self.sid)
        self.sock.send(wire.pack(msg))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for reply in self.events:
                if reply.get("rid") == msg["rid"]:
                    self.events.remove(reply)
                    if reply.get("t") == "err":
                        raise ClientError(reply.get("code", "?"), reply.get("msg", ""), reply)
                    return reply
            if not self._pump(deadline - time.monotonic()):
                raise ClientError("TIMEOUT", f"no reply to '{msg['t']}' in time")

    # --- API -----------------------------------------------------------------
    def login(self, token: str, device: int = 0, net: str = "wired") -> dict:
        reply = self.request(login_request(token, device, net))
        self.uin, self.device, self.interval = reply["uin"], reply["device"], reply["hb"]
        self.sid = reply.get("sid")
        return reply

    def send(self, channel: str, text: str, timeout: float | None = None,
             retries: int | None = None) -> int:
        """Send and block until acked; return the msg id.  Retries keep the client time."""
        req = {"t": "send", "channel": channel, "ctime": self.clock.next(), "text": text}
        attempts = 1 + (self.retries if retries is None else retries)
        last = None
        for _attempt in range(attempts):
            try:
                return self.request(req, timeout)["id"]
            except ClientError as exc:
                if exc.code not in RETRYABLE:
                    raise
                last = exc
        raise ClientError(wire.Err.BUSY, f"system busy: no ack after {attempts} attempts") from last

    def sync(self, channel: str, after: int) -> dict:
        """One page of stored messages of ``channel`` with id > after."""
        return self.request({"t": "sync", "channel": channel, "after": after})

    def heartbeat(self) -> dict:
        reply = self.request({"t": "hb"})
        self.interval = reply.get("interval", self.interval)
        return reply

    def recv(self, timeout: float = 0.0) -> dict | None:
        """The next pushed message, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            if not self._pump(deadline - time.monotonic()):
                return None
        return self.inbox.popleft()

    def logout(self) -> None:
        try:
            self.request({"t": "logout"}, timeout=1.0)
        except ClientError:
            pass

    def close(self, logout: bool = True) -> None:
        if logout and self.uin is not None:
            self.logout()
        self.sock.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
