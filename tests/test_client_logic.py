"""Heartbeat intervals, router sweep and the client's windows: pure logic, no sockets."""
from __future__ import annotations

from nodes.heartbeat import Beat, initial_interval, next_interval
from nodes.router import RouterCore
from nodes.topology import DEFAULT_HEARTBEAT as HB
from nodes.windows import Windows


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
    deltas = []
    r = RouterCore("r1", deltas.append, HB)
    for uin in range(100):
        r.set_online(uin, 0, "b1", "wired", now=0.0)
    r.heartbeat(7, 0, "b1", "wired", now=20.0)              # 7 stays alive longer
    assert r.sweep(now=29.0) == 0                          # deadline is 3 * 10 s
    first = r.sweep(now=31.0, budget=40)                   # bounded per call (stale entries count)
    assert 39 <= first <= 40
    assert first + r.sweep(now=31.0) == 99
    assert r.users_online() == 1 and 7 in r.online
    assert r.sweep(now=20.0 + 30.1) == 1 and r.users_online() == 0
    assert deltas[-1] == {"t": "delta", "router": "r1", "epoch": r.epoch, "seq": r.seq,
                          "uin": 7, "device": 0, "broker": None}


def test_router_heartbeat_from_another_broker_moves_the_session():
    deltas = []
    r = RouterCore("r1", deltas.append, HB)
    r.set_online(1, 0, "b1", now=0.0)
    r.heartbeat(1, 0, "b2", "wired", now=1.0)
    assert r.online[1] == {0: "b2"} and deltas[-1]["broker"] == "b2"
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


def test_windows_jump_past_expired_and_skip_unfillable_gaps():
    w = Windows()
    w.watch("a", 0)
    w.accept(msg("a", 12))
    assert ids(w.jump("a", 10)) == []                      # 1..9 are gone; 10, 11 may still come
    assert w.last["a"] == 9
    assert ids(w.jump("a", 14)) == [12] and w.last["a"] == 13   # a held message is never lost
    w2 = Windows()
    w2.watch("b", 3)
    w2.accept(msg("b", 6))
    assert ids(w2.skip_gap("b")) == [6] and w2.last["b"] == 6
    assert w2.behind("b", 7) and not w2.behind("b", 6) and not w2.behind("zz", 100)
