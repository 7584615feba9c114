"""Shard snapshots streamed across loop turns (nodes/logic/snapshots.py), without sockets.

The three-replica harness of tests/test_replication_core.py, with a fake clock that
advances 1 ms for every row a snapshot reads or clears: a big shard must go out in many
turns of at most SNAP_SECONDS (20 ms) of reading each, sends acked while it streams must
reach the follower after it, and the follower must hold, when the snapshot is in, exactly
the leader's rows at the snapshot's position, and in the end exactly the leader's rows.
"""
from __future__ import annotations

from test_replication_core import Cluster, Replica, send

from nodes.logic import snapshots
from nodes.storage import shards, store as keys
from nodes.storage.store import Store

ROW_COST = 0.001                 # fake seconds per row read or cleared


class RowClock:
    """A clock that moves only when rows are read: ROW_COST per row."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def charged(self, rows):
        for row in rows:
            if row is not None:
                self.now += ROW_COST
            yield row


def everything(store):
    return dict(store.scan(b""))


def fill(leader, c, n):
    """n messages in the room, 200 a turn, acked."""
    leader.core.ids.on_ids("room", 101, 101 + n + 1000)
    for i in range(n):
        send(leader, 1 + i % 3, 1000 + i, rid=i)
        if i % 200 == 199:
            leader.turn_end()
            c.pump()
    leader.turn_end()
    c.settle()


def wipe(c, node_id, tmp_path, leader, tag):
    c.nodes[node_id].store.close()
    node = c.nodes[node_id] = Replica(c, node_id, str(tmp_path / f"{node_id}-{tag}"))
    node.repl.on_coordinator({"t": "leaders", "map": {0: [leader.id, leader.repl.lead[0].epoch]}})
    return node


def test_a_big_shard_streams_in_bounded_turns_and_the_follower_ends_exactly_at_the_leader(tmp_path, monkeypatch):
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    fill(leader, c, 1500)
    second = c.elect("l2", 7)                       # its log starts at a full shard: a wiped node needs a snapshot
    clock = RowClock()
    monkeypatch.setattr(shards, "snapshot_rows", lambda *a, **k: clock.charged(SNAPSHOT_ROWS(*a, **k)))
    second.repl.snaps.clock = clock
    behind = wipe(c, "l3", tmp_path, second, "wiped")

    started, installed = [], []                     # the leader's rows when the snapshot starts; the follower's when in
    snaps = second.repl.snaps
    real_after, real_installed = snaps.after_flush, behind.repl.snaps.installed

    def after_flush():
        if snaps.queued:
            started.append((everything(second.store), second.repl.pos[0]))
        sent_before = snaps.stats["snapshot_pages"]
        t0 = clock.now
        real_after()
        per_turn.append((clock.now - t0, snaps.stats["snapshot_pages"] - sent_before))
    snaps.after_flush, per_turn = after_flush, []

    def on_installed(s):
        behind.store.flush()
        installed.append((everything(behind.store), behind.repl.pos[0]))
        real_installed(s)
    behind.repl.snaps.installed = on_installed

    acked_during = 0
    for n in range(10000):                          # a send acked in every turn while the snapshot streams
        rid = 100000 + n
        send(second, 2, 900000 + n, rid=rid)
        second.turn_end()
        c.pump()
        acked_during += any(a["rid"] == rid for a in second.acks())
        if installed:
            break
    c.settle()

    assert len(started) == 1 and len(installed) == 1
    reading = [t for t, pages in per_turn if pages]
    assert len(reading) >= 20                       # many turns, each reading for about 20 ms at most
    assert max(reading) <= snapshots.SNAP_SECONDS + 2 * ROW_COST
    assert acked_during >= 20                       # sends kept being acked (by l1 + l2) meanwhile
    # consistent: the follower held exactly the leader's rows at the snapshot's position
    leader_rows, leader_pos = started[0]
    follower_rows, follower_pos = installed[0]
    assert follower_pos == leader_pos and follower_rows == leader_rows
    # and, the sends of the stream shipped after it, it ends exactly where the leader is
    assert behind.repl.pos[0] == second.repl.pos[0] == c.nodes["l1"].repl.pos[0]
    assert everything(behind.store) == everything(second.store) == everything(c.nodes["l1"].store)
    assert second.repl.status()["0"]["lag"]["l3"] == 0


SNAPSHOT_ROWS = shards.snapshot_rows


def test_a_diverged_follower_clears_its_old_rows_a_slice_per_turn(tmp_path, monkeypatch):
    c = Cluster(tmp_path)
    leader = c.lead("l1", 5)
    fill(leader, c, 600)
    c.down.add("l3")                                # l3 misses what follows, then diverges on its own
    for i in range(5):
        send(leader, 3, 5000 + i, rid=5000 + i)
        leader.turn_end()
        c.pump()
    old = c.nodes["l3"]
    with old.store.uncaptured():                    # an unacked message of an old epoch, and its index row
        old.store.put(keys.message_key("room", 9999), keys.encode([9, 0, 1, 0, 1e12, "never acked", None]))
        old.store.put(keys.sent_key(9, 0, 1), keys.sent_value("room", 9999, 0))
    old.store.flush()
    clock = RowClock()
    monkeypatch.setattr(shards, "channel_rows", lambda *a, **k: clock.charged(CHANNEL_ROWS(*a, **k)))
    old.repl.snaps.clock = clock
    clearing_per_turn = []
    real_before = old.repl.snaps.before_flush

    def before_flush():
        t0 = clock.now
        real_before()
        clearing_per_turn.append(clock.now - t0)
    old.repl.snaps.before_flush = before_flush
    c.down.clear()
    second = c.elect("l2", 7)
    c.settle()
    assert old.repl.stats["snapshots_installed"] == 1
    assert len([t for t in clearing_per_turn if t]) >= 20          # the old rows went a slice per turn
    assert max(clearing_per_turn) <= snapshots.SNAP_SECONDS + 2 * ROW_COST
    assert old.store.get(keys.message_key("room", 9999)) is None
    assert old.store.get(keys.sent_key(9, 0, 1)) is None
    assert everything(old.store) == everything(second.store)


CHANNEL_ROWS = shards.channel_rows


def test_a_pinned_view_reads_the_store_as_it_was(tmp_path):
    store = Store(str(tmp_path / "s"))
    for i in range(100):
        store.put(keys.message_key("room", i), b"old")
    store.flush()
    view = shards.Pinned(store)
    store.put(keys.message_key("room", 5), b"new")
    store.put(keys.message_key("room", 500), b"new")
    store.delete(keys.message_key("room", 7))
    store.flush()
    store.db.flush()                                 # memtable to a file: the view still holds
    rows = dict(view.scan(keys.channel_prefix("room")))
    assert len(rows) == 100 and set(rows.values()) == {b"old"}
    assert view.get(keys.message_key("room", 7)) == b"old" and view.get(keys.message_key("room", 500)) is None


def test_a_page_stops_when_its_time_is_up():
    clock = RowClock()
    pager = shards.Pager(clock.charged([b"k%d" % i, b"v"] for i in range(1000)), clock)
    pages = []
    while not pager.done:
        start = clock.now
        pages.append(pager.page(1 << 30, 0.02))
        assert clock.now - start <= 0.02 + 2 * ROW_COST
    assert sum(map(len, pages)) == 1000 and len(pages) >= 40
