"""The broker's side of the conversation layer (issue 24), in its core with a fake ``out``:
which logic node each request goes to and with which fields, the ``channels`` scatter-gather
(merge, paging, partial answers), the typing rate on a fake clock, the send tokens of edits
and deletes, and the schema's refusals before anything is forwarded."""
from __future__ import annotations

import pytest
from test_dispatch_sessions import Out, login

from nodes.broker.core import BrokerCore
from nodes.broker.owners import FAST_TIMEOUT
from nodes.cluster import topology
from nodes.protocol import names, wire

LOGICS = ("l1", "l2", "l3")


def three_logic_topology(tmp_path, **limits):
    port = iter(range(20000, 20100))
    raw = {"local": True, "data_dir": str(tmp_path), "limits": limits,
           "channels": {"room": {"members": [1, 2, 3]}},
           "idcs": {"a": {"brokers": [{"id": "b1", "client": f"tcp://127.0.0.1:{next(port)}",
                                       "rpc": f"tcp://127.0.0.1:{next(port)}"}],
                          "logics": [{"id": i, "rpc": f"tcp://127.0.0.1:{next(port)}",
                                      "pub": f"tcp://127.0.0.1:{next(port)}"} for i in LOGICS],
                          "routers": [{"id": "r", "rpc": f"tcp://127.0.0.1:{next(port)}",
                                       "pub": f"tcp://127.0.0.1:{next(port)}"}],
                          "counters": [{"id": "c", "rpc": f"tcp://127.0.0.1:{next(port)}"}]}}}
    return topology.parse(raw, str(tmp_path / "t.yaml"))


@pytest.fixture
def broker(tmp_path):
    def make(**limits):
        out = Out()
        secret = b"a-secret-of-sixteen-bytes"
        core = BrokerCore("b1", three_logic_topology(tmp_path, **limits), secret, out, now=0.0, idc="a")
        d, sid = login(core, out, secret, uin=7, device=3)
        return core, out, d, sid
    return make


def ticks(core, now):
    for logic in LOGICS:
        core.owners.on_tick(logic, now)


def ask(d, sid, t, now=1.0, **fields):
    return d.one(b"c1", dict(fields, t=t, rid=42, sid=sid), now)


# (client request fields, internal request the owner gets): the contract of /work/tools/conv-internal.md
ROUTED = [
    ({"t": "read", "channel": "room", "id": 5}, {"t": "read", "uin": 7, "device": 3, "channel": "room", "id": 5}),
    ({"t": "receipts", "channel": "room", "id": 5}, {"t": "receipts", "uin": 7, "channel": "room", "id": 5}),
    ({"t": "history", "channel": "room"}, {"t": "history", "uin": 7, "channel": "room", "limit": 50}),
    ({"t": "history", "channel": "room", "before": 9, "limit": 100},
     {"t": "history", "uin": 7, "channel": "room", "before": 9, "limit": 100}),
    ({"t": "typing", "channel": "room"}, {"t": "typing", "uin": 7, "device": 3, "channel": "room"}),
    ({"t": "watch", "channel": "room"}, {"t": "watch", "uin": 7, "device": 3, "channel": "room"}),
    ({"t": "unwatch", "channel": "room"}, {"t": "unwatch", "uin": 7, "device": 3, "channel": "room"}),
    ({"t": "invite", "channel": "grp:7:1", "ctime": 2, "uins": [8, 9]},
     {"t": "invite", "uin": 7, "device": 3, "channel": "grp:7:1", "ctime": 2, "uins": [8, 9]}),
    ({"t": "remove", "channel": "grp:7:1", "ctime": 3, "uins": [8]},
     {"t": "remove", "uin": 7, "device": 3, "channel": "grp:7:1", "ctime": 3, "uins": [8]}),
    ({"t": "leave", "channel": "grp:7:1", "ctime": 4},
     {"t": "leave", "uin": 7, "device": 3, "channel": "grp:7:1", "ctime": 4}),
    ({"t": "role", "channel": "grp:7:1", "ctime": 5, "uin": 8, "role": "admin"},
     {"t": "role", "uin": 7, "device": 3, "channel": "grp:7:1", "ctime": 5, "target": 8, "role": "admin"}),
    ({"t": "create", "kind": "dm", "with": 2, "ctime": 6},
     {"t": "create", "uin": 7, "device": 3, "kind": "dm", "with": 2, "ctime": 6, "channel": "dm:2:7"}),
    ({"t": "create", "kind": "group", "ctime": 7, "name": "team", "members": [1, 2]},
     {"t": "create", "uin": 7, "device": 3, "kind": "group", "ctime": 7, "title": "team", "members": [1, 2],
      "channel": "grp:7:7"}),
    ({"t": "edit", "channel": "room", "id": 5, "ctime": 8, "text": "fixed"},
     {"t": "edit", "uin": 7, "device": 3, "channel": "room", "id": 5, "ctime": 8, "text": "fixed"}),
    ({"t": "delete", "channel": "room", "id": 5, "ctime": 9},
     {"t": "delete", "uin": 7, "device": 3, "channel": "room", "id": 5, "ctime": 9}),
]


@pytest.mark.parametrize("client,internal", ROUTED, ids=[f"{c['t']}-{i}" for i, (c, _) in enumerate(ROUTED)])
def test_each_request_goes_to_its_channel_s_owner_with_the_user_added_and_the_reply_comes_back(
        broker, client, internal):
    core, out, d, sid = broker()
    assert ask(d, sid, **client) is None
    owner, request, callback, timeout = out.logic[-1]
    assert owner == core.owners.owner_of(internal["channel"])
    assert request == internal and timeout == core.send_timeout
    callback({"t": "whatever", "rid": 999, "channel": internal["channel"]})
    assert out.replies[-1] == (b"c1", {"t": "whatever", "rid": 42, "channel": internal["channel"]})
    assert core.pending == 0


def test_the_dm_of_a_pair_has_one_name_and_one_owner_whoever_creates_it(broker):
    core, out, d, sid = broker()
    assert names.dm(7, 2) == names.dm(2, 7) == "dm:2:7"
    placed = {core.owners.owner_of(names.dm(a, b)) for a, b in [(1, 2), (1, 3), (2, 3), (5, 6), (7, 9)]}
    assert len(placed) > 1                      # dms spread over the logic nodes, not all on one
    for uin in (1, 5):
        ask(d, sid, "create", kind="dm", **{"with": uin}, ctime=uin)
        assert out.logic[-1][0] == core.owners.owner_of(names.dm(uin, 7))
    assert names.kind_of("dm:2:7") == "dm" and names.kind_of("grp:7:1") == "group" and names.kind_of("room") is None


@pytest.mark.parametrize("fields,code", [
    ({"kind": "dm", "with": 7, "ctime": 1}, wire.Err.BAD_FIELD),             # with oneself
    ({"kind": "dm", "ctime": 1}, wire.Err.BAD_FIELD),                        # with whom?
    ({"kind": "room", "ctime": 1}, wire.Err.BAD_FIELD),                      # users make no rooms
    ({"kind": "group"}, wire.Err.BAD_FIELD),                                 # no ctime
    ({"kind": "group", "ctime": 1, "name": "x" * 65}, wire.Err.TOO_LONG),
    ({"kind": "group", "ctime": 1, "name": ""}, wire.Err.EMPTY_TEXT),
    ({"kind": "group", "ctime": 1, "members": [1, 2, 3, 4]}, wire.Err.TOO_MANY),
    ({"kind": "group", "ctime": 1, "members": [1, -2]}, wire.Err.BAD_FIELD),
])
def test_bad_creates_are_refused_at_the_broker_and_nothing_is_forwarded(broker, fields, code):
    _core, out, d, sid = broker(group_max_members=3)
    reply = ask(d, sid, "create", **fields)
    assert reply["code"] == code and reply["rid"] == 42 and out.logic == []
    if code == wire.Err.TOO_MANY:
        assert reply["limit"] == 3


@pytest.mark.parametrize("t,fields,code,limit", [
    ("channels", {"limit": 0}, wire.Err.BAD_FIELD, 100),
    ("channels", {"limit": 101}, wire.Err.BAD_FIELD, 100),
    ("channels", {"after": "no cursor"}, wire.Err.BAD_FIELD, None),
    ("channels", {"after": "12:bad name!"}, wire.Err.BAD_FIELD, None),
    ("history", {"channel": "room", "limit": 101}, wire.Err.BAD_FIELD, 100),
    ("history", {"channel": "bad name!"}, wire.Err.BAD_CHANNEL, None),
    ("read", {"channel": "room"}, wire.Err.BAD_FIELD, None),
    ("read", {"channel": "room", "id": -1}, wire.Err.BAD_FIELD, None),
    ("edit", {"channel": "room", "id": 1, "ctime": 1, "text": ""}, wire.Err.EMPTY_TEXT, None),
    ("edit", {"channel": "room", "id": 1, "ctime": 1, "text": "x" * 11}, wire.Err.TOO_LONG, 10),
    ("delete", {"channel": "room", "id": 1}, wire.Err.BAD_FIELD, None),
    ("invite", {"channel": "grp:7:1", "ctime": 1, "uins": [1, 2, 3, 4]}, wire.Err.TOO_MANY, 3),
    ("remove", {"channel": "grp:7:1", "ctime": 1, "uins": "1"}, wire.Err.BAD_FIELD, None),
    ("role", {"channel": "grp:7:1", "ctime": 1, "uin": 8, "role": "king"}, wire.Err.BAD_FIELD, None),
    ("leave", {"channel": "grp:7:1"}, wire.Err.BAD_FIELD, None),
])
def test_malformed_and_over_limit_requests_are_refused_before_anything_is_forwarded(broker, t, fields, code, limit):
    core, out, d, sid = broker(group_max_members=3, max_text=10)
    reply = ask(d, sid, t, **fields)
    assert reply["code"] == code and reply.get("limit") == limit
    assert out.logic == [] and core.pending == 0


def test_a_wrong_owner_answer_becomes_unavailable_and_an_owner_that_is_down_is_not_asked(broker):
    core, out, d, sid = broker()
    ask(d, sid, "read", channel="room", id=1)
    out.logic[-1][2]({"t": "err", "code": wire.Err.WRONG_OWNER, "msg": "moved"})
    assert out.replies[-1][1]["code"] == wire.Err.UNAVAILABLE
    ticks(core, 5.0)
    reply = ask(d, sid, "history", now=5.0 + 2.0, channel="room")          # no tick for 2 s: down
    assert reply["code"] == wire.Err.UNAVAILABLE and len(out.logic) == 1


def item(channel, active, last=1, **extra):
    return dict({"channel": channel, "kind": "room", "role": "member", "members": 2, "last": last, "read": 0,
                 "unread": last, "active": active}, **extra)


def answer(out, answers):
    """Answer the pending my_channels requests: {logic id: [items] or an error reply}."""
    pending = [entry for entry in out.logic if entry[1]["t"] == "my_channels"]
    out.logic[:] = [entry for entry in out.logic if entry[1]["t"] != "my_channels"]
    for logic, request, callback, timeout in pending:
        assert timeout == FAST_TIMEOUT and request["uin"] == 7
        got = answers[logic]
        callback(got if isinstance(got, dict) else {"t": "my_channels", "items": got})
    return [request for _logic, request, _cb, _t in pending]


def test_channels_merges_every_logic_node_s_answer_most_recently_active_first_and_pages_with_the_cursor(broker):
    core, out, d, sid = broker()
    held = {"l1": [item("a", 300), item("d", 100), item("g", 0, last=0)],
            "l2": [item("b", 300), item("e", 50)],
            "l3": [item("c", 200), item("f", 50)]}

    def page(**fields):
        assert ask(d, sid, "channels", **fields) is None
        requests = answer(out, {logic: [i for i in items if after_ok(i, fields.get("after"))]
                                for logic, items in held.items()})
        assert sorted(r["t"] for r in requests) == ["my_channels"] * 3
        assert all(r["limit"] == fields.get("limit", 50) + 1 for r in requests)    # one more: is there more?
        return out.replies[-1][1], requests

    first, requests = page(limit=3)
    assert [i["channel"] for i in first["items"]] == ["a", "b", "c"] and first["rid"] == 42
    assert "partial" not in first and "after" not in requests[0]
    second, requests = page(limit=3, after=first["next"])
    assert requests[0]["after"] == [200, "c"]
    assert [i["channel"] for i in second["items"]] == ["d", "e", "f"]
    last, _ = page(limit=3, after=second["next"])
    assert [i["channel"] for i in last["items"]] == ["g"] and "next" not in last
    whole, _ = page()
    assert [i["channel"] for i in whole["items"]] == list("abcdefg") and "next" not in whole
    assert core.pending == 0


def after_ok(i, cursor):
    if cursor is None:
        return True
    active, _, name = cursor.partition(":")
    return (-i["active"], i["channel"]) > (-int(active), name)


def test_channels_sorts_filters_and_cuts_itself_when_a_node_answers_everything_and_keeps_one_copy(broker):
    """A node may ignore ``after``/``limit``; and a shard changing leaders can be answered by two
    replicas: the broker's page is still right, each channel once (the newer copy)."""
    _core, out, d, sid = broker()
    ask(d, sid, "channels", limit=2, after="300:a")
    answer(out, {"l1": [item("z", 1), item("a", 300), item("b", 300, last=1)],
                 "l2": [item("b", 300, last=4), item("y", 400)], "l3": []})
    reply = out.replies[-1][1]
    assert [(i["channel"], i["last"]) for i in reply["items"]] == [("b", 4), ("z", 1)]
    assert "next" not in reply


def test_channels_says_partial_when_a_logic_node_fails_times_out_or_is_down(broker):
    core, out, d, sid = broker()
    ask(d, sid, "channels")
    answer(out, {"l1": [item("a", 1)], "l2": {"t": "err", "code": wire.Err.UNAVAILABLE, "msg": "timeout"},
                 "l3": [item("c", 2)]})
    reply = out.replies[-1][1]
    assert reply["partial"] is True and [i["channel"] for i in reply["items"]] == ["c", "a"]
    for logic in ("l1", "l3"):
        core.owners.on_tick(logic, 9.9)
    ask(d, sid, "channels", now=10.0)                                # l2 never heard, past the start grace
    requests = answer(out, {"l1": [item("a", 1)], "l3": []})
    assert len(requests) == 2
    assert out.replies[-1][1]["partial"] is True


def test_channels_with_every_logic_node_down_answers_an_empty_partial_page_at_once(broker):
    _core, out, d, sid = broker()
    ask(d, sid, "channels", now=100.0)
    assert out.logic == []
    assert out.replies[-1][1] == {"t": "channels", "rid": 42, "items": [], "partial": True}


def test_typing_is_rate_limited_per_user_at_the_broker_without_reaching_the_owner(broker):
    core, out, d, sid = broker(typing_rate=0.5, typing_burst=2)
    ticks(core, 9.9)
    for _ in range(2):
        assert ask(d, sid, "typing", now=10.0, channel="room") is None
    limited = ask(d, sid, "typing", now=10.0, channel="room")
    assert limited["code"] == wire.Err.RATE_LIMITED and limited["retry_after"] == 2.0
    ticks(core, 11.0)
    assert ask(d, sid, "typing", now=11.9, channel="room")["code"] == wire.Err.RATE_LIMITED
    assert len(out.logic) == 2
    d2, sid2 = login(core, out, b"a-secret-of-sixteen-bytes", ident=b"c2", uin=8)
    assert d2.one(b"c2", {"t": "typing", "rid": 1, "sid": sid2, "channel": "room"}, 11.9) is None  # own bucket
    ticks(core, 12.0)
    assert ask(d, sid, "typing", now=12.1, channel="room") is None           # refilled after 2 s
    assert len(out.logic) == 4
    assert core.buckets.buckets == {}                   # typing takes no send tokens
    level = list(core.typing_buckets.buckets[7])
    assert ask(d, sid, "typing", now=20.0, channel="room")["code"] == wire.Err.UNAVAILABLE   # no tick since 12
    assert core.typing_buckets.buckets[7] == level     # an owner that is down costs no token


def test_edits_and_deletes_cost_send_tokens_by_the_send_path_s_rules(broker):
    core, out, d, sid = broker(rate=1, burst=1)
    ticks(core, 9.9)
    ask(d, sid, "edit", now=10.0, channel="room", id=1, ctime=100, text="new")
    assert "lookup" not in out.logic[-1][1]
    out.logic[-1][2]({"t": "ack", "channel": "room", "device": 3, "ctime": 100, "id": 7, "newest": 100})
    assert out.replies[-1][1] == {"t": "ack", "rid": 42, "channel": "room", "device": 3, "ctime": 100, "id": 7}
    # over the rate: a newer client time is a new event, refused here; the same one may be a retry
    assert ask(d, sid, "delete", now=10.1, channel="room", id=1, ctime=101)["code"] == wire.Err.RATE_LIMITED
    assert len(out.logic) == 1
    ask(d, sid, "edit", now=10.2, channel="room", id=1, ctime=100, text="new")
    assert out.logic[-1][1]["lookup"] is True
    out.logic[-1][2]({"t": "ack", "channel": "room", "device": 3, "ctime": 100, "id": 7, "retry": True})
    assert out.replies[-1][1]["id"] == 7
    # a refused edit gives its token back: the next delete goes through at once
    ticks(core, 10.9)
    assert ask(d, sid, "edit", now=11.0, channel="room", id=2, ctime=102, text="x") is None
    out.logic[-1][2]({"t": "err", "code": wire.Err.FORBIDDEN, "msg": "not the author", "newest": 100})
    assert out.replies[-1][1]["code"] == wire.Err.FORBIDDEN
    assert ask(d, sid, "delete", now=11.0, channel="room", id=2, ctime=103) is None
    assert "lookup" not in out.logic[-1][1] and core.pending == 1
