"""A broker's memory under hostile clients, with real processes (issue 23.2, 23.3).

Connections that never log in and never read, and sessions that never read while
their channel gets a burst: the broker's RSS (/proc/<pid>/status) stays within a
bound while they are there and comes back near where it was after they leave,
and a legitimate client still logs in and gets its send acked meanwhile.  The
bounds are behaviour (megabytes), not timing.  The peers come from
bench/hostile.py, which measures the same scenarios at full size.
"""
from __future__ import annotations

import time

import zmq

from bench import hostile
from bench.procstat import rss_mb


def broker(harness):
    mesh = harness.mesh
    return mesh, mesh.procs["b1"].pid, mesh.topo.node("b1").endpoint("client"), mesh.topo.read_secret()


def test_connections_that_never_log_in_nor_read_cannot_take_the_brokers_memory(make_mesh):
    # before: 20 such connections for 10 s took a broker from 41 MB to 2.4 GB, all of it kept
    harness = make_mesh(brokers=1, logics=1, limits={"login_window": 3.0})
    mesh, pid, ep, secret = broker(harness)
    base = rss_mb(pid)
    proc, out = hostile.start_flood(ep, conns=10, seconds=4.0, kind="echo")
    peak, served = base, 0
    try:
        while proc.is_alive():
            peak = max(peak, rss_mb(pid))
            hostile.login_and_send(ep, secret, 60 + served, "lobby")    # succeeds meanwhile
            served += 1
            time.sleep(0.2)
        assert out.get(timeout=10) > 1000              # the flood did flood
    finally:
        proc.join(10)
    assert served >= 3
    assert peak - base < 60, f"RSS {base:.0f} -> {peak:.0f} MB under the flood"
    after = hostile.settle_rss(pid, 8.0)
    assert after - base < 15, f"RSS {base:.0f} -> {after:.0f} MB after the peers closed"
    dropped = mesh.admin.status("b1")["prelogin"]["dropped"]
    assert dropped.get("rate", 0) + dropped.get("reply", 0) > 1000, dropped


def test_sessions_that_never_read_are_dropped_as_too_slow_and_their_memory_comes_back(make_mesh):
    # before: 10 such sessions and a 20,000-message burst: 41 -> 304 MB, 218 MB kept, none dropped
    harness = make_mesh(brokers=1, logics=1)
    mesh, pid, ep, secret = broker(harness)
    ctx = zmq.Context()
    try:
        base = rss_mb(pid)
        readers = [hostile.login(ctx, ep, secret, uin, never_read=True)[0] for uin in range(1, 6)]
        sender, sid = hostile.login(ctx, ep, secret, 50)
        assert hostile.burst(sender, sid, "lobby", 8000, 1400) == 8000
        peak = rss_mb(pid)
        status = mesh.admin.status("b1")
        assert status["kicked"].get("too_slow") == 5, status["kicked"]
        # 5 x session_queue_bytes (4 MiB) queued at most, and the burst's own working set
        assert peak - base < 45, f"RSS {base:.0f} -> {peak:.0f} MB with 5 slow readers"
        for s in readers:
            s.close(0)
        after = hostile.settle_rss(pid, 8.0)
        assert after - base < 15, f"RSS {base:.0f} -> {after:.0f} MB after the readers left"
        hostile.login_and_send(ep, secret, 60, "lobby")
    finally:
        ctx.destroy(0)
