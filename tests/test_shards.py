"""Shard attribution of a turn's writes and snapshot install (nodes/storage/shards.py), on real stores.

A logic core runs real sends into a capturing store; the captured writes
must land in the channel's shard, pruning deletes must stay local, and a
snapshot installed on a diverged replica must leave exactly the leader's
rows of the shard -- and nothing of another shard touched.
"""
from __future__ import annotations

import time

from test_cores import make_logic, send, turn

from nodes.storage import shards, store as keys
from nodes.storage.store import Store

SHARD = {"room": 7, "other": 3}


def shard_of(channel):
    return SHARD[channel]


def rows(store, prefix=b""):
    return dict(store.scan(prefix))


def test_a_turn_of_sends_is_one_shard_s_writes_and_pruning_stays_local(tmp_path):
    core, _out, store = make_logic(tmp_path, id_block=10)
    store.start_capture()
    core.ids.on_ids("room", 1, 11)                                  # the lease row is written here
    for i in range(3):
        send(core, 1 + i, 100 + i, rid=i)
    core.assign(time.time())
    ops = store.take_captured()
    by_shard = shards.split(ops, shard_of)
    assert list(by_shard) == [7]
    kinds = sorted({k[:1] for k, _v in by_shard[7]})
    assert kinds == [b"d", b"e", b"i", b"l", b"m", b"u", b"x"]   # + the senders' read cursors (u)
    assert len([k for k, _v in by_shard[7] if k[:1] == b"m"]) == 3
    # time-based pruning (e/x/d deletes) is every replica's own business
    pruning = [(keys.sent_key(1, 0, 100), None), (b"x" + bytes(24), None), (keys.dedup_key(1, 0), None)]
    assert shards.split(pruning, shard_of) == {}
    # a delete of a message row (expiry, trim) is the channel's
    assert shards.split([(keys.message_key("other", 5), None)], shard_of) == {3: [[keys.message_key("other", 5), None]]}


def test_a_snapshot_replaces_a_diverged_replica_s_shard_and_keeps_the_rest(tmp_path):
    core, _out, leader = make_logic(tmp_path / "a", id_block=10)
    core.ids.on_ids("room", 1, 11)
    for i in range(3):
        send(core, 1, 100 + i, rid=i)
    turn(core, leader)
    leader.flush()

    replica = Store(str(tmp_path / "b"))
    # diverged: an unacked message 4 of the old epoch, its send index row, and a newer dedup row
    replica.put(keys.channel_key("room"), keys.encode({"members": [1], "lifetime": None}))
    replica.put(keys.message_key("room", 4), keys.encode([9, 0, 999, 0, 1e12, "lost", None]))
    replica.put(keys.sent_key(9, 0, 999), keys.sent_value("room", 4, 0))
    replica.put(keys.dedup_key(1, 0), keys.encode([500, "other", 1, 0]))
    # another shard's rows must survive
    replica.put(keys.channel_key("other"), keys.encode({"members": [2], "lifetime": None}))
    replica.put(keys.message_key("other", 1), keys.encode([2, 0, 1, 0, 1e12, "keep", None]))
    replica.put(keys.sent_key(2, 0, 1), keys.sent_value("other", 1, 0))
    replica.flush()

    snap = shards.snapshot(leader, 7, shard_of)
    shards.install(replica, 7, shard_of, snap, (5, 42))
    replica.flush()

    assert rows(replica, keys.channel_prefix("room")) == rows(leader, keys.channel_prefix("room"))
    assert sorted(keys.unpack_u64(k[-8:]) for k in rows(replica, keys.channel_prefix("room"))) == [1, 2, 3]
    assert replica.get(keys.sent_key(9, 0, 999)) is None               # the lost message's index is gone
    assert replica.get(keys.sent_key(1, 0, 101)) == leader.get(keys.sent_key(1, 0, 101))
    assert replica.get(keys.channel_key("room")) == leader.get(keys.channel_key("room"))
    assert replica.get(keys.last_id_key("room")) == leader.get(keys.last_id_key("room"))
    assert keys.decode(replica.get(keys.dedup_key(1, 0)))[0] == 500     # the newer client time is kept
    assert replica.get(keys.message_key("other", 1)) is not None        # another shard: untouched
    assert replica.get(keys.sent_key(2, 0, 1)) is not None
    assert shards.get_position(replica, 7) == (5, 42)
    replica.close()
