"""Outgoing requests over DEALER sockets, matched to replies by ``rid``, with timeouts.

One ``Requests`` table per node: every request gets exactly one callback,
either with the peer's reply or with an UNAVAILABLE error when the peer
does not answer in time or cannot be reached at all.
"""
from __future__ import annotations

import itertools
import logging
import time

import zmq

from . import wire
from .zio import send_one

log = logging.getLogger(__name__)


class Requests:
    def __init__(self, timeout: float, max_len: int, on_late=None):
        self.timeout = timeout
        self.on_late = on_late               # gets replies whose request already timed out
        self.max_len = max_len
        self.pending = {}                    # rid -> (deadline, callback)
        self._rids = itertools.count(1)

    def send(self, sock: zmq.Socket, msg: dict, callback, timeout: float | None = None) -> int:
        rid = next(self._rids)
        msg["rid"] = rid
        try:
            send_one(sock, wire.pack(msg))
        except zmq.ZMQError as exc:
            callback(wire.error(rid, wire.Err.UNAVAILABLE, f"peer unreachable: {exc.strerror}"))
            return rid
        self.pending[rid] = (time.monotonic() + (timeout or self.timeout), callback)
        return rid

    def on_reply(self, frames: list) -> None:
        try:
            msg = wire.unpack(frames[-1], self.max_len)
        except wire.ProtocolError as exc:
            log.warning("bad reply from a peer: %s", exc)
            return
        entry = self.pending.pop(wire.request_rid(msg), None)
        if entry is None:
            if self.on_late is not None:
                self.on_late(msg)
            return
        entry[1](msg)

    def expire(self) -> int:
        """Fail the requests whose deadline passed; return how many."""
        now = time.monotonic()
        late = [rid for rid, (deadline, _cb) in self.pending.items() if deadline <= now]
        for rid in late:
            _deadline, callback = self.pending.pop(rid)
            callback(wire.error(rid, wire.Err.UNAVAILABLE, "owning node did not answer in time"))
        return len(late)

    def __len__(self) -> int:
        return len(self.pending)
