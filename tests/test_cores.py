"""Node cores without sockets: decoded requests in, replies and side effects out.

The stores are real RocksDB in temp dirs; the "out" objects just record what
the core asks to send.
"""
from __future__ import annotations

import os
import time
from array import array

import pytest

from nodes.cluster import topology
from nodes.counter import CounterCore
from nodes.logic.core import LogicCore
from nodes.logic.presence import PresenceReplica
from nodes.protocol import wire
from nodes.router import RouterCore
from nodes.storage import store as keys
from nodes.storage.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- counter ------------------------------------------------------------------

def test_counter_blocks_are_disjoint_and_survive_reopen(tmp_path):
    s = Store(str(tmp_path), sync=True)
    c = CounterCore(s)
    assert c.alloc("a", 10) == (1, 11)
    assert c.alloc("a", 5) == (11, 16)
    assert c.alloc("b", 1) == (1, 2)
    s.close()
    c2 = CounterCore(Store(str(tmp_path), sync=True))
    assert c2.alloc("a", 1) == (16, 17)
    with pytest.raises(wire.ProtocolError):
        c2.alloc("a", 0)


def test_counter_answers_a_lost_last_block_again_to_its_writer(tmp_path):
    s = Store(str(tmp_path), sync=True)
    c = CounterCore(s)
    assert c.alloc("a", 10, have=1) == (1, 11)
    assert c.alloc("a", 10, have=11) == (11, 21)       # the answer is lost; the writer restarts
    s.flush()
    s.close()
    c2 = CounterCore(Store(str(tmp_path), sync=True))
    assert c2.alloc("a", 10, have=11) == (11, 21)      # same block again: no id skipped
    assert c2.alloc("a", 10, have=21) == (21, 31)      # it got it: the next one
    assert c2.alloc("a", 10, have=5) == (31, 41)       # anything else: a new block, never an old id


def test_logic_asks_for_ids_beyond_what_it_holds(tmp_path):
    core, out, store = make_logic(tmp_path, id_block=10)
    send(core, 1, 100)
    turn(core, store)
    assert out.haves == [1]
    core.ids.on_ids("room", 1, 11)
    for i in range(6):
        send(core, 1, 200 + i)
    turn(core, store)
    assert out.haves == [1, 11]


# --- router and presence replica -------------------------------------------------

def test_router_publishes_numbered_deltas_and_ignores_late_disconnects():
    out, kicks = [], []
    r = RouterCore("r1", lambda m, broker=None: out.append(m) if broker is None else kicks.append((broker, m)))
    r.set_online(1, 0, "b1")
    r.set_online(1, 0, "b1")                     # no change, no delta
    r.set_online(1, 1, "b2")
    assert [d["seq"] for d in out] == [1, 2]
    assert r.set_offline(1, 0, "b2") is False    # device 0 is on b1, not b2
    r.set_online(1, 0, "b2")                     # moved to b2: b1 is told to end its session
    assert kicks == [("b1", {"t": "kick", "uin": 1, "device": 0, "broker": "b1", "by": "b2"})]
    assert r.heartbeat(1, 0, "b1", "wired", 1.0) is None    # the stale session cannot steal it back
    assert r.set_offline(1, 0, "b1") is False    # late disconnect from the old broker
    assert r.users_online() == 1
    assert r.reset_broker("b2") == 2
    assert r.online == {} and out[-1]["broker"] is None and r.users_online() == 0
    assert [d["seq"] for d in out] == list(range(1, 6))


def test_router_kicks_every_session_of_a_user_on_its_brokers():
    """The HTTP API's kick: one ``kick`` notice per session, to the broker holding it, with reason
    ``kicked``; the table keeps the sessions until each broker reports them offline."""
    out, kicks = [], []
    r = RouterCore("r1", lambda m, broker=None: out.append(m) if broker is None else kicks.append((broker, m)))
    r.set_online(1, 0, "b1")
    r.set_online(1, 3, "b2")
    r.set_online(2, 0, "b1")                     # another user: untouched
    deltas = len(out)
    assert r.kick_user(1, "fired") == [[0, "b1"], [3, "b2"]]
    assert kicks == [(b, {"t": "kick", "uin": 1, "device": d, "broker": b, "by": "api", "reason": "kicked",
                          "msg": "fired"}) for d, b in ((0, "b1"), (3, "b2"))]
    assert len(out) == deltas and r.online[1] == {0: "b1", 3: "b2"}
    assert r.set_offline(1, 0, "b1") and r.set_offline(1, 3, "b2")       # the brokers' reports
    assert r.kick_user(1, "again") == [] and len(kicks) == 2
    assert r.kick_user(99, "") == []


class Wiring:
    """A router core feeding a replica, with the ability to lose deltas."""

    def __init__(self):
        self.deltas = []
        self.router = RouterCore("r1", self.deltas.append)
        self.asked = []
        self.replica = PresenceReplica(["r1"], self.asked.append)

    def deliver(self, skip=()):
        for i, d in enumerate(self.deltas):
            if i not in skip:
                self.replica.on_delta(d)
        self.deltas.clear()

    def answer_snapshot(self):
        assert self.asked
        self.asked.clear()
        self.replica.on_snapshot(self.router.snapshot())


def test_replica_follows_snapshot_then_deltas():
    w = Wiring()
    w.router.set_online(5, 0, "b1")
    w.deltas.clear()
    w.replica.start()
    w.router.set_online(6, 0, "b2")              # arrives before the snapshot answer
    w.deliver()
    w.answer_snapshot()
    assert w.replica.online == {5: {0: "b1"}, 6: {0: "b2"}}
    w.router.set_offline(5, 0, "b1")
    w.deliver()
    assert w.replica.online == {6: {0: "b2"}} and not w.asked


def test_replica_resnapshots_on_a_gap_and_on_a_tick_showing_it_is_behind():
    w = Wiring()
    w.replica.start()
    w.answer_snapshot()
    w.router.set_online(1, 0, "b1")
    w.router.set_online(2, 0, "b1")
    w.router.set_online(3, 0, "b1")
    w.deliver(skip={1})                          # lose seq 2
    assert w.asked == ["r1"]
    w.answer_snapshot()
    assert set(w.replica.online) == {1, 2, 3}
    w.router.set_online(4, 0, "b1")
    w.deliver(skip={0})                          # lost, and nothing follows ...
    assert not w.asked
    w.replica.on_tick(w.router.tick())           # ... but the tick shows seq 4
    assert w.asked == ["r1"]
    w.answer_snapshot()
    assert 4 in w.replica.online


def test_replica_resnapshots_when_the_router_restarts():
    w = Wiring()
    w.replica.start()
    w.router.set_online(1, 0, "b1")
    w.answer_snapshot()
    w.deltas.clear()
    w.router = RouterCore("r1", w.deltas.append)  # new epoch, empty state
    w.replica.on_tick(w.router.tick())
    assert w.asked == ["r1"]
    w.answer_snapshot()
    assert w.replica.online == {}


def test_brokers_for_groups_online_members():
    w = Wiring()
    w.router.set_online(1, 0, "b1")
    w.router.set_online(1, 1, "b2")
    w.router.set_online(2, 0, "b2")
    w.replica.start()
    w.answer_snapshot()
    groups = w.replica.brokers_for(array("I", [1, 2, 3]))
    assert sorted(groups["b1"]) == [1] and sorted(groups["b2"]) == [1, 2]


# --- logic ----------------------------------------------------------------------

class Out:
    def __init__(self):
        self.replies, self.published, self.allocs, self.haves = [], [], [], []

    def reply(self, ident, msg):
        self.replies.append((ident, msg))

    def publish(self, broker, msg):
        """Unfold a turn's frame into (broker, push with its recipients) per message."""
        assert msg["t"] == "msgs" and msg["logic"] in ("l1", "l2", "l3")    # brokers: a sign of life
        for packed, to, uin, device in msg["items"]:
            push = wire.unpack(packed)
            assert (push["uin"], push["device"]) == (uin, device)
            self.published.append((broker, dict(push, to=to)))

    def request_ids(self, channel, n, have):
        self.allocs.append((channel, n))
        self.haves.append(have)


class OnlineAll:
    version = 0

    def brokers_for(self, uins):
        return {"b1": list(uins)}


def one_logic_topology(tmp_path, **limits):
    raw = {"local": True, "data_dir": str(tmp_path), "limits": limits,
           "channels": {"room": {"members": [1, 2, 3]}},
           "idcs": {"a": {"brokers": [{"id": "b1", "client": "tcp://127.0.0.1:1", "rpc": "tcp://127.0.0.1:2"}],
                          "logics": [{"id": "l1", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"}],
                          "routers": [{"id": "r", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                          "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}
    return topology.parse(raw, str(tmp_path / "t.yaml"))


def make_logic(tmp_path, **limits):
    topo = one_logic_topology(tmp_path, **limits)
    out = Out()
    store = Store(str(tmp_path / "l1"))
    core = LogicCore("l1", topo, store, OnlineAll(), out, b"secret-secret-secret")
    core.load()
    return core, out, store


def leased_logic(tmp_path, **limits):
    """make_logic() with the room's first block of ids (1000) already granted."""
    core, out, store = make_logic(tmp_path, **limits)
    core.ids.on_ids("room", 1, 1001)
    return core, out, store


def turn(core, store):
    core.assign(time.time())
    store.flush()
    core.commit(core.take_committed())


def send(core, uin, ctime, text="x", channel="room", device=0, rid=1, ident=b"b"):
    return core.sends.send(ident, {"rid": rid, "uin": uin, "device": device, "channel": channel,
                             "ctime": ctime, "text": text})


def sent(core, store, count, texts=False):
    """``count`` sends of uin 1 at client times 100.. (texts "t0".. or all "x"), then a turn."""
    for i in range(count):
        send(core, 1, 100 + i, text=f"t{i}" if texts else "x")
    turn(core, store)


def test_sends_wait_for_the_first_lease_then_ack_in_order(tmp_path):
    core, out, store = make_logic(tmp_path, id_block=4)
    assert send(core, 1, 10, "a", rid=1) is None
    assert send(core, 2, 10, "b", rid=2) is None
    turn(core, store)
    assert out.allocs == [("room", 4)] and out.replies == []       # no ids yet: nothing acked
    core.ids.on_ids("room", 1, 5)
    turn(core, store)
    assert [(m["rid"], m["id"]) for _i, m in out.replies] == [(1, 1), (2, 2)]
    assert [m["id"] for _b, m in out.published] == [1, 2]
    assert out.published[0][1]["to"] == [1, 2, 3]
    assert out.allocs == [("room", 4), ("room", 4)]                # prefetched at half


def test_retry_stale_and_inflight_retry(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, rid=1)
    assert send(core, 1, 100, rid=2) is None                       # retry while in flight
    turn(core, store)
    assert [(m["rid"], m["id"]) for _i, m in out.replies] == [(1, 1), (2, 1)]
    assert len(out.published) == 1
    ack = send(core, 1, 100, rid=3)                                 # retry after the ack
    assert ack["t"] == "ack" and ack["id"] == 1
    assert send(core, 1, 99, rid=4) is None                        # an unseen time is a new message
    turn(core, store)
    assert out.replies[-1][1]["rid"] == 4 and out.replies[-1][1]["id"] == 2
    assert send(core, 1, 100, rid=5)["id"] == 1                     # the older one is still a retry
    with pytest.raises(wire.ProtocolError) as exc:
        send(core, 9, 1)
    assert exc.value.code == wire.Err.NOT_MEMBER
    with pytest.raises(wire.ProtocolError) as exc:
        send(core, 1, 1000, channel="nope")
    assert exc.value.code == wire.Err.NO_CHANNEL


def test_restart_continues_the_lease_and_keeps_dedup(tmp_path):
    core, out, store = make_logic(tmp_path, id_block=10)
    core.ids.on_ids("room", 1, 11)
    core.ids.on_ids("room", 11, 21)                                    # a prefetched second block
    sent(core, store, 12)
    store.close()
    core2, out2, store2 = make_logic(tmp_path, id_block=10)
    assert send(core2, 1, 111)["id"] == 12                          # dedup row survived
    send(core2, 2, 1)
    turn(core2, store2)
    assert out2.replies[-1][1]["id"] == 13                          # same blocks, no gap
    assert list(core2.channels["room"].leases) == [(11, 21)]


def test_leases_older_than_what_was_used_are_refused(tmp_path):
    core, out, store = make_logic(tmp_path)
    core.ids.on_ids("room", 1, 1001)
    core.ids.on_ids("room", 1001, 2001)
    core.ids.on_ids("room", 500, 600)                                  # overlaps: ignored
    assert list(core.channels["room"].leases) == [(1, 1001), (1001, 2001)]


def test_sync_pages_and_reports_first_and_last(tmp_path):
    core, out, store = leased_logic(tmp_path)
    sent(core, store, wire.SYNC_PAGE + 5, texts=True)
    page = core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": 0}, time.time())
    assert len(page["msgs"]) == wire.SYNC_PAGE and page["more"] is True
    assert page["first"] == 1 and page["last"] == wire.SYNC_PAGE + 5
    rest = core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": page["msgs"][-1]["id"]}, time.time())
    assert [m["text"] for m in rest["msgs"]] == [f"t{i}" for i in range(wire.SYNC_PAGE, wire.SYNC_PAGE + 5)]
    assert rest["more"] is False
    beyond = core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": 10**9}, time.time())
    assert beyond["msgs"] == [] and beyond["last"] == wire.SYNC_PAGE + 5


def test_message_rows_use_the_documented_key_layout(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 3, 77, text="layout", device=4)
    turn(core, store)
    raw = store.get(b"m" + bytes([4]) + b"room" + (1).to_bytes(8, "big"))
    uin, device, ctime, _stime, _expiry, text, frag = keys.decode(raw)
    assert frag is None
    assert (uin, device, ctime, text) == (3, 4, 77, "layout")
    ctime, channel, msg_id, stime = keys.decode(store.get(keys.dedup_key(3, 4)))
    assert (ctime, channel, msg_id) == (77, "room", 1) and stime > 0


def two_channel_logic(tmp_path, **limits):
    core, out, store = make_logic(tmp_path, **limits)
    core.members.create("room2", [1, 2])
    return core, out, store


def test_a_client_time_reused_for_another_channel_is_stale_not_a_retry(tmp_path):
    core, out, store = two_channel_logic(tmp_path)
    core.ids.on_ids("room", 1, 1001)
    core.ids.on_ids("room2", 1, 1001)
    send(core, 1, 100, channel="room")
    turn(core, store)
    with pytest.raises(wire.ProtocolError) as exc:
        send(core, 1, 100, channel="room2", text="different")
    assert exc.value.code == wire.Err.STALE
    assert core.reads.sync({"rid": 1, "uin": 1, "channel": "room2", "after": 0}, time.time())["msgs"] == []


def test_dedup_keeps_the_newest_when_pipelined_sends_finish_out_of_order(tmp_path):
    core, out, store = two_channel_logic(tmp_path)
    core.ids.on_ids("room", 1, 1001)                     # room2 has no ids yet
    send(core, 1, 200, channel="room2", rid=1)
    send(core, 1, 300, channel="room", rid=2)
    turn(core, store)
    core.ids.on_ids("room2", 1, 1001)
    turn(core, store)
    assert sorted(m["rid"] for _i, m in out.replies) == [1, 2]
    assert core.dedup.get(1, 0)[0] == 300
    assert keys.decode(store.get(keys.dedup_key(1, 0)))[0] == 300
    assert send(core, 1, 300, channel="room")["t"] == "ack"


def test_the_channel_queue_bounds_what_sync_returns(tmp_path):
    core, out, store = leased_logic(tmp_path, channel_queue=5)
    for i in range(8):
        send(core, 1, 100 + i)
        turn(core, store)
    page = core.reads.sync({"rid": 1, "uin": 2, "channel": "room", "after": 0}, time.time())
    assert [m["id"] for m in page["msgs"]] == [4, 5, 6, 7, 8] and page["first"] == 4
    store.close()
    core2, _out, _store = make_logic(tmp_path, channel_queue=5)
    assert list(core2.channels["room"].ring) == [4, 5, 6, 7, 8]


def test_dedup_rows_of_devices_silent_past_the_lifetime_are_pruned(tmp_path):
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, device=1)
    send(core, 2, 100, device=1)
    turn(core, store)
    now = time.time()
    assert core.retention.prune_dedup(now) == 0                       # fresh: kept
    send(core, 2, 200, device=1)                            # device 2/1 stays active
    turn(core, store)
    later = now + max(core.retention.lifetime, 3600) + 1
    core.store.put(keys.dedup_key(2, 1), keys.encode([200, "room", 3, int(later * 1000)]))
    core.store.flush()
    assert core.retention.prune_dedup(later, budget=1) == 1           # one row per call at this budget
    assert core.retention.prune_dedup(later, budget=1) == 0 and core.retention.dedup_cursor is None
    store.flush()
    assert core.dedup.get(1, 1) is None and store.get(keys.dedup_key(1, 1)) is None
    assert core.dedup.get(2, 1) == (200, 3)


def test_a_client_time_reused_for_another_text_is_stale_not_a_retry(tmp_path):
    """Found in review: a reused client time (a clock stepped back, a reinstalled device) was
    acked with another message's id and the new text was never stored."""
    core, out, store = leased_logic(tmp_path)
    send(core, 1, 100, text="first")
    with pytest.raises(wire.ProtocolError) as exc:
        send(core, 1, 100, text="other, while in flight")
    assert exc.value.code == wire.Err.STALE
    turn(core, store)
    assert send(core, 1, 100, text="first")["id"] == 1                # a true retry
    with pytest.raises(wire.ProtocolError) as exc:
        send(core, 1, 100, text="a different message")
    assert exc.value.code == wire.Err.STALE


def test_send_index_rows_go_with_the_message_lifetime_in_slices(tmp_path):
    core, out, store = leased_logic(tmp_path, message_lifetime=60)
    sent(core, store, 5, texts=True)
    now = time.time()
    assert core.retention.prune_sent(now) == 0                                  # all alive
    assert core.retention.prune_sent(now + 61, budget=2) == 2 and core.retention.prune_sent(now + 61, budget=2) == 2
    store.flush()                                                     # a turn ends between calls
    assert core.retention.prune_sent(now + 61) == 1 and core.retention.prune_sent(now + 61) == 0
    store.flush()
    assert store.get(keys.sent_key(1, 0, 100)) is None
    assert list(store.scan(b"x")) == [] and list(store.scan(b"e")) == []


def test_fanout_plans_follow_presence_deltas_per_uin(tmp_path):
    """Plans are patched from deltas (not recomputed on every change): after any mix of
    logins, moves, second devices and logouts the plan equals a fresh computation, a
    channel without the uin is untouched, and a snapshot still starts plans over."""
    import random
    topo = one_logic_topology(tmp_path)
    out, store = Out(), Store(str(tmp_path / "l1"))
    w = Wiring()
    w.router.publish = lambda m, *_to: w.deltas.append(m) if m["t"] == "delta" else None   # moves kick
    core = LogicCore("l1", topo, store, w.replica, out, b"secret-secret-secret")
    core.load()
    core.ids.on_ids("room", 1, 10**6)
    core.members.create("other", [3, 4])
    core.ids.on_ids("other", 1, 10**6)
    w.replica.start()
    w.answer_snapshot()
    room, other = core.channels["room"], core.channels["other"]
    rng = random.Random(7)
    for step in range(300):
        uin, device, broker = rng.choice([1, 2, 3]), rng.choice([0, 1]), rng.choice(["b1", "b2", "b3"])
        if rng.random() < 0.3:
            w.router.set_offline(uin, device, w.router.online.get(uin, {}).get(device, broker))
        else:
            w.router.set_online(uin, device, broker)
        untouched = dict(other.fanout or {})
        w.deliver()
        if uin not in other.members:
            assert (other.fanout or {}) == untouched
        send(core, 1, step + 1, ident=b"x")
        send(core, 4, step + 1, channel="other", ident=b"x")
        turn(core, store)
        for ch in (room, other):
            fresh = w.replica.brokers_for(ch.member_array)
            assert {b: sorted(u) for b, u in ch.fanout.items()} == {b: sorted(u) for b, u in fresh.items()}
    assert w.replica.version == 1                  # only the snapshot started plans over
    w.router.set_online(2, 0, "b4")
    w.deliver()
    out.published.clear()
    send(core, 1, 1000, ident=b"x")
    send(core, 4, 1000, channel="other", ident=b"x")
    turn(core, store)
    assert 2 in room.fanout["b4"]
    delivered = {(b, tuple(sorted(p["to"]))) for b, p in out.published}
    expected = {(b, tuple(sorted(u))) for ch in (room, other) for b, u in ch.fanout.items()}
    assert delivered == expected
    store.close()
