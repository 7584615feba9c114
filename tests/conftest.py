"""Shared test support: topologies on free loopback ports, real meshes, logged-in clients.

Every mesh a test starts is closed by its fixture (SIGTERM, then SIGKILL),
also when the test fails.  Waiting is done on replies (status, presence),
never on fixed sleeps.
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from nodes.client.blocking import Client, ClientError
from nodes.ops.localtopo import free_ports, write_topology  # noqa: F401  (tests import them from here)
from nodes.ops.mesh import Mesh, MeshError
from nodes.protocol import auth
from nodes.runtime import curve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MeshHarness:
    """A running mesh plus helpers to log clients in and wait for presence."""

    def __init__(self, config: str):
        self.mesh = Mesh(config)
        self.topo = self.mesh.topo
        self.admin = self.mesh.admin
        self.clients = []

    def start(self):
        """Every node started and ready.  A start that fails stops what it started: callers
        that write ``h = MeshHarness(cfg).start()`` never get the harness to close."""
        try:
            self.mesh.start()
            self.mesh.wait_ready(30)
        except BaseException:
            self.close()
            raise
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
        return curve.client_endpoint(self.topo, self.topo.ids("broker")[index])

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
            time.sleep(0.02)                    # a poll interval: not a spin of requests at every logic node

    def owner_of(self, channel: str) -> str:
        return self.topo.logic_for(channel)


def tracebacks(mesh: Mesh) -> dict:
    """{node id: the first lines of its first traceback} over the logs of a mesh's nodes: a
    node logs one for every handler or timer that raised, which the mesh survives, so no
    outcome a test asserts shows it (issue 22: every monitor event of the brokers' link watch
    raised, unnoticed)."""
    found = {}
    for node_id in mesh.topo.nodes:
        path = mesh.log_path(node_id)
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        at = text.find("Traceback")
        if at >= 0:
            found[node_id] = "\n".join(text[at:].splitlines()[:12])
    return found


def assert_no_tracebacks(mesh: Mesh) -> None:
    found = tracebacks(mesh)
    assert not found, "tracebacks in node logs:\n" + "\n---\n".join(f"{n}: {t}" for n, t in sorted(found.items()))


def served(request, timeout: float = 10.0):
    """``request()``'s answer, asked again while it is UNAVAILABLE: the outcome the contract
    tells a client to retry (a broker may learn that a restarted logic node is back only from
    its next tick, after the harness saw both ready)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return request()
        except ClientError as exc:
            if exc.code != "UNAVAILABLE" or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def start_mesh(directory, started: list, **kwargs) -> MeshHarness:
    """Write a topology on free ports and start it; ``started`` gets every harness made.

    Free ports are picked at random and released before the nodes bind them, so
    another process (a parallel test run) can take one in between: a node that
    exits because its port is taken means new ports and another try, not a failure.
    """
    for attempt in range(3):
        harness = MeshHarness(write_topology(directory, **kwargs))
        started.append(harness)
        try:
            return harness.start()
        except MeshError:                  # start() has stopped its nodes
            logs = "".join(open(harness.mesh.log_path(n), errors="replace").read()
                           for n in harness.topo.nodes if os.path.exists(harness.mesh.log_path(n)))
            if "Address already in use" not in logs or attempt == 2:
                raise


@pytest.fixture
def make_mesh(tmp_path_factory):
    """Factory: start a mesh from write_topology(**kwargs); closed after the test."""
    started = []
    yield lambda **kwargs: start_mesh(tmp_path_factory.mktemp("mesh"), started, **kwargs)
    for harness in started:
        harness.close()


@contextlib.contextmanager
def running_mesh(tmp_path_factory, name: str, **kwargs):
    """A mesh from write_topology(**kwargs) in a fresh temp dir, closed on the way out."""
    started = []
    try:
        yield start_mesh(tmp_path_factory.mktemp(name), started, **kwargs)
    finally:
        for harness in started:
            harness.close()


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory):
    """One 2-broker, 2-logic mesh for the tests of a module that do not kill nodes."""
    with running_mesh(tmp_path_factory, "shared") as harness:
        yield harness
