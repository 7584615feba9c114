"""Exactly-once across a step-down and a re-election (issue 22 item 1), on the cores.

A leader whose lease runs out while a record is written but not yet released
answers its sends UNAVAILABLE (outcome unknown); the client retries with the
same ctime.  Whoever leads next -- the same node at the same epoch (etcd kept
its key: the etcd raft leader died, not the logic node), the same node at a new
epoch, or another replica -- must answer the retry with the original id when the
send survived, and must store it once when it did not.  Three real stores, the
replication requests delivered by the pump of tests/test_replication_core.py;
the lease is a monotonic deadline given by hand (what the coordinator sends).
"""
from __future__ import annotations

import time

import pytest
from test_replication_core import Cluster, send, stored

from nodes.protocol import auth
from nodes.storage import store as keys


def lose_lease(node):
    """The coordinator's renewals stopped: the lease deadline is past (no step-down yet)."""
    node.repl.on_coordinator({"t": "lease", "until": time.monotonic() - 0.001})


def replies_to(node, rid):
    return [m for _i, m in node.out.replies if m.get("rid") == rid]


def rows_of(node, uin, ctime):
    """Ids of the room's stored messages sent by (uin, device 0) at ``ctime``."""
    out = []
    for key, raw in node.store.scan(keys.channel_prefix("room")):
        row = keys.decode(raw)                     # [uin, device, ctime, ...] (channels.Pending.record)
        if (row[0], row[1], row[2]) == (uin, 0, ctime):
            out.append(keys.unpack_u64(key[-8:]))
    return out


def retry(c, node, uin, ctime, rid):
    """The client's retry at ``node``, then turns and pumps until answered: the one answer."""
    immediate = send(node, uin, ctime, rid)
    node.turn_end()
    for _ in range(3):
        c.pump()
    answers = ([immediate] if immediate is not None else []) + replies_to(node, rid)
    assert len(answers) == 1, answers
    return answers[0]


def written_then_abandoned(c, reach):
    """l1 leads at epoch 5; a send (uin 1, ctime 10) is written and its record reaches the
    followers in ``reach``; the lease runs out before it is released: UNAVAILABLE."""
    leader = c.lead("l1", 5)
    stored(leader, 1, 9, rid=1)
    c.pump()
    assert [a["id"] for a in leader.acks()] == [1]
    c.down.update({"l2", "l3"} - set(reach))
    assert send(leader, 1, 10, rid=2) is None
    leader.turn_end()                              # written on l1, record shipped (queued)
    lose_lease(leader)
    c.pump()                                       # followers answer; release sees no lease
    c.down.clear()
    assert not leader.core.placement.owns("room")
    (answer,) = replies_to(leader, 2)
    assert answer["t"] == "err" and answer["code"] == "UNAVAILABLE"
    return leader


@pytest.mark.parametrize("reach", [("l2", "l3"), ("l2",), ()], ids=["all", "one", "none"])
@pytest.mark.parametrize("epoch", [5, 7], ids=["same-epoch", "new-epoch"])
def test_the_same_node_leading_again_answers_the_retry_with_the_original_id(tmp_path, epoch, reach):
    c = Cluster(tmp_path)
    leader = written_then_abandoned(c, reach)
    again = c.elect("l1", epoch)                   # the lease is renewed; etcd says l1 (again)
    assert again is leader
    answer = retry(c, again, 1, 10, rid=3)
    assert answer["t"] == "ack" and answer["id"] == 2, answer
    for node in c.nodes.values():
        assert rows_of(node, 1, 10) == [2], node.id
    stored(again, 1, 11, rid=4)                    # ids go on after it
    c.pump()
    assert replies_to(again, 4)[0]["id"] == 3


@pytest.mark.parametrize("reach", [("l2", "l3"), ("l2",), ()], ids=["all", "one", "none"])
def test_another_replica_leading_answers_the_retry_with_the_original_id(tmp_path, reach):
    """reach (): not on a majority and the old leader away -- the new leader never had it, the
    retry is stored anew, and the old leader's copy goes with the snapshot it installs on
    rejoining."""
    c = Cluster(tmp_path)
    written_then_abandoned(c, reach)
    c.down.add("l1")                               # the old leader is away: l2 (+ l3) decide
    new = c.elect("l2", 7)
    c.down.clear()
    answer = retry(c, new, 1, 10, rid=3)
    assert answer["t"] == "ack" and answer["id"] == 2, answer
    for node in c.nodes.values():
        assert rows_of(node, 1, 10) == [2], node.id


def test_the_dedup_row_keeps_the_newest_ctime_across_pipelined_turns_and_a_restart(tmp_path):
    """Two sends of one device in flight at once, the newer first (turn 1, not yet released
    when turn 2 stores the older): the leader's ``d`` row must stay at the newer ctime, or
    the node, restarted (its table read from ``d`` rows), takes the newer's retry for new."""
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    assert send(leader, 1, 20, rid=1) is None
    leader.turn_end()                              # record 1 shipped, not answered yet
    assert send(leader, 1, 15, rid=2) is None
    leader.turn_end()
    c.pump()
    assert sorted((a["rid"], a["id"]) for a in leader.acks()) == [(1, 1), (2, 2)]
    leader.store.close()                           # SIGKILL and restart of l1
    c.nodes["l1"] = restarted = type(leader)(c, "l1", str(tmp_path / "l1"))
    again = c.elect("l1", 7)
    assert again is restarted
    answer = retry(c, again, 1, 20, rid=3)
    assert answer["t"] == "ack" and answer["id"] == 1, answer
    for node in c.nodes.values():
        assert rows_of(node, 1, 20) == [1], node.id


def test_a_change_staged_in_the_turn_the_leader_stepped_down_is_not_written(tmp_path):
    """A membership change handled, then -- in the same loop turn -- etcd names another
    leader: no record carries the change, so it must not reach the store either (else this
    replica holds rows its position does not account for, and leads with them later)."""
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    before = dict(leader.store.scan(b"c"))
    token = auth.mint(b"secret-secret-secret", 0, scope="admin")
    reply = leader.core.members.channel_add({"rid": 7, "channel": "room", "members": [9], "auth": token},
                                            time.time())
    leader.repl.hold_reply("room", b"admin", reply)
    leader.repl.on_coordinator({"t": "leaders", "map": {0: ["l2", 7]}})
    leader.turn_end()
    (answer,) = replies_to(leader, 7)
    assert answer["t"] == "err" and answer["code"] == "UNAVAILABLE"
    assert dict(leader.store.scan(b"c")) == before
    c.elect("l1", 9)                               # leading again: the change is not there
    assert 9 not in leader.core.channels["room"].members
