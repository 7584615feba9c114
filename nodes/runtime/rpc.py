"""Outgoing requests over DEALER sockets, matched to replies by ``rid``, with timeouts.

One ``Requests`` table per node: every request gets exactly one callback,
either with the peer's reply or with an UNAVAILABLE error when the peer
does not answer in time.  Requests are queued in the node's outbox and
leave, batched per peer, at the end of the loop turn.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING

import zmq

from nodes.protocol import wire
from nodes.runtime.ports import Callback, Msg

if TYPE_CHECKING:
    from nodes.runtime.outbox import Outbox

log = logging.getLogger(__name__)


class Requests:
    def __init__(self, timeout: float, max_len: int, outbox: Outbox, on_late: Callback | None = None) -> None:
        self.timeout = timeout
        self.outbox = outbox                 # requests leave at the end of the loop turn
        self.on_late = on_late               # gets replies whose request already timed out
        self.max_len = max_len
        self.pending: dict[int, tuple[float, Callback, zmq.Socket[bytes]]] = {}  # rid -> (deadline, callback, socket)
        self._rids = itertools.count(1)

    def send(self, sock: zmq.Socket[bytes], msg: Msg, callback: Callback, timeout: float | None = None,
             now: float | None = None) -> int:
        """Queue ``msg``; ``callback`` gets the reply, or UNAVAILABLE once ``timeout`` has passed
        (``now``: the monotonic send time, given by tests with a fake clock)."""
        rid = next(self._rids)
        msg["rid"] = rid
        self.outbox.put(sock, None, wire.pack(msg))
        sent = time.monotonic() if now is None else now
        self.pending[rid] = (sent + (timeout or self.timeout), callback, sock)
        return rid

    def on_reply(self, frames: list[bytes]) -> None:
        try:
            msgs = wire.unpack_internal(frames[-1], self.max_len, 1 << 20)
        except wire.ProtocolError as exc:
            log.warning("bad reply from a peer: %s", exc)
            return
        for msg in msgs:
            rid = wire.request_rid(msg)
            entry = None if rid is None else self.pending.pop(rid, None)
            try:
                if entry is None:
                    if self.on_late is not None:
                        self.on_late(msg)
                    continue
                entry[1](msg)
            except Exception:                  # one failing callback must not drop the rest of the batch
                log.exception("reply handling failed (t=%r)", msg.get("t"))

    def expire(self, now: float | None = None) -> int:
        """Fail the requests whose deadline passed; return how many."""
        if now is None:
            now = time.monotonic()
        late = [rid for rid, entry in self.pending.items() if entry[0] <= now]
        for rid in late:
            callback = self.pending.pop(rid)[1]
            callback(wire.error(rid, wire.Err.UNAVAILABLE, "owning node did not answer in time"))
        return len(late)

    def fail_peer(self, sock: zmq.Socket[bytes], why: str) -> int:
        """Fail now every request waiting on ``sock``'s peer (it said it is stopping)."""
        gone = [rid for rid, entry in self.pending.items() if entry[2] is sock]
        for rid in gone:
            callback = self.pending.pop(rid)[1]
            callback(wire.error(rid, wire.Err.UNAVAILABLE, why))
        return len(gone)

    def __len__(self) -> int:
        return len(self.pending)
