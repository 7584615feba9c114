"""Two IDCs 20 ms apart (bench/wanbed.py): placement by home IDC, and cuts that heal fast.

One bed and one mesh for the module (bench/idcbed.py: ``eroom`` homed in
east, ``wroom`` in west; west has two brokers).  Clients run as
subprocesses (bench/idcprobe.py) in client namespaces of each IDC.  CURVE is
off so the forwarder can count how many copies of one message text cross
the WAN (``WanLink.watch``); everything else (ZMTP heartbeats, ticks)
crosses too and is not what is counted.  Needs root; marked slow.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from conftest import assert_no_tracebacks

from bench import wanbed
from bench.idcbed import IdcMesh, collect

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]


@pytest.fixture(scope="module")
def idc():
    with IdcMesh(delay=0.020) as mesh:
        yield mesh
        assert_no_tracebacks(mesh.mesh)          # read before the mesh's directory is removed


def test_placement_follows_the_home_idc(idc):
    topo = idc.topo
    assert (topo.logic_for("eroom"), topo.counter_for("eroom")) == ("east-l1", "east-c1")
    assert (topo.logic_for("wroom"), topo.counter_for("wroom")) == ("west-l1", "west-c1")
    assert topo.logic_for("team@west") == "west-l1" and topo.logic_for("team@east") == "east-l1"
    for uin in range(1, 50):          # presence: the router of the user's broker's IDC
        assert topo.routers_for(uin, "east") == ["east-r1"] and topo.routers_for(uin, "west") == ["west-r1"]


def test_same_idc_chat_crosses_no_wan(idc):
    mark = uuid.uuid4().hex.encode()
    idc.bed.link.watch(mark)
    rx = idc.receiver("east-client", "east-b1", 2, count=20)
    sends = idc.probe("east-client", "sends", "east-b1", 1, "--channel", "eroom", "--count", "20",
                      "--text", mark.decode())
    got = collect(rx)
    assert all("id" in s for s in sends), sends
    assert sorted(m["id"] for m in got) == sorted(s["id"] for s in sends)
    assert idc.bed.link.crossed(mark) == 0                  # not one copy crossed the WAN
    # so no WAN round trip in the ack path: its figure (about 1 ms; 40 ms would be a WAN round
    # trip) is bin/bench idc's same_idc_ack_p50_ms -- timings are measured there, not asserted


def test_a_cross_idc_delivery_crosses_once(idc):
    mark = uuid.uuid4().hex.encode()
    idc.bed.link.watch(mark)
    rx_west = idc.receiver("west-client", "west-b1", 3, count=1)
    rx_east = idc.receiver("east-client", "east-b1", 2, count=1)
    sent = idc.probe("east-client", "sends", "east-b1", 1, "--channel", "eroom", "--count", "1",
                     "--text", mark.decode())
    assert "id" in sent[0], sent
    for rx in (rx_west, rx_east):
        assert [m["id"] for m in collect(rx)] == [sent[0]["id"]]
    assert idc.bed.link.crossed(mark) == 1                  # one copy to the west broker


def test_fan_out_crosses_once_per_remote_idc_with_several_brokers_there(idc):
    """Members online on both west brokers: one copy crosses (to a gateway broker, which passes
    it on inside west), and every receiver gets the message once."""
    mark = uuid.uuid4().hex.encode()
    idc.bed.link.watch(mark)
    rxs = [idc.receiver("west-client", "west-b1", 3, count=5), idc.receiver("west-client", "west-b2", 4, count=5),
           idc.receiver("east-client", "east-b1", 2, count=5)]
    sent = idc.probe("east-client", "sends", "east-b1", 1, "--channel", "eroom", "--count", "5",
                     "--text", mark.decode())
    ids = sorted(s["id"] for s in sent)
    for rx in rxs:
        assert sorted(m["id"] for m in collect(rx)) == ids
    assert idc.bed.link.crossed(mark) == 5                  # 5 messages, one copy each


def test_a_cut_keeps_each_idc_serving_its_own_and_heals(idc, tmp_path):
    """Load from both IDCs on both channels; cut for 4 s; heal.  Home channels keep acking and
    heartbeats keep answering; the other IDC's channel answers UNAVAILABLE during the cut; after
    the heal it is acked again, and every cross-IDC path works.  How fast (UNAVAILABLE at once
    once the owner counts as down, heal as soon as its ticks come back) is checked with a fake
    clock: tests/test_timing_rules.py and tests/test_dispatch_sessions.py; the request log's
    latencies are printed."""
    bed = idc.bed
    outs = {host: open(tmp_path / f"{host}.jsonl", "w+") for host in ("east-client", "west-client")}
    loads = {host: subprocess.Popen(      # output to a file: a full pipe would stall it
        idc.argv(host, "load", broker, uin, "--channel", "eroom", "--channel", "wroom", "--seconds", 16,
                 "--timeout", 3), stdout=outs[host], stderr=subprocess.PIPE, text=True, env=idc.env())
        for host, broker, uin in (("east-client", "east-b1", 5), ("west-client", "west-b1", 6))}
    try:
        time.sleep(3)                       # the load's own pace: it runs 16 s whatever we do
        cut = time.monotonic()
        bed.cut()
        time.sleep(4)
        healed = time.monotonic()
        bed.heal()
    finally:
        bed.heal()
        for host, proc in loads.items():
            collect(proc)
            outs[host].seek(0)
        results = {host: [json.loads(line) for line in f] for host, f in outs.items()}
        for f in outs.values():
            f.close()
    rx = idc.receiver("west-client", "west-b1", 7, count=1)          # deliveries cross again too
    sent = idc.probe("east-client", "sends", "east-b1", 8, "--channel", "eroom", "--count", 1)
    assert [m["id"] for m in collect(rx)] == [sent[0]["id"]]
    home = {"east-client": "eroom", "west-client": "wroom"}
    for host, lines in results.items():
        sends = [x for x in lines if "channel" in x]
        mine = [x for x in sends if x["channel"] == home[host]]
        other = [x for x in sends if x["channel"] != home[host]]
        assert mine and all("id" in x for x in mine), (host, [x for x in mine if "id" not in x])
        hbs = [x for x in lines if x.get("hb")]
        assert all("code" not in x for x in hbs), (host, hbs)
        during = [x for x in other if cut + 0.05 < x["t"] and x["t"] + x["ms"] / 1000 < healed]
        assert during, (host, "no request to the other IDC's channel during the cut")
        assert all(x.get("code") == "UNAVAILABLE" for x in during), (host, during)
        back = [x for x in other if x["t"] > healed and "id" in x]
        assert back, (host, "the other IDC's channel never acked again after the heal")
        # once acked again it stays healed: every later request to it is acked
        assert all("id" in x for x in other if x["t"] > back[0]["t"]), (host, other)
        print(f"{host}: other IDC's channel acked again {back[0]['t'] + back[0]['ms'] / 1000 - healed:.2f} s "
              f"after the heal; longest home-channel request {max(x['ms'] for x in mine):.0f} ms, "
              f"longest UNAVAILABLE answer {max(x['ms'] for x in during):.0f} ms")


def test_channel_create_idc_homes_a_runtime_channel(idc):
    """bin/mesh channel create team --idc west: the channel is team@west, served by west's logic
    node; a west user's sends to it cross no WAN link."""
    run = subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "channel", "create", "team", "--idc", "west",
                  "--members", "1,2,3", "-c", idc.cfg], capture_output=True, text=True, timeout=60, env=idc.env())
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert (shown["channel"], shown["idc"], shown["members"]) == ("team@west", "west", [1, 2, 3])
    bad = subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "channel", "create", "team", "--idc", "north",
                  "-c", idc.cfg], capture_output=True, text=True, timeout=60, env=idc.env())
    assert bad.returncode != 0 and "north" in bad.stderr
    mark = uuid.uuid4().hex
    idc.bed.link.watch(mark.encode())
    sent = idc.probe("west-client", "sends", "west-b2", 1, "--channel", "team@west", "--count", 3, "--text", mark)
    assert [s["id"] for s in sent] == [1, 2, 3]
    assert idc.bed.link.crossed(mark.encode()) == 0
