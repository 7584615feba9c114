"""A mesh spread over two IDCs in network namespaces, 20 ms apart (bench/wanbed.py).

The bed itself is tested here: hosts of one IDC reach each other directly,
hosts of two IDCs only through the delaying forwarder (which counts what
crosses), a cut stops cross-IDC traffic and a heal brings it back; and a
real mesh with nodes in both IDCs delivers across the WAN.  Needs root.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from bench import wanbed
from nodes.ops.mesh import Mesh

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]

ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(({addr!r}, 9000)); s.listen(); print("ready", flush=True); c, _ = s.accept()
while True:
    d = c.recv(100)
    if not d: break
    c.sendall(d)
"""
ECHO_CLIENT = """
import socket, time
s = socket.create_connection(({addr!r}, 9000), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
best = 1e9
for _ in range(5):
    t = time.monotonic(); s.sendall(b"x"); s.recv(10); best = min(best, time.monotonic() - t)
print(best)
"""


@pytest.fixture
def bed():
    b = wanbed.WanBed(delay=0.020).start()
    try:
        yield b
    finally:
        b.close()
    left = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"im{'v'}{b.tag}" not in left and b.tag not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout, "the bed left devices behind"


def echo_rtt(bed, client: str, server: str) -> float:
    addr = bed.hosts[server][1]
    srv = subprocess.Popen(bed.wrap(server) + [sys.executable, "-c", ECHO_SERVER.format(addr=addr)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        run = bed.run(client, [sys.executable, "-c", ECHO_CLIENT.format(addr=addr)], capture_output=True,
                      text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        return float(run.stdout)
    finally:
        srv.kill()
        srv.wait()


def test_the_bed_delays_only_what_crosses_idcs_counts_it_and_cuts(bed):
    for name, idc in (("e1", "east"), ("e2", "east"), ("w1", "west")):
        bed.host(name, idc)
    bed.link.reset()
    echo_rtt(bed, "e1", "e2")
    assert bed.link.data_frames() == 0                              # same IDC: not through the WAN
    # at least 2 x 20 ms one way (a floor load cannot break; the link's exact hold time, not a
    # millisecond more, is checked with a fake clock in tests/test_timing_rules.py)
    assert echo_rtt(bed, "e1", "w1") >= 0.040
    assert bed.link.data_frames() >= 10                             # 5 round trips each way
    bed.cut()
    run = bed.run("e1", [sys.executable, "-c", ECHO_CLIENT.format(addr=bed.hosts["w1"][1])],
                  capture_output=True, text=True, timeout=30)
    assert run.returncode != 0                                      # nothing crosses a cut link
    bed.heal()
    assert echo_rtt(bed, "e1", "w1") >= 0.040                      # through the delaying link again


CHAT = [sys.executable, "-m", "nodes.cli.chat"]


def chat(bed, host, cfg, *args, **kwargs):
    return bed.run(host, [*CHAT, *args[:1], "-c", cfg, *args[1:]],
                   capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), **kwargs)


def test_a_mesh_across_two_idcs_delivers_over_the_wan(bed, tmp_path):
    cfg = wanbed.write_wan_topology(bed, str(tmp_path), {
        "east": {"brokers": 1, "logics": 1, "routers": 1, "counters": 1},
        "west": {"brokers": 1, "logics": 1}})
    mesh = Mesh(cfg, wrap={node_id: bed.wrap(node_id) for node_id in bed.hosts})
    try:
        mesh.start()
        mesh.wait_ready(60)
        bed.host("east-client", "east")
        bed.host("west-client", "west")
        tail = subprocess.Popen(
            bed.wrap("east-client") + [*CHAT, "tail", "-c", cfg, "--uin", "2",
                                       "--broker", "east-b1", "--channel", "lobby", "--count", "1",
                                       "--timeout", "30", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        try:
            deadline = time.monotonic() + 30
            while mesh.admin.status("east-b1")["sessions"] < 1:        # the tail has logged in
                assert time.monotonic() < deadline and tail.poll() is None, tail.stderr.read()
                time.sleep(0.05)
            bed.link.reset()
            sent = chat(bed, "west-client", cfg, "send", "--uin", "1", "--broker", "west-b1", "--channel",
                        "lobby", "across the WAN", timeout=60)
            assert sent.returncode == 0, sent.stderr
            out, err = tail.communicate(timeout=60)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.wait()
        got = json.loads(out.strip().splitlines()[-1])
        assert (got["text"], got["uin"], got["id"]) == ("across the WAN", 1, int(sent.stdout.split()[-1]))
        assert bed.link.data_frames() > 0                               # it did cross
    finally:
        mesh.close()
