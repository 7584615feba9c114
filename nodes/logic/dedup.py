"""Is a send a retry?  The newest client time per device, and the send index behind it.

A send is keyed (uin, device, ctime).  Every send stored within its lifetime
keeps an index row (``e``: key -> channel, id, text digest), so a retry learns its
original id whatever the device sent after it.  The newest client time per device
(the Cython ``DedupTable``, mirrored by the ``d`` rows) lets a send newer than
anything stored skip that lookup: the common case costs no read.  The one rule that
makes the shortcut safe: the table never knows less than the store holds -- it learns
a send when its rows are staged (``note_staged``), not when it is acked, and every
``d`` row written here by someone else (a replication record, a snapshot, a
hand-over) through ``note_row``.  Knowing more (a send that was not kept) only
costs a lookup.  Kept apart
because the send path, the commit, retention (nodes/logic/retention.py), a
hand-over and a replication follower all feed or read the same table.
"""
from __future__ import annotations

from fastpath import DedupTable
from nodes.logic.channels import Pending
from nodes.storage import store as keys
from nodes.storage.store import Store


def device_of(key: bytes) -> tuple[int, int]:
    """(uin, device) of a ``d`` row's key."""
    return int.from_bytes(key[1:5], "big"), int.from_bytes(key[5:9], "big")


class Dedup:
    """State: ``table`` ((uin, device) -> (newest ctime, its id)) and ``loaded`` (the
    stored ``d`` rows are read into it once; later rows arrive through ``note_row``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = DedupTable()
        self.loaded = False

    def load(self) -> None:
        """Read the stored ``d`` rows, once (a later load of more channels finds them known)."""
        if self.loaded:
            return
        for key, raw in self.store.scan(b"d"):
            self.note_row(key, raw)
        self.loaded = True

    def get(self, uin: int, device: int) -> tuple[int, int] | None:
        """(ctime, id) of the device's newest stored send, or None."""
        got: tuple[int, int] | None = self.table.get(uin, device)   # the Cython table: untyped
        return got

    def note(self, uin: int, device: int, ctime: int, msg_id: int) -> None:
        """A stored send of the device, unless the table knows a newer one."""
        recorded = self.table.get(uin, device)
        if recorded is None or recorded[0] < ctime:
            self.table.commit(uin, device, ctime, msg_id)

    def note_row(self, key: bytes, raw: bytes) -> None:
        """A device's newest send (a ``d`` row) into the table, unless it knows a newer one."""
        ctime, _channel, msg_id = keys.decode(raw)[:3]
        self.note(*device_of(key), ctime, msg_id)

    def forget(self, uin: int, device: int, ctime: int) -> bool:
        """Drop the device if its newest send is still the one at ``ctime`` (retention)."""
        recorded = self.table.get(uin, device)
        if recorded is None or recorded[0] != ctime:
            return False
        self.table.remove(uin, device)
        return True

    def stored(self, uin: int, device: int, ctime: int) -> tuple[str, int, int] | None:
        """(channel, id, crc32 of the text) of the message stored for this (uin, device,
        ctime), or None."""
        newest = self.table.get(uin, device)
        if newest is not None and ctime > newest[0]:
            return None                                # newer than anything stored: no lookup
        raw = self.store.get(keys.sent_key(uin, device, ctime))
        return None if raw is None else (*keys.sent_of_value(raw), keys.sent_digest(raw))

    def note_staged(self, rec: Pending) -> bool:
        """A send whose rows are staged in this turn's batch: the table learns it now, not at
        its ack.  True if it is the device's newest send (then its ``d`` row is written).

        Why at staging: with replication a send is acked when a majority holds its record,
        turns later -- or never by this node: a leader that steps down first (its lease ran
        out, e.g. while etcd elects a new raft leader) answers it UNAVAILABLE although its
        rows are written, and whoever leads next (this node again, at the same epoch or a
        new one) may commit them with its epoch's first record.  A table that learned only
        at the ack would call the retry's ctime newer than anything stored and give it a
        second id.  Learned here, the table never knows less than the store holds; a send
        that no replica keeps in the end (the old leader's copy goes with the snapshot it
        installs) only costs a lookup.  It also keeps the ``d`` row at the newest ctime when
        pipelined sends of one device (to channels of two shards) are stored out of
        client-time order, across turns as within one."""
        recorded = self.table.get(rec.uin, rec.device)
        if recorded is not None and rec.ctime <= recorded[0]:
            return False
        self.table.commit(rec.uin, rec.device, rec.ctime, rec.id)
        return True
