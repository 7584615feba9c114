"""Throwaway local topologies on free loopback ports, for tests and benchmarks."""
from __future__ import annotations

import os
import socket

import yaml

from . import auth


def free_ports(n: int) -> list[int]:
    """Ports the OS just handed out on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_topology(directory, brokers=2, logics=2, routers=1, counters=1, relays=0, limits=None,
                   heartbeat=None, channels=None) -> str:
    """A local topology in ``directory`` with every endpoint on a free port."""
    ports = iter(free_ports(2 * (brokers + logics + routers + relays) + counters))

    def ep():
        return f"tcp://127.0.0.1:{next(ports)}"
    idc = {
        "brokers": [{"id": f"b{i}", "client": ep(), "rpc": ep()} for i in range(1, brokers + 1)],
        "logics": [{"id": f"l{i}", "rpc": ep(), "pub": ep()} for i in range(1, logics + 1)],
        "routers": [{"id": f"r{i}", "rpc": ep(), "pub": ep()} for i in range(1, routers + 1)],
        "counters": [{"id": f"c{i}", "rpc": ep()} for i in range(1, counters + 1)],
    }
    if relays:
        idc["relays"] = [{"id": f"m{i}", "client": ep(), "rpc": ep()} for i in range(1, relays + 1)]
    # tests and benchmarks are not humans: a high send rate unless a test sets its own
    raw = {"cluster": "test", "local": True, "secret_file": "secret", "data_dir": "data",
           "limits": {"rate": 10000.0, "burst": 10000, **(limits or {})}, "heartbeat": heartbeat or {},
           "channels": channels if channels is not None else {"lobby": {"members": "1-100"}},
           "idcs": {"test": idc}}
    path = os.path.join(str(directory), "topology.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    auth.ensure_secret(os.path.join(str(directory), "secret"))
    return path
