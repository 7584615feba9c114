"""docs/protocol.md's statements a client written from it relies on (issue 23 item 12)."""
from __future__ import annotations

import msgpack
from test_dispatch_sessions import broker_core, login

from nodes.protocol import schema, wire
from nodes.protocol.dispatch import Dispatcher
from nodes.protocol.heartbeat import initial_interval
from nodes.runtime.sessions import SessionTable


def test_check_order_type_then_session_then_fields(tmp_path):
    core, out, secret = broker_core(tmp_path)
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    assert d.one(b"x", {"t": "nosuch", "rid": 1}, 0.0)["code"] == wire.Err.BAD_TYPE      # before login
    assert d.one(b"x", {"t": "send", "rid": 2}, 0.0)["code"] == wire.Err.NOT_LOGGED_IN    # sid before fields
    d, sid = login(core, out, secret)
    assert d.one(b"c1", {"t": "send", "rid": 3, "sid": sid}, 1.0)["code"] == wire.Err.BAD_FIELD


def test_a_bin_key_is_no_field_and_other_key_types_are_bad_frames(tmp_path):
    core, _out, _secret = broker_core(tmp_path)
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    got = []
    d.frame(b"x", msgpack.packb({b"t": "ping", "rid": 1}), 0.0, lambda _i, m: got.append(m), 65536, 64)
    d.frame(b"x", msgpack.packb({1: "ping", "rid": 2}), 0.0, lambda _i, m: got.append(m), 65536, 64)
    assert [m["code"] for m in got] == [wire.Err.BAD_TYPE, wire.Err.BAD_FRAME]


def test_more_than_64_requests_in_a_frame_get_one_bad_frame(tmp_path):
    core, _out, _secret = broker_core(tmp_path)
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    got = []
    pings = [{"t": "ping", "rid": i} for i in range(65)]
    d.frame(b"x", msgpack.packb(pings), 0.0, lambda _i, m: got.append(m), 65536, 64)
    assert len(got) == 1 and got[0]["code"] == wire.Err.BAD_FRAME and got[0]["rid"] is None
    got.clear()
    d.frame(b"x", msgpack.packb(pings[:64]), 0.0, lambda _i, m: got.append(m), 65536, 64)
    assert [m["t"] for m in got] == ["pong"] * 64


def test_an_unknown_net_gets_the_default_interval(tmp_path):
    core, _out, _secret = broker_core(tmp_path)
    hb = core.topo.heartbeat
    assert initial_interval(hb, "5g") == hb["default"] == 30.0
    assert [initial_interval(hb, n) for n in ("wired", "wifi", "4g", "3g", "2g")] == [10, 30, 90, 90, 240]


def test_sids_are_random_beyond_what_a_double_holds():
    table = SessionTable(3.0)
    sids = [table.open(b"c%d" % i, 1, i, "wired", 10.0, 0.0).sid for i in range(64)]
    assert all(1 <= s <= 2**63 for s in sids)
    assert any(float(s) != s for s in sids)          # a JavaScript Number would lose them
