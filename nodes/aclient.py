"""asyncio client library: the way an application talks to an imesh mesh.

    client = AsyncClient(["tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102"], token, device=1)
    await client.connect()                       # login on the first broker that answers
    client.watch("lobby", since=0)               # optional: fetch what is stored after an id
    msg_id = await client.send("lobby", "hi")    # blocks until acked; 3 s timeout, 2 retries
    async for msg in client.messages():          # every message once, in id order per channel
        ...
    await client.close()

What it does for the application:

- **Heartbeats** on the interval the server asks for, listing the newest id
  held per channel; the broker answers with each channel's newest id and
  pushes what the client missed.
- **Sliding window** per channel (``nodes.windows``): a gap in pushed ids
  triggers a sync from the gap; duplicates are dropped; ids that expired or
  fell off the channel's queue move the window instead of being asked for
  forever.
- **Retries**: a send that is not acked in time is retried with the same
  client time (the server acks a retry with the original id); after the
  retries it raises ``ClientError("BUSY")`` -- "system busy" to a user.
- **Failover**: when the broker stops answering, the client logs in on the
  next endpoint and syncs, so nothing is missed.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time

import zmq
import zmq.asyncio

from . import wire
from .client import RETRYABLE, ClientClock, ClientError
from .fragments import Assembler, new_group_id, split_utf8
from .windows import Windows

log = logging.getLogger(__name__)


class Connection:
    """An asyncio DEALER session with login, failover over endpoints and rid-matched requests.

    Shared by the chat client (brokers) and the media client (relays).
    Subclasses handle what is not a reply in ``_dispatch`` and what a login
    reply tells them in ``_logged_in``.
    """

    role = "node"

    def __init__(self, endpoints, token, device: int = 0, net: str = "wired",
                 timeout: float = 3.0, ctx: zmq.asyncio.Context | None = None):
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError(f"at least one {self.role} endpoint is needed")
        self.token = token
        self.device, self.net = device, net
        self.timeout = timeout
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.uin = None
        self.sid = None                        # the session's id from login_ok, sent on every request
        self.endpoint = None
        self.reconnects = 0
        self._pending = {}                     # rid -> Future
        self._rids = itertools.count(1)
        self._sock = None
        self._reader = None
        self._index = 0
        self._lock = asyncio.Lock()

    async def _open(self) -> dict:
        """Log in on the first endpoint that answers, starting with the current one."""
        last = None
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self._index % len(self.endpoints)]
            self._attach(endpoint)
            try:
                reply = await self._request({"t": "login", "v": wire.PROTOCOL_VERSION, "token": self.token,
                                             "device": self.device, "net": self.net})
                self.uin, self.sid = reply["uin"], reply.get("sid")
                self._logged_in(reply)
                return reply
            except ClientError as exc:
                if exc.code not in RETRYABLE:
                    raise
                last = exc
                self._index += 1
        raise ClientError(wire.Err.UNAVAILABLE, f"no {self.role} answered") from last

    def _logged_in(self, reply: dict) -> None:
        """Hook: take what the login reply says."""

    def _attach(self, endpoint: str) -> None:
        self._detach()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self._sock, self.endpoint = sock, endpoint
        self._reader = asyncio.ensure_future(self._read(sock))

    def _detach(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ClientError("DISCONNECTED", "connection replaced"))
        self._pending.clear()

    async def _read(self, sock) -> None:
        while True:
            frame = await sock.recv()
            try:
                maps = wire.unpack_many(frame, 2**31, 1 << 16)
            except wire.ProtocolError as exc:
                log.warning("undecodable frame from %s: %s", self.role, exc)
                continue
            for msg in maps:
                self._dispatch(msg)

    def _dispatch(self, msg: dict) -> None:
        self._resolve(msg)

    def _resolve(self, msg: dict) -> None:
        fut = self._pending.pop(msg.get("rid"), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _request(self, msg: dict, timeout: float | None = None) -> dict:
        rid = next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        msg = dict(msg, rid=rid)
        if self.sid is not None and msg["t"] not in wire.SESSIONLESS:
            msg["sid"] = self.sid
        await self._sock.send(wire.pack(msg))
        try:
            reply = await asyncio.wait_for(fut, self.timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            raise ClientError("TIMEOUT", f"no reply to '{msg['t']}' in time") from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("t") == "err":
            raise ClientError(reply.get("code", "?"), reply.get("msg", ""), reply)
        return reply

    async def request(self, msg: dict, timeout: float | None = None) -> dict:
        """One request; log in again once if the node forgot the session."""
        try:
            return await self._request(msg, timeout)
        except ClientError as exc:
            if exc.code != wire.Err.NOT_LOGGED_IN:
                raise
        async with self._lock:
            await self._open()                     # same endpoint first: it is up, it just forgot us
        return await self._request(msg, timeout)

    async def _logout(self) -> None:
        if self._sock is not None and self.uin is not None:
            try:
                await self._request({"t": "logout"}, timeout=1.0)
            except ClientError:
                pass


class AsyncClient(Connection):
    role = "broker"

    def __init__(self, endpoints, token, device: int = 0, net: str = "wired",
                 timeout: float = 3.0, retries: int = 2, ctx: zmq.asyncio.Context | None = None):
        super().__init__(endpoints, token, device, net, timeout, ctx)
        self.retries = retries
        self.windows = Windows()
        self.assembler = Assembler()
        self.limits = {"max_text": wire.MAX_TEXT_BYTES, "max_fragments": 100}
        self.clock = ClientClock()
        self.interval = None
        self.not_member = set()
        self.syncs = 0                         # sync requests sent (a figure for tests and stats)
        self.drop_push = None                  # test hook: callable(msg) -> True drops a push
        self._incoming = asyncio.Queue()
        self._beater = None
        self._syncing = {}                     # channel -> Task
        self._closed = False

    # --- connection ------------------------------------------------------------
    async def connect(self) -> dict:
        """Log in on the first endpoint that answers (starting with the current one)."""
        async with self._lock:
            reply = await self._open()
        self._beater = asyncio.ensure_future(self._heartbeats())
        await self.heartbeat()
        return reply

    def _logged_in(self, reply: dict) -> None:
        self.interval = reply["hb"]
        self.limits.update(reply.get("limits", {}))
        self.assembler.lifetime = self.limits.get("message_lifetime", self.assembler.lifetime)

    async def reconnect(self) -> None:
        """Move to the next broker, log in again and sync what was missed."""
        async with self._lock:
            self._index += 1
            self.reconnects += 1
            await self._open()
        await self.heartbeat()

    def _dispatch(self, msg: dict) -> None:
        t = msg.get("t")
        if t == "msg":
            if self.drop_push is None or not self.drop_push(msg):
                self._accept(msg)
        elif t == "kicked":
            log.warning("session replaced: %s", msg.get("msg"))
        else:
            self._resolve(msg)

    # --- receiving -------------------------------------------------------------
    def _deliver(self, msgs) -> None:
        now = time.monotonic()
        for m in msgs:
            whole = self.assembler.add(m, now)
            if whole is not None:
                self._incoming.put_nowait(whole)

    def _accept(self, msg: dict) -> None:
        ready, gap = self.windows.accept(msg)
        self._deliver(ready)
        if gap:
            self._sync_soon(msg["channel"])

    def watch(self, channel: str, since: int | None = None) -> None:
        """Follow a channel; with ``since``, first fetch what is stored after that id."""
        if since is not None:
            self.windows.watch(channel, since)
            self._sync_soon(channel)

    def _sync_soon(self, channel: str) -> None:
        task = self._syncing.get(channel)
        if task is None or task.done():
            self._syncing[channel] = asyncio.ensure_future(self._catch_up(channel))

    async def _catch_up(self, channel: str) -> None:
        """Page through sync until the window reaches the channel's newest id."""
        try:
            while True:
                self.syncs += 1
                page = await self.request({"t": "sync", "channel": channel,
                                           "after": self.windows.last.get(channel, 0)})
                self._deliver(self.windows.jump(channel, page["first"]))
                for m in page["msgs"]:
                    self._accept_synced(m)
                if not page["more"]:
                    self._deliver(self.windows.skip_gap(channel))   # what is missing does not exist
                    return
        except ClientError as exc:
            log.info("sync of %s deferred to the next heartbeat: %s", channel, exc)

    def _accept_synced(self, msg: dict) -> None:
        ready, _gap = self.windows.accept(msg)
        self._deliver(ready)

    async def messages(self):
        """Async iterator over incoming messages, once each, in id order per channel."""
        while True:
            yield await self._incoming.get()

    async def recv(self, timeout: float | None = None) -> dict | None:
        """The next incoming message, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._incoming.get(), timeout)
        except asyncio.TimeoutError:
            return None

    # --- heartbeats ------------------------------------------------------------
    async def heartbeat(self) -> dict | None:
        """One heartbeat with our windows; on no answer, fail over to the next broker."""
        try:
            ack = await self.request({"t": "hb", "net": self.net, "channels": self.windows.snapshot()})
        except ClientError as exc:
            if exc.code not in RETRYABLE + ("DISCONNECTED",):
                raise
            await self.reconnect()
            return None
        self.interval = ack["interval"]
        self.not_member.update(ack["not_member"])
        self.assembler.expire(time.monotonic())
        for channel, first in ack["first"].items():
            self._deliver(self.windows.jump(channel, first))
        for channel, head in ack["heads"].items():
            if self.windows.behind(channel, head):
                self._sync_soon(channel)
        return ack

    async def _heartbeats(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.interval or 10)
            try:
                await self.heartbeat()
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- sending ---------------------------------------------------------------
    async def send(self, channel: str, text: str, timeout: float | None = None,
                   retries: int | None = None) -> int:
        """Send and wait for the ack; returns the msg id.  A text over the broker's limit
        goes as fragments and the id is the last fragment's (the receivers' message id)."""
        if len(text.encode("utf-8")) <= self.limits["max_text"]:
            return await self._send_one({"t": "send", "channel": channel, "text": text}, timeout, retries)
        pieces = split_utf8(text, self.limits["max_text"])
        if len(pieces) > self.limits["max_fragments"]:
            raise ClientError(wire.Err.TOO_LONG, f"text needs {len(pieces)} fragments; the limit is "
                              f"{self.limits['max_fragments']}")
        for _attempt in range(2):
            group, reconnects = new_group_id(), self.reconnects
            try:
                for index, piece in enumerate(pieces):
                    msg_id = await self._send_one({"t": "send", "channel": channel, "text": piece,
                                                   "frag": [group, index, len(pieces)]}, timeout, retries)
                return msg_id
            except ClientError as exc:
                # a failover mid-group: the new broker never saw its start; send the group again
                if exc.code != wire.Err.BAD_FRAGMENT or self.reconnects == reconnects:
                    raise
        raise ClientError(wire.Err.BUSY, "could not send the fragments")

    async def _send_one(self, req: dict, timeout, retries) -> int:
        """One message, retried with the same client time until acked or out of attempts."""
        req["ctime"] = self.clock.next()
        attempts = 1 + (self.retries if retries is None else retries)
        last = None
        for _ in range(attempts):
            try:
                return (await self.request(req, timeout))["id"]
            except ClientError as exc:
                if exc.code not in RETRYABLE + ("DISCONNECTED",):
                    raise
                last = exc
                if exc.code == "TIMEOUT":
                    await self.heartbeat()                # fails over if the broker is gone
        raise ClientError(wire.Err.BUSY, f"system busy: no ack after {attempts} attempts") from last

    async def sync(self, channel: str, after: int) -> dict:
        return await self.request({"t": "sync", "channel": channel, "after": after})

    async def close(self, logout: bool = True) -> None:
        self._closed = True
        tasks = [t for t in [self._beater, *self._syncing.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if logout:
            await self._logout()
        self._detach()

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()
