"""A live reshard: a logic node is added, then removed, while users send (issue 14).

A one-logic mesh serves channels made at runtime and a YAML one; eight
users send to them in a closed loop, retrying unknown outcomes with the same
ctime (bench/failover.py Sender).  ``bin/mesh reshard -c NEW --from OLD``
first says the new node is not running (exit 3), the node is started with
NEW, the command is run again and moves the channels NEW gives it; later a
third topology removes the node again.  Then: every acked message is stored
exactly once with its acked id, each user's ids only grow, members are
intact, and a retry of a send acked before the moves gets its original id.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, MeshHarness, free_ports, write_topology

from bench.failover import Sender
from nodes.cluster import topochange, topology
from nodes.ops import livereshard
from nodes.ops.admin import Admin, AdminError
from nodes.ops.mesh import Mesh, wait_for

CHANNELS = [f"room{i}" for i in range(12)]
USERS = range(1, 9)
LIMITS = {"rate": 100000, "burst": 100000, "channel_queue": 100000}


def reshard(new, old, *extra):
    return subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "reshard", "-c", new, "--from", old, *extra],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


def variant(path, name, version, add_logic=None, drop_logic=None) -> str:
    raw = yaml.safe_load(open(path))
    logics = raw["idcs"]["test"]["logics"]
    if add_logic:
        rpc, pub = free_ports(2)
        logics.append({"id": add_logic, "rpc": f"tcp://127.0.0.1:{rpc}", "pub": f"tcp://127.0.0.1:{pub}"})
    if drop_logic:
        raw["idcs"]["test"]["logics"] = [n for n in logics if n["id"] != drop_logic]
    raw["version"] = version
    out = os.path.join(os.path.dirname(path), name)
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def one_logic_and_l2_coming(tmp_path):
    """A running one-logic mesh, its topology, one that adds l2, and l2's (unstarted) Mesh."""
    one = write_topology(tmp_path, brokers=1, logics=1, limits=LIMITS)
    two = variant(one, "topology-2.yaml", 2, add_logic="l2")
    return one, two, MeshHarness(one).start(), Mesh(two)


def channel_for_l2(mesh, added):
    """A channel l2 will own, created with one message ("before", id 1); its name and client."""
    name = next(n for n in CHANNELS if added.topo.logic_for(n) == "l2")
    mesh.admin.channel("create", name, [1])
    client = mesh.client(1, wait_online=False)
    assert client.request({"t": "send", "channel": name, "ctime": 1, "text": "before"})["id"] == 1
    return name, client


def start_l2(one, two, added):
    """The first run admits l2's key and says to start it (exit 3); then it is started."""
    assert reshard(two, one).returncode == 3
    added.start(["l2"])
    added.wait_ready(30, ["l2"])


def stored(client, channel) -> list:
    """Every stored message of a channel, by paging sync."""
    out, after = [], 0
    while True:
        page = client.sync(channel, after)
        out += page["msgs"]
        if not page["msgs"]:
            return out
        after = page["msgs"][-1]["id"]


def wait_acks(senders, more: int) -> None:
    """Until every sender has ``more`` acks beyond what it has now (the load goes on)."""
    marks = {s: len(s.acked) for s in senders}
    wait_for(lambda: all(len(s.acked) >= marks[s] + more for s in senders) or any(s.errors for s in senders),
             60, f"{more} more acks per sender")
    assert not [e for s in senders for e in s.errors]


@pytest.mark.slow          # over 5 s (the fast lane: pytest -m 'not slow')
def test_add_then_remove_a_logic_node_under_load(tmp_path):
    one = write_topology(tmp_path, brokers=2, logics=1, limits=LIMITS,
                         channels={"lobby": {"members": list(USERS)}})
    two = variant(one, "topology-2.yaml", 2, add_logic="l2")
    three = variant(two, "topology-3.yaml", 3, drop_logic="l2")
    mesh = MeshHarness(one).start()
    added = Mesh(two)
    senders = []
    try:
        for name in CHANNELS:
            mesh.admin.channel("create", name, list(USERS))
        names = CHANNELS + ["lobby"]
        moving = sorted(n for n in names if added.topo.logic_for(n) == "l2")
        staying = [n for n in names if n not in moving]
        assert moving and staying                                      # some move, not all
        for uin in USERS:                                              # half on moving channels
            channel = moving[uin % len(moving)] if uin % 2 else staying[uin % len(staying)]
            senders.append(Sender(mesh.broker(uin % 2), mesh.token(uin), uin, channel))
        for s in senders:
            s.start()
        wait_acks(senders, 20)
        before = {s.uin: min(s.acked.items()) for s in senders}

        dry = reshard(two, one, "--dry-run", "--json")                 # l2 need not run for a dry run
        assert dry.returncode == 0, dry.stderr
        assert sorted(m["channel"] for m in json.loads(dry.stdout)["moved"]) == moving
        assert mesh.admin.status("l1")["topology_version"] == 1        # nothing adopted
        first = reshard(two, one)                                      # l2 is not running yet
        assert first.returncode == 3, first.stderr
        assert "--id l2" in first.stderr
        added.start(["l2"])
        added.wait_ready(30, ["l2"])
        run = reshard(two, one, "--json")
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["live"] is True and report["version"] == 2
        assert sorted(m["channel"] for m in report["moved"]) == moving
        assert {(m["from"], m["to"]) for m in report["moved"]} == {("l1", "l2")}
        wait_acks(senders, 20)                                         # l2 serves the moved ones
        served = Admin(topology.load(two)).status("l2")
        assert served["channels"] == len(moving) and served["stored"] > 0
        for node in ("l1", "b1", "r1"):       # restarted with the old file: they keep to version 2
            mesh.mesh.restart(node)
            assert Admin(topology.load(two)).status(node)["topology_version"] == 2
        status = subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "status", "-c", one], text=True,
                                capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        assert "topology version 2 (this file: 1)" in status.stdout, status.stdout
        wait_acks(senders, 20)

        back = reshard(three, two, "--json")                           # remove l2, still under load
        assert back.returncode == 0, back.stderr
        report = json.loads(back.stdout)
        assert sorted(m["channel"] for m in report["moved"]) == moving
        assert {(m["from"], m["to"]) for m in report["moved"]} == {("l2", "l1")}
        assert Admin(topology.load(two)).status("l2")["channels"] == 0
        added.close()                                                  # it serves nothing: stop it
        wait_acks(senders, 20)
        for s in senders:
            s.stop.set()
        for s in senders:
            s.join(40)
        check(Admin(topology.load(three)), senders, before, names)
    finally:
        for s in senders:
            s.close()
        added.close()
        mesh.close()


def check(admin, senders, before, names) -> None:
    """Exactly once, ids only growing, members intact, a retry gets its original id."""
    assert not [e for s in senders for e in s.errors]
    for name in names:
        assert admin.channel("show", name)["members"] == list(USERS), name
    for s in senders:
        mine = [m for m in stored(s.client, s.channel) if m["uin"] == s.uin]
        texts = [m["text"] for m in mine]
        assert len(texts) == len(set(texts)), f"uin {s.uin}: a message stored twice"
        by_text = {m["text"]: m["id"] for m in mine}
        acked = sorted(s.acked.items())
        ids = [msg_id for _ctime, msg_id in acked]
        assert ids == sorted(set(ids)), f"uin {s.uin}: ids went backwards"
        for n, (_ctime, msg_id) in enumerate(acked, 1):
            assert by_text.get(f"{s.uin}:{n}") == msg_id, (s.uin, n, msg_id)     # acked = stored
        ctime, msg_id = before[s.uin]                                  # acked before both moves
        again = s.client.request({"t": "send", "channel": s.channel, "ctime": ctime, "text": f"{s.uin}:1"})
        assert again["id"] == msg_id


def test_a_reshard_that_failed_while_a_logic_node_adopted_moves_everything_when_run_again(tmp_path):
    """A logic node that cannot keep the new topology (full or read-only data directory:
    here a directory where the file goes) refuses the adopt; the command says so.  Run again
    once that is fixed, it must still hand over every channel the node no longer serves --
    not find the node on the new version already and move nothing (the channel would be
    stranded: NO_CHANNEL at its new owner, its messages left on the old one)."""
    one, two, mesh, added = one_logic_and_l2_coming(tmp_path)
    try:
        name, client = channel_for_l2(mesh, added)
        start_l2(one, two, added)
        blocker = topochange.kept_path(mesh.topo, "l1") + ".new"
        os.makedirs(blocker)
        failed = reshard(two, one)
        assert failed.returncode != 0 and "l1" in failed.stderr, failed.stderr
        os.rmdir(blocker)
        run = reshard(two, one, "--json")
        assert run.returncode == 0, run.stderr
        assert name in [m["channel"] for m in json.loads(run.stdout)["moved"]]
        assert [m["text"] for m in stored(client, name)] == ["before"]
        assert client.request({"t": "send", "channel": name, "ctime": 2, "text": "after"})["id"] == 2
    finally:
        added.close()
        mesh.close()


def test_a_reshard_from_a_file_older_than_what_the_mesh_runs_is_refused(tmp_path):
    """After a reshard the nodes keep running (and restart with) the topology they adopted,
    whatever file their supervisor names.  ``--from`` the original file then describes a
    mesh that no longer exists: a change from it that drops the added logic node must not
    skip that node (never asked to adopt or hand over, its channels stranded: NO_CHANNEL at
    their new owner) -- it is refused, naming the version the mesh runs."""
    one, two, mesh, added = one_logic_and_l2_coming(tmp_path)
    three = variant(two, "topology-3.yaml", 3, drop_logic="l2")
    try:
        name, client = channel_for_l2(mesh, added)
        start_l2(one, two, added)
        assert reshard(two, one).returncode == 0
        stale = reshard(three, one)                                    # the mesh runs version 2
        assert stale.returncode != 0 and "version 2" in stale.stderr, (stale.stdout, stale.stderr)
        assert [m["text"] for m in stored(client, name)] == ["before"]     # still served by l2
        assert reshard(three, two).returncode == 0                     # from the right file: done
        assert [m["text"] for m in stored(client, name)] == ["before"]
    finally:
        added.close()
        mesh.close()


def test_a_membership_change_acked_before_the_move_is_kept(tmp_path):
    """deploy.md edits the topology file in place, so between the first run (exit 3) and the
    second one ``imesh-mesh channel add`` already routes by the new file -- to the added
    node, which seeded an empty ``lobby`` at its start.  An acked change must survive the
    move (or be refused: the added node found l1 on an older version when it started, so it
    serves no channel it does not hold until the change is over)."""
    one = write_topology(tmp_path, brokers=1, logics=1, limits=LIMITS)
    two = variant(one, "topology-2.yaml", 2, add_logic="l2")
    mesh = MeshHarness(one).start()
    added = Mesh(two)
    try:
        assert added.topo.logic_for("lobby") == "l2"
        assert reshard(two, one).returncode == 3
        added.start(["l2"])
        added.wait_ready(30, ["l2"])
        new = Admin(topology.load(two))
        with pytest.raises(AdminError):        # refused (UNAVAILABLE: retry after the change)
            new.channel("add", "lobby", [4242])
        assert reshard(two, one).returncode == 0
        members = new.channel("show", "lobby")["members"]
        assert 4242 not in members, members
        assert new.status("l2")["joining"] is False                       # settled: served as any node
        assert 4242 in new.channel("add", "lobby", [4242])["members"]
    finally:
        added.close()
        mesh.close()


def test_an_added_node_given_up_half_way_is_removed_without_loss(tmp_path):
    """A run that stopped after the logic nodes adopted (brokers still on the old version,
    nothing handed over yet; here the adopts are sent by hand), then the operator removes
    the added node instead of running again: the channels stay with their old owner, whole
    -- the added node's seeded, empty lobby is not loaded over the real one."""
    one = write_topology(tmp_path, brokers=1, logics=1, limits=LIMITS)
    two = variant(one, "topology-2.yaml", 2, add_logic="l2")
    three = variant(two, "topology-3.yaml", 3, drop_logic="l2")
    mesh = MeshHarness(one).start()
    added = Mesh(two)
    try:
        assert added.topo.logic_for("lobby") == "l2"
        client = mesh.client(1, wait_online=False)
        acked = [client.request({"t": "send", "channel": "lobby", "ctime": n, "text": f"m{n}"})["id"]
                 for n in range(1, 4)]
        assert reshard(two, one).returncode == 3
        added.start(["l2"])
        added.wait_ready(30, ["l2"])
        change = livereshard.LiveReshard(topology.load(one), topology.load(two), say=lambda _line: None)
        assert change.topology("l1", "adopt")["leaving"]["lobby"] == "l2"
        change.topology("l2", "adopt")                                 # ... and the run stops here
        run = reshard(three, two, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["moved"] == []
        assert [m["id"] for m in stored(client, "lobby")] == acked
        assert client.request({"t": "send", "channel": "lobby", "ctime": 9, "text": "after"})["id"] == 4
    finally:
        added.close()
        mesh.close()
