"""Edits and deletes applied to the messages a client holds.

An edit or a delete is a stored event with its own id in the channel's order
(``msg`` with ``kind: "edit"|"delete"`` and ``ref``: the message it changes), so the
window logic delivers it exactly once and in order like any message.  What an
application wants from it is the changed message: the latest text with ``edited``,
or a tombstone ``deleted: true`` without text -- the same shape ``history``
returns.  This keeps the newest messages of each channel (those delivered, sent
by this client, or read through ``history``) so that an event can be applied to
them.  No I/O.
"""
from __future__ import annotations

EVENT_KINDS = ("edit", "delete")
DEFAULT_KEEP = 500            # messages held per channel (the newest ids win)


class Held:
    """Per channel, the newest ``keep`` messages by id, with edits and deletes applied."""

    def __init__(self, keep: int = DEFAULT_KEEP):
        self.keep = keep
        self._msgs: dict[str, dict[int, dict]] = {}

    def hold(self, msg: dict) -> None:
        """Remember a message (a copy; the newest ``keep`` per channel stay)."""
        msgs = self._msgs.setdefault(msg["channel"], {})
        msgs[msg["id"]] = dict(msg)
        if len(msgs) > self.keep:
            del msgs[min(msgs)]

    def get(self, channel: str, msg_id: int) -> dict | None:
        found = self._msgs.get(channel, {}).get(msg_id)
        return None if found is None else dict(found)

    def apply(self, event: dict) -> dict | None:
        """Apply an edit/delete event to the message it refers to; a copy of the changed
        message, or None when it is not held (too old, or never seen)."""
        msg = self._msgs.get(event["channel"], {}).get(event["ref"])
        if msg is None:
            return None
        apply_to(msg, event)
        return dict(msg)


def apply_to(msg: dict, event: dict) -> None:
    """Change ``msg`` as ``event`` says: an edit replaces the text (and sets ``edited`` to the
    event's stime), a delete makes it a tombstone; nothing brings a deleted message back."""
    if msg.get("deleted"):
        return
    if event["kind"] == "edit":
        msg["text"] = event["text"]
        msg["edited"] = event.get("stime", 0)
    else:
        msg["text"] = ""
        msg["deleted"] = True
        msg.pop("edited", None)


def event_of(msg: dict, changed: dict | None) -> dict:
    """The application's event for a stored edit/delete ``msg``: kind, channel, its own id,
    the ref, who did it and when, the new text (edit), and ``msg``: the changed message
    when the client held it (else None)."""
    event = {"t": msg["kind"], "channel": msg["channel"], "id": msg["id"], "ref": msg["ref"],
             "uin": msg.get("uin"), "device": msg.get("device"), "stime": msg.get("stime", 0), "msg": changed}
    if msg["kind"] == "edit":
        event["text"] = msg.get("text", "")
    return event
