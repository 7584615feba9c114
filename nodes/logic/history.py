"""History: a channel's stored messages paged backwards, as a user scrolls up.

``history {uin, channel, before?, limit?}`` answers the newest ``limit`` plain
messages with ids below ``before``, oldest first, with edits applied (the
stored original carries the latest text and ``edited``: nodes/logic/edits.py)
and deleted ones as tombstones; the edit and delete events themselves are not
listed (sync carries them).  The page is read from RocksDB by key range,
backwards from ``before`` -- not from the channel's in-memory id queue -- so its
cost does not grow with how deep in a long channel (limits.channel_queue ids,
a per-channel lifetime of days) the page lies.  Kept apart from sync
(nodes/logic/reads.py): it reads backwards and filters by kind; it changes nothing.
"""
from __future__ import annotations

from nodes.logic.channels import is_plain, push_of
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store

HISTORY_PAGE = 50                     # messages per page unless asked for fewer or more
HISTORY_MAX = 100                     # at most


class History:
    """No state of its own: the channels served (``serving``) and the store."""

    def __init__(self, serving: Serving, store: Store) -> None:
        self.serving, self.store = serving, store

    def history(self, msg: Msg, now: float) -> Msg:
        """``msgs``: the page, oldest first; ``more``: older stored messages exist; ``first``:
        the oldest id still stored (the channel's queue head)."""
        ch = self.serving.member_channel(msg["channel"], msg["uin"])
        limit = msg.get("limit") or HISTORY_PAGE
        if not 1 <= limit <= HISTORY_MAX:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"limit is 1..{HISTORY_MAX}", limit=HISTORY_MAX)
        before = min(msg.get("before") or ch.visible + 1, ch.visible + 1)   # nothing not yet acked
        newest_first: list[Msg] = []
        more = False
        for key, raw in self.store.scan_back(ch.prefix, keys.message_key(ch.name, before)):
            rec = keys.decode(raw)
            if rec[4] < now or not is_plain(rec):       # expired (not yet swept), or an event
                continue
            if len(newest_first) == limit:
                more = True
                break
            newest_first.append(push_of(ch.name, keys.unpack_u64(key[-8:]), rec))
        newest_first.reverse()
        first = ch.first_visible()
        return wire.reply("history", msg["rid"], channel=ch.name, msgs=newest_first, more=more, first=first)
