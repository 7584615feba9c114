"""The client's one connection to the mesh: a single owner of the socket and of reconnecting.

Why one owner: when every caller that saw a timeout reconnected by itself,
two callers replaced each other's connection, each replacement failed the
other's pending request, and that started another reconnect -- 980
reconnects in 5.5 s ending in RecursionError (issue 11, observation 2).
Here:

- ``Link`` owns the DEALER socket.  A request that fails does not
  reconnect: it reports what it saw (``suspect``: no reply in time;
  NOT_LOGGED_IN; a disconnect seen by the socket monitor) tagged with the
  *generation* (login number) it was sent on.  Reports about an older
  generation are ignored, so one broken connection causes one reconnect.
- A timeout alone is not proof that the broker is gone (it may be waiting
  for a logic node, or stalled for a second): the link first pings the
  broker on the same socket and reconnects only if that goes unanswered.
  A SIGKILLed broker is seen at once through the socket monitor.
- Exactly one reconnect task runs at a time, as a loop (no recursion):
  re-login on the same broker when only the session was lost, else measure
  the brokers again and try them same-IDC first; between rounds it backs
  off exponentially with jitter, so clients of a dead broker do not come
  back in lockstep.
- Requests waiting when the connection is replaced, or answered
  NOT_LOGGED_IN, wait for the next login and are sent again (same
  content: a send keeps its client time, so the server dedups it), until
  their own deadline.
- The reader survives anything a peer sends: an undecodable frame or a
  message the handler chokes on is logged, counted (``malformed``) and
  skipped.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from nodes.client.blocking import ClientError
from nodes.client.nearest import Brokers
from nodes.protocol import wire
from nodes.runtime import curve

log = logging.getLogger(__name__)

FATAL = (wire.Err.AUTH_FAILED, wire.Err.TOKEN_EXPIRED, wire.Err.BAD_VERSION)   # no broker will take us
STABLE = 2.0            # seconds a login must last for the next reconnect to start without a backoff
ENDED_BY_OTHERS = ("replaced", "kicked")   # a NOT_LOGGED_IN with these reasons ends the client like the notice
OWN_ECHO = 30.0         # seconds an abandoned login of ours may still replace the session we have


class _Replaced(Exception):
    """The connection a request was waiting on was closed (internal: the request is sent again)."""


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Seconds before reconnect round ``attempt`` (1, 2, ...): exponential, capped, 50-150% jitter."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


class Link:
    """Login, requests matched by rid, pushes handed to ``on_push``; reconnects by itself.

    ``login_request()`` makes the login map; ``on_login(reply)`` is called after every
    login (the client re-syncs there); ``on_push(msg)`` gets every frame that is not a
    reply; ``on_kicked(msg)`` gets a ``kicked`` notice.
    """

    def __init__(self, brokers: Brokers, login_request, on_login, on_push, on_kicked=None,
                 timeout: float = 3.0, ctx: zmq.asyncio.Context | None = None,
                 probe_timeout: float | None = None, measure_timeout: float = 0.5):
        self.brokers = brokers
        self.login_request, self.on_login, self.on_push = login_request, on_login, on_push
        self.on_kicked = on_kicked
        self.timeout = timeout
        self.probe_timeout = probe_timeout or min(timeout, 1.0)
        self.measure_timeout = measure_timeout
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.generation = 0                    # logins so far; requests are tagged with it
        self.endpoint: str | None = None
        self.sid: int | None = None
        self.reconnects = 0                    # logins after the first
        self.malformed = 0                     # frames or messages from the peer we could not use
        self.fatal: ClientError | None = None  # ClientError that ends the link (auth, kicked, closed)
        self.connected = asyncio.Event()
        self._pending: dict = {}                     # rid -> Future
        self._rids = itertools.count(1)
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._tasks: list = []                       # reader and monitor of the current socket
        self._reconnecting: asyncio.Task | None = None   # the one reconnect task
        self._probing: asyncio.Task | None = None
        self._logged_at = -STABLE              # monotonic time of the last login
        self._streak = 0                       # reconnects in a row, each soon after the last login
        self._abandoned_at = -OWN_ECHO         # last login we gave up waiting for (it may still land)

    # --- starting and stopping -------------------------------------------------
    async def start(self) -> dict:
        """Measure the brokers, log in on the best one that answers; UNAVAILABLE if none does."""
        await self.brokers.measure(self.ctx, self.measure_timeout)
        reply = await self._login_round(self.brokers.rank())
        if reply is None:
            self.fatal = self.fatal or ClientError(wire.Err.UNAVAILABLE, "no broker answered the login")
            raise self.fatal
        return reply

    async def use(self, endpoint: str) -> None:
        """Move to ``endpoint`` now (e.g. the relay that holds a file); UNAVAILABLE if it does
        not take us."""
        if endpoint == self.endpoint and self.connected.is_set():
            return
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        if await self._login_round([endpoint]) is None:
            raise self.fatal or ClientError(wire.Err.UNAVAILABLE, f"{endpoint} did not answer the login")

    async def close(self) -> None:
        self.fatal = self.fatal or ClientError("CLOSED", "the client was closed")
        for task in (self._reconnecting, self._probing):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._detach()

    # --- requests ----------------------------------------------------------------
    async def request(self, msg: dict, timeout: float | None = None) -> dict:
        """Send ``msg`` and return its reply; ClientError on an ``err`` reply or after ``timeout``.
        Waits across reconnects (sending again on the new connection) until the deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.fatal is not None:
                raise self.fatal
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError("TIMEOUT", f"no reply to '{msg['t']}' in time")
            if not self.connected.is_set():
                try:
                    await asyncio.wait_for(self.connected.wait(), left)
                except asyncio.TimeoutError:
                    raise ClientError("TIMEOUT", f"not connected in time for '{msg['t']}'") from None
                continue
            generation = self.generation
            try:
                reply = await self._exchange(msg, deadline - time.monotonic())
            except asyncio.TimeoutError:
                self.suspect(generation)
                raise ClientError("TIMEOUT", f"no reply to '{msg['t']}' in time") from None
            except _Replaced:
                continue                                    # the new connection gets it again
            if reply.get("t") != "err":
                return reply
            if reply.get("code") == wire.Err.NOT_LOGGED_IN and msg["t"] not in wire.SESSIONLESS:
                if reply.get("reason") in ENDED_BY_OTHERS and generation == self.generation:
                    self._kicked({"t": "kicked", "reason": reply["reason"], "msg": reply.get("msg", "")})
                else:
                    self.trouble(generation, same_broker=True, why="session lost")
                continue
            raise ClientError(reply.get("code", "?"), reply.get("msg", ""), reply)

    async def _exchange(self, msg: dict, timeout: float) -> dict:
        """One send on the current socket and the wait for its reply (no retry)."""
        rid = next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        out = dict(msg, rid=rid)
        if self.sid is not None and msg["t"] not in wire.SESSIONLESS:
            out["sid"] = self.sid
        try:
            try:
                if self._sock is None:                   # detached: a reconnect is under way
                    raise zmq.ZMQError(zmq.ENOTSOCK)
                await self._sock.send(wire.pack(out))
            except zmq.ZMQError as exc:                  # the socket was closed under the send
                raise _Replaced() from exc
            return await asyncio.wait_for(fut, max(0.0, timeout))
        finally:
            self._pending.pop(rid, None)

    # --- what requests report ------------------------------------------------------
    def suspect(self, generation: int) -> None:
        """A request on ``generation`` got no reply in time: ping the broker; reconnect if silent."""
        if generation != self.generation or self._reconnecting is not None or self._probing is not None:
            return
        self._probing = asyncio.ensure_future(self._probe(generation))

    async def _probe(self, generation: int) -> None:
        try:
            await self._exchange({"t": "ping"}, self.probe_timeout)
        except asyncio.TimeoutError:
            self.trouble(generation, why=f"{self.endpoint} silent for {self.probe_timeout:g} s")
        except (_Replaced, ClientError, zmq.ZMQError):
            pass
        finally:
            self._probing = None

    def trouble(self, generation: int, same_broker: bool = False, why: str = "") -> None:
        """The connection of ``generation`` is broken: start the one reconnect (if not started)."""
        if generation != self.generation or self._reconnecting is not None or self.fatal is not None:
            return
        log.info("reconnecting (%s)", why)
        self.connected.clear()
        self._reconnecting = asyncio.ensure_future(self._reconnect(same_broker))

    async def _reconnect(self, same_broker: bool) -> None:
        failed = self.endpoint
        self._detach()
        try:
            # a connection that keeps breaking right after its login (a broker that accepts and
            # then forgets us, a flapping link) is retried ever more slowly, never in a tight loop
            self._streak = self._streak + 1 if time.monotonic() - self._logged_at < STABLE else 0
            if self._streak:
                await asyncio.sleep(backoff(self._streak))
            for attempt in itertools.count(1):
                if same_broker and attempt == 1:
                    order: list = [failed] + [ep for ep in self.brokers.failover(failed) if ep != failed]
                else:
                    await self.brokers.measure(self.ctx, self.measure_timeout, skip=(failed,))
                    order = self.brokers.failover(failed)
                if await self._login_round(order) is not None or self.fatal is not None:
                    return
                await asyncio.sleep(backoff(attempt))
        finally:
            self._reconnecting = None

    async def _login_round(self, order) -> dict | None:
        """Try to log in on each endpoint in ``order``; the reply of the first that takes us."""
        for endpoint in order:
            self._attach(endpoint)
            try:
                reply = await self._exchange(self.login_request(), self.timeout)
            except (asyncio.TimeoutError, _Replaced):
                self._abandoned_at = time.monotonic()
                continue
            if reply.get("t") == "err":
                if reply.get("code") in FATAL:
                    self.fatal = ClientError(reply["code"], reply.get("msg", ""), reply)
                    self._fail_pending(self.fatal)
                    return None
                continue
            self.generation += 1
            self._logged_at = time.monotonic()
            self.reconnects += self.generation > 1
            self.sid = reply.get("sid")
            self.brokers.good(endpoint)
            self.on_login(reply)
            self.connected.set()
            return reply
        self._detach()
        return None

    # --- the socket --------------------------------------------------------------
    def _attach(self, endpoint: str) -> None:
        self._detach()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        curve.connect_client(sock, endpoint)       # CURVE when the endpoint carries a server key
        self._sock, self._monitor, self.endpoint = sock, monitor, endpoint
        generation = self.generation + 1           # the generation a login here will start
        self._tasks = [asyncio.ensure_future(self._read(sock)),
                       asyncio.ensure_future(self._watch(monitor, generation))]

    def _detach(self) -> None:
        self.connected.clear()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            if self._monitor is not None:
                self._monitor.close(0)
            self._sock.close(0)
            self._sock = self._monitor = None
        self._fail_pending(_Replaced())

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _watch(self, monitor, generation: int) -> None:
        """A dropped TCP connection (the broker process died) is a reason to move at once."""
        while True:
            try:
                event = parse_monitor_message(await monitor.recv_multipart())
            except zmq.ZMQError:                         # closed by _detach
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.trouble(generation, why=f"{self.endpoint} disconnected")

    async def _read(self, sock) -> None:
        while True:
            try:
                frame = await sock.recv()
            except zmq.ZMQError:                         # closed by _detach
                return
            try:
                maps = wire.unpack_many(frame, 2**31, 1 << 16)
            except wire.ProtocolError as exc:
                self.dropped("undecodable frame", exc)
                continue
            for msg in maps:
                try:
                    self._route(msg)
                except Exception as exc:                 # noqa: BLE001 -- one bad message must not deafen us
                    self.dropped(f"message {str(msg)[:200]}", exc)

    def dropped(self, what: str, exc: Exception) -> None:
        """Something from the peer we cannot use: log it, count it (``malformed``), go on."""
        self.malformed += 1
        log.warning("dropped a %s from %s: %s: %s", what, self.endpoint, type(exc).__name__, exc)

    def _route(self, msg: dict) -> None:
        fut = self._pending.pop(msg.get("rid"), None) if "rid" in msg else None
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
        elif msg.get("t") == "kicked":
            self._kicked(msg)
        elif msg.get("t") == "err" or "rid" in msg:
            log.info("unclaimed reply from %s: %s", self.endpoint, str(msg)[:200])
        else:
            self.on_push(msg)

    def _kicked(self, msg: dict) -> None:
        """``replaced``: another login of this (uin, device) took over -- stop, do not fight it;
        unless a login of our own that we gave up on may have landed late (then log in again).
        ``kicked``: the app's backend ended the user's sessions (HTTP API) -- stop: logging in
        again with the same token would undo it.  ``too_slow`` (or any other reason): the
        session was dropped; log in again."""
        reason = msg.get("reason", "replaced")
        log.warning("kicked by %s (%s): %s", self.endpoint, reason, msg.get("msg", ""))
        if reason == "kicked" or reason == "replaced" and time.monotonic() - self._abandoned_at >= OWN_ECHO:
            what = "replaced by another login" if reason == "replaced" else "kicked by the server"
            self.fatal = ClientError("KICKED", f"{what}: {msg.get('msg', '')}", msg)
            self._detach()
            self._fail_pending(self.fatal)
        else:
            self.trouble(self.generation, same_broker=True, why=f"kicked: {reason}")
        if self.on_kicked is not None:
            self.on_kicked(msg)
