"""Channels users create (``dm``, ``group``) and their roles: the rules of every member change.

Kinds: ``room`` (operator channels: topology and admin token; users change nothing),
``dm`` (the one channel of a pair, nodes/protocol/names.py; nobody invites,
removes or leaves) and ``group`` (its creator is ``owner``; ``owner`` and ``admin``
invite and remove -- an admin neither the owner nor another admin; only the owner
gives roles, and giving ``owner`` hands ownership over, the old owner staying admin;
anyone leaves, an owner's leaving handing ownership to the first-appointed admin,
else to the member with the lowest uin).  A member without the role gets
FORBIDDEN, a non-member NOT_MEMBER; nothing changes then.

A change goes through the membership path (nodes/logic/members.py): the ``c`` row,
the fan-out index and the presence plans change in the same turn, so a removed
member gets no push from then on and its sync is refused NOT_MEMBER.  Exactly once:
a create is found again by its name (a group's name holds its ctime) and its
``made`` (uin, device, ctime) says it was this request; every other change's answer
is kept in the row's ``done`` (the last DONE_MAX, by (uin, device, ctime)), so a
retry gets the original answer even after later changes (a retried ``leave`` too,
though the user is no member any more).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nodes.logic.channels import ChannelState
from nodes.logic.members import Membership, role_of
from nodes.logic.serving import Serving
from nodes.protocol import wire
from nodes.protocol.names import create_name
from nodes.runtime.logs import events
from nodes.runtime.ports import Msg

DONE_MAX = 16                # answers of member changes kept per channel for retries
ROLES = ("owner", "admin", "member")
MAX_TITLE_BYTES = 64

Meta = dict[str, Any]
Rule = Callable[[ChannelState, Meta, Msg], dict[str, Any]]


def _set_role(meta: Meta, uin: int, role: str) -> None:
    """Give ``uin`` the role (``member``: no entry); a new entry goes last (appointed last)."""
    roles = [r for r in meta.get("roles", ()) if r[0] != uin]
    if role != "member":
        roles.append([uin, role])
    meta["roles"] = roles


def _forbidden(why: str) -> wire.ProtocolError:
    return wire.ProtocolError(wire.Err.FORBIDDEN, why)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise wire.ProtocolError(wire.Err.BAD_FIELD, f"field 'role' must be one of {', '.join(ROLES)}")


def give_role(ch: ChannelState, meta: Meta, target: int, role: str) -> None:
    """The rules of a role change, whoever asks (the owner: ``Rooms.role``; the operator:
    nodes/logic/admin_ops.py): a member only; the owner keeps the role until another member
    is made owner, and making one hands ownership over (the old owner becomes admin)."""
    _check_role(role)
    if target not in ch.members:
        raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {target} is not a member of {ch.name!r}")
    if role_of(meta, target) == "owner":
        if role != "owner":
            raise _forbidden(f"uin {target} is the owner and keeps the role until another member is made owner")
        return
    if role == "owner":
        for who, was in list(meta.get("roles", ())):
            if was == "owner":
                _set_role(meta, who, "admin")
    _set_role(meta, target, role)


class Rooms:
    """No state of its own: the kinds, roles and answers are the channels' ``meta``
    (nodes/logic/members.py), the members on each ChannelState."""

    def __init__(self, serving: Serving, members: Membership, limits: Mapping[str, Any]) -> None:
        self.serving, self.members = serving, members
        self.group_max = int(limits["group_max_members"])
        self.max_members = int(limits["max_members"])

    # --- create ----------------------------------------------------------------
    def create(self, msg: Msg, _now: float | None = None) -> Msg:
        """The DM of a pair, or a new group; a second create (or a retry) answers the channel."""
        uin, made = msg["uin"], [msg["uin"], msg["device"], msg["ctime"]]
        name = create_name(msg)
        if msg.get("channel") not in (None, name):
            raise wire.ProtocolError(wire.Err.BAD_FIELD, f"this create makes channel {name!r}, not "
                                     f"{msg['channel']!r}")
        self.serving.check(name)
        ch = self.serving.channels.get(name)
        if ch is not None:
            again = self.members.meta.get(name, {}).get("made") == made
            if not again and uin not in ch.members:
                raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {uin} is not a member of {name!r}")
            return self._created(msg, ch, again)
        meta: Meta = {"kind": msg["kind"], "made": made}
        if msg["kind"] == "dm":
            members = {uin, msg["with"]}
        else:
            members = {uin, *msg.get("members", ())}
            limit = min(self.group_max, self.max_members)
            if len(members) > limit:
                raise wire.ProtocolError(wire.Err.TOO_MANY, f"a group has at most {limit} members", limit=limit)
            title = msg.get("title")
            if title is not None:
                if len(title.encode()) > MAX_TITLE_BYTES:
                    raise wire.ProtocolError(wire.Err.TOO_LONG, f"a title has at most {MAX_TITLE_BYTES} bytes",
                                             limit=MAX_TITLE_BYTES)
                meta["title"] = title
            meta["roles"] = [[uin, "owner"]]
        ch = self.members.create(name, members, None, meta)
        events.admin("user_create", name, members=len(members))
        return self._created(msg, ch, True)

    def _created(self, msg: Msg, ch: ChannelState, created: bool) -> Msg:
        meta = self.members.meta.get(ch.name, {})
        reply = wire.reply("create", msg["rid"], channel=ch.name, kind=meta.get("kind", "room"),
                           created=created, members=len(ch.members), role=role_of(meta, msg["uin"]))
        if "title" in meta:
            reply["title"] = meta["title"]
        return reply

    # --- changes of a group --------------------------------------------------------
    def _change(self, msg: Msg, rule: Rule) -> Msg:
        """A member change of a group by the caller: the original answer to a retry, else the
        rule's, stored with the channel (with its answer, for retries)."""
        uin, key = msg["uin"], [msg["uin"], msg["device"], msg["ctime"]]
        ch = self.serving.owned(msg["channel"])
        meta = self.members.meta.setdefault(ch.name, {})
        for done in meta.get("done", ()):
            if done[:3] == key:
                if done[3] != msg["t"]:
                    raise wire.ProtocolError(wire.Err.STALE, f"client time {key[2]} was used for a "
                                             f"{done[3]!r} of this channel: not a retry, nothing changed")
                return wire.reply(msg["t"], msg["rid"], **done[4])
        if uin not in ch.members:
            raise wire.ProtocolError(wire.Err.NOT_MEMBER, f"uin {uin} is not a member of {ch.name!r}")
        kind = meta.get("kind", "room")
        if kind != "group":
            raise _forbidden(f"{kind} channels have no {msg['t']}: "
                             + ("the operator manages rooms" if kind == "room" else "a dm is for its two users"))
        fields = {"channel": ch.name, **rule(ch, meta, msg)}
        done_list = meta.setdefault("done", [])
        done_list.append([*key, msg["t"], fields])
        del done_list[:-DONE_MAX]
        self.members.save(ch)
        events.admin(f"user_{msg['t']}", ch.name, members=len(ch.members))
        return wire.reply(msg["t"], msg["rid"], **fields)

    def _need(self, meta: Meta, uin: int, *roles: str) -> str:
        role = role_of(meta, uin)
        if role not in roles:
            raise _forbidden(f"this needs the role {' or '.join(roles)}; uin {uin} is {role}")
        return role

    def invite(self, msg: Msg, _now: float | None = None) -> Msg:
        return self._change(msg, self._invite)

    def _invite(self, ch: ChannelState, meta: Meta, msg: Msg) -> dict[str, Any]:
        self._need(meta, msg["uin"], "owner", "admin")
        added = set(msg["uins"]) - ch.members
        limit = min(self.group_max, self.max_members)
        if len(ch.members) + len(added) > limit:
            raise wire.ProtocolError(wire.Err.TOO_MANY, f"a group has at most {limit} members", limit=limit)
        self.members._set_members(ch, ch.members | added)
        return {"uins": sorted(added), "members": len(ch.members)}

    def remove(self, msg: Msg, _now: float | None = None) -> Msg:
        return self._change(msg, self._remove)

    def _remove(self, ch: ChannelState, meta: Meta, msg: Msg) -> dict[str, Any]:
        uin = msg["uin"]
        mine = self._need(meta, uin, "owner", "admin")
        targets = set(msg["uins"]) & ch.members
        for who in targets:
            theirs = role_of(meta, who)
            if who == uin:
                raise _forbidden("remove cannot remove oneself: leave does")
            if theirs == "owner" or (theirs == "admin" and mine != "owner"):
                raise _forbidden(f"an {mine} cannot remove uin {who} ({theirs})")
        for who in targets:
            _set_role(meta, who, "member")
        self.members._set_members(ch, ch.members - targets)
        return {"uins": sorted(targets), "members": len(ch.members)}

    def role(self, msg: Msg, _now: float | None = None) -> Msg:
        return self._change(msg, self._role)

    def _role(self, ch: ChannelState, meta: Meta, msg: Msg) -> dict[str, Any]:
        target, role = msg["target"], msg["role"]
        _check_role(role)
        self._need(meta, msg["uin"], "owner")
        give_role(ch, meta, target, role)
        return {"uin": target, "role": role}

    def leave(self, msg: Msg, _now: float | None = None) -> Msg:
        return self._change(msg, self._leave)

    def _leave(self, ch: ChannelState, meta: Meta, msg: Msg) -> dict[str, Any]:
        uin = msg["uin"]
        was_owner = role_of(meta, uin) == "owner"
        _set_role(meta, uin, "member")
        self.members._set_members(ch, ch.members - {uin})
        if was_owner and ch.members:
            admins = [who for who, role in meta.get("roles", ()) if role == "admin"]
            _set_role(meta, admins[0] if admins else min(ch.members), "owner")
        return {"members": len(ch.members)}
