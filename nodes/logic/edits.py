"""Edit and delete: who may, until when, and what an event does to the stored original.

An edit or a delete is an event with its own id in the channel's order, stored
through the send path (nodes/logic/sends.py: dedup, ids, ack, fan-out), so sync,
gaps and exactly-once work for it as for a message.  Two steps live here:
``check`` when the request is accepted (the original must be a stored, live,
not deleted plain message of the channel: NO_MESSAGE; an edit by its author only
and within ``limits.edit_window`` of the original's stime: FORBIDDEN, TOO_LATE; a
delete by its author or a moderator: FORBIDDEN), and ``stage`` at the turn's id
assignment (nodes/logic/ids.py), right after the event's own row is staged: the
original's row is rewritten in the same batch -- its text replaced by the latest
edit (``edited``: that edit's stime), or on delete its text and the texts of its
edit events removed (tombstone ``deleted``).  Being in the turn's batch,
replication, snapshots and hand-overs carry it like any message row.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nodes.logic.channels import DELETE, EDIT, ChannelState, Pending, Record, extras, is_plain
from nodes.logic.members import role_of
from nodes.protocol import wire
from nodes.storage import store as keys
from nodes.storage.store import Store


def may_moderate(meta: dict[str, Any], uin: int) -> bool:
    """May ``uin`` delete other members' messages in a channel with this ``meta`` (its kind
    and roles: nodes/logic/rooms.py)?  An owner or admin of a group; in rooms and DMs only
    the author deletes."""
    return meta.get("kind") == "group" and role_of(meta, uin) in ("owner", "admin")


class Edits:
    """State: ``staged`` ((channel, id) -> record) -- the rows this turn's assignment staged
    and rewrote, read instead of the store until the batch is written (two edits of one
    message in one turn build on each other); emptied by ``turn_done``."""

    def __init__(self, store: Store, limits: Mapping[str, float],
                 meta_of: Callable[[str], dict[str, Any]] = lambda _name: {}) -> None:
        self.store = store
        self.meta_of = meta_of             # channel -> its kind and roles (Membership.meta)
        self.window = float(limits["edit_window"])
        self.staged: dict[tuple[str, int], Record] = {}

    def _row(self, ch: ChannelState, msg_id: int) -> Record | None:
        rec = self.staged.get((ch.name, msg_id))
        if rec is not None:
            return rec
        raw = self.store.get(keys.message_key(ch.name, msg_id))
        return None if raw is None else list(keys.decode(raw))

    def check(self, ch: ChannelState, kind: str, uin: int, ref: int, now: float) -> None:
        """May ``uin`` edit or delete message ``ref`` of ``ch`` now?  Raises the refusal."""
        rec = self._row(ch, ref) if 0 < ref <= ch.visible else None
        if rec is None or not is_plain(rec) or extras(rec).get("deleted") or rec[4] < now:
            raise wire.ProtocolError(wire.Err.NO_MESSAGE, f"no message {ref} in {ch.name!r} to {kind} "
                                     "(never stored, expired, deleted, or an edit/delete event)")
        if kind == EDIT:
            if rec[0] != uin:
                raise wire.ProtocolError(wire.Err.FORBIDDEN, "only its author edits a message")
            if now * 1000 - rec[3] > self.window * 1000:
                raise wire.ProtocolError(wire.Err.TOO_LATE, f"messages may be edited for {self.window:g} s "
                                         "after they are sent", limit=int(self.window))
        elif rec[0] != uin and not may_moderate(self.meta_of(ch.name), uin):
            raise wire.ProtocolError(wire.Err.FORBIDDEN, "only its author (or a group's owner or admin) "
                                     "deletes a message")

    def stage(self, ch: ChannelState, ev: Pending) -> None:
        """The event ``ev`` (its row just staged) applied to its original, in the same batch."""
        record = ev.record()
        self.staged[(ch.name, ev.id)] = record      # type: ignore[index]  # assigned: has an id
        orig = self._row(ch, ev.ref)
        if orig is None:                            # gone since it was checked (expired, trimmed)
            return
        more = dict(extras(orig))
        if more.get("deleted"):                     # deleted earlier in this turn: the edit keeps no text
            record[5] = ""
            self._put(ch, ev.id, record)            # type: ignore[arg-type]
            return
        if ev.kind == EDIT:
            orig[5] = ev.text
            more["edited"] = ev.stime
            more["edits"] = [*more.get("edits", ()), ev.id]
        elif ev.kind == DELETE:
            for edit_id in more.get("edits", ()):
                edit = self._row(ch, edit_id)
                if edit is not None:
                    edit[5] = ""
                    self._put(ch, edit_id, edit)
            orig[5], orig[6] = "", None
            more = {"deleted": True}
        self._put(ch, ev.ref, [*orig[:7], more])

    def _put(self, ch: ChannelState, msg_id: int, record: Record) -> None:
        self.staged[(ch.name, msg_id)] = record
        self.store.put(keys.message_key(ch.name, msg_id), keys.encode(record))

    def turn_done(self) -> None:
        """The turn's rows are staged in the batch that is written next: read the store again."""
        self.staged.clear()
