"""The event loop every node runs: poll, drain each ready socket in a batch, end the turn.

Polling for readiness and then draining with NOBLOCK until EAGAIN is several
times faster than awaiting one message at a time (see STACK-NOTES).  After
each turn the ``turn_end`` hooks run: that is where a node writes its one
RocksDB batch and only then sends the replies that promise durability.

Gathering (``gather`` seconds, ``gather_frames``): most of a node's CPU per
message is per turn and per frame -- the poll, the turn's RocksDB write, one
joined frame per peer, the libzmq wake-ups -- so under load fuller turns are
cheaper per message.  A turn that read at least ``gather_frames`` frames says
the node is busy: the next turn that finds work first waits ``gather`` seconds,
so it carries what arrived meanwhile.  A lightly loaded node (a few clients,
sequential requests) never reads that many in one turn and pays no latency;
a busy one trades a few milliseconds per turn for less CPU per message and
more throughput (docs/benchmarks.md "Gathered turns").
"""
from __future__ import annotations

import heapq
import itertools
import logging
import signal
import time
from collections.abc import Callable

import zmq

from nodes.runtime.zio import reader

log = logging.getLogger(__name__)

FramesHandler = Callable[[list[bytes]], None]       # one multipart message
Reader = Callable[["zmq.Socket[bytes]"], list[bytes]]   # nodes/runtime/zio.py ``reader``


class Loop:
    def __init__(self, batch: int = 512, max_wait: float = 0.1, gather: float = 0.0, gather_frames: int = 0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.poller = zmq.Poller()
        self.handlers: dict[zmq.Socket[bytes], tuple[Reader, FramesHandler]] = {}   # socket -> (reader, handler)
        self.fd_handlers: dict[int, Callable[[int], None]] = {}   # plain fd (add_fd) -> handler(events)
        self.batch = batch
        self.max_wait = max_wait
        self._timers: list[tuple[float, int, float, Callable[[], object]]] = []  # (due, seq, interval, fn) heap
        self._seq = itertools.count()
        self._turn_end: list[Callable[[], None]] = []
        self.running = False
        self.max_turn = 0.0                 # longest turn seen (seconds): how long the loop was blocked
        self.turns = 0
        self._turn_watchers: list[Callable[[float], None]] = []  # fn(seconds) after each turn: histogram, slow-turn log
        self.gather = gather                # seconds a busy node waits before a turn's reads (0: never)
        self.gather_frames = max(1, gather_frames)   # frames read in one turn that make a node busy
        self.gathered = 0                   # turns that waited (status: how often the node was busy)
        self._sleep = sleep
        self._busy = False                  # the last turn read gather_frames frames or more

    def add(self, sock: zmq.Socket[bytes], handler: FramesHandler) -> None:
        """Call ``handler(frames)`` for every multipart message arriving on sock."""
        self.handlers[sock] = (reader(int(sock.type)), handler)
        self.poller.register(sock, zmq.POLLIN)

    def add_fd(self, fd: int, handler: Callable[[int], None], events: int = zmq.POLLIN) -> None:
        """Call ``handler(events)`` when a plain OS socket is ready (non-ZeroMQ transports);
        calling it again for the same fd changes the events polled for."""
        self.fd_handlers[fd] = handler
        self.poller.register(fd, events)

    def remove_fd(self, fd: int) -> None:
        self.fd_handlers.pop(fd, None)
        self.poller.unregister(fd)

    def every(self, interval: float, fn: Callable[[], object], first: float | None = None) -> None:
        """Call ``fn()`` every ``interval`` seconds (what it returns is ignored)."""
        due = time.monotonic() + (interval if first is None else first)
        heapq.heappush(self._timers, (due, next(self._seq), interval, fn))

    def on_turn_end(self, fn: Callable[[], None]) -> None:
        self._turn_end.append(fn)

    def watch_turns(self, fn: Callable[[float], None]) -> None:
        """Call ``fn(seconds)`` with the length of every turn (metrics, slow-turn logging)."""
        self._turn_watchers.append(fn)

    def stop(self, *_args: object) -> None:         # also a signal handler: (signum, frame)
        self.running = False

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _timeout_ms(self) -> int:
        wait = self.max_wait
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - time.monotonic()))
        return int(wait * 1000)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _due, _seq, interval, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("timer %s failed", getattr(fn, "__name__", fn))
            heapq.heappush(self._timers, (now + interval, next(self._seq), interval, fn))

    def turn(self, timeout_ms: int | None = None) -> None:
        ready = self.poller.poll(self._timeout_ms() if timeout_ms is None else timeout_ms)
        if ready and self._busy and self.gather > 0:
            self._sleep(self.gather)        # busy: let this turn carry what arrives meanwhile,
            self.gathered += 1              # on every socket and connection, not only those
            ready = self.poller.poll(0)     # that were ready before the wait
        started = time.monotonic()
        frames_read = 0
        for sock, event in ready:
            entry = self.handlers.get(sock)
            if entry is None:
                on_fd = self.fd_handlers.get(sock)        # a plain fd (add_fd): the handler reads it
                if on_fd is not None:
                    if event & zmq.POLLIN:            # a WebSocket/HTTP connection with data: a frame
                        frames_read += 1              # or more, for the busy rule as ZeroMQ frames
                    try:
                        on_fd(event)
                    except Exception:
                        log.exception("fd handler failed")
                continue
            read, handler = entry
            for _ in range(self.batch):
                try:
                    frames = read(sock)
                except zmq.Again:
                    break
                frames_read += 1
                try:
                    handler(frames)
                except Exception:
                    log.exception("handler failed on a message; dropped")
        self._busy = frames_read >= self.gather_frames
        self._run_timers()
        for fn in self._turn_end:
            fn()
        self.turns += 1
        took = time.monotonic() - started
        self.max_turn = max(self.max_turn, took)
        for watch in self._turn_watchers:
            watch(took)

    def run(self) -> None:
        self.running = True
        while self.running:
            self.turn()
