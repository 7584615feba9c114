"""The replication rules without sockets or etcd: three logic cores on real stores, their
requests to each other delivered in order by a pump (what the rpc sockets do), the
coordinator's messages given by hand.

Checked: a send is acked only once a follower holds its record; followers apply in order
and answer a gap; a wiped follower is refilled by a snapshot; a replica that has promised a
newer epoch refuses the old leader, which stops leading and answers its waiting sends
UNAVAILABLE.
"""
from __future__ import annotations

import time

from test_cores import OnlineAll, Out

from nodes.cluster import topology
from nodes.cluster.placement import ShardPlacement
from nodes.logic import snapshots
from nodes.logic.core import LogicCore
from nodes.logic.replication import Replication
from nodes.protocol import wire
from nodes.storage import store as keys
from nodes.storage.store import Store


def three_logic_topology(tmp_path):
    ep = iter(range(20000, 20100))
    raw = {"local": True, "data_dir": str(tmp_path), "replication": 3, "shards": 1,
           "etcd": ["http://127.0.0.1:1"], "limits": {"id_block": 100},
           "channels": {"room": {"members": [1, 2, 3]}},
           "idcs": {"a": {"brokers": [{"id": "b1", "client": f"tcp://127.0.0.1:{next(ep)}",
                                       "rpc": f"tcp://127.0.0.1:{next(ep)}"}],
                          "logics": [{"id": n, "rpc": f"tcp://127.0.0.1:{next(ep)}",
                                      "pub": f"tcp://127.0.0.1:{next(ep)}"} for n in ("l1", "l2", "l3")],
                          "routers": [{"id": "r", "rpc": f"tcp://127.0.0.1:{next(ep)}",
                                       "pub": f"tcp://127.0.0.1:{next(ep)}"}],
                          "counters": [{"id": "c", "rpc": f"tcp://127.0.0.1:{next(ep)}"}]}}}
    return topology.parse(raw, str(tmp_path / "t.yaml"))


class Replica:
    """One logic node's core + replication on a real store; requests go through the cluster's pump."""

    def __init__(self, cluster, node_id, path):
        self.cluster, self.id = cluster, node_id
        self.store = Store(path)
        self.out = Out()
        placement = ShardPlacement(cluster.topo)
        self.core = LogicCore(node_id, cluster.topo, self.store, OnlineAll(), self.out, b"secret-secret-secret",
                              placement)
        self.repl = Replication(node_id, cluster.topo, self, placement)
        self.announced = 0

    # what Replication asks of its node
    def to_logic(self, peer, msg, callback, timeout):
        self.cluster.queue.append((self, peer, dict(msg, rid=0), callback))

    def reply(self, ident, msg):
        callback = self.cluster.waiting.pop(ident, None) if type(ident) is int else None
        if callback is not None:                    # a request answered after its handler returned
            self.cluster.later.append((callback, msg))
        else:
            self.out.reply(ident, msg)

    def announce(self):
        self.announced += 1

    def turn_end(self):
        """What LogicNode does at a loop turn's end."""
        self.core.assign(time.time())
        self.repl.stage()
        self.store.flush()
        self.core.commit(self.repl.release())

    def acks(self):
        return [m for _i, m in self.out.replies if m.get("t") == "ack"]


class Cluster:
    def __init__(self, tmp_path):
        self.topo = three_logic_topology(tmp_path)
        self.queue = []
        self.down = set()
        self.waiting = {}                           # request ident -> callback, answered later
        self.later = []                             # (callback, reply) of those answered
        self.idents = iter(range(1 << 30))
        self.nodes = {n: Replica(self, n, str(tmp_path / n)) for n in ("l1", "l2", "l3")}

    def pump(self):
        """Deliver every queued request in order; the peer's batch is written before it answers."""
        while self.queue or self.later:
            if self.later:
                callback, reply = self.later.pop(0)
                callback(reply)
                continue
            sender, peer, msg, callback = self.queue.pop(0)
            if peer in self.down:
                callback(wire.error(0, wire.Err.UNAVAILABLE, "down"))
                continue
            node, ident = self.nodes[peer], next(self.idents)
            try:
                reply = node.repl.handlers()[msg["t"]](ident, msg)
            except wire.ProtocolError as exc:
                reply = wire.error_from(0, exc)
            node.store.flush()
            if reply is None:
                self.waiting[ident] = callback
            else:
                callback(reply)
        for node in self.nodes.values():
            node.turn_end()

    def busy(self) -> bool:
        return bool(self.queue or self.later) or any(
            n.repl.snaps.queued or n.repl.snaps.streams or n.repl.snaps.installs for n in self.nodes.values())

    def settle(self, most: int = 10000) -> int:
        """Pump until nothing is on the way (a snapshot streams over many turns); turns taken."""
        for turns in range(1, most + 1):
            self.pump()
            if not self.busy():
                return turns
        raise AssertionError("the cluster did not settle")

    def elect(self, node_id, epoch):
        for node in self.nodes.values():
            node.repl.on_coordinator({"t": "lease", "until": time.monotonic() + 60})
            node.repl.on_coordinator({"t": "leaders", "map": {0: [node_id, epoch]}})
        self.settle()
        leader = self.nodes[node_id]
        assert leader.core.placement.owns("room"), "the winner does not serve the shard"
        return leader

    def lead(self, node_id, epoch):
        """``node_id`` elected, holding the room's first block of ids (100)."""
        leader = self.elect(node_id, epoch)
        leader.core.ids.on_ids("room", 1, 101)
        return leader


def send(node, uin, ctime, rid):
    return node.core.sends.send(b"client", {"rid": rid, "uin": uin, "device": 0, "channel": "room",
                                      "ctime": ctime, "text": f"{uin}:{ctime}"})


def stored(node, uin, ctime, rid):
    """send() and the end of the node's loop turn (the send is stored, its record sent)."""
    reply = send(node, uin, ctime, rid)
    node.turn_end()
    return reply


def room_rows(node):
    return dict(node.store.scan(keys.channel_prefix("room")))


def test_acked_only_when_a_follower_holds_the_record_and_followers_hold_the_same_rows(tmp_path):
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    assert send(leader, 1, 10, rid=1) is None
    leader.turn_end()                               # stored on the leader, record not yet answered
    assert leader.acks() == []
    c.pump()                                        # a follower holds it: acked
    assert [(a["rid"], a["id"]) for a in leader.acks()] == [(1, 1)]
    for i in range(5):
        stored(leader, 2, 20 + i, rid=10 + i)
        c.pump()
    assert len(leader.acks()) == 6
    assert room_rows(c.nodes["l2"]) == room_rows(leader) == room_rows(c.nodes["l3"])
    # reads on the leader never show what is not acked: a stored but unanswered send
    stored(leader, 3, 99, rid=99)
    sync = leader.core.reads.sync({"rid": 1, "uin": 1, "channel": "room", "after": 0}, time.time())
    assert [m["id"] for m in sync["msgs"]] == [1, 2, 3, 4, 5, 6] and sync["upto"] == 6


def test_a_wiped_follower_is_refilled_from_the_log_or_by_a_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "SNAP_PAGE", 300)              # several pages per snapshot
    c = Cluster(tmp_path)
    first = c.lead("l1", 5)
    for i in range(4):
        stored(first, 1, 10 + i, rid=i)
        c.pump()

    def wipe_and_send(node_id, leader, ctime):
        c.nodes[node_id].store.close()
        c.nodes[node_id] = Replica(c, node_id, str(tmp_path / f"{node_id}-{ctime}"))   # empty store
        c.nodes[node_id].repl.on_coordinator({"t": "leaders", "map": {0: [leader.id, leader.repl.lead[0].epoch]}})
        stored(leader, 1, ctime, rid=ctime)
        c.settle()
        assert room_rows(c.nodes[node_id]) == room_rows(leader)
        assert leader.repl.status()["0"]["lag"][node_id] == 0

    # the epoch's log starts from the empty shard: a wiped follower replays it
    wipe_and_send("l3", first, 50)
    assert first.repl.stats["snapshots_sent"] == 0
    # a new leader's log starts where the shard already held messages: a snapshot
    second = c.elect("l2", 7)
    wipe_and_send("l3", second, 60)
    assert second.repl.stats["snapshots_sent"] == 1
    assert sorted(keys.unpack_u64(k[-8:]) for k in room_rows(c.nodes["l3"])) == [1, 2, 3, 4, 5, 6]


def test_a_replica_that_promised_a_newer_epoch_refuses_the_old_leader(tmp_path):
    c = Cluster(tmp_path)
    old = c.lead("l1", 5)
    stored(old, 1, 10, rid=1)
    c.pump()
    assert len(old.acks()) == 1
    # a new leader's position request reaches both followers (the old leader did not see etcd yet)
    for f in ("l2", "l3"):
        reply = c.nodes[f].repl.on_rep_pos(b"x", {"rid": 0, "shard": 0, "epoch": 9})
        assert reply["t"] == "pos"
    stored(old, 2, 20, rid=2)
    c.pump()                                        # rep_no from both: it stops leading
    assert not old.core.placement.owns("room")
    replies = [m for _i, m in old.out.replies if m.get("rid") == 2]
    assert replies and replies[0]["t"] == "err" and replies[0]["code"] == "UNAVAILABLE"
    assert [a["rid"] for a in old.acks()] == [1]
    assert c.nodes["l2"].repl.stats["refused"] >= 1


def test_a_winner_behind_the_majority_takes_the_shard_from_the_replica_ahead(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "SNAP_PAGE", 300)
    c = Cluster(tmp_path)
    first = c.lead("l1", 5)
    c.down.add("l3")                                # l3 misses these records
    for i in range(5):
        stored(first, 1, 10 + i, rid=i)
        c.pump()
    assert len(first.acks()) == 5                   # l1 + l2 are a majority
    c.down.clear()
    behind = c.nodes["l3"]
    assert behind.repl.pos[0] < first.repl.pos[0]
    winner = c.elect("l3", 9)                       # l3 wins etcd's campaign although behind
    assert winner is behind and winner.repl.stats["snapshots_installed"] == 1
    assert room_rows(winner) == room_rows(c.nodes["l1"])
    stored(winner, 2, 99, rid=99)
    c.pump()
    assert [a["id"] for a in winner.acks()] == [6]  # ids go on after every acked one


def test_a_leader_whose_lease_ran_out_acks_nothing_even_with_a_follower_holding_the_record(tmp_path):
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    stored(leader, 1, 10, rid=1)
    leader.repl.on_coordinator({"t": "lease", "until": time.monotonic() - 0.001})   # no renewal in time
    c.pump()                                        # the followers hold the record ...
    assert c.nodes["l2"].repl.pos[0] == leader.repl.pos[0]
    assert leader.acks() == []                      # ... but it is not acked
    assert not leader.core.placement.owns("room")
    replies = [m for _i, m in leader.out.replies if m.get("rid") == 1]
    assert replies and replies[0]["code"] == "UNAVAILABLE"     # outcome unknown: the retry finds it
