"""A logic node whose disk fills up (its data dir on a small tmpfs, real processes): it stays
up, acks nothing it could not store, refuses new sends with STORAGE_FULL, keeps serving sync,
heartbeats and member checks, says "disk full" in its status (bin/mesh status, --json,
metrics), and stores the same sends, once, after space returns -- also when it was started
on a full disk."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
from conftest import ROOT, MeshHarness, served, write_topology
from smallfs import fill, free, small_fs

from nodes.client.blocking import ClientError
from nodes.protocol import wire

TEXT = "x" * 1400               # a few sends fill what is left of a WAL page


@pytest.fixture
def full_disk_mesh(tmp_path):
    """A 1-logic mesh whose logic node keeps its data on a 16 MiB tmpfs; (harness, data dir)."""
    harness = MeshHarness(write_topology(str(tmp_path), brokers=1, logics=1, metrics=True))
    data = harness.topo.node_dir(harness.topo.ids("logic")[0])
    with small_fs(data, 16):
        try:
            yield harness.start(), data
        finally:
            harness.close()


def status(m) -> dict:
    return m.admin.status(m.topo.ids("logic")[0])


def wait_status(m, pred, what: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = status(m)
        if st is not None and pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"logic status never {what}: {st}")
        time.sleep(0.1)


def send(client, ctime: int, text: str = TEXT) -> dict:
    return client.request({"t": "send", "channel": "lobby", "ctime": ctime, "text": text}, timeout=5)


def stored(client) -> dict:
    """ctime -> [ids] of every message of lobby."""
    out, after = {}, 0
    while True:
        page = served(lambda after=after: client.sync("lobby", after))
        for msg in page["msgs"]:
            out.setdefault(msg["ctime"], []).append(msg["id"])
        after = page["upto"]
        if not page["more"]:
            return out


def scrape(m, node_id: str) -> str:
    host, port = m.topo.node(node_id).metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def mesh_status(m, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(ROOT, "bin", "mesh"), "status", "-c", m.mesh.config, *extra],
                          capture_output=True, text=True, timeout=30)


def test_a_full_disk_refuses_sends_serves_reads_and_resumes(full_disk_mesh):
    m, data = full_disk_mesh
    logic = m.topo.ids("logic")[0]
    pid = status(m)["pid"]
    c = m.client(1)
    acked = {}                                   # ctime -> id
    for ctime in range(1, 21):
        acked[ctime] = send(c, ctime)["id"]
    fill(data)
    refused = []
    for ctime in range(100, 3000):              # until the WAL needs a page the disk has not
        try:
            acked[ctime] = send(c, ctime)["id"]
        except ClientError as exc:
            assert exc.code == wire.Err.STORAGE_FULL, exc        # not BUSY, not UNAVAILABLE
            refused.append(ctime)
            if len(refused) == 5:
                break
    assert len(refused) == 5, "the disk never refused a write"
    # the node is up, says why, and serves what does not write
    st = wait_status(m, lambda s: s["disk_full"], "disk full")
    assert st["pid"] == pid and "No space left on device" in st["storage_error"]
    assert st["storage_refused"] >= 5
    assert stored(c) == {t: [i] for t, i in acked.items()}          # sync: every acked message
    hb = c.request({"t": "hb", "channels": {"lobby": 0}})
    assert hb["heads"]["lobby"] == max(acked.values()) and hb["unavailable"] == []
    assert m.admin.call(logic, {"t": "member", "uin": 1, "channel": "lobby"})["member"] is True
    last = max(acked)
    assert send(c, last)["id"] == acked[last]                      # a retry of a stored send: acked
    with pytest.raises(ClientError) as exc:
        c.request({"t": "send", "channel": "lobby", "ctime": 5000, "text": "tiny"})
    assert exc.value.code == wire.Err.STORAGE_FULL
    # every tool says so
    shown = mesh_status(m)
    assert "disk full" in shown.stdout, shown.stdout + shown.stderr
    rows = {r["id"]: r for r in json.loads(mesh_status(m, "--json").stdout)}
    assert rows[logic]["disk_full"] is True and rows[logic]["status"]["disk_full"] is True
    scraped = scrape(m, logic)
    assert 'imesh_disk_full{node="l1",type="logic"} 1.0' in scraped
    assert 'imesh_storage_refused_total{node="l1",type="logic"}' in scraped
    assert 'imesh_store_write_failures_total{node="l1",type="logic"}' in scraped
    assert "disk full" in open(m.mesh.log_path(logic)).read()
    # space returns: writes resume by themselves; the refused sends, retried, are stored once
    free(data)
    wait_status(m, lambda s: not s["disk_full"] and s["storage_error"] is None, "writable again")
    for ctime in refused:
        acked[ctime] = send(c, ctime)["id"]
        assert send(c, ctime)["id"] == acked[ctime]              # a second retry: the same id
    acked[6000] = send(c, 6000, "after")["id"]
    assert max(acked.values()) == acked[6000]
    rows = stored(c)
    assert rows == {t: [i] for t, i in acked.items()}              # each exactly once
    ids = [acked[t] for t in sorted(acked)]
    assert ids == sorted(ids)                                      # order kept: ctime order = id order
    assert status(m)["pid"] == pid and m.mesh.exited() == {}       # never exited
    # and what was acked is on disk: a SIGKILLed node comes back with all of it
    m.mesh.signal(logic, signal.SIGKILL)
    m.mesh.start([logic])
    m.mesh.wait_ready(15)
    assert stored(c) == rows


def test_a_node_started_on_a_full_disk_serves_reads_and_resumes(full_disk_mesh):
    m, data = full_disk_mesh
    logic = m.topo.ids("logic")[0]
    c = m.client(1)
    acked = {ctime: send(c, ctime)["id"] for ctime in range(1, 6)}
    m.mesh.signal(logic, signal.SIGTERM)
    fill(data)
    m.mesh.start([logic])
    m.mesh.wait_ready(15)                         # it starts (read-only) ...
    assert wait_status(m, lambda s: s["disk_full"], "disk full")["storage_error"]
    assert stored(c) == {t: [i] for t, i in acked.items()}          # ... and serves reads
    with pytest.raises(ClientError) as exc:
        served(lambda: send(c, 10))
    assert exc.value.code == wire.Err.STORAGE_FULL
    free(data)
    wait_status(m, lambda s: not s["disk_full"], "writable again")
    acked[10] = send(c, 10)["id"]
    assert acked[10] > acked[5]
    assert stored(c) == {t: [i] for t, i in acked.items()}
