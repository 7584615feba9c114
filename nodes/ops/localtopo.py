"""Throwaway local topologies on free loopback ports, for tests and benchmarks."""
from __future__ import annotations

import os
import random
import socket

import yaml

from nodes.protocol import auth


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """Free ports on 127.0.0.1, held open together so they differ.

    Picked at random *below* the kernel's ephemeral range: there, the
    outgoing connections of running nodes (which take ephemeral local ports)
    can neither take a port before its node binds it nor connect to
    themselves while they retry a port that is not bound yet.
    """
    low = _ephemeral_low()
    lo = max(1024, low - 20000) if low > 6000 else None
    socks: list = []
    ports: list = []
    try:
        while len(ports) < n:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randrange(lo, low) if lo else 0))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in socks:
            s.close()


def write_topology(directory, brokers=2, logics=2, routers=1, counters=1, relays=0, limits=None,
                   heartbeat=None, channels=None, metrics=False, curve=True, client_curve=False,
                   ws=False, replication=1, shards=None, etcd=None, jwt=None, push=None) -> str:
    """A local topology in ``directory`` with every endpoint on a free port (``metrics``: each
    node also gets a /metrics port; CURVE keys are made under ``directory``/keys when the mesh
    starts; ``ws``: brokers also serve WebSocket/HTTP clients, relays WebSocket ones; ``replication`` > 1: bin/mesh and
    Mesh start a local etcd unless ``etcd`` lists endpoints; ``jwt``: the topology's jwt section;
    ``push``: its push section, docs/push.md)."""
    count = brokers + logics + routers + relays + counters
    ports = iter(free_ports(2 * (brokers + logics + routers + relays) + counters + (count if metrics else 0)
                            + ((brokers + relays) if ws else 0)))

    def ep():
        return f"tcp://127.0.0.1:{next(ports)}"
    idc = {
        "brokers": [{"id": f"b{i}", "client": ep(), "rpc": ep()} for i in range(1, brokers + 1)],
        "logics": [{"id": f"l{i}", "rpc": ep(), "pub": ep()} for i in range(1, logics + 1)],
        "routers": [{"id": f"r{i}", "rpc": ep(), "pub": ep()} for i in range(1, routers + 1)],
        "counters": [{"id": f"c{i}", "rpc": ep()} for i in range(1, counters + 1)],
    }
    if ws:
        for b in idc["brokers"]:
            b["ws"] = f"ws://127.0.0.1:{next(ports)}"
    if relays:
        idc["relays"] = [{"id": f"m{i}", "client": ep(), "rpc": ep()} for i in range(1, relays + 1)]
        for r in idc["relays"] if ws else ():
            r["ws"] = f"ws://127.0.0.1:{next(ports)}"
    if metrics:
        for entries in idc.values():
            for entry in entries:
                entry["metrics"] = next(ports)
    # tests and benchmarks are not humans: a high send rate unless a test sets its own
    raw = {"cluster": "test", "local": True, "secret_file": "secret", "data_dir": "data",
           "limits": {"rate": 10000.0, "burst": 10000, "session_inflight": 10000, **(limits or {})},
           "heartbeat": heartbeat or {},
           "channels": channels if channels is not None else {"lobby": {"members": "1-100"}},
           "idcs": {"test": idc}, "curve": curve, "client_curve": client_curve}
    if replication != 1:
        raw["replication"] = replication
    if shards is not None:
        raw["shards"] = shards
    if etcd:
        raw["etcd"] = list(etcd)
    if jwt is not None:
        raw["jwt"] = jwt
    if push is not None:
        raw["push"] = push
    path = os.path.join(str(directory), "topology.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    auth.ensure_secret(os.path.join(str(directory), "secret"))
    return path
