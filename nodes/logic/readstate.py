"""Read state: each member's read cursor per channel, receipts, unread counts, and "my channels".

A cursor is "read up to this id" (XEP-0333 / Matrix ``m.read``): it only moves
forward and never past the channel's newest visible id.  It lives with the
channel (``u`` rows: nodes/storage/store.py), so replication, snapshots,
hand-overs and reshards carry it (nodes/storage/shards.py).  A ``read`` answers
the cursor now; the user's other devices get a ``read`` push and, in ``dm`` and
``group`` channels up to limits.receipts_max_members, the other members a
``receipt`` push -- through the same per-broker delivery items as messages
(nodes/logic/fanout.py: the broker skips the reading device).  A stored message
moves its sender's cursor (``staged``: with the message's rows, in the same batch).

Unread counts are answered from memory: per channel a ring of the newest
RECENT stored ids with their sender and whether they count (a plain message:
not an edit/delete event, not deleted); the user's own messages never count,
and over the ring the count says ``unread_more``.  ``my_channels`` answers a
user from FanOut's per-uin index (nodes/logic/fanout.py): every channel this
node serves now with the uin a member, each with one store get for its preview.
"""
from __future__ import annotations

import collections
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

from nodes.logic.channels import DELETE, ChannelState, Pending, Record, push_of
from nodes.logic.fanout import FanOut
from nodes.logic.members import Membership
from nodes.logic.presence import PresenceReplica
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.runtime.ports import Msg
from nodes.storage import store as keys
from nodes.storage.store import Store

RECENT = 100                 # newest ids per channel that unread counts look at
PREVIEW_CHARS = 100          # characters of the last message in a my_channels item
MY_CHANNELS_MAX = 10000      # items in one my_channels reply at most (``truncated`` beyond)

Recent = collections.deque[list[Any]]     # [[id, sender uin, counts], ...] oldest first


def counts(channel: str, msg_id: int, record: Record) -> bool:
    """Does this stored record count as an unread message?  A plain message does (its push has
    no ``kind``); edit/delete events and deleted messages do not."""
    push = push_of(channel, msg_id, record)
    return "kind" not in push and not push.get("deleted")


class ReadState:
    """State: ``cursors`` (channel -> {uin: id read up to}) and ``recent`` (channel -> the
    newest RECENT ids as [id, sender uin, counts]), both of the channels served here."""

    def __init__(self, serving: Serving, store: Store, members: Membership, fanout: FanOut,
                 replica: PresenceReplica, limits: Mapping[str, Any]) -> None:
        self.serving, self.store, self.members, self.fanout = serving, store, members, fanout
        self.replica = replica
        self.receipts_max = int(limits["receipts_max_members"])
        self.cursors: dict[str, dict[int, int]] = {}
        self.recent: dict[str, Recent] = {}

    # --- lifecycle -----------------------------------------------------------
    def restore(self, ch: ChannelState) -> None:
        """A loaded channel: its stored cursors and its newest ids' senders."""
        prefix = keys.cursor_prefix(ch.name)
        self.cursors[ch.name] = {keys.unpack_u32(key[len(prefix):]): keys.decode(raw)
                                 for key, raw in self.store.scan(prefix)}
        ring: Recent = collections.deque(maxlen=RECENT)
        newest = self.store.last_keys(ch.prefix, RECENT)
        if newest:
            for key, raw in self.store.scan(ch.prefix, newest[0]):
                msg_id, rec = keys.unpack_u64(key[-8:]), keys.decode(raw)
                ring.append([msg_id, rec[0], counts(ch.name, msg_id, rec)])
        self.recent[ch.name] = ring

    def forget(self, name: str) -> None:
        self.cursors.pop(name, None)
        self.recent.pop(name, None)

    def staged(self, recs: Iterable[Pending]) -> None:
        """These messages' rows are staged in the turn's batch: each moves its sender's cursor,
        staged in the same batch (so the same replication record carries it)."""
        for rec in recs:
            if rec.id is not None:
                self._move(rec.channel, rec.uin, rec.id)

    def stored(self, committed: Iterable[Pending]) -> None:
        """These messages are stored: remember their senders (for unread counts); a stored
        delete event uncounts its original, as a restore (which reads the tombstone) would."""
        for rec in committed:
            if rec.id is None or rec.channel not in self.serving.channels:
                continue
            ring = self.recent.get(rec.channel)
            if ring is None:                 # a channel made here since the load
                ring = self.recent[rec.channel] = collections.deque(maxlen=RECENT)
            ring.append([rec.id, rec.uin, counts(rec.channel, rec.id, rec.record())])
            if rec.kind == DELETE:
                self.uncount(rec.channel, rec.ref)

    def uncount(self, channel: str, msg_id: int) -> None:
        """A message was deleted (nodes/logic/edits.py): it no longer counts as unread."""
        for entry in self.recent.get(channel, ()):
            if entry[0] == msg_id:
                entry[2] = False

    def _move(self, channel: str, uin: int, msg_id: int) -> int:
        """The uin's cursor to ``msg_id`` unless it is past it already (staged); the cursor now."""
        cursors = self.cursors.setdefault(channel, {})
        cursor = cursors.get(uin, 0)
        if msg_id > cursor:
            cursors[uin] = cursor = msg_id
            self.store.put(keys.cursor_key(channel, uin), keys.encode(msg_id))
        return cursor

    def cursor(self, channel: str, uin: int) -> int:
        return self.cursors.get(channel, {}).get(uin, 0)

    # --- requests --------------------------------------------------------------
    def read(self, msg: Msg, _now: float | None = None) -> Msg:
        """Move the caller's cursor (never back, never past the newest); push it to the user's
        other devices and, in small dm/group channels, a receipt to the other members."""
        uin, device = msg["uin"], msg["device"]
        ch = self.serving.member_channel(msg["channel"], uin)
        before = self.cursor(ch.name, uin)
        now_at = self._move(ch.name, uin, min(msg["id"], ch.visible))
        if now_at > before:
            push = {"channel": ch.name, "uin": uin, "id": now_at}
            self._deliver(dict(push, t="read"), [uin], uin, device)
            if self.members.kind(ch.name) != "room" and len(ch.members) <= self.receipts_max:
                self._deliver(dict(push, t="receipt"), [m for m in ch.members if m != uin], uin, device)
            self.fanout.publish_turn()
        return wire.reply("read", msg["rid"], channel=ch.name, id=now_at)

    def _deliver(self, push: Msg, uins: list[int], uin: int, device: int) -> None:
        """Queue a push for the online sessions of ``uins`` (but the sender's device), one item
        per broker, as fan-out does for messages (published with the turn's ``publish_turn``)."""
        if not uins:
            return
        plan = self.replica.brokers_for(array("I", sorted(uins)))
        if not plan:
            return
        packed = wire.pack(push)
        for broker, to in plan.items():
            self.fanout.outbox.setdefault(broker, []).append([packed, to, uin, device])

    def receipts(self, msg: Msg, _now: float | None = None) -> Msg:
        """Who (other than the caller) has read up to ``id``."""
        uin = msg["uin"]
        ch = self.serving.member_channel(msg["channel"], uin)
        cursors = self.cursors.get(ch.name, {})
        read_by = sorted(m for m in ch.members if m != uin and cursors.get(m, 0) >= msg["id"])
        return wire.reply("receipts", msg["rid"], channel=ch.name, id=msg["id"], read_by=read_by)

    def unread(self, ch: ChannelState, uin: int) -> tuple[int, bool]:
        """(messages after the uin's cursor that are not its own, over the newest RECENT ids;
        whether older unread ids may exist beyond them)."""
        cursor = self.cursor(ch.name, uin)
        ring = self.recent.get(ch.name)
        if not ring or ring[-1][0] <= cursor:
            return 0, False
        first = ch.first_visible()                                   # older ids expired
        n = sum(1 for msg_id, sender, counted in ring
                if counted and sender != uin and cursor < msg_id <= ch.visible and msg_id >= first)
        more = len(ring) == RECENT and ring[0][0] > max(cursor + 1, first)
        return n, more

    def item(self, ch: ChannelState, uin: int) -> Msg:
        """One ``my_channels`` item: the channel as the uin sees it."""
        meta = self.members.meta.get(ch.name, {})
        role = "member"
        for who, r in meta.get("roles", ()):
            if who == uin:
                role = r
        unread, more = self.unread(ch, uin)
        item: Msg = {"channel": ch.name, "kind": meta.get("kind", "room"), "role": role,
                     "members": len(ch.members), "last": ch.visible, "read": self.cursor(ch.name, uin),
                     "unread": unread, "active": 0}
        if "title" in meta:
            item["title"] = meta["title"]
        if more:
            item["unread_more"] = True
        for msg_id, _sender, _counted in reversed(self.recent.get(ch.name, ())):
            if msg_id > ch.visible:
                continue                     # stored, not yet acked (replication)
            raw = self.store.get(keys.message_key(ch.name, msg_id))
            if raw is None:
                break                        # expired: nothing older is left either
            push = push_of(ch.name, msg_id, keys.decode(raw))
            if "kind" in push:
                continue                     # an edit/delete event: the preview is the message
            item["active"] = push["stime"]
            preview = {"id": msg_id, "uin": push["uin"], "stime": push["stime"]}
            if push.get("deleted"):
                preview["deleted"] = True
            else:
                preview["text"] = push["text"][:PREVIEW_CHARS]
            item["preview"] = preview
            break
        return item

    def my_channels(self, msg: Msg, _now: float | None = None) -> Msg:
        """Every channel this node serves now (a replica: leads now) with the uin a member,
        most recently active first; at most MY_CHANNELS_MAX (``truncated`` says there were more)."""
        uin = msg["uin"]
        chans = [ch for ch in self.fanout.member_of.get(uin, ())
                 if ch.name in self.serving.channels and self.serving.unserved(ch.name) is None]
        items = [self.item(ch, uin) for ch in chans]
        items.sort(key=lambda i: (-i["active"], i["channel"]))
        reply = wire.reply("my_channels", msg["rid"], uin=uin, items=items[:MY_CHANNELS_MAX])
        if len(items) > MY_CHANNELS_MAX:
            reply["truncated"] = True
        return reply
