"""What a node sends during one loop turn, sent at the turn's end: one frame per peer.

Messages for the same peer (a ROUTER identity, a PUB topic, or a DEALER's
one peer) are joined into one msgpack array frame, in the order they were
queued, so a turn that answers ten requests of one broker costs one ZeroMQ
message instead of ten.  Receivers accept a frame holding one map or an
array of maps (wire.unpack_many).  A joined frame stays within ``max_frame``
bytes (the topology's one internal frame limit, which receivers enforce):
sixty-four 290 KB sync replies of one turn leave as two frames, not one of
18 MB that the broker would refuse.

A socket may hand its batches to a compiled twin (``attach``): the broker's client
ROUTER queues and sends through fastpath's ``Fanout`` (libzmq directly, the same
batches and failure callbacks); this class stays its reference.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import zmq

from nodes.protocol.wire import array_of_packed
from nodes.runtime.zio import send_one, send_pair

log = logging.getLogger(__name__)

MAX_BATCH = 128                   # messages per frame at most
PASSES = 2                        # flush passes: the second sends what failure callbacks queued


ARRAY_HEADER = 5                  # bytes of a msgpack array header at most

Sock = zmq.Socket[bytes]
Key = bytes | None                # a ROUTER identity or PUB topic; None: a DEALER's one peer
Queued = dict[tuple[Sock, Key], list[bytes]]
OnFailed = Callable[[Sock, Key, zmq.ZMQError], None]


class SocketQueue(Protocol):
    """One socket's own queue and sender (fastpath.Fanout), with this class's semantics."""

    def put(self, key: Key, packed: bytes) -> None: ...

    def put_many(self, keys: Iterable[bytes], packed: bytes) -> None: ...

    def flush(self, on_failed: OnFailed) -> tuple[int, bool]:
        """Send what is queued: (frames sent, whether a send failed)."""

    def __len__(self) -> int: ...


class Outbox:
    def __init__(self, on_failed: OnFailed | None = None, max_frame: int | None = None) -> None:
        self.queued: Queued = {}   # (sock, key or None) -> [packed message, ...]
        self.on_failed = on_failed   # (sock, key, exc): a full or vanished peer (ROUTER_MANDATORY)
        self.max_frame = max_frame   # bytes of one joined frame (None: no bound)
        # a socket's own bound on joined frames: a client ROUTER's HWM counts frames, so its
        # frames are joined up to the client frame limit to make "HWM x frame" a byte bound
        self.frame_limits: dict[Sock, int] = {}    # sock -> bytes
        self.fanouts: dict[Sock, SocketQueue] = {}  # sock -> its own queue (attach)

    def attach(self, sock: Sock, fanout: SocketQueue) -> None:
        """Queue and send ``sock``'s messages through ``fanout`` (fastpath.Fanout: ``put``,
        ``put_many``, ``flush(on_failed) -> (frames, failed)``, ``len``) from now on."""
        self.fanouts[sock] = fanout

    def put(self, sock: Sock, key: Key, packed: bytes) -> None:
        if self.fanouts and sock in self.fanouts:
            self.fanouts[sock].put(key, packed)
            return
        batch = self.queued.get((sock, key))
        if batch is None:
            self.queued[(sock, key)] = [packed]
        else:
            batch.append(packed)

    def put_many(self, sock: Sock, keys: Iterable[bytes], packed: bytes) -> None:
        """The same packed message for several peers (a broker's deliveries of one message)."""
        if self.fanouts and sock in self.fanouts:
            self.fanouts[sock].put_many(keys, packed)
            return
        queued = self.queued
        for key in keys:
            batch = queued.get((sock, key))
            if batch is None:
                queued[(sock, key)] = [packed]
            else:
                batch.append(packed)

    def flush(self) -> int:
        """Send everything queued; return the number of frames sent.  A failed send's callback
        may queue more (a request that could not leave is answered UNAVAILABLE to its client at
        once): that leaves in a second pass, not a loop turn later."""
        frames = 0
        for _ in range(PASSES):
            queued, self.queued = self.queued, {}
            sent, failed = self._send(queued)
            frames += sent
            for fanout in self.fanouts.values():
                sent, fanout_failed = fanout.flush(self._failed)
                frames += sent
                failed = failed or fanout_failed
            if not (failed and (self.queued or any(map(len, self.fanouts.values())))):
                break
        return frames

    def _failed(self, sock: Sock, key: Key, exc: zmq.ZMQError) -> None:
        if self.on_failed is None:
            log.warning("send failed, message(s) dropped: %s", exc)
        else:
            self.on_failed(sock, key, exc)

    def _send(self, queued: Queued) -> tuple[int, bool]:
        """(frames sent, whether a send failed)."""
        frames, failed = 0, False
        limits = self.frame_limits
        for (sock, key), items in queued.items():
            for chunk in (items,) if len(items) == 1 else batches(items, limits.get(sock, self.max_frame)):
                frame = chunk[0] if len(chunk) == 1 else array_of_packed(chunk)
                try:
                    if key is None:
                        send_one(sock, frame)
                    else:
                        send_pair(sock, key, frame)
                    frames += 1
                except zmq.ZMQError as exc:
                    failed = True
                    self._failed(sock, key, exc)
                    break                 # the rest for this peer would fail the same way
        return frames, failed


def batches(items: list[bytes], max_frame: int | None) -> list[list[bytes]]:
    """``items`` in runs to join into one frame each: MAX_BATCH messages at most and, when
    ``max_frame`` is given, no more bytes than that (a message larger alone is a run of one).
    The common case -- one run -- is found with one C-level sum, no loop in Python."""
    if len(items) <= MAX_BATCH and (max_frame is None or sum(map(len, items)) <= max_frame - ARRAY_HEADER):
        return [items]
    if max_frame is None:
        return [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
    budget = max_frame - ARRAY_HEADER
    runs: list[list[bytes]] = []
    start, size = 0, 0
    for i, packed in enumerate(items):
        n = len(packed)
        if i > start and (i - start == MAX_BATCH or size + n > budget):
            runs.append(items[start:i])
            start, size = i, 0
        size += n
    runs.append(items[start:])
    return runs
