"""Shared test support: topologies on free loopback ports, real meshes, logged-in clients.

Every mesh a test starts is closed by its fixture (SIGTERM, then SIGKILL),
also when the test fails.  Waiting is done on replies (status, presence),
never on fixed sleeps.
"""
from __future__ import annotations

import os
import socket
import time

import pytest
import yaml

from nodes import auth
from nodes.client import Client
from nodes.mesh import Mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def write_topology(directory, brokers=2, logics=2, routers=1, counters=1, limits=None,
                   heartbeat=None, channels=None) -> str:
    """A local topology in ``directory`` with every endpoint on a free port."""
    ports = iter(free_ports(2 * (brokers + logics + routers) + counters))

    def ep():
        return f"tcp://127.0.0.1:{next(ports)}"
    idc = {
        "brokers": [{"id": f"b{i}", "client": ep(), "rpc": ep()} for i in range(1, brokers + 1)],
        "logics": [{"id": f"l{i}", "rpc": ep(), "pub": ep()} for i in range(1, logics + 1)],
        "routers": [{"id": f"r{i}", "rpc": ep(), "pub": ep()} for i in range(1, routers + 1)],
        "counters": [{"id": f"c{i}", "rpc": ep()} for i in range(1, counters + 1)],
    }
    raw = {"cluster": "test", "local": True, "secret_file": "secret", "data_dir": "data",
           "limits": limits or {}, "heartbeat": heartbeat or {},
           "channels": channels if channels is not None else {"lobby": {"members": "1-100"}},
           "idcs": {"test": idc}}
    path = os.path.join(str(directory), "topology.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    auth.ensure_secret(os.path.join(str(directory), "secret"))
    return path


class MeshHarness:
    """A running mesh plus helpers to log clients in and wait for presence."""

    def __init__(self, config: str):
        self.mesh = Mesh(config)
        self.topo = self.mesh.topo
        self.admin = self.mesh.admin
        self.clients = []

    def start(self):
        self.mesh.start()
        self.mesh.wait_ready(30)
        return self

    def close(self):
        for c in self.clients:
            try:
                c.close(logout=False)
            except Exception:
                pass
        self.mesh.close()

    def token(self, uin: int, lifetime: float = 3600) -> str:
        return auth.mint(self.topo.read_secret(), uin, lifetime)

    def broker(self, index: int) -> str:
        return self.topo.of_type("broker")[index].endpoint("client")

    def client(self, uin: int, broker: int = 0, device: int = 0, wait_online: bool = True) -> Client:
        c = Client(self.broker(broker), timeout=5.0)
        self.clients.append(c)
        c.login(self.token(uin), device=device)
        if wait_online:
            self.wait_presence(uin, device, present=True)
        return c

    def wait_presence(self, uin: int, device: int, present: bool, timeout: float = 10.0) -> None:
        """Until every logic node's replica shows (uin, device) online (or offline)."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.admin.presence(uin)
            if all(v is not None and ((device in v) == present) for v in views.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"presence of {uin}/{device} not {present} everywhere: {views}")

    def owner_of(self, channel: str) -> str:
        return self.topo.logic_for(channel)


@pytest.fixture
def make_mesh(tmp_path_factory):
    """Factory: start a mesh from write_topology(**kwargs); closed after the test."""
    started = []

    def make(**kwargs) -> MeshHarness:
        directory = tmp_path_factory.mktemp("mesh")
        harness = MeshHarness(write_topology(directory, **kwargs))
        started.append(harness)
        return harness.start()
    yield make
    for harness in started:
        harness.close()


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory):
    """One 2-broker, 2-logic mesh for the tests of a module that do not kill nodes."""
    harness = MeshHarness(write_topology(tmp_path_factory.mktemp("shared")))
    try:
        harness.start()
        yield harness
    finally:
        harness.close()
