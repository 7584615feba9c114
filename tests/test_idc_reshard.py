"""A live reshard in one IDC of two on the WAN bed: east gets a logic node, then loses it (issue 14).

The loopback version is tests/test_live_reshard.py; here the mesh spans two
IDCs 20 ms apart (bench/wanbed.py, bench/idcbed.py), each with one logic
node.  Channels are homed in east and in west (from the YAML and made at
runtime as ``name@idc``).  Eight users send in a closed loop, retrying
unknown outcomes with the same ctime (bench/failover.py Sender): four on
east's broker, four on west's two, some of them to east channels that
move, some across the WAN.  The senders and ``bin/mesh reshard`` run in the
root namespace, which reaches every IDC's nodes without crossing the WAN.

``east-l2`` is added on a host of its own in east (the command exits 3
until it runs), then removed, both under load.  Then: only east's channels
moved, east-l1 <-> east-l2 and nothing of west's; west's users were acked
during both moves and never had to retry; every acked message is stored
exactly once with its acked id, ids never go backwards, members are
intact, and a retry of a send acked before the moves gets its original id.
Needs root; marked slow.
"""
from __future__ import annotations

import time

import pytest
from test_live_reshard import USERS, check, wait_acks

from bench import wanbed
from bench.failover import Sender
from bench.idcbed import IdcMesh
from nodes.client.blocking import ClientError
from nodes.cluster import topology
from nodes.ops.admin import Admin
from nodes.protocol import auth
from nodes.runtime.curve import client_endpoint

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]

MEMBERS = list(USERS)
YAML_CHANNELS = {**{f"e{i}": {"members": MEMBERS, "idc": "east"} for i in range(6)},
                 **{f"w{i}": {"members": MEMBERS, "idc": "west"} for i in range(3)}}
RUNTIME = [f"r{i}@east" for i in range(6)] + [f"r{i}@west" for i in range(3)]
LIMITS = {"rate": 100000, "burst": 100000, "channel_queue": 100000}


def record_retries(sender: Sender) -> Sender:
    """Keep (time, code) of every request of the sender that did not get an ack."""
    request, sender.retried = sender.client.request, []

    def recorded(req, *args, **kwargs):
        try:
            return request(req, *args, **kwargs)
        except ClientError as exc:
            sender.retried.append((time.monotonic(), exc.code))
            raise
    sender.client.request = recorded
    return sender


def acks_between(sender: Sender, t0: float, t1: float) -> int:
    return sum(1 for t in sender.ack_times if t0 < t < t1)


def test_add_then_remove_an_east_logic_node_under_load_from_both_idcs():
    with IdcMesh(delay=0.020, channels=YAML_CHANNELS, limits=LIMITS) as idc:
        assert idc.bed.delay >= 0.020
        one, admin = idc.cfg, idc.mesh.admin
        for name in RUNTIME:
            admin.channel("create", name, MEMBERS)
        names = sorted(YAML_CHANNELS) + RUNTIME
        east = [n for n in names if idc.topo.home_of(n) == "east"]
        west = [n for n in names if idc.topo.home_of(n) == "west"]
        assert {idc.topo.logic_for(n) for n in east} == {"east-l1"}
        assert {idc.topo.logic_for(n) for n in west} == {"west-l1"}
        planned = topology.load(idc.variant(one, 2, add=("east-l2", "east")))    # start_logic writes it again
        moving = sorted(n for n in east if planned.logic_for(n) == "east-l2")
        staying = [n for n in east if n not in moving]
        assert len(moving) >= 2 and staying                              # some move, not all

        secret = idc.topo.read_secret()
        plan = [(1, "east-b1", moving[0]), (2, "east-b1", moving[1]), (3, "east-b1", staying[0]),
                (4, "east-b1", staying[-1]), (5, "west-b1", west[0]), (6, "west-b2", west[-1]),
                (7, "west-b1", moving[-1]), (8, "west-b2", staying[0])]     # 7, 8: across the WAN
        senders = []
        try:
            for uin, broker, channel in plan:
                senders.append(record_retries(Sender(client_endpoint(idc.topo, broker),
                                                     auth.mint(secret, uin, 3600), uin, channel)))
            for s in senders:
                s.start()
            westerners = [s for s in senders if s.channel in west]
            wait_acks(senders, 20)
            before = {s.uin: min(s.acked.items()) for s in senders}
            west_held = admin.status("west-l1")["channels"]

            two = idc.start_logic(one, "east-l2", "east", 2)       # the command exits 3 until it runs
            t0 = time.monotonic()
            added = idc.move(two, one)
            t1 = time.monotonic()
            assert added["live"] is True and added["version"] == 2
            assert sorted(m["channel"] for m in added["moved"]) == moving       # only east's, and those
            assert {(m["from"], m["to"]) for m in added["moved"]} == {("east-l1", "east-l2")}
            wait_acks(senders, 20)                                     # east-l2 serves the moved ones
            now = Admin(topology.load(two))
            assert now.status("east-l2")["channels"] == len(moving)
            assert now.status("west-l1")["channels"] == west_held      # west untouched
            assert all(acks_between(s, t0, t1) > 0 for s in westerners), "west's users stalled during the move"

            t2 = time.monotonic()
            three, back = idc.remove_logic(two, "east-l2", 3)          # east-l2 stopped after the move
            t3 = time.monotonic()
            assert sorted(m["channel"] for m in back["moved"]) == moving
            assert {(m["from"], m["to"]) for m in back["moved"]} == {("east-l2", "east-l1")}
            wait_acks(senders, 20)
            for s in senders:
                s.stop.set()
            for s in senders:
                s.join(40)
            final = Admin(topology.load(three))
            assert final.status("west-l1")["channels"] == west_held
            assert final.status("east-l1")["channels"] == len(east)
            assert all(acks_between(s, t2, t3) > 0 for s in westerners), "west's users stalled during the move"
            assert not [r for s in westerners for r in s.retried], "west's users had to retry"
            check(final, senders, before, names)
            print(f"moved {len(moving)} of {len(east)} east channels there in {added['seconds']} s and back in "
                  f"{back['seconds']} s; acks: {sum(len(s.acked) for s in senders)}; retries per uin: "
                  f"{ {s.uin: len(s.retried) for s in senders if s.retried} }")
        finally:
            for s in senders:
                s.close()
