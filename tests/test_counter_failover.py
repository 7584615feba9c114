"""Two routers and two counters per IDC without replication (no etcd): a dead one costs a
timeout, not the IDC's logins or ids (docs/ha.md "Routers and counters: two per IDC").

No sockets: the topology's choices, the counter's own check, the 500 ms failover rule with
a fake clock, and the id rule that makes any counter of the home IDC safe to ask.
"""
from __future__ import annotations

import os
import random

import pytest

from nodes.cluster.topology import load, parse
from nodes.counter import (
    ALLOC_FAILOVER,
    CounterCore,
    check_serves,
    counter_to_ask,
    counters_for,
)
from nodes.logic.channels import ChannelState
from nodes.protocol import wire
from nodes.runtime.rpc import Requests
from nodes.storage.store import Store


def two_idcs(routers=2, counters=2, replication=1):
    ports = iter(range(7000, 8000))

    def group(idc, letter, n, names):
        return [{"id": f"{idc}-{letter}{i}", **{name: f"tcp://127.0.0.1:{next(ports)}" for name in names}}
                for i in range(1, n + 1)]

    def nodes(idc):
        return {"brokers": group(idc, "b", 1, ("client", "rpc")),
                "logics": group(idc, "l", replication, ("rpc", "pub")),
                "routers": group(idc, "r", routers, ("rpc", "pub")), "counters": group(idc, "c", counters, ("rpc",))}
    return parse({"local": True, "replication": replication, "shards": 4,
                  "channels": {"eroom": {"members": "1-9", "idc": "east"}},
                  "idcs": {"east": nodes("east"), "west": nodes("west")}}, "/tmp/t.yaml")


def test_presence_is_held_by_two_routers_of_the_idc_without_replication():
    t = two_idcs()
    assert not t.replicated
    for uin in range(1, 40):
        assert sorted(t.routers_for(uin, "east")) == ["east-r1", "east-r2"]
        assert t.routers_for(uin, "east")[0] == t.router_for(uin, "east")    # the owner first
    one = two_idcs(routers=1)
    assert one.routers_for(5, "west") == ["west-r1"]


def test_the_counters_to_ask_are_the_home_idcs_own_first():
    t = two_idcs()
    for channel in ("eroom", "team@west", "a@east", "b@west"):
        home = t.home_of(channel)
        ids = counters_for(t, channel)
        assert ids[0] == t.counter_for(channel) and sorted(ids) == [f"{home}-c1", f"{home}-c2"]
    assert counters_for(two_idcs(counters=1), "eroom") == ["east-c1"]
    replicated = two_idcs(replication=2)           # marks in etcd: any counter of any IDC
    assert sorted(counters_for(replicated, "eroom")) == ["east-c1", "east-c2", "west-c1", "west-c2"]


def test_a_silent_counter_is_left_after_500_ms_for_the_other_one():
    """The rule the logic node applies (nodes/logic/node.py request_ids), on a fake clock."""
    t = two_idcs()
    first, timeout = counter_to_ask(t, "eroom", failures=0)
    assert (first, timeout) == (t.counter_for("eroom"), ALLOC_FAILOVER)
    sent = []

    class Outbox:
        def put(self, sock, key, packed):
            sent.append(sock)
    failures = []
    requests = Requests(2.0, 1 << 20, Outbox())
    requests.send(first, {"t": "alloc"}, lambda reply: failures.append(reply), timeout, now=100.0)
    assert requests.expire(now=100.0 + ALLOC_FAILOVER - 0.01) == 0 and not failures
    assert requests.expire(now=100.0 + ALLOC_FAILOVER) == 1
    assert failures[0]["t"] == "err" and failures[0]["code"] == "UNAVAILABLE"
    second, _ = counter_to_ask(t, "eroom", failures=1)
    assert second != first and second.startswith("east-")
    assert counter_to_ask(t, "eroom", failures=2)[0] == first          # and back when that one fails
    assert counter_to_ask(two_idcs(counters=1), "eroom", failures=1) == ("east-c1", None)


def test_either_counter_of_the_home_idc_serves_a_channel_and_no_other():
    t = two_idcs()
    for counter in ("east-c1", "east-c2"):
        check_serves(t, counter, "eroom")
    for counter in ("west-c1", "west-c2"):
        with pytest.raises(wire.ProtocolError) as refused:
            check_serves(t, counter, "eroom")
        assert refused.value.code == wire.Err.WRONG_OWNER


def test_switching_counters_any_way_never_gives_an_id_twice(tmp_path):
    """Two counters with their own marks, asked in any order, answers late, lost or answered
    by both: the logic node's ids stay unique and increasing.  A block starts at the asker's
    ``have`` or beyond, and a logic node takes only blocks beyond every id it holds."""
    stores = [Store(str(tmp_path / f"c{k}"), sync=False) for k in (1, 2)]
    try:
        cores = [CounterCore(s) for s in stores]
        rng = random.Random(7)
        ch = ChannelState("eroom", [1], queue=16)
        taken, asked, answers = [], [], []
        for _step in range(4000):
            op = rng.random()
            if op < 0.25:                                    # ask a counter (its turn comes later)
                asked.append((rng.randrange(2), ch.boundary()))
            elif op < 0.45 and asked:                        # a counter handles a request
                k, have = asked.pop(rng.randrange(len(asked)))
                answers.append(cores[k].alloc("eroom", rng.choice((1, 3, 8)), have))
            elif op < 0.6 and answers:                       # an answer arrives (or is lost)
                start, end = answers.pop(rng.randrange(len(answers)))
                if rng.random() < 0.8:
                    ch.add_lease(start, end)
            else:                                            # a send takes an id
                msg_id = ch.take_id()
                if msg_id is not None:
                    ch.last_id = msg_id
                    taken.append(msg_id)
        assert len(taken) > 200                               # ids did flow
        assert taken == sorted(set(taken))
        assert sum(c.resent for c in cores) > 0              # the lost-answer rule was exercised
    finally:
        for s in stores:
            s.close()


def test_the_multi_idc_example_gives_every_user_two_routers_and_every_channel_two_counters():
    """config/multi-idc.yaml, the documented default of a deployment over IDCs."""
    t = load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "multi-idc.yaml"))
    assert not t.replicated
    for idc in ("east", "west"):
        assert all(len(set(t.routers_for(u, idc))) == 2 for u in range(1, 50))
        assert all(r.startswith(idc + "-") for u in range(1, 50) for r in t.routers_for(u, idc))
    for channel in ("east-lobby", "west-lobby", "team@east", "team@west"):
        ids = counters_for(t, channel)
        assert len(ids) == 2 and all(c.startswith(t.home_of(channel) + "-") for c in ids)
