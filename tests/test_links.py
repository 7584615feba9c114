"""nodes/runtime/links.py in one process: a watched link's drop reaches ``down(peer)``.

A real node object (no store, no CURVE) connects a DEALER to a ROUTER this
test binds; the node's own loop turns drain the monitor.  Issue 22 item 2:
the loop read a monitor socket one frame at a time, a monitor message has
two, so every event raised in ``parse_monitor_message`` and ``down`` was
never called (a send in flight over a cut WAN waited its whole timeout).
"""
from __future__ import annotations

import time

import zmq

from nodes.cluster.topology import load
from nodes.ops.localtopo import free_ports, write_topology
from nodes.runtime.links import Liveness, on_link_down
from nodes.runtime.node import Node


class Probe(Node):
    type = "counter"
    needs_store = False


def turns_until(node, predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        node.loop.turn(50)
    return True


def test_a_watched_link_that_drops_reaches_down_and_comes_back_up(tmp_path, caplog):
    topo = load(write_topology(tmp_path, brokers=1, logics=1, curve=False))
    node = Probe(topo, "c1")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    peer = node.ctx.socket(zmq.ROUTER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.bind(endpoint)
    try:
        sock = node.connect(zmq.DEALER, endpoint)
        seen = []
        on_link_down(node, {"far": sock}, lambda p: seen.append(("down", p)), lambda p: seen.append(("up", p)))
        assert turns_until(node, lambda: ("up", "far") in seen), f"no 'up' for the link: {seen}"
        peer.close()                                   # the far end goes away: the connection drops
        assert turns_until(node, lambda: ("down", "far") in seen), f"no 'down' for the link: {seen}"
        assert not [r for r in caplog.records if r.exc_info], "a monitor event raised in the loop"
    finally:
        node.close()


def test_liveness_grace_silence_and_a_stop_with_a_fake_clock():
    live = Liveness(down_after=1.5, grace=3.0, started=100.0)
    assert live.up("l1", 102.9) and not live.up("l1", 103.0)      # never heard: up during the grace
    live.tick("l1", 104.0)
    assert live.known("l1") and live.up("l1", 105.4) and not live.up("l1", 105.5)
    live.heard("l1", 105.0)                                         # any frame is proof of life
    assert live.up("l1", 106.4)
    live.tick("l1", 107.0, stopping=True)                          # it said it stops: down now
    live.heard("l1", 107.1)                                         # a late delivery does not undo it
    assert not live.up("l1", 107.2)
    live.tick("l1", 108.0)
    assert live.up("l1", 108.1)
