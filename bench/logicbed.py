"""A real LogicCore without sockets, shared by the logic-core benchmarks (bin/bench fanout, logicturn).

The core gets a real RocksDB Store, a presence replica fed by a real RouterCore's
snapshot (every member online on one of the brokers), one id block per channel large
enough never to ask the counter again, and ``Out`` as its out port: what the node
would queue on its sockets is counted here (acks per request id, deliveries published).
"""
from __future__ import annotations

import collections

from nodes.cluster import topology
from nodes.logic.core import LogicCore
from nodes.logic.presence import PresenceReplica
from nodes.protocol import wire
from nodes.router import RouterCore
from nodes.storage.store import Store


class Out:
    """The core's out port.  ``acks`` counts acks per request id, ``errors`` keeps every other
    reply, ``published`` counts the deliveries in the PUB frames.  With ``pack`` each reply and
    frame is packed as the node packs it before queueing it (nodes/runtime/node.py), so that
    cost is in the measurement; without, only the Python objects are built."""

    def __init__(self, pack: bool = False):
        self.pack = pack
        self.published = 0
        self.frames = 0
        self.acks: collections.Counter = collections.Counter()
        self.errors: list = []

    def reply(self, ident, msg):
        if self.pack:
            wire.pack(msg)
        if msg.get("t") == "ack":
            self.acks[msg["rid"]] += 1
        else:
            self.errors.append(msg)

    def publish(self, broker, msg):
        if self.pack:
            wire.pack(msg)
        self.frames += 1
        self.published += len(msg["items"])

    def request_ids(self, channel, n, have):
        pass


def topology_of(tmp: str, channels: dict[str, list[int]], brokers: int):
    """A one-IDC topology: one logic node ``l1`` owning ``channels`` (name -> member uins),
    ``brokers`` brokers b0, b1, ...; nothing listens on its endpoints."""
    raw = {"local": True, "data_dir": tmp,
           "limits": {"max_members": max(len(m) for m in channels.values()) + 1},
           "channels": {name: {"members": list(members)} for name, members in channels.items()},
           "idcs": {"a": {"brokers": [{"id": f"b{k}", "client": f"tcp://127.0.0.1:{100 + k}",
                                       "rpc": f"tcp://127.0.0.1:{200 + k}"} for k in range(brokers)],
                          "logics": [{"id": "l1", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"}],
                          "routers": [{"id": "r1", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                          "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}
    return topology.parse(raw, f"{tmp}/t.yaml")


def broker_of(uin: int, brokers: int) -> str:
    return f"b{uin % brokers}"


def online(uins, brokers: int):
    """A router with device 0 of every uin online on ``broker_of`` it, and a replica that took
    its snapshot; returns (router, replica, deltas): the router's later deltas land in
    ``deltas`` for the caller to apply."""
    deltas: list = []
    router = RouterCore("r1", lambda msg, *_to: deltas.append(msg) if msg["t"] == "delta" else None)
    replica = PresenceReplica(["r1"], lambda _router: None)
    for uin in uins:
        router.set_online(uin, 0, broker_of(uin, brokers))
    replica.start()
    replica.on_snapshot(router.snapshot())
    deltas.clear()
    return router, replica, deltas


def logic_core(path: str, topo, replica, out) -> tuple[LogicCore, Store]:
    """Logic node l1's core on a new Store at ``path``, its channels loaded, ids at hand."""
    store = Store(path)
    core = LogicCore("l1", topo, store, replica, out, b"s" * 32)
    core.load()
    for name in core.channels:
        core.ids.on_ids(name, 1, 1 << 40)
    return core, store
