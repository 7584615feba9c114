"""fastpath.Fanout (the broker's client-socket batches on libzmq directly) against its pure-Python
twin -- nodes/runtime/outbox.py's Outbox and nodes/broker/core.py's ``recipients`` -- over real
ZeroMQ sockets: every peer must receive the same frames, every refused send (a full peer, an
unknown one) must reach the same callback, in the same order."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

import fastpath
from fastpath import Fanout
from nodes.broker.core import recipients
from nodes.protocol import wire
from nodes.runtime.outbox import ARRAY_HEADER, MAX_BATCH, Outbox
from nodes.runtime.sessions import Session
from nodes.runtime.webgate import WEB_IDENT

PEERS = [b"p%d" % i for i in range(6)]          # connected dealers
IDENTS = PEERS + [b"gone", WEB_IDENT + b"1"]      # plus a vanished peer and a web connection
HWM = 3                                          # inproc pipe: router SNDHWM + dealer RCVHWM frames


class Side:
    """A ROUTER_MANDATORY socket with its dealer peers, and what was refused or handed to the web."""

    def __init__(self, ctx: zmq.Context, name: str):
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.bind(f"inproc://{name}")
        self.dealers = {}
        for ident in PEERS:
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.IDENTITY, ident)
            d.setsockopt(zmq.RCVHWM, HWM)
            d.connect(f"inproc://{name}")
            self.dealers[ident] = d
        self.failed: list = []
        self.web: list = []

    def on_failed(self, sock, key, exc):
        assert sock is self.router
        self.failed.append((key, type(exc).__name__, exc.errno))

    def received(self) -> dict:
        got = {}
        for ident, d in self.dealers.items():
            frames = []
            while True:
                try:
                    frames.append(d.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            got[ident] = frames
        self.router.getsockopt(zmq.EVENTS)        # take in the readers' "writable again" now
        return got


def sessions_by_uin(layout) -> dict:
    """uin -> {ident: Session}: each ident is one session of (uin, device)."""
    by_uin: dict = {}
    for ident, (uin, device) in zip(IDENTS, layout):
        if uin:
            by_uin.setdefault(uin, {})[ident] = Session(ident, uin, device, "zmq", 30, 0.0)
    return by_uin


# sizes spread over the frame limits (plain st.binary stays a few bytes long)
payloads = st.builds(lambda n, b: bytes([b]) * n, st.integers(1, 300), st.integers(0, 255))
ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(IDENTS), payloads),
    st.tuples(st.just("put_many"), st.lists(st.sampled_from(IDENTS), max_size=8), payloads),
    st.tuples(st.just("deliver"), st.lists(st.integers(1, 4), max_size=4), st.integers(1, 4),
              st.integers(1, 2), payloads),
)
layouts = st.lists(st.tuples(st.integers(0, 4), st.integers(1, 2)), min_size=len(IDENTS), max_size=len(IDENTS))


def python_twin(side: Side, max_frame: int):
    out = Outbox(side.on_failed)
    out.frame_limits[side.router] = max_frame

    def deliver(by_uin, to, uin, device, packed):
        idents = recipients(by_uin, to, uin, device)
        for ident in idents:                       # nodes/broker/node.py push_many's split
            (side.web.append((ident, packed)) if ident.startswith(WEB_IDENT) else out.put(side.router, ident, packed))
        return len(idents)
    return out, deliver


def compiled(side: Side, max_frame: int):
    out = Outbox(side.on_failed)
    fanout = Fanout(side.router, max_frame, MAX_BATCH, ARRAY_HEADER, WEB_IDENT,
                    lambda ident, packed: side.web.append((ident, packed)))
    out.attach(side.router, fanout)
    return out, fanout.deliver


def run(side: Side, make, max_frame, layout, turns) -> tuple:
    out, deliver = make(side, max_frame)
    by_uin = sessions_by_uin(layout)
    frames, counts = [], []
    for turn in turns:
        for op in turn:
            if op[0] == "put":
                out.put(side.router, op[1], op[2])
            elif op[0] == "put_many":
                out.put_many(side.router, op[1], op[2])
            else:
                counts.append(deliver(by_uin, op[1], op[2], op[3], op[4]))
        frames.append(out.flush())
    return frames, counts, side.received(), side.failed, side.web


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_frame=st.sampled_from([120, 700, 1 << 20]), layout=layouts,
       turns=st.lists(st.lists(ops, min_size=10, max_size=60), min_size=1, max_size=3))
def test_every_peer_receives_what_the_python_twin_sends(max_frame, layout, turns):
    ctx = zmq.Context()
    try:
        py, c = Side(ctx, "py"), Side(ctx, "c")
        assert run(c, compiled, max_frame, layout, turns) == run(py, python_twin, max_frame, layout, turns)
    finally:
        ctx.destroy(linger=0)


def test_long_batches_split_at_max_batch_with_both_array_headers():
    """Runs of 15, 16 and 128+ messages: fixarray and array16 headers, MAX_BATCH bound."""
    ctx = zmq.Context()
    try:
        py, c = Side(ctx, "py"), Side(ctx, "c")
        for side in (py, c):
            side.router.setsockopt(zmq.SNDHWM, 1000)
        turns = [[("put", PEERS[0], wire.pack({"i": i})) for i in range(n)] for n in (15, 16, 2 * MAX_BATCH + 3)]
        layout = [(0, 1)] * len(IDENTS)
        got = run(c, compiled, 1 << 20, layout, turns)
        assert got == run(py, python_twin, 1 << 20, layout, turns)
        frames = got[2][PEERS[0]]
        assert [len(wire.unpack_internal(f, 1 << 20, 1024)) for f in frames] == [15, 16, MAX_BATCH, MAX_BATCH, 3]
    finally:
        ctx.destroy(linger=0)


def test_a_full_peer_and_a_vanished_one_reach_the_callback_as_with_pyzmq():
    """ROUTER_MANDATORY: EAGAIN (a full peer: the broker drops it as too slow) and EHOSTUNREACH."""
    ctx = zmq.Context()
    try:
        py, c = Side(ctx, "py"), Side(ctx, "c")
        big = [bytes([0xa5]) + b"x" * 100 for _ in range(3)]   # over the 120 B frame limit: alone
        turns = [[("put_many", [PEERS[1], b"gone"], b"\x01")] + [("put", PEERS[2], b) for b in big * 3]]
        got = run(c, compiled, 120, [(0, 1)] * len(IDENTS), turns)
        assert got == run(py, python_twin, 120, [(0, 1)] * len(IDENTS), turns)
        assert got[3] == [(b"gone", "ZMQError", zmq.EHOSTUNREACH), (PEERS[2], "Again", zmq.EAGAIN)]
        assert len(got[2][PEERS[2]]) == 2 * HWM and got[2][PEERS[1]] == [b"\x01"]
    finally:
        ctx.destroy(linger=0)


def test_a_closed_socket_refuses_like_pyzmq():
    ctx = zmq.Context()
    try:
        side = Side(ctx, "closed")
        out, _ = compiled(side, 1000)
        out.put(side.router, PEERS[0], b"\x01")
        side.router.close()
        assert out.flush() == 0
        assert side.failed == [(PEERS[0], "ZMQError", zmq.ENOTSOCK)]
    finally:
        ctx.destroy(linger=0)


def test_it_runs_on_the_libzmq_pyzmq_loaded():
    """The library was found loaded (RTLD_NOLOAD: never a second instance) and is pyzmq's version."""
    from fastpath import _fanout
    assert os.path.basename(_fanout.LIBZMQ).startswith("libzmq")
    with open("/proc/self/maps") as maps:
        assert sum(1 for line in maps if "/libzmq" in line and line.split()[-1] != _fanout.LIBZMQ) == 0


def test_missing_fanout_build_fails_loudly(tmp_path):
    """The other extensions built but not this one: no silent Python fallback."""
    src = os.path.dirname(fastpath.__file__)
    shutil.copytree(src, tmp_path / "fastpath", ignore=shutil.ignore_patterns("_fanout*.so", "*.c", "__pycache__"))
    # -S: without site-packages' editable-install finder, which would find the checkout's own
    # _fanout build through fastpath's __path__ (as tests/test_fastpath.py does)
    proc = subprocess.run([sys.executable, "-S", "-c", "import fastpath"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "_fanout" in proc.stderr and "pip install -e ." in proc.stderr
