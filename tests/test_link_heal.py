"""Links inside one IDC drop and come back (ZMTP heartbeats on every node-to-node socket).

test_an_in_idc_cut_heals: one logic node runs in a network namespace of its
own (tests/netcut.py), everything else on the host side of one veth pair.
Cutting the link makes its channels answer UNAVAILABLE while the other
logic node's keep acking; after the heal every path to and from it works
again (a send is acked: broker -> logic, logic -> counter; it is delivered:
logic PUB -> broker SUB) within 5 s.

test_a_connection_that_reached_no_node_is_made_again: the other way libzmq
stops reconnecting (nodes/runtime/links.py): a node's first connections reach
something that answers HTTP instead of ZMTP; once the real node binds there,
the mesh works.  Loopback only, no root.

The last test is one node object in this process: a request that cannot
leave fails at once.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
import yaml
import zmq
from conftest import MeshHarness
from netcut import ip, netns  # noqa: F401  (netns: the fixture)

from nodes.client.blocking import Client, ClientError
from nodes.cluster.topology import load
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import wait_for
from nodes.protocol import wire
from nodes.runtime.node import Node
from nodes.runtime.rpc import Requests

CHANNELS = {f"room{i}": {"members": "1-100"} for i in range(12)}


def owned_by(topo, node_id: str) -> str:
    return next(name for name in sorted(CHANNELS) if topo.logic_for(name) == node_id)


def place(path: str, addresses: dict) -> str:
    """Move every endpoint of the topology at ``path`` from 127.0.0.1 to its node's address
    (``addresses``: node id -> ip)."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    for entries in raw["idcs"]["test"].values():
        for entry in entries:
            for name, value in entry.items():
                if isinstance(value, str) and value.startswith("tcp://127.0.0.1:"):
                    entry[name] = value.replace("127.0.0.1", addresses[entry["id"]])
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


def answer(client: Client, channel: str, text: str):
    """A send's msg id, or the error code it got (one attempt; a TIMEOUT is a code too)."""
    try:
        return client.send(channel, text, timeout=2.0, retries=0)
    except ClientError as exc:
        return (exc.__cause__ or exc).code       # send() wraps the last retryable error in BUSY


@pytest.mark.slow
def test_an_in_idc_cut_heals(tmp_path, netns):  # noqa: F811
    ns, host_ip, ns_ip, link = netns
    path = write_topology(tmp_path, brokers=1, logics=2, channels=CHANNELS)
    place(path, {n: (ns_ip if n == "l2" else host_ip) for n in load(path).nodes})
    h = MeshHarness(path)
    try:
        h.mesh.wrap["l2"] = ["ip", "netns", "exec", ns]
        h.start()
        inside, outside = owned_by(h.topo, "l2"), owned_by(h.topo, "l1")
        sender, receiver = h.client(1), h.client(2)
        assert isinstance(answer(sender, inside, "before"), int)
        assert receiver.recv(5.0)["channel"] == inside

        ip("link", "set", link, "down")
        wait_for(lambda: answer(sender, inside, "cut") == wire.Err.UNAVAILABLE, 10,
                 f"{inside} (on the cut-off l2) answering UNAVAILABLE")
        assert isinstance(answer(sender, outside, "cut"), int), "l1's channel must keep acking"

        ip("link", "set", link, "up")
        healed = time.monotonic()
        acked = wait_for(lambda: _acked(sender, inside), 5.0, f"a send to {inside} acked within 5 s of the heal")
        assert delivered(receiver, inside, acked, healed + 5.0), f"{inside} #{acked} not delivered within 5 s"
        print(f"acked again {time.monotonic() - healed:.2f} s after the heal")
    finally:
        h.close()


def delivered(receiver: Client, channel: str, msg_id: int, deadline: float) -> bool:
    """Does ``channel``'s message ``msg_id`` reach ``receiver`` before ``deadline`` (other
    pushes, such as l1's delivery during the cut, are passed over)?"""
    while True:
        got = receiver.recv(max(0.0, deadline - time.monotonic()))
        if got is None:
            return False
        if (got["channel"], got["id"]) == (channel, msg_id):
            return True


def _acked(client: Client, channel: str):
    result = answer(client, channel, "healed")
    return result if isinstance(result, int) else None


class NotANode:
    """Listens on a port and answers every connection like an HTTP server refusing it."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.served = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2.0)
                    conn.recv(64)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                except OSError:
                    pass
            self.served += 1

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def test_a_connection_that_reached_no_node_is_made_again(tmp_path):
    path = write_topology(tmp_path, brokers=1, logics=1, channels=CHANNELS)
    h = MeshHarness(path)
    l1 = h.topo.node("l1")
    fakes = [NotANode(int(l1.endpoint(name).rsplit(":", 1)[1])) for name in ("rpc", "pub")]
    try:
        h.mesh.start([n for n in h.topo.nodes if n != "l1"])
        wait_for(lambda: all(f.served for f in fakes) or None, 20, "the broker reaching the fake l1")
        for fake in fakes:
            fake.close()
        fakes = []
        h.mesh.start(["l1"])
        h.mesh.wait_ready(30)                 # b1 hears l1's ticks: its SUB was connected again
        sender = h.client(1)
        assert isinstance(sender.send("room0", "hello", timeout=5.0), int)   # and its DEALER
    finally:
        for fake in fakes:
            fake.close()
        h.close()


def test_a_request_that_cannot_leave_fails_at_once_and_its_answer_leaves_in_the_same_flush(tmp_path):
    """A DEALER no connection takes a frame from (libzmq gave it up): the request waiting on it
    is answered UNAVAILABLE when the send fails, not at its timeout, and what that answer queues
    (a client's reply, here on a PAIR) is sent by the same flush."""
    topo = load(write_topology(tmp_path, brokers=1, logics=1, curve=False))

    class Probe(Node):
        type = "counter"
        needs_store = False
    node = Probe(topo, "c1")
    try:
        node.requests = Requests(60.0, 1 << 20, node.outbox)
        nowhere = node.ctx.socket(zmq.DEALER)          # no pipe: every NOBLOCK send raises EAGAIN
        client_end, answers = node.ctx.socket(zmq.PAIR), node.ctx.socket(zmq.PAIR)
        answers.bind("inproc://answers")
        client_end.connect("inproc://answers")
        got = []

        def on_reply(reply):
            got.append(reply)
            node.outbox.put(client_end, None, wire.pack(reply))
        node.requests.send(nowhere, {"t": "send"}, on_reply)
        node.outbox.flush()
        assert [r.get("code") for r in got] == [wire.Err.UNAVAILABLE] and len(node.requests) == 0
        assert answers.poll(1000), "the answer waited for another flush"
        assert wire.unpack_many(answers.recv(), 1 << 20, 16)[0]["code"] == wire.Err.UNAVAILABLE
    finally:
        node.close()
