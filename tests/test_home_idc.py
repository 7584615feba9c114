"""The default home IDC of a runtime channel, on the WAN bed: where `bin/mesh channel create` runs.

`bin/mesh channel create NAME` without --idc in a two-IDC topology measures
the status round trip to every logic node (best of 3, in parallel) and homes
the channel in the IDC of the nearest one (docs/ha.md "Home IDC").  Run inside
a west host's namespace it must pick west, inside an east host east: the
20 ms forwarder between the IDCs makes the other IDC's logic node at least
40 ms away.  The choice itself is unit-tested in tests/test_idc_placement.py.
Needs root; marked slow.
"""
from __future__ import annotations

import json
import sys

import pytest

from bench import wanbed
from bench.idcbed import IdcMesh

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]

DELAY = 0.020


@pytest.fixture(scope="module")
def idc():
    with IdcMesh(delay=DELAY) as mesh:
        yield mesh


def create(idc, host, name, *more):
    """`bin/mesh channel create` run on ``host`` (its network namespace)."""
    return idc.bed.run(host, [sys.executable, "-m", "nodes.cli.mesh", "channel", "create", name,
                              "-c", idc.cfg, *more], capture_output=True, text=True, timeout=60, env=idc.env())


@pytest.mark.parametrize("host,home,near,far", [("west-client", "west", "west-l1", "east-l1"),
                                                ("east-client", "east", "east-l1", "west-l1")])
def test_create_without_idc_homes_the_channel_where_the_command_runs(idc, host, home, near, far):
    name = f"from-{host}"
    run = create(idc, host, name, "--members", "1,2,3")
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert (shown["channel"], shown["idc"], shown["members"]) == (f"{name}@{home}", home, [1, 2, 3])
    assert shown["home"]["by"] == "nearest" and shown["home"]["logic"] == near, shown
    assert shown["home"]["rtt_ms"][far] >= 2 * DELAY * 1000       # the forwarder holds each way
    assert f"home IDC {home}: nearest logic node {near}" in run.stderr and f"{name}@{home}" in run.stderr
    again = create(idc, host, name, "--members", "1")               # the same name, the same home
    assert again.returncode == 1 and "CHANNEL_EXISTS" in again.stderr
    sent = idc.probe(host, "sends", f"{home}-b1", 1, "--channel", f"{name}@{home}", "--count", 1, "--text", "hi")
    assert [s["id"] for s in sent] == [1]                         # served by its home's logic node


def test_a_name_with_a_home_is_not_measured(idc):
    """A suffix @IDC or --idc decides, wherever the command runs; no "home" in the JSON."""
    for more in ((), ("--idc", "east")):
        name = "named@east" if not more else "flagged"
        run = create(idc, "west-client", name, *more)
        assert run.returncode == 0, run.stderr
        shown = json.loads(run.stdout)
        assert shown["channel"].endswith("@east") and shown["idc"] == "east" and "home" not in shown
        assert "home IDC" not in run.stderr
