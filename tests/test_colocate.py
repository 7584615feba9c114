"""Co-located logic nodes (issue 26, the hop; nodes/runtime/colocate.py): a broker process that
runs a logic node in a second thread, reached over inproc://.

The parsing of ``IMESH_COLOCATE`` without sockets; then a real mesh (b1+l1, b2+l2 in two
processes): deliveries exactly once across both brokers, and a SIGKILL of one co-located
process -- broker and logic at once -- loses nothing acked, and the restarted pair serves again.
"""
from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlsplit

import pytest
from conftest import MeshHarness, assert_no_tracebacks, served, write_topology

from nodes.runtime import colocate
from nodes.runtime.loop import Loop


def test_the_env_value_names_each_brokers_guests():
    assert colocate.guests_of("b1=l1, b2=l2", "b1") == ["l1"]
    assert colocate.guests_of("b1=l1,b1=l3", "b1") == ["l1", "l3"]
    assert colocate.guests_of("b1=l1", "r1") == []
    assert colocate.guests_of(None, "b1") == [] and colocate.guests_of("", "b1") == []
    for bad in ("b1", "b1=", "=l1", "b1:l1"):
        with pytest.raises(ValueError, match="HOST=GUEST"):
            colocate.guests_of(bad, "b1")
    assert colocate.inproc_endpoint("l1", "rpc") == "inproc://imesh/l1/rpc"
    assert colocate.thread_name("a-very-long-node-id") == "imesh-a-very-lo"      # the kernel's 15 bytes


class Guest:
    """A guest whose loop ends at once: by ``error`` when given, else stopped."""

    id = "l9"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def run(self, signals: bool = True) -> None:
        assert signals is False                     # only the main thread may install them
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("error", [None, RuntimeError("guest loop broke")])
def test_a_guest_that_ends_stops_its_host_and_says_whether_it_failed(error):
    """One process, one fate: the host's loop stops either way, and a failed guest is known,
    so the process exits non-zero (nodes/launch.py) and its supervisor sees a crash."""
    host = Loop()
    host.running = True
    thread = colocate.start_guest(Guest(error), host)
    thread.join(5)
    assert not thread.is_alive() and not host.running
    assert thread.failed is (error is not None)


def start_colocated(h: MeshHarness, monkeypatch, node_ids) -> None:
    monkeypatch.setenv(colocate.ENV, "b1=l1,b2=l2")
    h.mesh.start(node_ids)
    h.mesh.wait_ready(30)


def drain(client, channel: str, want: int, timeout: float = 10.0) -> list[str]:
    """The texts of ``channel``'s pushed messages until ``want`` arrived, then of any more that
    come within 0.5 s (duplicates); other pushes are left out."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += texts(client.recv(timeout=0.2), channel)
    while (msg := client.recv(timeout=0.5)) is not None:
        got += texts(msg, channel)
    return got


def texts(msg: dict | None, channel: str) -> list[str]:
    return [msg["text"]] if msg is not None and msg.get("channel") == channel and "text" in msg else []


def tcp_peers(pid: int) -> set[int]:
    """The remote ports of the TCP connections a process holds (/proc: its socket inodes)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[9] in inodes and cols[3] == "01":          # ESTABLISHED
                ports.add(int(cols[2].rsplit(":", 1)[1], 16))
    return ports


def port(endpoint: str) -> int:
    return int(urlsplit(endpoint).port or 0)


def test_colocated_pairs_deliver_exactly_once_and_survive_sigkill(tmp_path, monkeypatch):
    h = MeshHarness(write_topology(str(tmp_path), brokers=2, logics=2))
    try:
        start_colocated(h, monkeypatch, [n for n in h.topo.nodes if h.topo.node(n).type != "logic"])
        assert "l1" not in h.mesh.procs
        for broker, logic in (("b1", "l1"), ("b2", "l2")):       # the logic node answers from the broker's pid
            assert h.admin.status(logic)["pid"] == h.mesh.procs[broker].pid
        # b1 reaches its own logic node in-process, the other one over TCP
        peers = tcp_peers(h.mesh.procs["b1"].pid)
        assert {port(h.topo.node("l2").endpoint(e)) for e in ("rpc", "pub")} <= peers
        assert not {port(h.topo.node("l1").endpoint(e)) for e in ("rpc", "pub")} & peers
        h.admin.channel("create", "room", [1, 2])
        one, two = h.client(1, broker=0), h.client(2, broker=1)
        acked = {}
        for i in range(20):
            acked[one.send("room", f"one {i}")] = f"one {i}"
            acked[two.send("room", f"two {i}")] = f"two {i}"
        assert drain(two, "room", 20) == [f"one {i}" for i in range(20)]     # each once, in order
        assert drain(one, "room", 20) == [f"two {i}" for i in range(20)]

        owner = h.owner_of("room")
        host = {"l1": "b1", "l2": "b2"}[owner]
        h.mesh.signal(host, signal.SIGKILL)                  # broker and logic die together
        assert h.mesh.procs[host].returncode == -signal.SIGKILL
        start_colocated(h, monkeypatch, [host])
        survivor = two if host == "b1" else one
        back = h.client(1 if host == "b1" else 2, broker=0 if host == "b1" else 1)
        page = served(lambda: back.sync("room", 0))
        assert [(m["id"], m["text"]) for m in page["msgs"]] == sorted(acked.items())   # nothing acked lost
        new = served(lambda: back.send("room", "after the kill"))
        assert new == max(acked) + 1
        # push + pull (docs/protocol.md "Client duties"): the survivor's broker may hear the restarted
        # logic node's PUB a moment after its first frames (a SUB reconnects), then the push is
        # missed and the client's sync from its window has it -- once either way
        pushed = drain(survivor, "room", 1, timeout=2.0)
        pulled = [m["text"] for m in survivor.sync("room", max(acked))["msgs"]]
        assert pulled == ["after the kill"] and pushed in ([], pulled)
        again = back.send("room", "pushes resume")
        assert again == new + 1 and drain(survivor, "room", 1) == ["pushes resume"]
        assert_no_tracebacks(h.mesh)
    finally:
        h.close()
