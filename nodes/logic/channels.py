"""A channel's in-memory state and the forms of a message (pending, stored, pushed).

Every part of the logic core (nodes/logic/core.py) works on these: kept apart so
that none of them owns the shape of a channel, and the shapes are read in one place.
``ChannelState`` keeps a channel's members, its queue of newest ids, its leased
id blocks and the sends waiting for an id; the stored record of a message is a
list (nodes/storage/store.py keeps it as it is), pushed to clients by ``push_of``.

Message kinds (docs/protocol.md "Message kinds"): a plain message is stored as
it always was (seven fields, no kind); an edit or delete event adds an eighth,
a map ``{"kind": "edit"|"delete", "ref": id}``, and an original that was edited
or deleted carries ``{"edited": stime ms}`` / ``{"deleted": true}`` there (rows
stored before kinds existed read back as plain messages).
"""
from __future__ import annotations

import collections
import itertools
from array import array
from collections.abc import Iterable
from typing import Any

from fastpath import IdRing
from nodes.storage import store as keys

Waiter = tuple[bytes, int]          # (the broker's routing id, the request's rid): a send to ack
Record = list[Any]                  # a stored message as decoded (msgpack): see Pending.record
EDIT, DELETE = "edit", "delete"     # the event kinds; a plain message has none


class Pending:
    """A new message waiting for its id; ``waiters`` are requests to ack."""

    __slots__ = ("uin", "device", "ctime", "text", "frag", "channel", "waiters", "id", "stime", "expiry",
                 "kind", "ref")

    def __init__(self, uin: int, device: int, ctime: int, text: str, frag: list[int] | None, channel: str,
                 waiter: Waiter, kind: str | None = None, ref: int = 0) -> None:
        self.uin, self.device, self.ctime, self.text, self.frag = uin, device, ctime, text, frag
        self.channel = channel
        self.kind, self.ref = kind, ref     # an event (EDIT, DELETE) of the message ``ref``; None: a message
        self.waiters = [waiter]
        self.id: int | None = None          # set by Ids.assign, with stime (ms) and expiry (s)
        self.stime: int | None = None
        self.expiry: float | None = None

    def record(self) -> Record:
        """The stored form: [uin, device, ctime, stime ms, expiry s, text, frag or nil], and for
        an event an eighth field {"kind", "ref"}."""
        rec: Record = [self.uin, self.device, self.ctime, self.stime, self.expiry, self.text, self.frag]
        if self.kind is not None:
            rec.append({"kind": self.kind, "ref": self.ref})
        return rec

    def content(self) -> str:
        """What the send index's digest covers: the text, and for an event its kind and ref
        (a client time reused for an edit of another message is not a retry)."""
        return content_of(self.kind, self.ref, self.text)


def content_of(kind: str | None, ref: int, text: str) -> str:
    return text if kind is None else f"\x00{kind}:{ref}\x00{text}"


def extras(record: Record) -> dict[str, Any]:
    """The eighth field of a stored record: {} for a plain message never edited nor deleted."""
    return record[7] if len(record) > 7 and record[7] else {}


def is_plain(record: Record) -> bool:
    """A message (not an edit or delete event)."""
    return "kind" not in extras(record)


def push_of(channel: str, msg_id: int, record: Record) -> dict[str, Any]:
    """The pushed (and synced) form of a stored message: plain messages as always; an event
    adds ``kind`` and ``ref``; an edited message ``edited`` (stime ms of its latest edit); a
    deleted one is a tombstone ``deleted: true`` without text."""
    uin, device, ctime, stime, _expiry, text = record[:6]
    push: dict[str, Any] = {"t": "msg", "channel": channel, "id": msg_id, "uin": uin, "device": device,
            "ctime": ctime, "stime": stime, "text": text}
    if len(record) > 6 and record[6] is not None:
        push["frag"] = record[6]
    if len(record) > 7 and record[7]:
        more = record[7]
        if "kind" in more:
            push["kind"], push["ref"] = more["kind"], more["ref"]
        if more.get("deleted"):
            push["deleted"] = True
            del push["text"]
        elif "edited" in more:
            push["edited"] = more["edited"]
    return push


class ChannelState:
    """One channel served here: members, id queue, leased blocks, waiting sends."""

    __slots__ = ("name", "members", "member_array", "ring", "leases", "next_id", "last_id", "visible",
                 "waiting", "alloc_inflight", "lifetime", "fanout", "fanout_version", "prefix")

    def __init__(self, name: str, members: Iterable[int], queue: int, lifetime: float | None = None) -> None:
        self.name = name
        self.prefix = keys.channel_prefix(name)     # its message keys: prefix + id (built per message)
        self.lifetime = lifetime              # seconds; None: the topology's default
        self.set_members(members)
        self.ring = IdRing(queue)             # newest ids of the channel (its queue)
        self.leases: collections.deque[tuple[int, int]] = collections.deque()     # [start, end) blocks not yet used up
        self.next_id = 0                      # next id to assign (within leases[0])
        self.last_id = 0                      # newest stored id
        self.visible = 0                      # newest acked id: reads never show more (with replication
        #                                       a stored message waits for its majority before that)
        self.waiting: collections.deque[Pending] = collections.deque()    # Pending, in arrival order
        self.alloc_inflight = False

    def set_members(self, members: Iterable[int]) -> None:
        self.members = set(members)
        self.member_array = array("I", sorted(self.members))   # for OnlineBitmap.filter_online
        self.fanout: dict[str, list[int]] | None = None        # {broker: [uin]}, per presence version
        self.fanout_version = -1

    def boundary(self) -> int:
        """The first id this channel does not hold (used or leased): what alloc's ``have`` says."""
        return max(self.next_id, self.last_id + 1, *(e for _s, e in self.leases))

    def first_visible(self) -> int:
        """The oldest id a reader may still get: the queue's head (older ids expired or were
        trimmed), never past the newest acked id + 1."""
        return min(self.ring.first, self.visible + 1) if len(self.ring) else self.visible + 1

    def available(self) -> int:
        if not self.leases:
            return 0
        return self.leases[0][1] - self.next_id + sum(
            end - start for start, end in itertools.islice(self.leases, 1, None))

    def take_id(self) -> int | None:
        while self.leases and self.next_id >= self.leases[0][1]:
            self.leases.popleft()
            if self.leases:
                self.next_id = self.leases[0][0]
        if not self.leases:
            return None
        msg_id = self.next_id
        self.next_id += 1
        return msg_id

    def add_lease(self, start: int, end: int) -> bool:
        """Accept a block from the counter if it lies beyond every id we know."""
        if start < self.boundary() or end <= start:
            return False
        if not self.leases:
            self.next_id = start
        self.leases.append((start, end))
        return True
