"""The broker's conversation requests (docs/protocol.md "Conversations"): each goes to the
logic node serving its channel with the session's uin (and device) added; ``channels`` asks
every logic node and merges their answers into pages.

Kept apart from nodes/broker/core.py, which owns sessions, the send path and its tokens,
heartbeats and delivery: this part only routes and merges, through the core's ``_forward``
(admission, replies, WRONG_OWNER), ``_charged`` (edits and deletes cost a send token) and
``owners`` (placement and liveness).  State of its own: none (typing buckets are the core's,
pruned with the send buckets).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodes.broker.owners import FAST_TIMEOUT
from nodes.protocol import names, schema, wire

if TYPE_CHECKING:
    from nodes.broker.core import BrokerCore


# Conversation requests forwarded as they are to the owner of their channel
# (/work/tools/conv-internal.md): the client fields copied, and whether the device is added.
FORWARDED = {"read": (("channel", "id"), True), "receipts": (("channel", "id"), False),
             "watch": (("channel",), True), "unwatch": (("channel",), True),
             "invite": (("channel", "ctime", "uins"), True), "remove": (("channel", "ctime", "uins"), True),
             "leave": (("channel", "ctime"), True)}


class Conversations:
    """The conversation handlers of a BrokerCore (``handlers()``: request type -> handler)."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core

    def handlers(self) -> dict[str, Callable[..., Any]]:
        table: dict[str, Callable[..., Any]] = {
            "channels": self.channels, "history": self.history, "edit": self.edit, "delete": self.delete,
            "typing": self.typing, "create": self.create, "role": self.role, "mute": self.mute}
        for t, (fields, with_device) in FORWARDED.items():
            table[t] = self._forwarder(t, fields, with_device)
        return table

    def _to_owner(self, session, msg, now, t, fields, with_device=True, **extra):
        """Forward the client's ``fields`` to the owner of the channel (the request's, or
        ``extra``'s) as internal request ``t`` with the session's uin (and device) added."""
        owner = self.core.owners.serving(extra.get("channel", msg.get("channel")), now)
        request = {"t": t, "uin": session.uin}
        if with_device:
            request["device"] = session.device
        request.update((k, msg[k]) for k in fields if k in msg)
        request.update(extra)
        return self.core._forward(session, msg, request, owner)

    def _forwarder(self, t, fields, with_device):
        def handler(session, msg, now):
            return self._to_owner(session, msg, now, t, fields, with_device)
        handler.__name__ = handler.__qualname__ = t
        return handler

    def history(self, session, msg, now):
        return self._to_owner(session, msg, now, "history", ("channel", "before"), with_device=False,
                              limit=msg.get("limit", schema.PAGE_DEFAULT))

    def edit(self, session, msg, now):
        """Stored as an event with its own id: a send token, as a send (``_charged``)."""
        return self._stored_event(session, msg, now, ("channel", "id", "ctime", "text"))

    def delete(self, session, msg, now):
        return self._stored_event(session, msg, now, ("channel", "id", "ctime"))

    def _stored_event(self, session, msg, now, fields):
        owner = self.core.owners.serving(msg["channel"], now)
        request = {"t": msg["t"], "uin": session.uin, "device": session.device}
        request.update((k, msg[k]) for k in fields)
        return self.core._charged(session, msg, request, owner, now)

    def typing(self, session, msg, now):
        """Ephemeral, never stored: over the user's typing rate it is refused here, unforwarded
        (an owner that is down costs no token)."""
        self.core.owners.serving(msg["channel"], now)
        wait = self.core.typing_buckets.take(session.uin, now)
        if wait:
            raise wire.ProtocolError(wire.Err.RATE_LIMITED, f"over {self.core.typing_buckets.rate:g} typing "
                                     f"notices/s; retry in {wait:.3f} s", retry_after=math.ceil(wait * 1000) / 1000)
        return self._to_owner(session, msg, now, "typing", ("channel",))

    def create(self, session, msg, now):
        """A dm goes to the owner of the pair's one channel, a group to the owner of
        ``grp:{uin}:{ctime}`` (nodes/protocol/names.py: a retry finds the same channel)."""
        kind = msg["kind"]
        if kind == "dm":
            if "with" not in msg:
                raise wire.ProtocolError(wire.Err.BAD_FIELD, "a dm needs 'with': the other user")
            channel = names.dm(session.uin, msg["with"])
        elif kind == "group":
            channel = names.group(session.uin, msg["ctime"])
        else:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"kind must be one of {', '.join(schema.CREATE_KINDS)}")
        extra = {"title": msg["name"]} if "name" in msg else {}     # the client's name is the group's title
        return self._to_owner(session, msg, now, "create", ("kind", "ctime", "with", "members"),
                              channel=channel, **extra)

    def role(self, session, msg, now):
        """``uin`` is the member whose role changes: internally ``target`` (``uin`` is the caller)."""
        if msg["role"] not in schema.ROLES:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"role must be one of {', '.join(schema.ROLES)}")
        return self._to_owner(session, msg, now, "role", ("channel", "ctime", "role"), target=msg["uin"])

    def channels(self, session, msg, now):
        """Ask every logic node for the user's channels it serves (``my_channels``), merge
        them most recently active first and answer one page.  A node that is down or does
        not answer within FAST_TIMEOUT leaves its channels out: the reply says ``partial``."""
        limit = msg.get("limit", schema.PAGE_DEFAULT)
        after = channels_cursor(msg["after"]) if "after" in msg else None
        self.core._admit(session)
        request = {"t": "my_channels", "uin": session.uin, "limit": limit + 1}    # +1: is there more?
        if after is not None:
            request["after"] = [-after[0], after[1]]
        asked = [logic for logic in self.core.topo.ids("logic") if self.core.owners.up(logic, now)]
        partial = [len(asked) < len(self.core.topo.ids("logic"))]
        found = {}
        waiting = [len(asked)]
        rid, ident = msg["rid"], session.ident

        def finish():
            self.core._release(session)
            items = sorted((item for item in found.values() if after is None or channel_key(item) > after),
                           key=channel_key)
            reply = wire.reply("channels", rid, items=items[:limit])
            if len(items) > limit:
                reply["next"] = f"{items[limit - 1].get('active', 0)}:{items[limit - 1]['channel']}"
            if partial[0]:
                reply["partial"] = True
            if session.ended is None:
                self.core.out.reply(ident, reply)

        def done(reply):
            if reply.get("t") == "my_channels" and type(reply.get("items")) is list:
                for item in reply["items"]:
                    have = found.get(item["channel"])      # a shard changing leaders: two answers
                    if have is None or item.get("last", 0) >= have.get("last", 0):
                        found[item["channel"]] = item
            else:
                partial[0] = True
            waiting[0] -= 1
            if waiting[0] == 0:
                finish()

        if not asked:
            finish()
        for logic in asked:
            self.core.out.to_logic(logic, request, done, FAST_TIMEOUT)
        return None

    def mute(self, session, msg, now):
        """No offline pushes of a channel to this user until ``until`` (nodes/logic/pushes.py)."""
        return self._to_owner(session, msg, now, "mute", ("channel", "until"), with_device=False)


def channel_key(item) -> tuple:
    """The order of a ``channels`` page: most recently active first, then by name."""
    return (-item.get("active", 0), item["channel"])


def channels_cursor(cursor: str) -> tuple:
    """The ``next`` cursor of a ``channels`` page ("active:channel") as a ``channel_key``."""
    active, _sep, channel = cursor.partition(":")
    try:
        if not active.isdigit():
            raise ValueError(active)
        wire.check_channel_name(channel)
    except (ValueError, wire.ProtocolError):
        raise wire.ProtocolError(wire.Err.BAD_FIELD, "'after' is not a cursor of a channels reply") from None
    return (-int(active), channel)
