"""bin/mesh reshard: adding then removing a logic node moves channels with their whole state.

A one-logic mesh gets channels made at runtime (and a YAML one) with a
message each; it is stopped, a second logic node is added to the topology,
``bin/mesh reshard`` moves the channels the new node owns, the mesh starts
on the new topology; then the same back to one node.  After each move:
members and messages are there, a retried send gets its original id, new
ids continue from the old ones (never backwards).  This is the offline move
(every logic node stopped); tests/test_live_reshard.py moves under load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from conftest import ROOT, MeshHarness, free_ports, write_topology

CHANNELS = [f"room{i}" for i in range(24)] + ["lobby"]


def reshard(new, old, *extra):
    return subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "reshard", "-c", new, "--from", old, *extra],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


def with_second_logic(path) -> str:
    raw = yaml.safe_load(open(path))
    rpc, pub = free_ports(2)
    raw["idcs"]["test"]["logics"].append({"id": "l2", "rpc": f"tcp://127.0.0.1:{rpc}", "pub": f"tcp://127.0.0.1:{pub}"})
    out = os.path.join(os.path.dirname(path), "topology-2.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def send(client, channel, ctime, text):
    return client.request({"t": "send", "channel": channel, "ctime": ctime, "text": text})["id"]


def check(config, sent, ctime_base):
    """Every channel: members intact, its message there, a retry answered with the original id,
    a new send gets the next id."""
    mesh = MeshHarness(config).start()
    try:
        client = mesh.client(1, wait_online=False)
        for name, (ctime, msg_id, text) in sent.items():
            assert mesh.admin.channel("show", name)["members"] == [1, 2], name
            page = client.sync(name, 0)
            assert [m["id"] for m in page["msgs"]] == list(range(1, msg_id + 1)), (name, page)
            assert send(client, name, ctime, text) == msg_id                     # retry: the original id
            new_id = send(client, name, ctime_base, f"more {name}")
            assert new_id == msg_id + 1, (name, new_id)                          # never backwards
            sent[name] = (ctime_base, new_id, f"more {name}")
            ctime_base += 1
    finally:
        mesh.close()
    return ctime_base


def test_add_then_remove_a_logic_node_moves_channels_with_their_state(tmp_path):
    one = write_topology(tmp_path, brokers=1, logics=1, channels={"lobby": {"members": [1, 2]}})
    two = with_second_logic(one)
    mesh = MeshHarness(one).start()
    sent, ctime = {}, 1_000_000
    try:
        client = mesh.client(1, wait_online=False)
        for name in CHANNELS:
            if name != "lobby":
                mesh.admin.channel("create", name, [1, 2])
            sent[name] = (ctime, send(client, name, ctime, f"hello {name}"), f"hello {name}")
            ctime += 1
    finally:
        mesh.close()

    dry = reshard(two, one, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["moved"]
    expected = sorted(n for n in CHANNELS if MeshHarness(two).topo.logic_for(n) == "l2")
    assert sorted(m["channel"] for m in planned) == expected and expected            # some move, not all
    assert len(expected) < len(CHANNELS)
    run = reshard(two, one)
    assert run.returncode == 0, run.stderr
    assert f"{len(expected)} channel(s) moved" in run.stdout and "l1 -> l2" in run.stdout
    ctime = check(two, sent, ctime)

    back = reshard(one, two)                                                          # remove l2
    assert back.returncode == 0, back.stderr
    assert f"{len(expected)} channel(s) moved" in back.stdout and "l2 -> l1" in back.stdout
    check(one, sent, ctime)
    assert reshard(one, two, "--json").stdout.count('"channel"') == 0                # nothing left to move


def test_a_running_mesh_needs_a_higher_version_and_keeps_running(tmp_path):
    one = write_topology(tmp_path, brokers=1, logics=1)
    two = with_second_logic(one)
    mesh = MeshHarness(one).start()
    try:
        run = reshard(two, one)                          # the mesh runs: a live change, which needs
        assert run.returncode == 1 and "set `version: 2`" in run.stderr      # a version bump
        client = mesh.client(1, wait_online=False)
        mesh.admin.channel("create", "after", [1])
        assert send(client, "after", 7, "still served") == 1
    finally:
        mesh.close()


def test_an_offline_reshard_is_refused_below_a_version_the_nodes_kept(tmp_path):
    """Nodes that adopted a topology live keep it and start from it while it is newer than
    their file (nodes/cluster/topochange.py).  An offline reshard to a file with a lower version
    (deploy.md: that path needs no version bump) would move the stores by that file while the
    restarted nodes route and serve by the kept one: every moved channel stranded.  Refused,
    naming the version to give."""
    from test_live_reshard import variant

    from nodes.cluster import topochange, topology
    one = write_topology(tmp_path, brokers=1, logics=1)
    two = variant(one, "topology-2.yaml", 2, add_logic="l2")
    for node_id in topology.load(two).nodes:                       # a live reshard to 2 happened
        topochange.keep(topology.load(two), node_id)
    back = variant(one, "topology-back.yaml", 1)                   # the original file: one logic node
    run = reshard(back, two)
    assert run.returncode != 0 and "version 2" in run.stderr, (run.stdout, run.stderr)
    assert topochange.newest(topology.load(back), "l1").version == 2      # what a restart would run
    three = variant(back, "topology-3.yaml", 3)
    assert reshard(three, two).returncode == 0, "with a version above the kept one it goes on"
    assert topochange.newest(topology.load(three), "l1").version == 3
