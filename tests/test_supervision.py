"""bin/mesh as a supervisor: dead nodes come back, nodes die with it, stop/start/restart/--detach.

Real processes on free loopback ports; every test kills what it started
(the supervisor's process group) also when it fails.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import zmq
from conftest import write_topology
from test_cli import kill_group, run, start

from nodes.client.blocking import Client
from nodes.cluster import topology
from nodes.ops.admin import Admin
from nodes.ops.supervisor import Backoff, alive, read_pid
from nodes.protocol import wire


def wait_up(proc) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "mesh is up" in line:
            return lines
    raise AssertionError("".join(lines) + proc.stderr.read())


def status_rows(cfg) -> dict:
    r = run("mesh", "status", "-c", cfg, "--json")
    return {row["id"]: row for row in json.loads(r.stdout)}


def send_ok(topo, broker: str, uin: int, secret: bytes) -> int:
    from nodes.protocol import auth
    c = Client(topo.node(broker).endpoint("client"), timeout=2.0)
    try:
        c.login(auth.mint(secret, uin, 600), device=9)
        return c.send("lobby", f"after restart {time.time()}")
    finally:
        c.close(logout=False)


def test_a_killed_node_is_restarted_and_serving_again_and_status_shows_it(tmp_path):
    """The issue's figure is 3 s (measured: well under 1 s on an idle machine; docs/deploy.md);
    the bound here is generous, so a loaded CI machine cannot make it flaky."""
    cfg = write_topology(tmp_path)
    topo = topology.load(cfg)
    up = start("mesh", "up", "-c", cfg)
    try:
        wait_up(up)
        before = status_rows(cfg)["b1"]
        os.kill(before["pid"], signal.SIGKILL)
        killed = time.monotonic()
        secret = topo.read_secret()
        while True:                      # serving = a client can log in at b1 and get a send acked
            try:
                assert send_ok(topo, "b1", 1, secret) > 0
                break
            except Exception as exc:     # refused connection, timeout, UNAVAILABLE while it starts
                if time.monotonic() - killed > 20.0:
                    raise AssertionError(f"b1 not serving 20 s after SIGKILL: {exc!r}") from exc
        row = status_rows(cfg)["b1"]
        assert row["up"] and row["pid"] != before["pid"]
        assert row["restarts"] == 1 and row["last_exit"] == -signal.SIGKILL
        text = run("mesh", "status", "-c", cfg).stdout
        assert "restarts 1 (last exit -9)" in text
    finally:
        kill_group(up)


def test_killing_the_supervisor_takes_every_node_down(tmp_path):
    cfg = write_topology(tmp_path)
    up = start("mesh", "up", "-c", cfg)
    try:
        wait_up(up)
        pids = [row["pid"] for row in status_rows(cfg).values()]
        assert len(pids) == 6 and all(alive(p) for p in pids)
        os.kill(up.pid, signal.SIGKILL)          # the supervisor only: its nodes must follow
        up.wait()
        # SIGTERM from the kernel (PR_SET_PDEATHSIG): each node stops cleanly; 15 s is a liveness
        # limit for a loaded machine, not a figure (they are gone in well under a second idle)
        deadline = time.monotonic() + 15.0
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)                      # polling /proc for the nodes' exit
        assert [p for p in pids if alive(p)] == []
        # and the next `up` is not blocked by leftovers (pid file, control socket)
        again = start("mesh", "up", "-c", cfg)
        try:
            wait_up(again)
        finally:
            kill_group(again)
    finally:
        kill_group(up)


@pytest.mark.slow          # over 5 s (the fast lane: pytest -m 'not slow')
def test_detach_stop_start_restart(tmp_path):
    cfg = write_topology(tmp_path)
    topo = topology.load(cfg)
    r = run("mesh", "up", "-c", cfg, "--detach", "--log-format", "json")
    try:
        assert r.returncode == 0, r.stderr
        assert "mesh is up under supervisor pid" in r.stdout
        with open(os.path.join(topo.data_dir, "mesh.pid")) as f:
            sup_pid = int(f.read())
        assert alive(sup_pid)
        again = run("mesh", "up", "-c", cfg)
        assert again.returncode == 1 and "already runs" in again.stderr
        assert run("mesh", "stop", "-c", cfg, "l2").returncode == 0
        rows = status_rows(cfg)
        # the supervisor answered with l2 held: that it then never restarts a held node, however
        # long it runs, is its rule, checked with a fake clock (tests/test_timing_rules.py)
        assert not rows["l2"]["up"] and rows["l2"]["held"] and rows["l1"]["up"]
        assert run("mesh", "start", "-c", cfg, "l2").returncode == 0
        old = status_rows(cfg)["c1"]["pid"]
        r = run("mesh", "restart", "-c", cfg, "c1")
        assert r.returncode == 0 and "c1 is up" in r.stdout, r.stderr
        rows = status_rows(cfg)
        assert all(row["up"] for row in rows.values()) and rows["c1"]["pid"] != old
        bad = run("mesh", "restart", "-c", cfg, "nobody")
        assert bad.returncode == 2 and "no node with id 'nobody'" in bad.stderr
        pids = [row["pid"] for row in rows.values()]
        stop = run("mesh", "stop", "-c", cfg)
        assert stop.returncode == 0 and "mesh stopped" in stop.stdout
        assert not alive(sup_pid) and not any(alive(p) for p in pids)
        assert not os.path.exists(os.path.join(topo.data_dir, "mesh.pid"))
        # the node logs of a --log-format json mesh are JSON lines
        with open(os.path.join(topo.data_dir, "b1.log")) as f:
            first = json.loads(f.readline())
        assert first["node"] == "b1" and first["level"] == "INFO"
    finally:
        pid = read_pid(topo.data_dir)
        if pid:
            os.killpg(pid, signal.SIGKILL)


def test_status_of_a_stopped_mesh_answers_at_once_and_stop_without_supervisor_stops_nodes(make_mesh):
    m = make_mesh(brokers=1, logics=1)
    cfg = m.mesh.config
    pids = [st["pid"] for st in m.admin.status_all(m.topo.nodes, 5).values()]
    # no supervisor here (the test harness started the nodes): stop finds them by their status pid
    r = run("mesh", "stop", "-c", cfg)
    assert r.returncode == 0 and "stopped b1" in r.stdout
    for proc in m.mesh.procs.values():
        proc.wait(10)
    assert not any(alive(p) for p in pids)
    # every port is closed now: a status with a 60 s timeout must still return within the 20 s limit
    down = run("mesh", "status", "-c", cfg, "--timeout", 60, timeout=20)
    assert down.returncode == 1 and down.stdout.count("down") == 4


def test_status_waits_for_a_busy_node_and_asks_all_at_once(tmp_path):
    """A node that needs 1.5 s to answer is up; two such nodes still fit in one 3 s timeout."""
    cfg = write_topology(tmp_path, brokers=1, logics=1, curve=False)     # plain sockets play the nodes
    topo = topology.load(cfg)
    ctx = zmq.Context.instance()
    slow = {}
    try:
        for node_id in ("b1", "l1"):
            s = slow[node_id] = ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            s.bind(topo.node(node_id).endpoint("rpc"))
        admin = Admin(topo)
        got = {}
        import threading

        def answer_late():
            poller = zmq.Poller()
            for s in slow.values():
                poller.register(s, zmq.POLLIN)
            asked = {}
            while len(asked) < 2:
                for s, _ in poller.poll(5000) or []:
                    asked[s] = s.recv_multipart()
            time.sleep(1.5)                      # the "busy" node
            for s, (ident, frame) in asked.items():
                rid = wire.unpack(frame)["rid"]
                s.send_multipart([ident, wire.pack({"t": "status", "rid": rid, "pid": 1, "type": "x"})])
        t = threading.Thread(target=answer_late)
        t.start()
        got = admin.status_all(["b1", "l1", "c1"], timeout=3.0)
        t.join(10)
        assert got["b1"] and got["l1"] and got["c1"] is None
    finally:
        for s in slow.values():
            s.close(0)


def test_backoff_doubles_up_to_its_cap():
    b = Backoff(first=0.25, cap=2.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]
