"""A logic node whose disk refuses writes: it stays up, refuses what would write, serves the rest.

RocksDB raises on a write the disk has no room for, and from then on refuses every
write until the DB is opened again (nodes/storage/store.py).  The node used to let
that exception end its loop, and then could not even start while the disk was full.
Now a failed write puts the node in the *refusing* state, which this module keeps:

- nothing is acked without storage: the sends of the failed batch are answered
  ``STORAGE_FULL`` (``INTERNAL`` for any other storage failure) and not acked, and
  the reply of any other request that wrote (membership changes, a hand-over page,
  a replication record) is replaced by that error;
- while refusing, new sends and every request that writes are refused at once with
  that code; a retry of a send stored before is still acked with its id (a read);
  sync, heartbeats (heads), member checks, presence and status are served;
- every ``PROBE`` seconds the store tries to open read-write again once there is
  room (``Store.reopen``); then the channels are loaded again from the store, as a
  restart would (what the failed batch held is gone: ids it took are given again,
  they were never acked or shown), and writes resume by themselves.

The codes are "unknown" outcomes for a client (docs/protocol.md): it keeps the message
and retries it later with the same ctime, which is stored once.
"""
from __future__ import annotations

import logging
import time

from nodes.protocol import wire
from nodes.storage.store import StorageFull

log = logging.getLogger(__name__)

PROBE = 1.0                 # seconds between tries to write again

# requests that never write: served while the disk refuses writes ("send", "edit" and "delete"
# decide themselves: a retry of a stored send is answered, a new one refused -- nodes/logic/sends.py)
READS = frozenset({"send", "sync", "heads", "member", "presence", "status", "channel_show",
                   "handoff", "snap_req",
                   "edit", "delete", "history", "typing", "watch", "unwatch",
                   "receipts", "my_channels"})


class StorageState:
    """State: ``since`` (wall time writes began to fail; None while they work), ``refusal``
    ((code, text) sent for what cannot be stored, or None), ``episodes`` (times the node
    began refusing) and ``held`` (replies of this turn's writing requests, released once the
    turn's batch is written)."""

    def __init__(self, store, stats):
        self.store, self.stats = store, stats
        self.since = None
        self.refusal = None
        self.episodes = 0
        self.held: list = []

    def written(self, fn):
        """Wrap the handler of a request that writes: refused while refusing, and its reply
        held until the turn's batch is written (``release``)."""
        def handler(ident, msg, now):
            self.check()
            reply = fn(ident, msg, now)
            if reply is None:
                return None
            self.held.append((ident, reply))
            return None
        return handler

    def check(self) -> None:
        """Raise the refusal while writes fail (and count it)."""
        if self.refusal is not None:
            self.stats["storage_refused"] += 1
            raise wire.ProtocolError(*self.refusal)

    def take_held(self) -> list:
        held, self.held = self.held, []
        return held

    def refuse(self) -> tuple[str, str] | None:
        """After a turn's write: the refusal if the store is failed (entering the state,
        logged once per episode), else None."""
        failed = self.store.failed
        if failed is None:
            return None
        if self.refusal is None:
            full = isinstance(failed, StorageFull)
            code = wire.Err.STORAGE_FULL if full else wire.Err.INTERNAL
            what = "disk full" if full else "storage failure"
            self.refusal = (code, f"{what} at the owning node: not stored; retry later with the same ctime")
            self.since = time.time()
            self.episodes += 1
            log.error("%s: writes refused (%s) until there is room; sync, heartbeats and member "
                      "checks go on: %s", what, code, failed, extra={"ev": "disk_full" if full else "store_failed"})
        return self.refusal

    def resume(self) -> bool:
        """Try to write again (once there is room); True when the store took it up again."""
        if self.refusal is None and self.store.failed is None:
            return False
        if not self.store.reopen():
            return False
        log.warning("storage writable again after %.1f s: writes resume (%d requests refused)",
                    time.time() - (self.since or time.time()), self.stats["storage_refused"],
                    extra={"ev": "disk_ok"})
        self.refusal = self.since = None
        return True

    def status(self) -> dict:
        failed = self.store.failed
        return {"disk_full": self.store.full, "storage_error": None if failed is None else str(failed),
                "storage_since": self.since, "storage_refused": self.stats["storage_refused"]}
