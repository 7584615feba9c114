"""The names of the channels users create: one rule for the broker (which logic node owns
the channel a ``create`` makes) and the logic node (which makes it).

A DM is the one channel of a pair, the same name whoever creates it; a group's name
is its creator's uin and the create's client time, so a retry (same ctime) finds the
channel the first attempt made.  Both fit wire.check_channel_name's characters.
"""
from __future__ import annotations

from typing import Any

from nodes.protocol import wire


def dm_name(a: int, b: int) -> str:
    """The DM channel of uins ``a`` and ``b`` (either order): ``dm:{lo}:{hi}``."""
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


def group_name(uin: int, ctime: int) -> str:
    """The group a uin creates with client time ``ctime``: ``grp:{uin}:{ctime}``."""
    return f"grp:{uin}:{ctime}"


def create_name(msg: dict[str, Any]) -> str:
    """The channel a ``create`` request ({uin, ctime, kind, with?}) makes (BAD_FIELD if it
    names none: an unknown kind, a DM without ``with`` or with oneself)."""
    kind = msg.get("kind")
    if kind == "dm":
        other = msg.get("with")
        if other is None:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "a dm create needs 'with': the other uin")
        if other == msg["uin"]:
            raise wire.ProtocolError(wire.Err.BAD_FIELD, "a dm needs another user than oneself")
        return dm_name(msg["uin"], other)
    if kind == "group":
        return group_name(msg["uin"], msg["ctime"])
    raise wire.ProtocolError(wire.Err.BAD_FIELD, "field 'kind' must be \"dm\" or \"group\"")
