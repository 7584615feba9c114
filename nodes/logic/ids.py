"""Ids: sends waiting for one, the blocks leased from the counter, and the turn-end assignment.

A channel's ids come in blocks from the counter (nodes/counter.py), asked for
ahead of need (when half used) so sends do not wait on the counter in steady
state.  A block is taken only if it lies beyond every id the channel holds;
leases and the newest id are stored, so a restarted node continues the same
block and ids stay contiguous and never go back, even when every message
expired.  At the end of each loop turn ``assign`` gives the waiting sends of
every channel with ids their ids and stages their rows in the store's batch;
they wait in ``committed`` until the batch is written (``take_committed``).
An edit or delete event's row is followed by its original's rewrite
(nodes/logic/edits.py), in the same batch.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping

from nodes.logic.channels import ChannelState, Pending
from nodes.logic.dedup import Dedup
from nodes.logic.edits import Edits
from nodes.logic.retention import Retention
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import LogicOut
from nodes.storage import store as keys
from nodes.storage.store import Store


class Ids:
    """State: ``dirty`` (channels with waiting sends that may get ids this turn),
    ``waiting_total`` (sends waiting in all channels, bounded by ``max_waiting``) and
    ``committed`` (sends staged in this turn's batch, not yet acked).  Each channel's
    own queue and leases are on its ChannelState."""

    def __init__(self, serving: Serving, store: Store, dedup: Dedup, retention: Retention, edits: Edits,
                 out: LogicOut, stats: collections.Counter[str], limits: Mapping[str, float]) -> None:
        self.serving, self.store, self.dedup, self.retention = serving, store, dedup, retention
        self.edits = edits
        self.out, self.stats = out, stats
        self.block = int(limits["id_block"])
        self.lifetime = limits["message_lifetime"]
        self.max_waiting = int(limits["max_pending"])
        self.dirty: set[ChannelState] = set()
        self.waiting_total = 0
        self.committed: list[Pending] = []

    # --- a channel's ids from the store --------------------------------------
    def restore(self, ch: ChannelState, queue: int) -> None:
        """A loaded channel's queue of newest ids, newest id and unused leases, as stored."""
        for key in self.store.last_keys(keys.channel_prefix(ch.name), queue):
            ch.ring.push(keys.unpack_u64(key[-8:]))
        raw = self.store.get(keys.last_id_key(ch.name))
        ch.last_id = max(ch.ring.last or 0, keys.unpack_u64(raw) if raw else 0)
        ch.next_id = ch.last_id + 1
        ch.visible = ch.last_id
        raw = self.store.get(keys.lease_key(ch.name))
        for start, end in (keys.decode(raw) if raw else []):
            if end > ch.next_id:
                ch.leases.append((start, end))
        if ch.leases:
            ch.next_id = max(ch.next_id, ch.leases[0][0])

    def _save_leases(self, ch: ChannelState) -> None:
        self.store.put(keys.lease_key(ch.name), keys.encode([list(x) for x in ch.leases]))

    # --- waiting sends ---------------------------------------------------------
    def enqueue(self, ch: ChannelState, rec: Pending) -> None:
        """Queue a new send for an id (BUSY when too many wait, nothing queued)."""
        if self.waiting_total >= self.max_waiting:
            raise wire.ProtocolError(wire.Err.BUSY, "too many sends waiting for ids; retry later")
        ch.waiting.append(rec)
        self.waiting_total += 1
        self.dirty.add(ch)

    def withdraw(self, ch: ChannelState) -> list[Pending]:
        """Take every send waiting in ``ch`` out of the queue (the channel stops being served)."""
        self.dirty.discard(ch)
        self.waiting_total -= len(ch.waiting)
        recs = list(ch.waiting)
        ch.waiting.clear()
        return recs

    # --- leases --------------------------------------------------------------
    def on_ids(self, channel: str, start: int, end: int) -> None:
        ch = self.serving.channels.get(channel)
        if ch is None:
            return
        ch.alloc_inflight = False
        if ch.add_lease(start, end):
            self.stats["id_blocks"] += 1
            self._save_leases(ch)
            if ch.waiting:
                self.dirty.add(ch)

    def on_ids_failed(self, channel: str) -> None:
        """The counter did not answer: ``retry_leases`` asks again on the next tick."""
        ch = self.serving.channels.get(channel)
        if ch is not None:
            ch.alloc_inflight = False
            self.stats["alloc_failures"] += 1

    def retry_leases(self) -> None:
        for ch in self.serving.channels.values():
            if ch.waiting:
                self._prefetch(ch)

    def _prefetch(self, ch: ChannelState) -> None:
        if not ch.alloc_inflight and ch.available() - len(ch.waiting) <= self.block // 2:
            ch.alloc_inflight = True
            self.out.request_ids(ch.name, self.block, ch.boundary())

    # --- turn end --------------------------------------------------------------
    def assign(self, now: float) -> None:
        """Give queued sends their ids and stage their writes (before the batch is written)."""
        for ch in self.dirty:
            leases_before = len(ch.leases)           # within assign leases only get used up
            last_before = ch.last_id
            stime = int(now * 1000)
            expiry = now + (ch.lifetime or self.lifetime)
            expiry_ms = int(expiry * 1000)
            put = self.store.put
            while ch.waiting:
                msg_id = ch.take_id()
                if msg_id is None:
                    break
                rec = ch.waiting.popleft()
                self.waiting_total -= 1
                rec.id, rec.stime, rec.expiry = msg_id, stime, expiry
                put(ch.prefix + keys.pack_u64(msg_id), keys.encode(rec.record()))
                put(keys.sent_key(rec.uin, rec.device, rec.ctime),
                    keys.sent_value(ch.name, msg_id, keys.text_digest(rec.content())))
                put(keys.sent_expiry_key(expiry_ms, rec.uin, rec.device, rec.ctime), b"")
                if rec.kind is not None:
                    self.edits.stage(ch, rec)
                self.retention.queued(ch, msg_id)
                if self.dedup.note_staged(rec):      # the table learns it now, not at the ack
                    self.store.put(keys.dedup_key(rec.uin, rec.device),
                                   keys.encode([rec.ctime, ch.name, msg_id, rec.stime]))
                ch.last_id = msg_id
                self.committed.append(rec)
            if len(ch.leases) != leases_before:
                self._save_leases(ch)
            if ch.last_id != last_before:
                self.store.put(keys.last_id_key(ch.name), keys.pack_u64(ch.last_id))
            self._prefetch(ch)
        self.edits.turn_done()
        self.dirty = {ch for ch in self.dirty if ch.waiting and ch.available()}

    def take_committed(self) -> list[Pending]:
        """The sends staged since the last call, handed to whoever acks them once stored."""
        committed, self.committed = self.committed, []
        return committed
