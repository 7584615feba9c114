"""The shared dispatcher, the session table and the broker core, without sockets or a clock."""
from __future__ import annotations

import pytest
from test_cores import one_logic_topology

from nodes.broker.core import BrokerCore
from nodes.broker.owners import OWNER_DOWN_AFTER, START_GRACE
from nodes.protocol import auth, schema, wire
from nodes.protocol.dispatch import Dispatcher, PubDispatcher
from nodes.runtime.sessions import SessionTable

SCHEMAS = {"ok": {"rid": "u64"}, "boom": {"rid": "u64"}, "refuse": {"rid": "u64"}}


def handlers():
    def refuse(_ident, msg, _now):
        raise wire.ProtocolError(wire.Err.NOT_MEMBER, "no")
    return {"ok": lambda _i, msg, now: wire.reply("ok", msg["rid"], now=now),
            "boom": lambda _i, msg, _now: {}["missing"],
            "refuse": refuse}


def test_a_handler_bug_is_an_internal_error_for_that_request_and_the_rest_of_the_frame_is_served():
    d = Dispatcher(SCHEMAS, handlers())
    replies = []
    frame = wire.pack([{"t": "boom", "rid": 1}, {"t": "ok", "rid": 2}, {"t": "refuse", "rid": 3},
                       {"t": "nope", "rid": 4}, {"t": "ok"}])
    d.frame(b"id", frame, 7.0, lambda ident, m: replies.append(m), max_len=1 << 16)
    assert [(r["t"], r.get("code"), r["rid"]) for r in replies] == [
        ("err", wire.Err.INTERNAL, 1), ("ok", None, 2), ("err", wire.Err.NOT_MEMBER, 3),
        ("err", wire.Err.BAD_TYPE, 4), ("err", wire.Err.BAD_FIELD, None)]
    assert replies[1]["now"] == 7.0
    assert wire.Err.INTERNAL in wire.UNKNOWN_OUTCOME


def test_repeated_failures_log_one_traceback_per_window(caplog):
    d = Dispatcher(SCHEMAS, handlers())
    for i in range(50):
        d.one(b"id", {"t": "boom", "rid": i}, now=float(i) / 100)
    tracebacks = [r for r in caplog.records if "request boom failed" in r.getMessage()]
    assert len(tracebacks) == 1 and d.failures.total == 50
    d.one(b"id", {"t": "boom", "rid": 99}, now=100.0)
    assert "49 more" in caplog.records[-1].getMessage()


def test_every_schema_needs_a_handler():
    with pytest.raises(ValueError):
        Dispatcher(SCHEMAS, {"ok": handlers()["ok"]})


def test_a_dispatcher_with_bound_limits_refuses_by_the_schema_before_the_handler():
    served = []
    d = Dispatcher(schema.CLIENT_REQUESTS, {t: lambda _i, m, _n: served.append(m) for t in schema.CLIENT_REQUESTS},
                   limits={"max_text": 4, "max_fragments": 3, "max_channels": 1})
    send = {"t": "send", "rid": 1, "sid": 1, "channel": "a", "ctime": 1}
    assert d.one(b"id", dict(send, text="12345"), 0.0)["code"] == wire.Err.TOO_LONG
    assert d.one(b"id", dict(send, text="1", frag=[1, 0, 4]), 0.0)["limit"] == 3
    assert d.one(b"id", {"t": "hb", "rid": 2, "sid": 1, "channels": {"a": 0, "b": 0}}, 0.0)["code"] == wire.Err.TOO_MANY
    assert served == []
    d.one(b"id", dict(send, text="1234", frag=[1, 2, 3]), 0.0)
    assert len(served) == 1


def test_pub_frames_are_validated_and_routed_by_kind_and_a_failure_costs_one_map(caplog):
    got = []

    def tick(msg):
        if msg["logic"] == "bad":
            raise RuntimeError("bug")
        got.append(("tick", msg["logic"]))
    pubs = PubDispatcher(wire.PUB_FRAMES["logic"],
                         {"tick": tick, "msgs": lambda m: got.append(("msgs", len(m["items"])))},
                         source="logic", clock=lambda: 0.0)
    pubs.frame(wire.pack([{"t": "tick", "logic": "l1"}, {"t": "tick"}, {"t": "msgs", "items": {}},
                          {"t": "tick", "logic": "bad"}, {"t": "msgs_idc", "packs": [], "to": {}},
                          {"t": "msgs", "items": [[b"x", [1], 2, 3]]}]), 1 << 20)
    assert got == [("tick", "l1"), ("msgs", 1)]
    assert pubs.refused == {"tick": 1, "msgs": 1} and pubs.ignored == {"msgs_idc": 1}
    assert pubs.failures.total == 1
    pubs.frame(b"\xc1", 1 << 20)                                # undecodable: dropped, logged
    assert "bad_frame logic" in caplog.text           # a sampled event (nodes/runtime/logs.py)
    with pytest.raises(ValueError):
        PubDispatcher(wire.PUB_FRAMES["router"], {"msgs": print})


def test_a_single_callable_subscriber_gets_every_map_validated_by_kind():
    got = []
    pubs = PubDispatcher(wire.PUB_FRAMES["router"], {}, got.append, source="router")
    kick = {"t": "kick", "uin": 1, "device": 2, "broker": "b1", "by": "b2"}
    pubs.frame(wire.pack([kick, {"t": "kick", "uin": 1}, {"t": "future_kind"}]), 1 << 20)
    assert got == [kick, {"t": "future_kind"}]


def test_sessions_need_their_sid_end_after_silence_and_remember_why():
    t = SessionTable(factor=3)
    s = t.open(b"c1", 1, 0, "wired", 10.0, now=0.0)
    with pytest.raises(wire.ProtocolError) as exc:
        t.check(b"c1", s.sid ^ 1, now=1.0)
    assert exc.value.code == wire.Err.NOT_LOGGED_IN
    with pytest.raises(wire.ProtocolError):
        t.check(b"c1", None, now=1.0)
    assert t.check(b"c1", s.sid, now=20.0) is s            # any request refreshes
    assert t.expired(now=45.0) == []                          # 20 + 3 * 10 > 45
    assert t.expired(now=50.5) == [s]
    t.end(s, "expired")
    with pytest.raises(wire.ProtocolError) as exc:
        t.check(b"c1", s.sid, now=51.0)
    assert exc.value.extra["reason"] == "expired"
    assert t.ended["expired"] == 1 and len(t) == 0


class Out:
    def __init__(self):
        self.replies, self.pushes, self.logic, self.router = [], [], [], []

    def reply(self, ident, msg):
        self.replies.append((ident, msg))

    def push(self, ident, packed):
        self.pushes.append((ident, wire.unpack(packed)))

    def push_many(self, idents, packed):
        for ident in idents:
            self.push(ident, packed)

    def to_logic(self, owner, msg, callback, timeout=None):
        self.logic.append((owner, msg, callback, timeout))

    def to_router(self, uin, msg, callback, timeout=None):
        self.router.append((msg, callback, timeout))


def broker_core(tmp_path):
    topo = one_logic_topology(tmp_path)
    out = Out()
    secret = b"a-secret-of-sixteen-bytes"
    return BrokerCore("b1", topo, secret, out, now=0.0, idc="a"), out, secret


def login(core, out, secret, ident=b"c1", uin=1, device=0, now=0.0):
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    assert d.one(ident, {"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                         "token": auth.mint(secret, uin), "device": device}, now) is None
    msg, callback, _timeout = out.router[-1]
    callback({"t": "ok", "interval": 10.0})
    ok = out.replies[-1][1]
    assert ok["t"] == "login_ok" and ok["idc"] == "a"
    return d, ok["sid"]


def test_broker_core_answers_ping_without_a_session_and_refuses_requests_without_the_sid(tmp_path):
    core, out, secret = broker_core(tmp_path)
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    assert d.one(b"x", {"t": "ping", "rid": 5}, 0.0) == {"t": "pong", "rid": 5, "broker": "b1", "idc": "a"}
    d, sid = login(core, out, secret)
    assert d.one(b"c1", {"t": "sync", "rid": 2, "channel": "room", "after": 0}, 1.0)["code"] == \
        wire.Err.NOT_LOGGED_IN
    assert d.one(b"c1", {"t": "sync", "rid": 3, "sid": sid, "channel": "room", "after": 0}, 1.0) is None
    assert out.logic[-1][1] == {"t": "sync", "uin": 1, "channel": "room", "after": 0}


def test_broker_core_fails_fast_for_an_owner_that_stopped_ticking(tmp_path):
    core, out, secret = broker_core(tmp_path)
    d, sid = login(core, out, secret)
    core.owners.on_tick("l1", 1.0)
    later = 1.0 + OWNER_DOWN_AFTER + 0.1
    assert later > START_GRACE - 2
    reply = d.one(b"c1", {"t": "send", "rid": 2, "sid": sid, "channel": "room", "ctime": 1, "text": "x"}, later)
    assert reply["code"] == wire.Err.UNAVAILABLE and not out.logic
    assert d.one(b"c1", {"t": "hb", "rid": 3, "sid": sid, "channel": "room", "channels": {"room": 0}},
                 later) is None
    _msg, on_router, timeout = out.router[-1]
    assert timeout <= 1.0
    on_router({"t": "hb", "interval": 10.0})
    ack = out.replies[-1][1]
    assert ack["t"] == "hb_ack" and ack["unavailable"] == ["room"]


def test_broker_core_ends_a_session_replaced_elsewhere_and_one_that_falls_behind(tmp_path):
    core, out, secret = broker_core(tmp_path)
    d, sid = login(core, out, secret)
    core.on_kick({"t": "kick", "uin": 1, "device": 0, "broker": "b1", "by": "b2"})
    assert out.replies[-1] == (b"c1", {"t": "kicked", "reason": "replaced",
                                       "msg": "logged in again on another broker"})
    reply = d.one(b"c1", {"t": "hb", "rid": 4, "sid": sid}, 1.0)
    assert reply["code"] == wire.Err.NOT_LOGGED_IN and reply["reason"] == "replaced"
    d, sid = login(core, out, secret, ident=b"c2", uin=2)
    core.too_slow(b"c2")
    assert core.sessions.ended["too_slow"] == 1
    assert out.router[-1][0] == {"t": "offline", "uin": 2, "device": 0, "broker": "b1"}


def test_one_session_cannot_take_every_pending_slot_of_a_broker(tmp_path):
    """Found in review: one client pipelining syncs it never reads could hold the broker-wide
    budget; each session now has its own bound (BUSY: nothing was forwarded)."""
    core, out, secret = broker_core(tmp_path)
    d, sid = login(core, out, secret)
    limit = core.max_session_inflight
    for i in range(limit):
        assert d.one(b"c1", {"t": "sync", "rid": i, "sid": sid, "channel": "room", "after": 0}, 1.0) is None
    busy = d.one(b"c1", {"t": "sync", "rid": 999, "sid": sid, "channel": "room", "after": 0}, 1.0)
    assert busy["code"] == wire.Err.BUSY and busy["limit"] == limit
    _other, sid2 = login(core, out, secret, ident=b"c2", uin=2)
    assert d.one(b"c2", {"t": "sync", "rid": 1, "sid": sid2, "channel": "room", "after": 0}, 1.0) is None
    out.logic[0][2]({"t": "sync", "rid": 1})                           # one reply frees one slot
    assert d.one(b"c1", {"t": "sync", "rid": 1000, "sid": sid, "channel": "room", "after": 0}, 1.0) is None


def test_broker_core_delivers_to_every_session_of_the_recipients_but_the_sending_device(tmp_path):
    core, out, secret = broker_core(tmp_path)
    login(core, out, secret, ident=b"a0", uin=1, device=0)
    login(core, out, secret, ident=b"a1", uin=1, device=1)
    login(core, out, secret, ident=b"b0", uin=2, device=0)
    packed = wire.pack({"t": "msg", "channel": "room", "id": 1, "uin": 1, "device": 0, "text": "x"})
    assert core.deliver(packed, [1, 2, 3], 1, 0) == 2           # uin 3 has no session here
    assert sorted(ident for ident, _m in out.pushes) == [b"a1", b"b0"]
    assert core.deliver(packed, [1], 2, 0) == 2                   # another sender: both devices of 1
    assert core.counts["deliveries"] == 4


def test_a_dropped_link_keeps_its_logic_node_down_until_the_link_is_back(tmp_path):
    """A tick read late from the SUB after the link dropped must not make the owner look up
    again: a send would then wait for the request timeout instead of failing at once."""
    core, _out, _secret = broker_core(tmp_path)
    core.owners.on_tick("l1", now=10.0)
    assert core.owners.up("l1", 10.1)
    core.owners.links.link_down("l1")                 # LogicFeed.link_down
    core.owners.on_tick("l1", now=10.2)               # queued before the cut, read after the drop
    assert not core.owners.up("l1", 10.3)
    core.owners.links.link_up("l1")                   # the link is back (monitor: connected)
    assert core.owners.up("l1", 10.4)           # its ticks count again
    assert not core.owners.up("l1", 12.0)       # ... while they keep coming


def test_heartbeats_keep_one_deadline_entry_per_session_and_a_shorter_interval_still_expires_in_time():
    t = SessionTable(factor=3)
    s = t.open(b"c1", 1, 0, "wired", 10.0, now=0.0)
    for beat in range(1, 101):                       # heartbeats: refreshed, interval confirmed
        t.check(b"c1", s.sid, now=float(beat))
        t.reschedule(s)
    assert len(t._deadlines) == 1                    # not one entry per heartbeat
    s.interval = 1.0                                 # the router asked for a shorter one
    t.reschedule(s)
    assert t.expired(now=102.0) == []                # 100 + 3 * 1 > 102
    assert t.expired(now=103.5) == [s]
