"""Heartbeat intervals, router sweep and the client's windows: pure logic, no sockets."""
from __future__ import annotations

from nodes.client.windows import Windows
from nodes.cluster.topology import DEFAULT_HEARTBEAT as HB
from nodes.protocol.heartbeat import Beat, initial_interval, next_interval
from nodes.router import RouterCore


def test_initial_interval_by_network_and_default_for_unknown():
    assert [initial_interval(HB, n) for n in ("wired", "wifi", "4g", "3g", "2g")] == [10, 30, 90, 90, 240]
    assert initial_interval(HB, "pigeon") == HB["default"] and initial_interval(HB, None) == HB["default"]


def test_interval_formula_over_a_sequence_of_heartbeats():
    assert next_interval(HB, "wifi", [0]) == 30 and next_interval(HB, "wifi", [0, 30]) == 30
    assert next_interval(HB, "wifi", [0, 30, 50]) == 0.8 * (30 + 20) / 2    # iv1 > iv2: shrink
    assert next_interval(HB, "wifi", [0, 20, 50]) == 1.2 * (20 + 30) / 2    # iv1 <= iv2: grow
    assert next_interval(HB, "wifi", [0, 1, 2]) == HB["min"]                 # clamped
    assert next_interval(HB, "wifi", [0, 1000, 2000]) == HB["max"]
    beat = Beat("b1", "wired", 0.0, HB)
    answers = [beat.beat(t, "wired", HB) for t in (10, 22, 30, 45)]
    assert answers == [10, 1.2 * (10 + 12) / 2, 0.8 * (12 + 8) / 2, 1.2 * (8 + 15) / 2]
    assert list(beat.times) == [10, 22, 30, 45]                              # last 4 kept
    assert beat.deadline == 45 + 3 * answers[-1]
    assert beat.beat(50, "2g", HB) == 240                                    # new network: start over


def test_router_sweep_takes_silent_sessions_offline_in_bounded_steps():
    """The router's own sweep is the backstop for a dead broker: (factor + 1) intervals + slack."""
    deltas = []
    r = RouterCore("r1", deltas.append, HB)
    backstop = (HB["session_timeout_factor"] + 1) * 10 + RouterCore.BACKSTOP_SLACK     # 42 s
    for uin in range(100):
        r.set_online(uin, 0, "b1", "wired", now=0.0)
    r.heartbeat(7, 0, "b1", "wired", now=20.0)              # 7 stays alive longer
    assert r.sweep(now=backstop - 1) == 0
    first = r.sweep(now=backstop + 1, budget=40)           # bounded per call (stale entries count)
    assert 39 <= first <= 40
    assert first + r.sweep(now=backstop + 1) == 99
    assert r.users_online() == 1 and 7 in r.online
    assert r.touch("b1", [[7, 0]], now=30.0) == []          # activity reported by the broker
    assert r.sweep(now=20.0 + backstop + 1) == 0
    assert r.sweep(now=30.0 + backstop + 0.1) == 1 and r.users_online() == 0
    assert deltas[-1] == {"t": "delta", "router": "r1", "epoch": r.epoch, "seq": r.seq,
                          "uin": 7, "device": 0, "broker": None}


def test_router_touches_and_heartbeats_keep_one_deadline_entry_per_session():
    r = RouterCore("r1", lambda m, broker=None: None, HB)
    r.set_online(7, 0, "b1", "wired", now=0.0)
    for t in range(1, 200):                                  # an active session, touched and beating
        assert r.touch("b1", [[7, 0]], now=float(t)) == []
        if t % 10 == 0:
            r.heartbeat(7, 0, "b1", "wired", now=float(t))
    assert len(r._deadlines) == 1                            # not one heap entry per report
    backstop = (HB["session_timeout_factor"] + 1) * r.beats[(7, 0)].interval + RouterCore.BACKSTOP_SLACK
    assert r.sweep(now=199.0 + backstop - 0.5) == 0
    assert r.sweep(now=199.0 + backstop + 0.5) == 1


def test_a_login_on_another_broker_moves_the_session_and_the_old_one_cannot_take_it_back():
    deltas, kicks = [], []
    r = RouterCore("r1", lambda m, broker=None: (deltas if broker is None else kicks).append(m), HB)
    r.set_online(1, 0, "b1", now=0.0)
    r.set_online(1, 0, "b2", now=1.0)
    assert r.online[1] == {0: "b2"} and deltas[-1]["broker"] == "b2" and kicks[-1]["broker"] == "b1"
    assert r.heartbeat(1, 0, "b1", "wired", now=2.0) is None         # stale session: told it moved
    assert r.touch("b1", [[1, 0]], now=2.0) == [[1, 0]]
    assert r.online[1] == {0: "b2"}
    assert r.set_offline(1, 0, "b1") is False              # the old broker's late goodbye


def msg(channel, i):
    return {"channel": channel, "id": i}


def ids(msgs):
    return [m["id"] for m in msgs]


def test_windows_deliver_in_order_hold_gaps_and_drop_duplicates():
    w = Windows()
    assert ids(w.accept(msg("a", 5))[0]) == [5]            # first sight starts the window
    assert w.accept(msg("a", 7)) == ([], True)             # gap: held
    assert w.accept(msg("a", 7)) == ([], True)             # duplicate of a held one
    assert w.accept(msg("a", 4)) == ([], True)             # below the window
    ready, gap = w.accept(msg("a", 6))
    assert ids(ready) == [6, 7] and gap is False
    assert w.duplicates == 2


def test_windows_jump_past_expired_and_never_skip_an_open_gap():
    w = Windows()
    w.watch("a", 0)
    w.accept(msg("a", 12))
    assert ids(w.jump("a", 10)) == []                      # 1..9 are gone; 10, 11 may still come
    assert w.last["a"] == 9
    assert ids(w.jump("a", 14)) == [12] and w.last["a"] == 13   # a held message is never lost
    w2 = Windows()
    w2.watch("b", 3)
    w2.accept(msg("b", 6))
    assert ids(w2.page("b", [], 1, 3)) == [] and w2.gap("b")    # a page up to 3 says nothing of 4, 5
    assert ids(w2.page("b", [], 1, 6)) == [6] and w2.last["b"] == 6
    assert w2.behind("b", 7) and not w2.behind("b", 6) and not w2.behind("zz", 100)


# --- limits and fragments ------------------------------------------------------------

import pytest  # noqa: E402
from hypothesis import given, strategies as st  # noqa: E402

from nodes.broker.limits import FragmentGroups, TokenBuckets  # noqa: E402
from nodes.client.fragments import Assembler, BadFragment, split_utf8  # noqa: E402
from nodes.protocol import wire  # noqa: E402


def test_token_bucket_burst_refill_and_retry_after():
    b = TokenBuckets(rate=1.0, burst=5)
    assert [b.take(1, 0.0) for _ in range(5)] == [0.0] * 5
    assert b.take(1, 0.0) == pytest.approx(1.0)
    assert b.take(1, 0.5) == pytest.approx(0.5)
    assert b.take(1, 1.0) == 0.0 and b.take(2, 1.0) == 0.0           # users are independent
    assert b.prune(100.0) == 2 and b.buckets == {}


def test_fragment_groups_accept_in_order_and_retries():
    g = FragmentGroups()
    assert g.check(9, 0, 3, ctime=10) == (True, False)
    g.accept(9, 0, 3, 10)
    assert g.check(9, 0, 3, ctime=10) == (False, True)               # retry of the start
    assert g.check(9, 1, 3, ctime=11) == (False, False)
    g.accept(9, 1, 3, 11)
    assert g.check(9, 1, 3, ctime=11) == (False, True)
    g.accept(9, 1, 3, 11)                                              # a retry changes nothing
    assert g.check(9, 0, 3, ctime=10) == (False, True)               # the whole group sent again
    assert g.check(9, 2, 3, ctime=12) == (False, False)
    for frag, ctime in (((9, 1, 3), 12), ((9, 2, 4), 12), ((9, 0, 3), 12), ((5, 1, 3), 12), ((9, 3, 3), 13)):
        with pytest.raises(wire.ProtocolError) as exc:
            g.check(*frag, ctime=ctime)
        assert exc.value.code == wire.Err.BAD_FRAGMENT
    for bad in ([1, 3, 3], [1, 0, 1], "x", [1, 0], [1, 0, True], [2**64, 0, 2], [1, 0, 101]):
        with pytest.raises(wire.ProtocolError) as exc:     # the header's shape: the schema's frag kind
            wire.KINDS["frag"](bad, "frag", 100)
        assert exc.value.code == wire.Err.BAD_FRAGMENT


@given(st.text(max_size=400), st.integers(4, 40))
def test_split_utf8_never_cuts_a_character(text, limit):
    pieces = split_utf8(text, limit)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= limit for p in pieces)


def test_assembler_joins_in_index_order_and_expires_incomplete_groups():
    a = Assembler(lifetime=10)
    base = {"channel": "c", "uin": 1, "device": 0}
    parts = [dict(base, id=5 + i, text=t, frag=[7, i, 3]) for i, t in enumerate(["ab", "c", "d"])]
    assert a.add(parts[0], 0) is None and a.add(parts[1], 0) is None
    assert a.add({"channel": "c", "id": 6, "text": "plain", "uin": 2, "device": 0}, 0)["text"] == "plain"
    whole = a.add(parts[2], 0)
    assert whole["text"] == "abcd" and whole["id"] == 7 and whole["ids"] == [5, 6, 7]
    assert a.add(dict(base, id=9, text="x", frag=[8, 0, 2]), 0) is None
    assert a.expire(5) == 0 and a.expire(11) == 1 and a.groups == {}


@pytest.mark.parametrize("frag", [[1, [0], 2], [1, 2, 2], [1, 0, 1], [1, 0], "x", [1, -1, 2], [1, True, 2],
                                  [1, 0, 10**6], None])
def test_assembler_refuses_malformed_headers_and_keeps_its_groups(frag):
    a = Assembler(lifetime=10)
    base = {"channel": "c", "uin": 1, "device": 0}
    assert a.add(dict(base, id=1, text="ab", frag=[7, 0, 2]), 0) is None
    bad = dict(base, id=2, text="zz", frag=frag)
    if frag is None:
        bad["frag"], bad["text"] = [7, 1, 2], 5            # a piece whose text is not a string
    with pytest.raises(BadFragment):
        a.add(bad, 0)
    assert a.add(dict(base, id=3, text="cd", frag=[7, 1, 2]), 0)["text"] == "abcd"
