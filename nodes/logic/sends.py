"""The send path: accept a send, and once it is stored, ack it and fan it out.

Per request: membership check -> dedup by (uin, device, client time) -> queue
for an id (nodes/logic/ids.py).  A (uin, device, ctime) seen before is a retry:
acked with the original id, or joined to the send still being stored; anything
else is new, whatever its order, so no client time can lock a device out.
``commit`` is the one place sends are acked: after the turn's batch is written
(with replication: once a majority holds it), every waiter gets its ack and the
message is queued for fan-out (the dedup table learned the send when its rows
were staged).  A send whose outcome this node can no longer promise is answered
UNAVAILABLE (``abandon``): the client retries with the same ctime wherever the
channel went, and the retry finds the stored send if it was kept anywhere.
While the node's disk refuses writes (nodes/logic/diskfull.py) ``refusal`` is set:
a new send is refused with it at once (STORAGE_FULL), a retry of a stored one is
still acked; the sends of a batch that failed are answered with it (``abandon``).

For the broker's rate limit (nodes/broker/limits.py) every answer to a send
says ``newest`` (the device's newest client time stored or being stored here,
when known) and an ack says ``retry`` when it answers a retry -- the broker
gives the token back for those and strips both.  A send marked ``lookup`` (the
user is over the rate) is dedup only: a retry is answered as always, anything
else is refused RATE_LIMITED and nothing is stored.

Edits and deletes (``event``) take the same path as a send -- dedup, ids, ack,
fan-out, a retry answered with the original ack -- once nodes/logic/edits.py
accepts them (author, window, a live plain message to refer to).
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nodes.logic.channels import DELETE, EDIT, ChannelState, Pending, content_of
from nodes.logic.dedup import Dedup
from nodes.logic.edits import Edits
from nodes.logic.fanout import FanOut
from nodes.logic.ids import Ids
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import LogicOut, Msg
from nodes.storage import store as keys


def ack(rid: int, channel: str, device: int, ctime: int, msg_id: int | None, **extra: Any) -> Msg:
    return wire.reply("ack", rid, channel=channel, device=device, ctime=ctime, id=msg_id, **extra)


class Sends:
    """State: ``inflight`` ((uin, device, ctime) -> Pending not yet acked: a retry joins it) and
    ``refusal`` ((code, text) for new sends while writes fail, else None) and
    ``accepted`` ((uin, device) -> the newest client time in ``inflight`` when it was accepted,
    until that send is stored: with the dedup table, the device's ``newest``)."""

    def __init__(self, serving: Serving, dedup: Dedup, ids: Ids, edits: Edits, fanout: FanOut, out: LogicOut,
                 stats: collections.Counter[str]) -> None:
        self.serving, self.dedup, self.ids, self.edits, self.fanout = serving, dedup, ids, edits, fanout
        self.out, self.stats = out, stats
        self.inflight: dict[tuple[int, int, int], Pending] = {}     # (uin, device, ctime) -> its send
        self.refusal: tuple[str, str] | None = None
        self.accepted: dict[tuple[int, int], int] = {}
        # told of every stored message after its ack (offline pushes: nodes/logic/pushes.py)
        self.on_stored: Callable[[Sequence[Pending]], None] | None = None

    def newest(self, uin: int, device: int) -> int | None:
        """The device's newest client time stored or being stored here; None if unknown (nothing
        in the dedup table: never sent here, or its newest send expired)."""
        stored = self.dedup.get(uin, device)
        accepted = self.accepted.get((uin, device))
        if stored is None:
            return accepted
        return stored[0] if accepted is None else max(stored[0], accepted)

    def send(self, ident: bytes, msg: Msg, _now: float | None = None) -> Msg | None:
        """Accept a send; return an immediate reply (retry, error) or None (acked later)."""
        return self._accept(ident, msg, None, 0, msg["text"], None)

    def accept(self, ident: bytes, msg: Msg, ch: ChannelState) -> Msg | None:
        """A message to ``ch`` whose sender may send there without being a member (the system:
        uin 0 of nodes/logic/admin_ops.py): the same send path, dedup by ctime included."""
        return self._accept(ident, msg, None, 0, msg["text"], None, ch)

    def edit(self, ident: bytes, msg: Msg, now: float) -> Msg | None:
        """Accept an edit of message ``id`` (an event with its own id): as ``send``."""
        return self._accept(ident, msg, EDIT, msg["id"], msg["text"], now)

    def delete(self, ident: bytes, msg: Msg, now: float) -> Msg | None:
        """Accept a delete of message ``id`` (an event with its own id, text ""): as ``send``."""
        return self._accept(ident, msg, DELETE, msg["id"], "", now)

    def _accept(self, ident: bytes, msg: Msg, kind: str | None, ref: int, text: str,
                now: float | None, to: ChannelState | None = None) -> Msg | None:
        """The send path of a message (``kind`` None) or an event of message ``ref``: a retry is
        answered (or joined) before any rule is checked again -- its outcome stands."""
        uin, device, ctime, rid = msg["uin"], msg["device"], msg["ctime"], msg["rid"]
        ch = to if to is not None else self.serving.member_channel(msg["channel"], uin)
        key = (uin, device, ctime)
        waiter = (ident, rid)
        content = content_of(kind, ref, text)
        pending = self.inflight.get(key)
        if pending is not None:
            if pending.channel != ch.name or pending.content() != content:
                raise wire.ProtocolError(wire.Err.STALE, "client time reused for another message")
            pending.waiters.append(waiter)           # retry of a send still being stored (acked ``retry``)
            self.stats["retries"] += 1
            return None
        stored = self.dedup.stored(uin, device, ctime)
        if stored is not None:
            channel, msg_id, digest = stored
            if channel != ch.name:
                raise wire.ProtocolError(wire.Err.STALE, f"client time {ctime} was used for a message "
                                         "to another channel")
            if digest != keys.text_digest(content):
                raise wire.ProtocolError(wire.Err.STALE, f"client time {ctime} was used for another "
                                         "message (a different text): not a retry, nothing stored")
            self.stats["retries"] += 1
            return ack(rid, ch.name, device, ctime, msg_id, retry=True, newest=self.newest(uin, device))
        if msg.get("lookup"):
            self.stats["lookups_refused"] += 1
            raise wire.ProtocolError(wire.Err.RATE_LIMITED, "over the rate and not a retry of a stored "
                                     "message: nothing stored", **self._newest_of(uin, device))
        if self.refusal is not None:                 # nothing can be stored now: not queued
            self.stats["storage_refused"] += 1
            raise wire.ProtocolError(*self.refusal)
        if kind is not None:
            self.edits.check(ch, kind, uin, ref, now if now is not None else 0.0)
        rec = Pending(uin, device, ctime, text, msg.get("frag"), ch.name, waiter, kind, ref)
        self.ids.enqueue(ch, rec)                    # BUSY if too many wait
        self.inflight[key] = rec
        if ctime > self.accepted.get((uin, device), -1):
            self.accepted[(uin, device)] = ctime
        return None

    def _newest_of(self, uin: int, device: int) -> dict[str, int]:
        newest = self.newest(uin, device)
        return {} if newest is None else {"newest": newest}

    def commit(self, committed: Sequence[Pending]) -> None:
        """These sends are stored (on disk; with replication: on a majority): ack every
        waiter, fan out -- all of a turn's deliveries in one frame per broker.  The dedup
        table learned them when their rows were staged (Dedup.note_staged)."""
        channels = self.serving.channels
        for rec in committed:
            key = (rec.uin, rec.device, rec.ctime)
            if self.inflight.get(key) is rec:
                del self.inflight[key]
            if self.accepted.get(key[:2]) == rec.ctime:
                del self.accepted[key[:2]]                # the dedup table has it now
            newest = self.newest(rec.uin, rec.device)
            self.stats["acks"] += len(rec.waiters)
            ch = channels.get(rec.channel)
            # committed: Ids.assign gave it an id
            if ch is not None and rec.id > ch.visible:  # type: ignore[operator]
                ch.visible = rec.id                     # type: ignore[assignment]
            for i, (ident, rid) in enumerate(rec.waiters):   # the first sent it, the others retried
                extra = {"retry": True} if i else {}
                self.out.reply(ident, ack(rid, rec.channel, rec.device, rec.ctime, rec.id, newest=newest, **extra))
            self.fanout.fan_out(channels[rec.channel], rec)
        self.stats["stored"] += len(committed)
        self.fanout.publish_turn()
        if self.on_stored is not None and committed:
            self.on_stored(committed)

    def abandon(self, recs: Iterable[Pending], why: str, code: str = wire.Err.UNAVAILABLE) -> None:
        """Sends whose outcome this node can no longer promise (it stopped leading their shard:
        UNAVAILABLE; their batch was not written: STORAGE_FULL), never acked: the client
        retries with the same ctime (wherever the shard went).  (``accepted`` keeps
        their client times: saying a newest too high costs a lookup, too low a refused retry.)"""
        for rec in recs:
            self.inflight.pop((rec.uin, rec.device, rec.ctime), None)
            for ident, rid in rec.waiters:
                self.out.reply(ident, wire.error(rid, code, why))
