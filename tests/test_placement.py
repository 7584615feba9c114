"""nodes/cluster/placement.py: which logic node serves a channel (no sockets, no clock)."""
from __future__ import annotations

from test_cores import one_logic_topology
from test_replication_core import three_logic_topology

from nodes.cluster.placement import Placement, StaticPlacement, servers


def test_without_replication_the_rendezvous_owner_serves_whatever_is_heard(tmp_path):
    topo = one_logic_topology(tmp_path)
    p = Placement(topo)
    assert p.server("room") == topo.logic_for("room") == "l1"
    assert servers(topo, "room") == ["l1"]
    static = StaticPlacement(topo, "l1")
    assert static.owns("room") and static.leader("room") == "l1"
    assert not StaticPlacement(topo, "l2").owns("room")


def test_replicated_the_preferred_replica_until_a_leader_is_heard(tmp_path):
    topo = three_logic_topology(tmp_path)
    preferred = topo.replicas_of(topo.shard_of("room"))
    assert servers(topo, "room") == preferred
    p = Placement(topo)
    assert p.server("room") == preferred[0]
    other = preferred[1]
    p.on_leads(other, [(0, 3)])                     # a tick: it leads shard 0 at epoch 3
    assert p.server("room") == other
    p.on_leads(preferred[2], [(0, 2)])              # an older epoch does not win
    assert p.server("room") == other
    p.on_leads(other, [])                           # it no longer lists the shard: forgotten
    assert p.server("room") == preferred[0]


def test_a_wrong_owner_reply_names_the_leader_or_sends_back_to_the_preferred_replica(tmp_path):
    topo = three_logic_topology(tmp_path)
    preferred = topo.replicas_of(topo.shard_of("room"))
    p = Placement(topo)
    p.on_leads(preferred[0], [(0, 5)])
    p.moved("room", preferred[2])
    assert p.server("room") == preferred[2] and p.leaders[0] == (5, preferred[2])   # epoch kept
    p.on_leads(preferred[1], [(0, 4)])              # a tick older than the epoch known: ignored
    assert p.server("room") == preferred[2]
    p.moved("room", "nobody")                       # not a node: forget, ask the preferred replica
    assert p.server("room") == preferred[0]
