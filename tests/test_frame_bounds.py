"""Hostile frames on internal sockets (issue 23 item 5): nesting and element counts are bounded
before anything is allocated, the sender gets BAD_FRAME, the log gets no traceback, the node's
peak memory stays bounded and it keeps serving.  And the metrics port takes a burst of connects.

The node tests run real processes and reach the internal (CURVE) sockets with the operator's
key, as tests/test_bad_input.py does.
"""
from __future__ import annotations

import os
import random
import select
import signal
import socket
import time
import urllib.request

import msgspec
import pytest
from test_bad_input import Raw

from bench.procstat import peak_rss_mb
from nodes.protocol import dispatch, wire


def nested(depth: int) -> bytes:
    """``depth`` arrays of one element each around an empty map: [[[...{}...]]]."""
    return b"\x91" * depth + b"\x80"


def empty_arrays(size: int) -> bytes:
    """A frame of ``size`` bytes: one array32 of empty arrays (one byte each, ~72 B decoded)."""
    n = size - 5
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


# --- the decoder, on bytes --------------------------------------------------------------------

def in_a_map(depth: int) -> bytes:
    """{"t": [[...{}...]]}: a frame of the right shape whose arrays and maps nest ``depth`` deep."""
    return b"\x81\xa1t" + nested(depth - 2)


@pytest.mark.parametrize("depth", [64 + 1, 1000, 100_000])
def test_deep_nesting_is_bad_frame_not_recursion(depth):
    with pytest.raises(wire.ProtocolError) as err:
        wire.unpack_internal(in_a_map(depth), 1 << 24)
    assert err.value.code == wire.Err.BAD_FRAME and "deep" in err.value.msg


def test_nesting_up_to_the_limit_is_decoded():
    assert wire.unpack_internal(in_a_map(64))[0]["t"] is not None


def test_too_many_containers_is_refused_before_decoding():
    with pytest.raises(wire.ProtocolError) as err:
        wire.unpack_internal(empty_arrays(8 * 2**20), 16 * 2**20, 1 << 20)
    assert err.value.code == wire.Err.BAD_FRAME and "arrays and maps" in err.value.msg


@pytest.mark.parametrize("frame", [
    b"\x92\x01",                        # truncated array
    b"\xdd\xff\xff\xff\xff\x80",        # claims 4G elements
    b"\x80\x80",                        # trailing bytes
    b"\xdb\x00\x00\x00\x09abc",         # str32 longer than the frame
    b"\xc1",                            # never used
    b"",
])
def test_malformed_frames_are_bad_frame(frame):
    with pytest.raises(wire.ProtocolError) as err:
        wire.unpack_internal(frame)
    assert err.value.code == wire.Err.BAD_FRAME


def _random_value(rng, depth=0):
    kind = rng.randrange(12 if depth < 4 else 8)
    sizes = [0, 1, 31, 32, 255, 256] + ([65535, 65536, 70000] if depth < 2 else [])
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
                           -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63])
    if kind == 2:
        return rng.random() * 1e6
    if kind in (3, 4):
        return "x" * rng.choice(sizes)
    if kind == 5:
        return b"b" * rng.choice(sizes)
    if kind in (6, 7):
        return rng.randrange(2**31)
    if kind in (8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 15, 16, 17]))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.choice([0, 1, 2, 15, 16, 17]))}


def test_the_scan_accepts_every_valid_frame_as_msgspec_decodes_it():
    rng = random.Random(23)
    ext = msgspec.msgpack.encode(msgspec.msgpack.Ext(5, b"12345678"))
    for _ in range(300):
        value = {"t": "x", "v": _random_value(rng), "e": msgspec.msgpack.Ext(1, b"a" * rng.randrange(40))}
        frame = wire.pack(value)
        assert wire.unpack_internal(frame, 1 << 24) == [msgspec.msgpack.decode(frame)]
    assert wire.unpack_internal(b"\x81\xa1t" + ext)[0]["t"].code == 5


def test_mangled_frames_are_decoded_or_bad_frame_never_another_error():
    rng = random.Random(5)
    for _ in range(3000):
        frame = bytearray(wire.pack({"t": "x", "v": _random_value(rng, 2)}))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        frame = bytes(frame[:rng.randrange(1, len(frame) + 1)])
        try:
            wire.unpack_internal(frame, 1 << 24)
        except wire.ProtocolError as exc:
            assert exc.code == wire.Err.BAD_FRAME


def test_a_refused_pub_frame_logs_once_per_window(caplog):
    pubs = dispatch.PubDispatcher({}, {}, fallback=lambda msg: None, source="frames-test")  # its own kind
    with caplog.at_level("INFO"):
        for _ in range(200):
            pubs.frame(nested(2000), 1 << 20)
    lines = [r for r in caplog.records if "bad frame" in r.getMessage() or "bad_frame" in r.getMessage()]
    assert 1 <= len(lines) <= 2 and not any(r.exc_info for r in caplog.records)


# --- real nodes -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from conftest import running_mesh
    with running_mesh(tmp_path_factory, "frames", brokers=1, logics=1, metrics=True) as harness:
        yield harness


def test_hostile_frames_get_bad_frame_no_traceback_and_bounded_memory(mesh):
    topo = mesh.topo
    for node in topo.nodes.values():
        r = Raw(node.endpoint("rpc"), mesh.admin.identity, node.id)
        try:
            for _ in range(50):                        # the issue saw hundreds of tracebacks
                reply = r.ask(nested(1000))
                assert reply["code"] == wire.Err.BAD_FRAME, reply
            assert r.ask_msg({"t": "status", "rid": 1})["t"] == "status"
        finally:
            r.close()
    logic = topo.ids("logic")[0]
    r = Raw(topo.node(logic).endpoint("rpc"), mesh.admin.identity, logic)
    try:
        for _ in range(3):
            reply = r.ask(empty_arrays(8 * 2**20), timeout=60)
            assert reply["code"] == wire.Err.BAD_FRAME, reply
        assert r.ask_msg({"t": "status", "rid": 2})["t"] == "status"
    finally:
        r.close()
    peak_mb = peak_rss_mb(mesh.mesh.procs[logic].pid)
    assert peak_mb < 200, f"logic node peaked at {peak_mb:.0f} MB"
    for node_id in topo.nodes:
        with open(mesh.mesh.log_path(node_id), errors="replace") as f:
            text = f.read()
        assert "Traceback" not in text and "RecursionError" not in text, f"{node_id}:\n{text[-3000:]}"
    c = mesh.client(5)
    c.send("lobby", "still serving")


def test_metrics_port_takes_a_burst_of_connects(mesh):
    """200 connects at once while the node is stopped: the kernel completes every handshake
    only if the listen backlog holds them (a backlog of 5 completes ~6); then all are answered."""
    spec = next(s for s in mesh.topo.nodes.values() if s.type == "logic")
    host, port = spec.metrics
    pid = mesh.mesh.procs[spec.id].pid
    os.kill(pid, signal.SIGSTOP)
    socks = []
    try:
        for _ in range(200):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            socks.append(s)
        pending, deadline = set(socks), time.monotonic() + 5
        while pending and time.monotonic() < deadline:     # a handshake is the kernel's, instant
            _, ready, _ = select.select([], list(pending), [], 0.1)
            pending -= {s for s in ready if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
        assert not pending, f"{len(pending)} of 200 connects not accepted by the listen queue"
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        for s in socks:
            head = s.recv(12)
            assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), head
    finally:
        for s in socks:
            s.close()
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
