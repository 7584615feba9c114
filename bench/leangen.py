"""The lean load generator of ``bin/bench e2e`` (the default ``--client lean``): raw DEALER
sockets (or WebSockets with ``--transport ws``), msgpack, sockets drained in batches, so a
generator process costs little CPU next to the nodes it measures.  ``worker_main`` runs one
generator process (this one or bench/agen.py's asyncio one) for bench/e2e.py's ``load``.
"""
from __future__ import annotations

import time

import zmq

from nodes.protocol import auth, wire
from nodes.runtime import curve

from .procstat import self_cpu_seconds
from .tally import Tally
from .wssock import WsSock

QUIET_TIMEOUT = 15.0          # seconds without progress before a run gives up


def channel_of(index: int, members: int) -> str:
    return f"g{index // members}"


class Worker(Tally):
    """One generator process: its share of the users, their sockets and their bookkeeping."""

    def __init__(self, args, indexes, endpoints, secret):
        super().__init__()
        self.args = args
        self.indexes = indexes
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, len(indexes) + 64)
        self.poller = zmq.Poller()
        self.socks, self.user_of, self.by_fd = [], {}, {}
        for i in indexes:
            if args.transport == "ws":
                s = WsSock(endpoints[i % len(endpoints)])
                self.by_fd[s.fileno()] = s
            else:
                s = self.ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RCVHWM, 0)
                curve.connect_client(s, endpoints[i % len(endpoints)])
            self.socks.append(s)
            self.user_of[s] = i
            self.poller.register(s, zmq.POLLIN)
        self.secret = secret
        self.sid = {}                          # socket -> its session's sid
        self.pad = "x" * args.size
        # a WebSocket read may hold many messages, buffered in the WsSock where the poller
        # cannot see them: drain those completely
        self.drain = 1 << 30 if args.transport == "ws" else 256

    def ready(self, timeout_ms) -> list:
        """Sockets with something to read (a zmq.Poller reports plain sockets by their fd)."""
        return [self.by_fd.get(s, s) for s, _ in self.poller.poll(timeout_ms)]

    def login(self) -> int:
        for s in self.socks:
            uin = self.user_of[s] + 1
            s.send(wire.pack({"t": "login", "rid": 0, "v": wire.PROTOCOL_VERSION,
                              "token": auth.mint(self.secret, uin, 3600), "device": 0}))
        ok, deadline = 0, time.monotonic() + 60
        while ok < len(self.socks) and time.monotonic() < deadline:
            for s in self.ready(100):
                while True:
                    try:
                        frame = s.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = wire.unpack(frame)
                    if reply.get("t") == "login_ok":
                        self.sid[s] = reply["sid"]
                        ok += 1
        return ok

    def channel(self, i: int) -> str:
        """The channel user ``i`` sends to (bench/conv.py's workers: the groups they made)."""
        return channel_of(i, self.args.members)

    def send(self, s, seq: int) -> None:
        i = self.user_of[s]
        now = time.monotonic_ns()
        text = f"{i}:{seq}:{now}:"
        s.send(wire.pack({"t": "send", "rid": seq, "sid": self.sid[s], "channel": self.channel(i),
                          "ctime": seq + 1, "text": text + self.pad[len(text):]}))
        self.sent_at[(i, seq)] = now

    def on_message(self, s, msg: dict, now: int) -> None:
        """Account one message from the broker: a delivery, an ack or an error."""
        t = msg["t"]
        if t == "msg":
            self.delivered(self.received.setdefault(self.user_of[s], set()), msg, now)
        elif t == "ack" or t == "err":
            self.answered(self.user_of[s], msg, now)
            if self.next_seq[s] < self.args.messages:
                self.send(s, self.next_seq[s])
                self.next_seq[s] += 1

    def run(self, progress) -> dict:
        a = self.args
        Tally.__init__(self)
        self.received = {}                     # receiver index -> set of (sender, seq)
        self.next_seq = dict.fromkeys(self.socks, 0)
        expected_acks = len(self.socks) * a.messages
        expected_deliveries = len(self.socks) * (a.members - 1) * a.messages
        cpu0, t0 = self_cpu_seconds(), time.monotonic()
        for s in self.socks:
            for _ in range(min(a.window, a.messages)):
                self.send(s, self.next_seq[s])
                self.next_seq[s] += 1
        last_progress = time.monotonic()
        while (self.acked + self.errors < expected_acks or self.deliveries < expected_deliveries) \
                and time.monotonic() - last_progress < QUIET_TIMEOUT:
            if self.pump(200):
                last_progress = time.monotonic()
            progress.value = self.acked
        return self.result(expected_deliveries, cpu0, time.monotonic() - t0)

    def pump(self, timeout_ms: int) -> bool:
        """Read what the sockets hold (waiting up to ``timeout_ms``); False if nothing came."""
        ready = self.ready(timeout_ms)
        for s in ready:
            for _ in range(self.drain):
                try:
                    frame = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                for msg in wire.unpack_many(frame, 1 << 24, 1 << 16):
                    self.on_message(s, msg, now)
        return bool(ready)

    def close(self):
        for s in self.socks:
            s.close(0)
        self.ctx.term()


def make_worker(args, indexes, endpoints, secret):
    if getattr(args, "worker", None) is not None:     # bench/conv.py: a Worker subclass
        return args.worker(args, indexes, endpoints, secret)
    if args.client == "asyncio":
        from .agen import AsyncWorker
        return AsyncWorker(args, indexes, endpoints, secret, channel_of)
    return Worker(args, indexes, endpoints, secret)


def worker_main(args, indexes, endpoints, secret, ready, go, out, progress) -> None:
    w = make_worker(args, indexes, endpoints, secret)
    try:
        ready.put(w.login())
        go.get()
        out.put(w.run(progress))
    finally:
        w.close()
