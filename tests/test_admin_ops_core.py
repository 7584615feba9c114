"""The HTTP API's admin operations on the logic core alone (nodes/logic/admin_ops.py): roles of a
group's members set by the operator, and show listing them.  Real RocksDB in temp dirs, no sockets."""
from __future__ import annotations

from test_conversations_core import create_group, logic, reopened, turn

from nodes.logic.admin_ops import AdminOps
from nodes.logic.presence import PresenceReplica
from nodes.protocol import auth, wire
from nodes.protocol.names import dm as dm_name

SECRET = b"secret-secret-secret"           # test_cores.make_logic's cluster secret


def ops(core):
    return AdminOps(core, PresenceReplica([], lambda _router: None))


def admin(fn, **fields):
    return fn(dict({"rid": 1, "auth": auth.mint(SECRET, 0, lifetime=60, scope="admin")}, **fields))


def refused(code, fn, **fields):
    try:
        admin(fn, **fields)
    except wire.ProtocolError as exc:
        assert exc.code == code, exc
        return exc.msg
    raise AssertionError(f"not refused: {fields}")


def roles(core, name):
    return admin(core.members.channel_show, channel=name)["roles"]


def test_the_operator_sets_roles_and_hands_ownership_over(tmp_path):
    core, _out, store = logic(tmp_path)
    a = ops(core)
    name = create_group(core, members=(2, 3, 4))["channel"]
    assert roles(core, name) == {"1": "owner", "2": "member", "3": "member", "4": "member"}
    assert admin(a.channel_role, channel=name, uin=2, role="admin") == {
        "t": "channel_role", "rid": 1, "channel": name, "uin": 2, "role": "admin"}
    assert admin(a.channel_role, channel=name, uin=2, role="admin")["role"] == "admin"   # again: the same
    admin(a.channel_role, channel=name, uin=3, role="owner")              # the old owner becomes admin
    assert roles(core, name) == {"1": "admin", "2": "admin", "3": "owner", "4": "member"}
    admin(a.channel_role, channel=name, uin=1, role="member")
    assert roles(core, name) == {"1": "member", "2": "admin", "3": "owner", "4": "member"}
    turn(core, store)
    fresh = reopened(tmp_path, core, store, "restart")                     # stored in the channel's row
    assert roles(fresh, name) == {"1": "member", "2": "admin", "3": "owner", "4": "member"}
    assert admin(fresh.members.channel_show, channel=name)["kind"] == "group"


def test_only_a_groups_members_get_roles_and_a_refusal_changes_nothing(tmp_path):
    core, _out, _store = logic(tmp_path)
    a = ops(core)
    name = create_group(core)["channel"]
    dm = core.rooms.create({"rid": 1, "uin": 1, "device": 0, "ctime": 5, "kind": "dm", "with": 2})["channel"]
    before = {n: roles(core, n) for n in (name, dm, "room")}
    assert "room" in refused(wire.Err.FORBIDDEN, a.channel_role, channel="room", uin=1, role="admin")
    assert "dm" in refused(wire.Err.FORBIDDEN, a.channel_role, channel=dm_name(1, 2), uin=1, role="owner")
    refused(wire.Err.NOT_MEMBER, a.channel_role, channel=name, uin=9, role="admin")
    refused(wire.Err.BAD_FIELD, a.channel_role, channel=name, uin=2, role="king")
    refused(wire.Err.FORBIDDEN, a.channel_role, channel=name, uin=1, role="admin")   # a group keeps an owner
    refused(wire.Err.NO_CHANNEL, a.channel_role, channel="nope", uin=1, role="admin")
    refused(wire.Err.AUTH_FAILED, a.channel_role, channel=name, uin=2, role="admin",
            auth=auth.mint(SECRET, 2, lifetime=60))                        # a user's token is not enough
    assert {n: roles(core, n) for n in (name, dm, "room")} == before
    assert before["room"] == {"1": "member", "2": "member", "3": "member"}
    assert admin(core.members.channel_show, channel="room")["kind"] == "room"
