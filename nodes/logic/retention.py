"""Retention: what is kept only for a while is deleted as its time comes, in small slices.

Three kinds of rows outlive their use: messages past their lifetime (``sweep``,
oldest first per channel, at most a few ms per call), the dedup rows of devices
silent longer than any retry can come (``prune_dedup``) and the send-index rows
of expired messages (``prune_sent``).  Each walks a slice per call and goes on
where it stopped, so the node's loop never stalls on a big store.  A channel's
queue is bounded too: the id pushed out by a new one is deleted with its batch
(``queued``).  Kept apart: none of this is on the send path's critical state.
"""
from __future__ import annotations

import collections
import heapq
import time

from nodes.logic.channels import ChannelState
from nodes.logic.dedup import Dedup, device_of
from nodes.logic.serving import Serving
from nodes.storage import store as keys
from nodes.storage.store import Store

SENT_PRUNE_BUDGET = 2000              # expired send-index rows deleted per sweep call at most


class Retention:
    """State: ``expiries`` (heap of (expiry of a channel's oldest message, name)), the sweep's
    time spent (``sweep_seconds``, ``sweep_max``), and the cursors where ``prune_dedup``
    (``dedup_cursor``) and ``prune_sent`` (``sent_cursor``: the last ``x`` row deleted)
    go on."""

    def __init__(self, serving: Serving, store: Store, dedup: Dedup, stats: collections.Counter[str],
                 lifetime: float) -> None:
        self.serving, self.store, self.dedup, self.stats = serving, store, dedup, stats
        self.lifetime = lifetime
        self.expiries: list[tuple[float, str]] = []
        self.sweep_seconds = self.sweep_max = 0.0
        self.dedup_cursor: bytes | None = None
        self.sent_cursor: bytes | None = None

    def rewind_sent(self) -> None:
        """Send-index rows were written that may sort before ``sent_cursor`` (a hand-over
        brought them): the next ``prune_sent`` starts from the first row again."""
        self.sent_cursor = None

    def queued(self, ch: ChannelState, msg_id: int) -> None:
        """Append to the channel's bounded queue; the id that falls off is deleted with this batch."""
        was_empty = not len(ch.ring)
        fell = ch.ring.push(msg_id)
        if fell is not None:
            self.store.delete(keys.message_key(ch.name, fell))
            self.stats["trimmed"] += 1
        if was_empty:
            self.watch(ch)

    def watch(self, ch: ChannelState) -> None:
        """Schedule the sweeper for the channel's oldest message."""
        if len(ch.ring):
            raw = self.store.get(keys.message_key(ch.name, ch.ring.first))
            expiry = keys.decode(raw)[4] if raw is not None else 0.0
            heapq.heappush(self.expiries, (expiry, ch.name))

    def sweep(self, now: float, max_seconds: float = 0.005) -> int:
        """Delete expired messages, oldest first, for at most ``max_seconds`` of work.

        Within a channel expiry follows id order, so expired messages are a
        prefix of its queue: the sweeper deletes from the head until it meets
        a live message, then schedules the channel for that message's expiry.
        """
        deadline = time.monotonic() + max_seconds
        deleted = 0
        while self.expiries and self.expiries[0][0] <= now:
            _expiry, name = heapq.heappop(self.expiries)
            ch = self.serving.channels.get(name)
            if ch is None or not len(ch.ring):
                continue
            last_gone, out_of_time = None, False
            # start at the queue's head, not the prefix: deleted rows before it are tombstones
            # that RocksDB would have to step over on every call
            head = keys.message_key(name, ch.ring.first)
            for n, (key, raw) in enumerate(self.store.scan(keys.channel_prefix(name), head)):
                expiry = keys.decode(raw)[4]
                if expiry > now:
                    break
                if n % 64 == 63 and time.monotonic() > deadline:
                    out_of_time = True
                    break
                self.store.delete(key)
                last_gone = keys.unpack_u64(key[-8:])
                deleted += 1
            if last_gone is not None:
                ch.ring.drop_through(last_gone)
            if out_of_time:
                heapq.heappush(self.expiries, (now, name))      # continue on the next call
                break
            self.watch(ch)
            if time.monotonic() > deadline:
                break
        self.stats["expired"] += deleted
        if deleted:
            spent = time.monotonic() - (deadline - max_seconds)
            self.sweep_seconds += spent
            self.sweep_max = max(self.sweep_max, spent)
        return deleted

    def prune_dedup(self, now: float, budget: int = 500) -> int:
        """Forget devices silent for longer than the message lifetime (a retry can no longer
        come): walks the dedup rows a slice per call, wrapping around.  Returns rows dropped."""
        cutoff_ms = (now - max(self.lifetime, 3600.0)) * 1000
        seen = dropped = 0
        start = self.dedup_cursor
        for key, raw in self.store.scan(b"d", start):
            if seen >= budget:
                self.dedup_cursor = key
                break
            seen += 1
            row = keys.decode(raw)
            if (len(row) < 4 or row[3] < cutoff_ms) and self.dedup.forget(*device_of(key), row[0]):
                self.store.delete(key)
                dropped += 1
        else:
            self.dedup_cursor = None                   # reached the end: start over next time
        self.stats["dedup_pruned"] += dropped
        return dropped

    def prune_sent(self, now: float, budget: int = SENT_PRUNE_BUDGET) -> int:
        """Forget the send-index rows of messages past their lifetime (oldest first).

        Goes on from where the last call stopped: new rows always expire after now, so
        nothing is ever added before the cursor, and seeking there never steps over the
        tombstones of everything deleted before (which a scan from the prefix would).  Only a
        ``now`` earlier than the cursor (the expiry clock went back) starts over from the first row.
        """
        now_ms = int(now * 1000)
        if self.sent_cursor is not None and keys.sent_of_expiry_key(self.sent_cursor)[0] > now_ms:
            self.sent_cursor = None                    # the expiry clock went back (a wall-clock step it
            #                                            believed: nodes/runtime/clock.py): new rows may sort
            #                                            before the cursor
        gone = 0
        for key, _raw in self.store.scan(b"x", self.sent_cursor):
            if key == self.sent_cursor:
                continue                               # deleted by the last call (maybe not written yet)
            expiry_ms, sent = keys.sent_of_expiry_key(key)
            if expiry_ms > now_ms or gone >= budget:
                break
            self.store.delete(key)
            self.store.delete(sent)
            self.sent_cursor = key
            gone += 1
        self.stats["sent_pruned"] += gone
        return gone
