"""Gathered turns (nodes/runtime/loop.py): a turn that read ``gather_frames`` frames makes the
next turn that finds work wait ``gather`` first, so that a busy node's turns carry more; a
lightly loaded node never waits.  The rule with a fake sleep, then in a real mesh."""
from __future__ import annotations

import itertools

import pytest
import zmq

from nodes.cluster import topology
from nodes.ops.localtopo import write_topology
from nodes.runtime.loop import Loop

_names = itertools.count()


@pytest.fixture
def pipe():
    """An inproc PAIR of sockets: what is sent is readable at once (no I/O thread)."""
    ctx = zmq.Context()
    name = f"inproc://gather-{next(_names)}"
    pull = ctx.socket(zmq.PAIR)
    pull.bind(name)
    push = ctx.socket(zmq.PAIR)
    push.connect(name)
    yield push, pull
    ctx.destroy(linger=0)


def turn_after(loop: Loop, push, frames: int) -> None:
    for i in range(frames):
        push.send(b"%d" % i)
    loop.turn(1000)


def test_only_a_turn_after_a_busy_one_waits_and_only_when_it_finds_work(pipe):
    push, pull = pipe
    slept, got = [], []
    loop = Loop(gather=0.01, gather_frames=3, sleep=slept.append)
    loop.add(pull, got.append)
    turn_after(loop, push, 2)                  # 2 < 3 frames: not busy
    turn_after(loop, push, 1)
    assert slept == [] and len(got) == 3
    turn_after(loop, push, 3)                  # read 3: busy from now on
    assert slept == []                         # (the turn before it was not)
    loop.turn(0)                               # a turn with nothing to read does not wait ...
    assert slept == [] and loop.gathered == 0
    turn_after(loop, push, 3)                  # ... and ends the busy spell: this one does not wait
    assert slept == []
    turn_after(loop, push, 1)                  # after a busy turn, one with work waits first
    assert slept == [0.01] and loop.gathered == 1
    turn_after(loop, push, 1)                  # that one read 1 frame: not busy any more
    assert slept == [0.01] and len(got) == 11


def test_a_gathered_turn_reads_what_arrived_during_the_wait_on_any_socket(pipe):
    push, pull = pipe
    ctx = zmq.Context.instance()
    other = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    name = f"inproc://gather-other-{next(_names)}"
    other[1].bind(name)
    other[0].connect(name)
    got = []
    try:
        loop = Loop(gather=0.01, gather_frames=2,
                    sleep=lambda _s: other[0].send(b"during the wait"))   # arrives while it waits
        loop.add(pull, got.append)
        loop.add(other[1], got.append)
        turn_after(loop, push, 2)                                          # busy
        turn_after(loop, push, 1)                                          # waits, then reads both
        assert loop.gathered == 1 and got[-2:] in ([[b"0"], [b"during the wait"]],
                                                   [[b"during the wait"], [b"0"]])
    finally:
        for sock in other:
            sock.close(0)


def test_a_connection_of_a_plain_fd_with_data_counts_as_a_frame(pipe):
    """WebSocket/HTTP connections are plain fds (Loop.add_fd): each ready for reading counts."""
    import socket
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    slept = []
    try:
        loop = Loop(gather=0.01, gather_frames=2, sleep=slept.append)
        for sock in (b, d):
            loop.add_fd(sock.fileno(), lambda _ev, s=sock: s.recv(100))
        a.send(b"x")
        c.send(b"y")
        loop.turn(1000)                     # two connections with data: busy
        a.send(b"z")
        loop.turn(1000)
        assert slept == [0.01]
        a.send(b"w")
        loop.turn(1000)                     # the last turn read one: not busy
        assert slept == [0.01]
    finally:
        for sock in (a, b, c, d):
            sock.close()


def test_gather_zero_never_waits(pipe):
    push, pull = pipe
    slept = []
    loop = Loop(gather=0.0, gather_frames=1, sleep=slept.append)
    loop.add(pull, lambda _frames: None)
    for _ in range(5):
        turn_after(loop, push, 4)
    assert slept == [] and loop.gathered == 0


def test_the_topology_limits_default_to_10_ms_after_32_frames_and_0_turns_it_off(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    topo = topology.load(write_topology(tmp_path / "a"))
    assert topo.limits["gather_ms"] == 10.0 and topo.limits["gather_frames"] == 32
    off = topology.load(write_topology(tmp_path / "b", limits={"gather_ms": 0}))
    assert off.limits["gather_ms"] == 0


def test_in_a_mesh_a_light_client_never_gathers_and_a_busy_node_does(make_mesh):
    """Defaults: one client sending one message at a time reads ~1 frame per turn, so no
    broker or logic node ever waits.  ``gather_frames: 1`` makes every turn busy: the nodes
    gather and every message still arrives once."""
    channels = {"g": {"members": [1, 2]}}
    light = make_mesh(brokers=1, logics=1, channels=channels)
    a, b = light.client(1), light.client(2)
    ids = [a.send("g", f"m{i}") for i in range(20)]
    got = [b.recv(5.0) for _ in ids]
    assert [m["id"] for m in got] == ids
    for node in ("broker", "logic"):
        for n in light.topo.ids(node):
            assert light.admin.status(n)["gathered"] == 0, n
    busy = make_mesh(brokers=1, logics=1, channels=channels, limits={"gather_ms": 2, "gather_frames": 1})
    a, b = busy.client(1), busy.client(2)
    ids = [a.send("g", f"m{i}") for i in range(20)]
    got = [b.recv(5.0) for _ in ids]
    assert [m["id"] for m in got] == ids and b.recv(0.2) is None
    for node in ("broker", "logic"):
        for n in busy.topo.ids(node):
            assert busy.admin.status(n)["gathered"] > 0, n
