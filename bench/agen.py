"""The asyncio load generator of ``bin/bench e2e --client asyncio``: the shape real clients have.

One ``zmq.asyncio`` DEALER per user (the shape of nodes/client/aclient.py), on
uvloop when it is installed (``pip install imesh[bench]``), else on the
default loop.  Each user is one coroutine: it logs in (protocol 2: ``v``
and then the ``sid`` on every request), then sends closed-loop -- the next
message only after the ack (or ``--window`` in flight) -- while it reads
the deliveries of its channel.  Every (sender, seq) is checked at every
receiver, as in the lean generator, so lost and duplicated messages are
counted.  Far more CPU per message than the lean generator: that is the
point (the server sees one small frame at a time per connection).
"""
from __future__ import annotations

import asyncio
import importlib.util
import time

import zmq
import zmq.asyncio

from nodes.protocol import auth, wire
from nodes.runtime import curve

from .procstat import self_cpu_seconds
from .tally import Tally

QUIET_TIMEOUT = 15.0          # seconds without progress before a run gives up
MAX_LEN = 1 << 24


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


class AsyncWorker(Tally):
    """One generator process: its users, one DEALER and one coroutine each."""

    def __init__(self, args, indexes, endpoints, secret, channel_of):
        super().__init__()
        self.args = args
        self.indexes = indexes
        self.channel_of = channel_of
        self.loop = new_loop()
        asyncio.set_event_loop(self.loop)
        self.ctx = zmq.asyncio.Context()
        self.ctx.set(zmq.MAX_SOCKETS, len(indexes) + 64)
        self.socks = []
        for i in indexes:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            curve.connect_client(s, endpoints[i % len(endpoints)])
            self.socks.append(s)
        self.secret = secret
        self.sids = [None] * len(indexes)
        self.pad = "x" * args.size

    # --- login ---------------------------------------------------------------
    async def _login(self, k: int) -> bool:
        s, uin = self.socks[k], self.indexes[k] + 1
        await s.send(wire.pack({"t": "login", "rid": 0, "v": wire.PROTOCOL_VERSION,
                                "token": auth.mint(self.secret, uin, 3600), "device": 0}))
        while True:
            for reply in wire.unpack_many(await s.recv(), MAX_LEN, 1 << 16):
                if reply.get("t") == "login_ok":
                    self.sids[k] = reply["sid"]
                    return True
                if reply.get("t") == "err":
                    return False

    async def _login_all(self) -> int:
        tasks = [asyncio.ensure_future(self._login(k)) for k in range(len(self.socks))]
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        return sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())

    def login(self) -> int:
        return self.loop.run_until_complete(self._login_all())

    # --- the run -------------------------------------------------------------
    def _frame(self, k: int, seq: int) -> bytes:
        i = self.indexes[k]
        now = time.monotonic_ns()
        text = f"{i}:{seq}:{now}:"
        self.sent_at[(i, seq)] = now
        return wire.pack({"t": "send", "rid": seq, "sid": self.sids[k],
                          "channel": self.channel_of(i, self.args.members),
                          "ctime": seq + 1, "text": text + self.pad[len(text):]})

    async def _user(self, k: int) -> None:
        """Send closed-loop and read deliveries until this user has all its acks and messages."""
        a = self.args
        s, i = self.socks[k], self.indexes[k]
        got = set()
        seq = answered = delivered = 0
        need = (a.members - 1) * a.messages
        for _ in range(min(a.window, a.messages)):
            await s.send(self._frame(k, seq))
            seq += 1
        while answered < a.messages or delivered < need:
            frame = await s.recv()
            now = time.monotonic_ns()
            self.last_progress = time.monotonic()
            for msg in wire.unpack_many(frame, MAX_LEN, 1 << 16):
                t = msg.get("t")
                if t == "msg":
                    delivered += self.delivered(got, msg, now)
                elif t == "ack" or t == "err":
                    answered += 1
                    self.answered(i, msg, now)
                    if seq < a.messages:
                        await s.send(self._frame(k, seq))
                        seq += 1

    async def _run(self, progress) -> None:
        users = [asyncio.ensure_future(self._user(k)) for k in range(len(self.socks))]
        self.last_progress = time.monotonic()
        pending = set(users)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=0.25)
            progress.value = self.acked
            if time.monotonic() - self.last_progress > QUIET_TIMEOUT:
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
        progress.value = self.acked
        for t in users:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()

    def run(self, progress) -> dict:
        a = self.args
        Tally.__init__(self)
        expected_deliveries = len(self.socks) * (a.members - 1) * a.messages
        cpu0, t0 = self_cpu_seconds(), time.monotonic()
        self.loop.run_until_complete(self._run(progress))
        return self.result(expected_deliveries, cpu0, time.monotonic() - t0)

    def close(self):
        for s in self.socks:
            s.close(0)
        self.ctx.term()
        self.loop.close()
