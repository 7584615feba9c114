"""Channels users create, roles, read state, receipts, unread and my_channels on the logic core
alone (nodes/logic/rooms.py, nodes/logic/readstate.py): real RocksDB in temp dirs, no sockets."""
from __future__ import annotations

import time

import pytest
from test_cores import OnlineAll, make_logic, send
from test_replication_core import Cluster, stored

from nodes.logic import readstate
from nodes.logic.core import LogicCore
from nodes.protocol import wire
from nodes.protocol.names import dm as dm_name, group as group_name
from nodes.storage import shards, store as keys
from nodes.storage.store import Store


class Out:
    """What the core sends: replies, and every delivery item as (broker, push, to, uin, device)."""

    def __init__(self):
        self.replies, self.items = [], []

    def reply(self, ident, msg):
        self.replies.append((ident, msg))

    def publish(self, broker, msg):
        for packed, to, uin, device in msg["items"]:
            self.items.append((broker, wire.unpack(packed), sorted(to), uin, device))

    def request_ids(self, channel, n, have):
        pass

    def pushes(self, kind):
        return [(p, to, uin, device) for _b, p, to, uin, device in self.items if p["t"] == kind]


def logic(tmp_path, **limits):
    core, _out, store = make_logic(tmp_path, **limits)
    out = core.fanout.out = core.sends.out = Out()
    return core, out, store


def turn(core, store):
    core.assign(time.time())
    store.flush()
    core.commit(core.take_committed())


def call(fn, rid=1, **fields):
    return fn(dict({"rid": rid}, **fields))


def create_group(core, uin=1, members=(2, 3), ctime=10, device=0, **extra):
    return call(core.rooms.create, uin=uin, device=device, ctime=ctime, kind="group", members=list(members), **extra)


def change(core, t, uin, ctime, device=0, **fields):
    return call(getattr(core.rooms, t), t=t, uin=uin, device=device, ctime=ctime, **fields)


def refused(code, fn, *args, **kwargs):
    with pytest.raises(wire.ProtocolError) as exc:
        fn(*args, **kwargs)
    assert exc.value.code == code, exc.value
    return exc.value


def test_names_of_user_channels_are_one_rule():
    assert dm_name(7, 3) == dm_name(3, 7) == "dm:3:7"
    assert group_name(5, 123) == "grp:5:123"
    wire.check_channel_name(dm_name(2**32 - 1, 2**32 - 2))
    wire.check_channel_name(group_name(2**32 - 1, 2**64 - 1))


def test_a_dm_is_one_channel_per_pair_and_a_retry_is_the_original(tmp_path):
    core, _out, _store = logic(tmp_path)
    first = call(core.rooms.create, uin=2, device=0, ctime=5, kind="dm", **{"with": 1})
    assert (first["channel"], first["created"], first["members"], first["kind"]) == ("dm:1:2", True, [1, 2], "dm")
    assert call(core.rooms.create, uin=2, device=0, ctime=5, kind="dm", **{"with": 1})["created"] is True
    assert call(core.rooms.create, uin=1, device=3, ctime=9, kind="dm", **{"with": 2})["created"] is False
    refused(wire.Err.BAD_FIELD, call, core.rooms.create, uin=1, device=0, ctime=1, kind="dm", **{"with": 1})
    refused(wire.Err.BAD_FIELD, call, core.rooms.create, uin=1, device=0, ctime=1, kind="dm", **{"with": 2},
            channel="dm:1:3")
    for t, fields in (("invite", {"uins": [3]}), ("leave", {}), ("remove", {"uins": [2]})):
        refused(wire.Err.FORBIDDEN, change, core, t, 1, 50, channel="dm:1:2", **fields)
    assert core.channels["dm:1:2"].members == {1, 2}


def test_rooms_are_the_operators(tmp_path):
    core, _out, _store = logic(tmp_path)
    refused(wire.Err.FORBIDDEN, change, core, "invite", 1, 1, channel="room", uins=[9])
    refused(wire.Err.FORBIDDEN, change, core, "leave", 1, 1, channel="room")
    refused(wire.Err.NOT_MEMBER, change, core, "leave", 9, 1, channel="room")
    assert core.channels["room"].members == {1, 2, 3}


def test_group_roles_are_enforced_and_nothing_changes_on_a_refusal(tmp_path):
    core, _out, _store = logic(tmp_path, group_max_members=5)
    g = create_group(core, title="team")
    name = g["channel"]
    assert (name, g["role"], g["title"]) == (group_name(1, 10), "owner", "team")
    refused(wire.Err.FORBIDDEN, change, core, "invite", 2, 1, channel=name, uins=[4])       # a member
    refused(wire.Err.NOT_MEMBER, change, core, "invite", 9, 1, channel=name, uins=[4])
    assert change(core, "role", 1, 11, channel=name, target=2, role="admin")["role"] == "admin"
    refused(wire.Err.FORBIDDEN, change, core, "role", 2, 2, channel=name, target=3, role="admin")  # owner only
    assert change(core, "invite", 2, 3, channel=name, uins=[4, 5, 1])["added"] == [4, 5]
    refused(wire.Err.TOO_MANY, change, core, "invite", 2, 4, channel=name, uins=[6])           # 5 at most
    assert change(core, "role", 1, 12, channel=name, target=3, role="admin")["role"] == "admin"
    refused(wire.Err.FORBIDDEN, change, core, "remove", 2, 5, channel=name, uins=[3])          # another admin
    refused(wire.Err.FORBIDDEN, change, core, "remove", 2, 6, channel=name, uins=[1, 4])       # the owner
    assert core.channels[name].members == {1, 2, 3, 4, 5}
    assert change(core, "remove", 1, 13, channel=name, uins=[3, 4])["removed"] == [3, 4]
    refused(wire.Err.BAD_FIELD, change, core, "role", 1, 14, channel=name, target=2, role="king")
    refused(wire.Err.FORBIDDEN, change, core, "role", 1, 15, channel=name, target=1, role="member")
    assert core.channels[name].members == {1, 2, 5}


def test_a_removed_member_gets_no_push_and_cannot_sync(tmp_path):
    core, out, store = logic(tmp_path)
    name = create_group(core)["channel"]
    core.ids.on_ids(name, 1, 1001)
    change(core, "remove", 1, 11, channel=name, uins=[3])
    assert 3 not in core.fanout.member_of or all(ch.name != name for ch in core.fanout.member_of[3])
    send(core, 1, 100, "after", channel=name)
    turn(core, store)
    assert [to for _p, to, _u, _d in out.pushes("msg")] == [[1, 2]]
    refused(wire.Err.NOT_MEMBER, core.reads.sync, {"rid": 1, "uin": 3, "channel": name, "after": 0}, time.time())


def test_ownership_transfers_and_passes_on_when_the_owner_leaves(tmp_path):
    core, _out, _store = logic(tmp_path)
    name = create_group(core, members=(2, 3, 4))["channel"]
    change(core, "role", 1, 11, channel=name, target=3, role="admin")
    change(core, "role", 1, 12, channel=name, target=2, role="admin")
    change(core, "role", 1, 13, channel=name, target=4, role="owner")       # hand over: 1 becomes admin
    meta = core.members.meta[name]
    assert dict(map(tuple, meta["roles"])) == {3: "admin", 2: "admin", 1: "admin", 4: "owner"}
    change(core, "leave", 4, 1, channel=name)
    assert [r for r in meta["roles"] if r[1] == "owner"] == [[3, "owner"]]  # the first-appointed admin
    assert core.channels[name].members == {1, 2, 3}


def test_a_retried_change_gets_its_original_answer(tmp_path):
    core, _out, _store = logic(tmp_path)
    name = create_group(core)["channel"]
    again = create_group(core, members=(7,))                                 # same ctime: the same group
    assert (again["channel"], again["created"], again["members"]) == (name, True, [1, 2, 3])
    first = change(core, "leave", 2, 77, device=4, channel=name)
    assert change(core, "leave", 2, 77, device=4, channel=name) == first      # no NOT_MEMBER: the original
    refused(wire.Err.NOT_MEMBER, change, core, "leave", 2, 78, device=4, channel=name)
    refused(wire.Err.STALE, change, core, "invite", 2, 77, device=4, channel=name, uins=[2])
    invited = change(core, "invite", 1, 20, channel=name, uins=[2])
    change(core, "remove", 1, 21, channel=name, uins=[2])
    assert change(core, "invite", 1, 20, channel=name, uins=[2]) == invited   # not invited again
    assert 2 not in core.channels[name].members


def test_read_cursor_moves_forward_clamped_and_tells_devices_and_members(tmp_path):
    core, out, store = logic(tmp_path)
    name = call(core.rooms.create, uin=1, device=0, ctime=5, kind="dm", **{"with": 2})["channel"]
    core.ids.on_ids(name, 1, 1001)
    for i in range(5):
        send(core, 1, 100 + i, f"m{i}", channel=name)
    turn(core, store)
    assert core.readstate.cursor(name, 1) == 5                              # sent: read
    read = call(core.readstate.read, uin=2, device=1, channel=name, id=99)
    assert (read["t"], read["id"]) == ("read", 5)                            # clamped to the newest
    assert call(core.readstate.read, uin=2, device=1, channel=name, id=3)["id"] == 5    # never back
    assert out.pushes("read") == [({"t": "read", "channel": name, "uin": 2, "id": 5}, [2], 2, 1)]
    assert out.pushes("receipt") == [({"t": "receipt", "channel": name, "uin": 2, "id": 5}, [1], 2, 1)]
    assert call(core.readstate.receipts, uin=1, channel=name, id=5)["read_by"] == [2]
    refused(wire.Err.NOT_MEMBER, call, core.readstate.read, uin=9, device=0, channel=name, id=1)


def test_no_receipts_in_rooms_or_big_groups(tmp_path):
    core, out, store = logic(tmp_path, receipts_max_members=2)
    core.ids.on_ids("room", 1, 1001)
    name = create_group(core)["channel"]
    core.ids.on_ids(name, 1, 1001)
    send(core, 1, 100, channel="room")
    send(core, 1, 101, channel=name)
    turn(core, store)
    call(core.readstate.read, uin=2, device=0, channel="room", id=1)
    call(core.readstate.read, uin=2, device=0, channel=name, id=1)
    assert len(out.pushes("read")) == 2 and out.pushes("receipt") == []


def test_unread_counts_others_messages_over_the_newest_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(readstate, "RECENT", 10)
    core, _out, store = logic(tmp_path)
    core.ids.on_ids("room", 1, 1001)
    for i in range(6):
        send(core, 1 if i % 3 else 2, 100 + i, f"m{i}")                     # ids 1..6: uin 2 sent 1 and 4
    turn(core, store)
    item = core.readstate.item(core.channels["room"], 2)
    assert (item["unread"], item["read"], item["last"]) == (2, 4, 6)         # its own send moved its cursor
    assert "unread_more" not in item and item["preview"]["text"] == "m5"
    for i in range(20):
        send(core, 1, 200 + i)
    turn(core, store)
    item = core.readstate.item(core.channels["room"], 3)
    assert (item["unread"], item["unread_more"]) == (10, True)


def test_my_channels_lists_a_users_channels_most_recent_first(tmp_path):
    core, _out, store = logic(tmp_path)
    dm = call(core.rooms.create, uin=1, device=0, ctime=5, kind="dm", **{"with": 2})["channel"]
    grp = create_group(core, members=(3,), title="t")["channel"]
    for n in ("room", dm):
        core.ids.on_ids(n, 1, 1001)
    send(core, 1, 100, channel="room")
    turn(core, store)
    send(core, 2, 100, "hello", channel=dm)
    turn(core, store)
    reply = call(core.readstate.my_channels, uin=1)
    assert [i["channel"] for i in reply["items"]] == [dm, "room", grp]
    by = {i["channel"]: i for i in reply["items"]}
    assert (by[dm]["kind"], by[dm]["unread"], by[dm]["preview"]["uin"]) == ("dm", 1, 2)
    assert (by[grp]["kind"], by[grp]["role"], by[grp]["title"], by[grp]["active"]) == ("group", "owner", "t", 0)
    assert by["room"]["kind"] == "room" and by["room"]["members"] == 3 and by["room"]["unread"] == 0
    assert [i["channel"] for i in call(core.readstate.my_channels, uin=3)["items"]] == ["room", grp]


def test_a_user_in_1000_channels_is_answered_fast(tmp_path):
    core, _out, store = logic(tmp_path)
    for n in range(1000):
        call(core.rooms.create, uin=1, device=0, ctime=n, kind="dm", **{"with": 10 + n})
    store.flush()
    started = time.perf_counter()
    items = call(core.readstate.my_channels, uin=1)["items"]
    assert len(items) == 1001 and time.perf_counter() - started < 0.5    # and the room


def reopened(tmp_path, core, store, tag, rows=None):
    """A fresh core on a new store holding ``rows`` (default: every row of ``store``)."""
    store.flush()
    new = Store(str(tmp_path / tag))
    for key, value in (rows if rows is not None else store.scan(b"")):
        new.put(key, value)
    new.flush()
    fresh = LogicCore("l1", core.topo, new, OnlineAll(), Out(), b"secret-secret-secret")
    fresh.load()
    return fresh


def test_kinds_roles_cursors_and_senders_survive_restart_snapshot_and_handoff_rows(tmp_path):
    core, _out, store = logic(tmp_path)
    name = create_group(core, title="x")["channel"]
    change(core, "role", 1, 11, channel=name, target=2, role="admin")
    core.ids.on_ids(name, 1, 1001)
    send(core, 3, 100, "hi", channel=name)
    turn(core, store)
    call(core.readstate.read, uin=2, device=0, channel=name, id=1)
    store.flush()
    ops = [(key, value) for key, value in store.scan(b"")]
    assert shards.split(ops, lambda ch: 7 if ch == name else 0)[7]             # cursors go with the shard
    assert any(key.startswith(keys.cursor_prefix(name)) for key, _v in ops)
    wanted = {name}.__contains__
    copies = {"restart": None, "handoff": list(shards.channel_rows(store, wanted)),
              "snapshot": [tuple(r) for r in shards.snapshot(store, 5, lambda ch: 5 if ch == name else 1)]}
    for tag, rows in copies.items():
        fresh = reopened(tmp_path, core, store, tag, rows)
        assert fresh.members.kind(name) == "group", tag
        assert fresh.members.meta[name]["title"] == "x"
        assert fresh.readstate.item(fresh.channels[name], 2)["role"] == "admin"
        assert fresh.readstate.cursor(name, 2) == 1 and fresh.readstate.cursor(name, 3) == 1
        assert fresh.readstate.item(fresh.channels[name], 1)["unread"] == 1, tag
        assert change(fresh, "role", 1, 11, channel=name, target=2, role="admin")["role"] == "admin"  # a retry


def test_a_new_shard_leader_keeps_kinds_roles_and_read_cursors(tmp_path):
    """Replicated (tests/test_replication_core.py's harness): what a user changed is in the shard's
    records, so the next leader holds it when the old one is gone."""
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    leader.core.fanout.out = Out()                          # read/receipt pushes: not msg pushes
    name = create_group(leader.core)["channel"]
    change(leader.core, "role", 1, 11, channel=name, target=2, role="admin")
    stored(leader, 3, 500, rid=1)                           # room: id 1 by uin 3
    c.settle()
    assert call(leader.core.readstate.read, uin=2, device=0, channel="room", id=1)["id"] == 1
    leader.turn_end()
    c.settle()
    c.down.add("l1")
    successor = c.elect("l2", 7)
    core = successor.core
    assert core.members.kind(name) == "group" and core.readstate.item(core.channels[name], 2)["role"] == "admin"
    assert core.readstate.cursor("room", 2) == 1 and core.readstate.cursor("room", 3) == 1
    assert core.readstate.item(core.channels["room"], 1)["unread"] == 1
    refused(wire.Err.FORBIDDEN, change, core, "remove", 2, 1, channel=name, uins=[1])   # the owner stays
