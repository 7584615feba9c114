"""The timing rules behind the process tests' outcomes, checked with a fake clock.

The tests that start meshes assert outcomes (nothing lost, order, who gets
what); the bounds on *when* (stall after a failover, UNAVAILABLE within a
second, refill of the rate limit, restart backoff, the WAN bed's delay) are
rules of cores that take ``now``, so they are checked here, to the
millisecond, whatever the machine's load.  The figures a real mesh reaches
are measured by the benchmarks (``bin/bench failover``, ``bin/bench idc``).

Where a process test's bound went:

- tests/test_ha.py, tests/test_ha_partition.py (stall after a leader's
  SIGKILL, clean stop or cut-off): the broker side here
  (``test_a_broker_fails_a_dead_leaders_sends_at_once_and_routes_to_the_new_one``,
  ``test_the_failover_budget_fits_in_5_s``); the leader side in
  tests/test_replication_core.py (an expired lease acks nothing and answers
  UNAVAILABLE); the figures: ``bin/bench failover [--wipe|--stop]``, and
  ``--victim counter-router`` for the counter and router kills.
- tests/test_idc.py (other IDC's channel UNAVAILABLE within 1 s of a cut,
  acked again after the heal): ``test_a_request_nobody_answers_...`` and the
  owner-down rule (tests/test_dispatch_sessions.py
  ``test_broker_core_fails_fast_for_an_owner_that_stopped_ticking``,
  ``test_a_dropped_link_keeps_its_logic_node_down_until_the_link_is_back``);
  the same-IDC ack figure: ``bin/bench idc`` (``same_idc_ack_p50_ms``).
- tests/test_limits_lifetime.py (burst then refill at 1/s):
  ``test_a_burst_at_one_instant_...``.
- tests/test_supervision.py (a held node is not restarted; backoff):
  ``test_the_supervisor_restarts_after_its_backoff_and_never_a_held_node``.
- tests/test_wan.py (the bed's 20 ms one way): ``test_the_wan_link_holds_...``.
- Session silence (heartbeat deadlines): tests/test_dispatch_sessions.py.
"""
from __future__ import annotations

import signal
import socket
import struct

from test_dispatch_sessions import Out, broker_core, login
from test_replication_core import three_logic_topology

from bench.wanbed import WanLink
from nodes.broker.core import BrokerCore
from nodes.broker.owners import OWNER_DOWN_AFTER
from nodes.cluster import coordinator
from nodes.logic.node import TICK_INTERVAL
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.ops.supervisor import Backoff, Supervisor
from nodes.protocol import wire
from nodes.runtime.outbox import Outbox
from nodes.runtime.rpc import Requests


def sender(core, out, secret, now=0.0):
    """A logged-in session of uin 1; returns send(ctime, now) -> the immediate reply (None: forwarded)."""
    d, sid = login(core, out, secret, now=now)

    def send(ctime, at):
        return d.one(b"c1", {"t": "send", "rid": ctime, "sid": sid, "channel": "room", "ctime": ctime,
                             "text": "x"}, at)
    return send


# --- rate limit: a burst, then the refill ------------------------------------------

def test_a_burst_at_one_instant_gets_burst_through_and_the_rest_is_refused_until_the_refill(tmp_path):
    """limits rate 1/s, burst 5 (the defaults): 20 new messages at one instant -> 5 forwarded
    (and stored), 15 RATE_LIMITED with retry_after 1 s; not one token more before that; one
    after it.  (Over the rate, client times newer than the owner's newest are refused at the
    broker; older ones may be retries: tests/test_retry_tokens.py.)"""
    core, out, secret = broker_core(tmp_path)
    assert (core.buckets.rate, core.buckets.burst) == (1.0, 5.0)
    send = sender(core, out, secret)
    replies = [send(ctime, 1.0) for ctime in range(1, 6)]
    assert replies == [None] * 5 and len(out.logic) == 5
    for _owner, msg, callback, _timeout in out.logic:             # the owner stores them
        callback(wire.reply("ack", 1, channel="room", device=0, ctime=msg["ctime"], id=msg["ctime"],
                            newest=msg["ctime"]))
    replies = [send(ctime, 1.0) for ctime in range(6, 21)]
    assert {r["code"] for r in replies} == {wire.Err.RATE_LIMITED} and len(out.logic) == 5
    assert replies[-1]["retry_after"] == 1.0
    assert send(100, 1.999)["retry_after"] == 0.001            # refilled 0.999 of a token: not yet
    assert send(101, 2.0) is None and len(out.logic) == 6        # the wait the server asked for
    assert send(102, 2.0)["code"] == wire.Err.RATE_LIMITED       # ... bought exactly one send
    assert core.stats[wire.Err.RATE_LIMITED] == 17
    # a quiet user's bucket fills up to the burst, not beyond
    core.owners.on_tick("l1", 100.0)
    assert [send(200 + i, 100.0) for i in range(5)] == [None] * 5
    assert send(300, 100.0)["code"] == wire.Err.RATE_LIMITED


# --- request timeouts: UNAVAILABLE at the deadline -------------------------------------

def test_a_request_nobody_answers_fails_unavailable_at_its_deadline_not_before(tmp_path):
    got, late = [], []
    requests = Requests(2.0, 1 << 20, Outbox(), on_late=late.append)
    peer = object()                                 # queued in the outbox, never flushed
    rid = requests.send(peer, {"t": "send"}, got.append, now=10.0)
    short = requests.send(peer, {"t": "hb"}, got.append, timeout=0.5, now=10.0)
    assert requests.expire(now=10.499) == 0 and got == []
    assert requests.expire(now=10.5) == 1 and got[0]["rid"] == short
    assert requests.expire(now=11.999) == 0 and len(got) == 1
    assert requests.expire(now=12.0) == 1
    assert got[1] == wire.error(rid, wire.Err.UNAVAILABLE, "owning node did not answer in time")
    requests.on_reply([wire.pack({"t": "ack", "rid": rid})])
    assert late and late[0]["rid"] == rid and len(got) == 2     # the answer after the timeout: late
    # the broker gives its sends the topology's request_timeout
    core, out, secret = broker_core(tmp_path / "b")
    assert sender(core, out, secret)(1, 0.5) is None
    assert out.logic[-1][3] == core.topo.limits["request_timeout"] == 2.0


# --- failover, the broker side ------------------------------------------------------

def test_a_broker_fails_a_dead_leaders_sends_at_once_and_routes_to_the_new_one(tmp_path):
    topo = three_logic_topology(tmp_path)
    out = Out()
    secret = b"a-secret-of-sixteen-bytes"
    core = BrokerCore("b1", topo, secret, out, now=0.0, idc="a")
    send = sender(core, out, secret)
    core.owners.on_tick("l1", 0.0, leads=[(0, 5)])
    assert send(1, 0.1) is None and out.logic[-1][0] == "l1"
    # l1 is SIGKILLed right after its tick: its sends go on to it until it counts as down ...
    assert send(2, OWNER_DOWN_AFTER - 0.001) is None and out.logic[-1][0] == "l1"
    # ... then fail at once (the client retries with the same ctime), none forwarded
    before = len(out.logic)
    reply = send(3, OWNER_DOWN_AFTER)
    assert reply["code"] == wire.Err.UNAVAILABLE and len(out.logic) == before
    # the first tick of the new leader (a newer epoch) routes the very next send to it
    core.owners.on_tick("l2", 2.6, leads=[(0, 6)])
    assert send(4, 2.6) is None and out.logic[-1][0] == "l2"
    core.owners.on_tick("l1", 3.0, leads=[(0, 5)])      # the old leader back with its old epoch: ignored
    assert send(5, 3.0) is None and out.logic[-1][0] == "l2"
    # a clean stop: the leader's last tick says so, it is down at that instant (no 1.5 s wait)
    core.owners.on_tick("l2", 3.5, leads=[(0, 6)], stopping=True)
    assert send(6, 3.5)["code"] == wire.Err.UNAVAILABLE
    core.owners.alive("l2", 3.6)                        # a reply read after its stopping tick: still down
    assert not core.owners.up("l2", 3.6)


def test_the_failover_budget_fits_in_5_s():
    """The stall after a leader's SIGKILL (docs/ha.md "Failover within 5 s") is the sum of these
    periods, each enforced by a core with its own clock: the old lease runs out (TTL, etcd), the
    surviving replicas see the key gone at their next poll round and the next in rank campaigns
    after its rank delay; the promoting leader collects positions (one round trip, asked again
    after PROMOTE_TIMEOUT if one is lost) and its next tick tells the brokers.  Brokers fail
    sends to the dead node meanwhile (OWNER_DOWN_AFTER < the lease, so before a new leader can
    exist).  The measured figure: bin/bench failover (stall_max_s, exits 1 above 5 s)."""
    from nodes.logic.replication import PROMOTE_TIMEOUT
    ttl, poll, rank = coordinator.LEASE_TTL, coordinator.ROUND, coordinator.RANK_DELAY
    assert OWNER_DOWN_AFTER < ttl
    assert ttl + poll + rank + PROMOTE_TIMEOUT + TICK_INTERVAL <= 5.0
    # and no split brain: the old leader stops acking before etcd can give the shard away
    assert 0 < coordinator.SAFETY < ttl


# --- supervision: backoff and held nodes ---------------------------------------------

def test_the_supervisor_restarts_after_its_backoff_and_never_a_held_node(tmp_path):
    """Real node processes (the counter: quick to start), the supervisor's clock given by hand."""
    mesh = Mesh(write_topology(str(tmp_path), brokers=1, logics=1))
    sup = Supervisor(mesh, Backoff(first=0.25, cap=2.0, stable=10.0))
    try:
        mesh.start(["c1"])
        first = mesh.procs["c1"]
        sup.check(100.0)
        assert sup.state["c1"].due is None                      # running: nothing to do
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        sup.check(100.0)                                         # seen: due after the first delay
        assert sup.state["c1"].due == 100.25 and sup.state["c1"].failures == 1
        sup.check(100.249)
        assert mesh.procs["c1"] is first
        sup.check(100.25)
        second = mesh.procs["c1"]
        assert second is not first and second.poll() is None and sup.state["c1"].restarts == 1
        second.send_signal(signal.SIGKILL)                       # died again within `stable`: doubled
        second.wait(10)
        sup.check(101.0)
        assert sup.state["c1"].due == 101.5 and sup.state["c1"].failures == 2
        sup.check(101.5)
        assert mesh.procs["c1"] is not second and sup.state["c1"].restarts == 2
        # stopped by the operator: held, never restarted however long the clock runs
        sup.do_stop("c1")
        held = mesh.procs["c1"]
        assert held.poll() is not None
        for now in (101.6, 102.0, 1000.0, 1e6):
            sup.check(now)
        assert mesh.procs["c1"] is held and sup.state["c1"].restarts == 2 and sup.state["c1"].due is None
    finally:
        mesh.close()


# --- the WAN bed's link ----------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def tcp_frame(payload: bytes) -> bytes:
    """An Ethernet frame with an IPv4 TCP segment carrying ``payload``."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), 0, 0, 64, 6, 0,
                     bytes(4), bytes(4))
    tcp = struct.pack(">HHIIBBHHH", 1, 2, 0, 0, 0x50, 0x18, 0, 0, 0)
    return bytes(12) + b"\x08\x00" + ip + tcp + payload


def test_the_wan_link_holds_each_frame_for_the_delay_counts_and_cuts():
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    (tap_a, host_a), (tap_b, host_b) = pairs
    clock = Clock()
    link = WanLink(tap_a.fileno(), tap_b.fileno(), 0.020, clock=clock)
    link.watch(b"MARK")

    def arrived(sock):
        try:
            return sock.recv(65536)
        except BlockingIOError:
            return None
    try:
        frame = tcp_frame(b"hello MARK")
        host_a.send(frame)
        clock.t = 5.0
        link.turn(wait_max=0)
        assert arrived(host_b) is None
        clock.t = 5.019
        link.turn(wait_max=0)
        assert arrived(host_b) is None                      # held for the whole one-way delay ...
        clock.t = 5.020
        link.turn(wait_max=0)
        assert arrived(host_b) == frame                     # ... and not longer
        assert link.data_frames() == 1 and link.crossed(b"MARK") == 1
        host_b.send(b"\xff" * 60)                           # not TCP data: forwarded, not counted
        link.turn(wait_max=0)
        clock.t = 5.040
        link.turn(wait_max=0)
        assert arrived(host_a) == b"\xff" * 60 and link.data_frames() == 1
        link.cut = True
        host_a.send(frame)
        link.turn(wait_max=0)
        clock.t = 60.0
        link.turn(wait_max=0)
        assert arrived(host_b) is None and link.counts["a>b dropped"] == 1
        link.cut = False                                    # healed: delayed again, not dropped
        host_a.send(frame)
        link.turn(wait_max=0)
        clock.t = 60.020
        link.turn(wait_max=0)
        assert arrived(host_b) == frame and link.crossed(b"MARK") == 2
    finally:
        for a, b in pairs:
            a.close()
            b.close()
