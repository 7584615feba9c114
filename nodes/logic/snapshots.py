"""Shard snapshots streamed in bounded pages across loop turns (docs/ha.md "Snapshots").

A replica that is not where the leader's log can take it (wiped, diverged,
too far behind) gets the whole shard: every row of its channels, their
``e``/``x`` send rows and every ``d`` row.  Building that in one loop turn
stalled every channel of the shard for as long as the read took (0.7-1.5 s
for a big shard), so both sides work a slice at a time:

- **Sending.**  A snapshot starts after a turn's batch is written
  (``after_flush``): the store is then exactly the shard at the sender's
  position, and a ``Pinned`` view (nodes/storage/shards.py) keeps reading
  it as of that moment while the node writes on.  Each turn, pages of up to
  ``SNAP_PAGE`` bytes are read for ``SNAP_SECONDS`` at most (all snapshots
  together), with up to ``WINDOW`` pages per snapshot unanswered: the answers
  wake the loop for the next pages.  The follower ends exactly at the
  snapshot's position; the records written meanwhile reach it from the
  leader's log (catch-up), or, if the log no longer reaches back that far,
  by another snapshot.
- **Installing.**  The first page starts a ``Clearing`` of the follower's
  rows of the shard (position (0, 0) until the end, so a crash midway
  leaves a replica that asks for everything again), run for
  ``SNAP_SECONDS`` per turn; rows the pages write are kept.  The last page
  is answered once the clearing is done and its position is written.

Pages say ``part`` and ``parts``: ``parts`` is ``part + 1`` on the last
page, more before (the total is not known while reading).  A page out of
order is answered ``rep_gap``; any answer but ``snap_part`` (or ``rep_ok``
to the last) ends the snapshot, and the sender starts over when it is
asked again.
"""
from __future__ import annotations

import logging
import time

from nodes.protocol import wire
from nodes.storage import shards

log = logging.getLogger(__name__)

SNAP_PAGE = 64 * 1024        # bytes of rows per page: the outbox joins up to 128 messages per frame,
#                              so a frame of pages stays at 8 MiB, under max_internal_frame
SNAP_SECONDS = 0.02          # reading (sender) or clearing (receiver) per loop turn, all snapshots together
WINDOW = 4                   # pages of one snapshot sent and not yet answered
SNAP_TIMEOUT = 10.0


class Stream:
    """One snapshot going to one replica."""
    __slots__ = ("to", "shard", "epoch", "still", "done", "position", "pager", "part", "inflight", "over")

    def __init__(self, to, shard, epoch, still, done):
        self.to, self.shard, self.epoch, self.still, self.done = to, shard, epoch, still, done
        self.position = self.pager = None
        self.part = self.inflight = 0
        self.over = False


class Install:
    """One snapshot coming in."""
    __slots__ = ("pos", "seq", "next", "clearing", "final")

    def __init__(self, pos, seq, clearing):
        self.pos, self.seq, self.clearing = pos, seq, clearing
        self.next = 0
        self.final = None                     # (ident, rid) of the last page, answered when installed


class Snapshots:
    """Both sides of shard snapshots for one logic node.

    ``node`` gives ``to_logic`` and ``reply``; ``position_of(shard)`` the (epoch, seq) the
    store holds of a shard; ``set_position(shard, pos)`` records a new one (staged);
    ``write(rows)`` stages rows (``d`` rows only when newer); ``installed(shard)`` is told
    when a snapshot is in; ``stats`` is counted in."""

    def __init__(self, node, store, shard_of, position_of, set_position, write, installed, stats,
                 clock=time.monotonic):
        self.node, self.store, self.shard_of, self.clock = node, store, shard_of, clock
        self.position_of, self.set_position, self.write, self.installed = position_of, set_position, write, installed
        self.stats = stats
        self.stats.update(snapshot_pages=0)
        self.queued = []                      # Streams to start after the next batch write
        self.streams = []                     # Streams being read
        self.installs = {}                    # shard -> Install

    # --- sending -------------------------------------------------------------------
    def send(self, to: str, shard: int, epoch: int, still, done) -> None:
        """Stream the shard to ``to`` from the end of this turn; ``still()`` says it is still
        wanted (checked each turn); ``done(reply)`` gets the answer to the last page, or the
        first answer that ended the snapshot."""
        self.queued.append(Stream(to, shard, epoch, still, done))

    def after_flush(self) -> None:
        """Turn end, the batch written: finish installs whose clearing is done, start the
        snapshots asked for in this turn, and read pages for at most SNAP_SECONDS."""
        for s in [s for s, inst in self.installs.items() if inst.final is not None and inst.clearing.done]:
            ident, reply = self._finish(s)
            self.node.reply(ident, reply)
        for st in self.queued:
            st.position = self.position_of(st.shard)
            st.pager = shards.Pager(shards.snapshot_rows(shards.Pinned(self.store), st.shard, self.shard_of,
                                                         shards.PAUSE_EVERY), self.clock)
            self.stats["snapshots_sent"] += 1
            self.streams.append(st)
        self.queued = []
        deadline = self.clock() + SNAP_SECONDS
        for st in list(self.streams):
            if not st.still():
                self._end(st, wire.error(None, wire.Err.UNAVAILABLE, "the snapshot is no longer wanted"))
                continue
            while st.inflight < WINDOW and not st.over and self.clock() < deadline:
                rows = st.pager.page(SNAP_PAGE, deadline - self.clock())
                if rows or st.pager.done or st.inflight == 0:    # an empty page only to be woken
                    self._send_page(st, rows)
        if len(self.streams) > 1:             # the next turn's time goes to the next snapshot first
            self.streams.append(self.streams.pop(0))

    def _send_page(self, st: Stream, rows: list) -> None:
        last = st.pager.done
        part = st.part
        msg = {"t": "snap", "shard": st.shard, "epoch": st.epoch, "seq": st.position[1],
               "pos": list(st.position), "rows": rows, "part": part, "parts": part + 1 if last else part + 2}
        st.part += 1
        st.inflight += 1
        self.stats["snapshot_pages"] += 1
        if last:
            self.streams.remove(st)
            st.over = True
        self.node.to_logic(st.to, msg, self._on_answer(st, last), SNAP_TIMEOUT)

    def _on_answer(self, st: Stream, last: bool):
        def answer(reply):
            st.inflight -= 1
            if st.done is None:
                return
            t = reply.get("t")
            if last and t == "rep_ok":
                done, st.done = st.done, None
                done(reply)
            elif t != "snap_part":
                self._end(st, reply)
        return answer

    def _end(self, st: Stream, reply: dict) -> None:
        if st in self.streams:
            self.streams.remove(st)
        st.over = True
        if st.done is not None:
            done, st.done = st.done, None
            log.info("shard %d: snapshot to %s ended at page %d: %s", st.shard, st.to, st.part, reply.get("t"))
            done(reply)

    # --- installing ----------------------------------------------------------------
    def receive(self, ident, msg: dict, s: int):
        """A page (fenced by the caller): its reply, or None when the last page waits for the
        clearing (answered from ``after_flush``)."""
        part, parts, pos = msg.get("part", 0), msg.get("parts", 1), msg.get("pos")
        rows = checked_ops(msg.get("rows"))
        if type(part) is not int or type(parts) is not int or not 0 <= part < parts \
                or not isinstance(pos, list) or len(pos) != 2:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "snap needs part < parts and pos [epoch, seq]")
        inst = self.installs.get(s)
        with self.store.uncaptured():         # installed rows are not re-shipped
            if part == 0:
                clearing = shards.Clearing(self.store, s, self.shard_of, self.clock)
                inst = self.installs[s] = Install(tuple(pos), msg["seq"], clearing)
                self.set_position(s, (0, 0))
                clearing.run(SNAP_SECONDS)    # a wiped replica has nothing to clear: done at once
            elif inst is None or inst.next != part or inst.pos != tuple(pos):
                return wire.reply("rep_gap", msg["rid"], shard=s, pos=list(self.position_of(s)))
            inst.clearing.keep(rows)
            self.write(rows)
        inst.next = part + 1
        if part < parts - 1:
            return wire.reply("snap_part", msg["rid"], shard=s, part=part)
        inst.final = (ident, msg["rid"])
        if not inst.clearing.done:
            return None
        return self._finish(s)[1]

    def before_flush(self) -> None:
        """Turn end, before the batch is written: clear for at most SNAP_SECONDS."""
        deadline = self.clock() + SNAP_SECONDS
        with self.store.uncaptured():
            for inst in self.installs.values():
                left = deadline - self.clock()
                if left <= 0:
                    break
                if not inst.clearing.done:
                    inst.clearing.run(left)

    def _finish(self, s: int):
        """The last page is in and the old rows are gone: the snapshot's position, written now
        (a promoting node loads the shard from the store next)."""
        inst = self.installs.pop(s)
        with self.store.uncaptured():
            self.set_position(s, inst.pos)
        self.store.flush()
        self.stats["snapshots_installed"] += 1
        log.info("shard %d: installed a snapshot (%d pages, %d old rows cleared) at %s",
                 s, inst.next, inst.clearing.deleted, inst.pos)
        ident, rid = inst.final
        self.installed(s)
        return ident, wire.reply("rep_ok", rid, shard=s, seq=inst.seq)


def checked_ops(ops) -> list:
    """A record's ops or a page's rows: [[key bytes, value bytes or nil], ...] (BAD_FIELD otherwise)."""
    if type(ops) is not list or not all(type(op) is list and len(op) == 2 and type(op[0]) is bytes
                                        and (op[1] is None or type(op[1]) is bytes) for op in ops):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'ops' must be an array of [bin, bin or nil]")
    return ops
