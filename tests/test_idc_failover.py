"""Two routers and two counters per IDC, no replication (config/multi-idc.yaml's shape), on the
WAN bed: a SIGKILL of either costs a login and a send nothing but a background timeout.

The bed of tests/test_idc.py (bench/idcbed.py) with ``SPARE_LAYOUT`` and a small id block, so a
channel's leased block runs out a few sends after its counter died.  Outcomes are asserted; the
figures (how long the login and the sends took) are printed (``-s``).  How fast a logic node
leaves a silent counter is a fake-clock rule: tests/test_counter_failover.py.  Needs root;
marked slow.
"""
from __future__ import annotations

import time

import pytest
from conftest import assert_no_tracebacks

from bench import wanbed
from bench.idcbed import SPARE_LAYOUT, IdcMesh, collect
from nodes.counter import counters_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]

ID_BLOCK = 4


@pytest.fixture(scope="module")
def spare():
    with IdcMesh(delay=0.020, layout=SPARE_LAYOUT, limits={"id_block": ID_BLOCK}) as mesh:
        yield mesh
        assert_no_tracebacks(mesh.mesh)          # read before the mesh's directory is removed


def wait_online(idc, uin, logic, timeout=30.0):
    """Until ``logic``'s presence replica shows ``uin`` online (a push needs it there)."""
    deadline = time.monotonic() + timeout
    while not idc.mesh.admin.presence(uin).get(logic):
        assert time.monotonic() < deadline, f"{uin} never online at {logic}"
        time.sleep(0.05)


def test_a_login_and_a_send_survive_a_sigkill_of_a_router(spare):
    topo = spare.topo
    victim = "east-r1"
    users = [u for u in range(1, 21) if topo.router_for(u, "east") == victim][:2]    # its own users
    assert len(users) == 2
    assert all(sorted(topo.routers_for(u, "east")) == ["east-r1", "east-r2"] for u in users)
    spare.mesh.kill(victim)
    started = time.monotonic()
    rx = spare.receiver("east-client", "east-b1", users[0], count=1)       # a login: it said ready
    login_s = time.monotonic() - started
    wait_online(spare, users[0], topo.logic_for("eroom"))
    sent = spare.probe("east-client", "sends", "east-b1", users[1], "--channel", "eroom", "--count", 1,
                       "--timeout", 10)
    assert "id" in sent[0], sent
    assert [m["id"] for m in collect(rx)] == [sent[0]["id"]]                 # pushed to the receiver
    print(f"router {victim} SIGKILLed: a login of one of its users (probe start included) "
          f"{login_s:.2f} s, a send {sent[0]['ms']:.0f} ms")


def test_sends_survive_a_sigkill_of_the_counter_once_the_block_runs_out(spare):
    topo = spare.topo
    victim = topo.counter_for("wroom")
    other = [c for c in counters_for(topo, "wroom") if c != victim]
    assert len(other) == 1 and other[0].startswith("west-")
    other, logic = other[0], topo.logic_for("wroom")
    first = spare.probe("west-client", "sends", "west-b1", 3, "--channel", "wroom", "--count", 3)
    assert all("id" in s for s in first), first
    before = spare.mesh.admin.status_all([other, logic])
    assert before[other]["channels"] == 0                      # the spare counter never served wroom
    spare.mesh.kill(victim)
    after = spare.probe("west-client", "sends", "west-b1", 3, "--channel", "wroom", "--count", 4 * ID_BLOCK,
                        "--timeout", 10)
    assert all("id" in s for s in after), [s for s in after if "id" not in s]
    ids = [s["id"] for s in first + after]
    assert ids == sorted(set(ids)), ids                          # no id twice, none going back
    now = spare.mesh.admin.status_all([other, logic])
    assert now[other]["channels"] == 1                           # the blocks came from the spare
    assert now[logic]["id_blocks"] >= before[logic]["id_blocks"] + 3
    print(f"counter {victim} SIGKILLed: {len(after)} sends with id_block {ID_BLOCK}, longest "
          f"{max(s['ms'] for s in after):.0f} ms, median {sorted(s['ms'] for s in after)[len(after) // 2]:.0f} ms")
