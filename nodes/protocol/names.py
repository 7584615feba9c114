"""The names of the channels users create, computed from who creates them (pure functions).

A DM is one channel per pair of users: both users' ``create {kind: "dm"}`` must
land on the same channel (a chat user expects one conversation with a person,
not one per side), so its name depends only on the pair.  A group's name
depends on its creator and the client time of the ``create``: a retry of the
same create (same ctime) reaches the same channel on the same owner, so
exactly-once needs no lookup table.  The broker routes a ``create`` by these
names and the logic node recomputes them (it never trusts a name from the
wire); both import them from here so they cannot disagree.
"""
from __future__ import annotations

from typing import Any

from nodes.protocol.wire import Err, ProtocolError

DM_PREFIX = "dm:"
GROUP_PREFIX = "grp:"


def dm(a: int, b: int) -> str:
    """The one DM channel of users ``a`` and ``b`` (either order): ``dm:{lo}:{hi}``."""
    if a == b:
        raise ProtocolError(Err.BAD_FIELD, "a direct chat needs another user ('with' is yourself)")
    lo, hi = (a, b) if a < b else (b, a)
    return f"{DM_PREFIX}{lo}:{hi}"


def group(uin: int, ctime: int) -> str:
    """The group ``uin`` creates with client time ``ctime``: ``grp:{uin}:{ctime}`` (<= 35 characters)."""
    return f"{GROUP_PREFIX}{uin}:{ctime}"


def kind_of(channel: str) -> str | None:
    """"dm" or "group" by the name's prefix, None otherwise (a hint only: the owner's store
    says what a channel is; an operator could name a room "dm:..." too)."""
    if channel.startswith(DM_PREFIX):
        return "dm"
    if channel.startswith(GROUP_PREFIX):
        return "group"
    return None


def create_name(msg: dict[str, Any]) -> str:
    """The channel a ``create`` request ({uin, ctime, kind, with?}) makes (BAD_FIELD if it
    names none: an unknown kind, a DM without ``with`` or with oneself)."""
    kind = msg.get("kind")
    if kind == "dm":
        other = msg.get("with")
        if other is None:
            raise ProtocolError(Err.BAD_FIELD, "a dm create needs 'with': the other uin")
        return dm(msg["uin"], other)
    if kind == "group":
        return group(msg["uin"], msg["ctime"])
    raise ProtocolError(Err.BAD_FIELD, "field 'kind' must be \"dm\" or \"group\"")
