"""Which live topology changes a running mesh takes (nodes/cluster/topochange.py), and what a node refuses."""
from __future__ import annotations

import os

import pytest
import yaml
from conftest import MeshHarness, write_topology

from nodes.cluster import topochange, topology
from nodes.cluster.topology import TopologyError
from nodes.protocol import auth, wire


def edit(path, name, change) -> str:
    raw = yaml.safe_load(open(path))
    change(raw)
    out = os.path.join(os.path.dirname(path), name)
    with open(out, "w") as f:
        yaml.safe_dump(raw, f)
    return out


def add_logic(raw, node_id="l9", port=1):
    raw["idcs"]["test"]["logics"].append({"id": node_id, "rpc": f"tcp://127.0.0.1:{port}",
                                          "pub": f"tcp://127.0.0.1:{port + 1}"})


@pytest.fixture
def base(tmp_path):
    return write_topology(tmp_path, brokers=1, logics=1, channels={"lobby": {"members": [1]}})


def bumped(raw, version=2):
    raw["version"] = version


@pytest.mark.parametrize("change, why", [
    (lambda raw: add_logic(raw), "must be greater"),                               # no version bump
    (lambda raw: (bumped(raw), raw.update(cluster="other")), "cluster"),
    (lambda raw: (bumped(raw), raw["idcs"]["test"]["brokers"][0].update(client="tcp://127.0.0.1:2")),
     "brokers differ"),
    (lambda raw: (bumped(raw), raw["idcs"]["test"]["routers"].append(
        {"id": "r9", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"})), "routers differ"),
    (lambda raw: (bumped(raw), raw["idcs"]["test"]["logics"][0].update(rpc="tcp://127.0.0.1:5")),
     "changed its endpoints"),
    (lambda raw: (bumped(raw), raw.update(replication=2), add_logic(raw)), "replication 2"),
    (lambda raw: (bumped(raw), raw["idcs"]["test"].update(logics=[])), "logic"),
])
def test_a_live_change_may_only_add_or_remove_logic_nodes(base, change, why):
    old = topology.load(base)
    try:
        new = topology.load(edit(base, "new.yaml", change))
    except TopologyError as exc:                     # refused when read already: as good
        assert why.split()[0] in str(exc) or "logic" in str(exc)
        return
    with pytest.raises(TopologyError, match=why):
        topochange.check_change(old, new)


def test_adding_and_removing_a_logic_node_with_a_higher_version_is_allowed(base):
    old = topology.load(base)
    new = topology.load(edit(base, "two.yaml", lambda raw: (bumped(raw), add_logic(raw))))
    topochange.check_change(old, new)
    back = topology.load(edit(base, "three.yaml", lambda raw: bumped(raw, 3)))
    topochange.check_change(new, back)


def test_the_version_is_a_whole_number_from_one(base):
    for bad in (0, -1, "2", True, 1.5):
        with pytest.raises(TopologyError, match="version"):
            topology.load(edit(base, "bad.yaml", lambda raw, bad=bad: raw.update(version=bad)))


def test_a_logic_node_starts_from_the_topology_it_adopted_when_newer(base, tmp_path):
    old = topology.load(base)
    new = topology.load(edit(base, "two.yaml", lambda raw: (bumped(raw), add_logic(raw))))
    assert topochange.newest(old, "l1") is old                      # nothing kept yet
    topochange.keep(new, "l1")
    kept = topochange.newest(old, "l1")
    assert kept.version == 2 and "l9" in kept.nodes and kept.path == old.path
    later = topology.load(edit(base, "three.yaml", lambda raw: bumped(raw, 3)))
    assert topochange.newest(later, "l1") is later                  # the file is newer: it wins


def test_a_node_refuses_bad_topology_requests_and_keeps_serving(base):
    mesh = MeshHarness(base).start()
    try:
        admin = mesh.admin
        secret = mesh.topo.read_secret()
        good = auth.mint(secret, 0, 300, scope="admin")
        text = open(base).read()

        def ask(node, **fields):
            msg = dict({"t": "topology", "auth": good, "phase": "adopt", "yaml": text}, **fields)
            return admin.call(node, msg)
        assert ask("b1", auth=auth.mint(secret, 1, 300))["code"] == wire.Err.AUTH_FAILED      # user token
        assert ask("b1", phase="swap")["code"] == wire.Err.BAD_FIELD
        assert "not valid YAML" in ask("r1", yaml="{")["msg"]
        other = text + "\n# another file with the same version\n"
        assert "bump the version" in ask("l1", yaml=other)["msg"]
        older = yaml.safe_dump(dict(yaml.safe_load(text), version=1, cluster="x"))
        assert ask("c1", yaml=older)["code"] == wire.Err.BAD_FIELD
        same = ask("l1")                                            # the running one again: done
        assert same["t"] == "topology" and same["version"] == 1 and same["leaving"] == {}
        for node in ("b1", "l1", "r1", "c1"):
            assert admin.status(node)["topology_version"] == 1
        client = mesh.client(1, wait_online=False)
        assert client.request({"t": "send", "channel": "lobby", "ctime": 1, "text": "hi"})["id"] == 1
    finally:
        mesh.close()


def two_idcs(tmp_path, logics, version, channels=None):
    """Two IDCs, each with a broker, router and counter; ``logics`` = {idc: [logic ids]}, each
    logic node at the same endpoints in every version."""
    ports = iter(range(21000, 21100))

    def ep():
        return f"tcp://127.0.0.1:{next(ports)}"

    def logic(node_id):
        port = 21200 + 2 * sum(map(ord, node_id))
        return {"id": node_id, "rpc": f"tcp://127.0.0.1:{port}", "pub": f"tcp://127.0.0.1:{port + 1}"}
    idcs = {idc: {"brokers": [{"id": f"b-{idc}", "client": ep(), "rpc": ep()}],
                  "routers": [{"id": f"r-{idc}", "rpc": ep(), "pub": ep()}],
                  "counters": [{"id": f"c-{idc}", "rpc": ep()}],
                  **({"logics": [logic(n) for n in logics[idc]]} if idc in logics else {})}
            for idc in ("west", "east")}
    raw = {"local": True, "data_dir": str(tmp_path), "version": version, "curve": False, "idcs": idcs,
           "channels": channels or {}}
    return topology.parse(raw, str(tmp_path / "t.yaml"))


@pytest.mark.parametrize("before, after", [
    ({"west": ["w1"], "east": ["e1"]}, {"west": ["w1"]}),                 # east's last logic node goes
    ({"west": ["w1"]}, {"west": ["w1"], "east": ["e1"]}),                 # east gets its first one
])
def test_a_live_change_keeps_every_channel_in_its_home_idc(tmp_path, before, after):
    """The IDCs that have logic nodes decide the home of every channel made at runtime
    (``team@east``, or a name hashed over those IDCs): a change of that set would move
    channels to another IDC, which a live reshard must refuse (issue 14: a channel stays in
    its home IDC)."""
    old, new = two_idcs(tmp_path, before, 1), two_idcs(tmp_path, after, 2)
    rehomed = [n for n in ["team@east", "team@west"] + [f"room{i}" for i in range(50)]
               if old.home_of(n) != new.home_of(n)]
    assert rehomed                                                      # what the change would do
    with pytest.raises(TopologyError, match="IDC"):
        topochange.check_change(old, new)


@pytest.mark.parametrize("change", [
    lambda raw: raw.update(data_dir="elsewhere"),          # the adopted file kept where no restart looks
    lambda raw: raw.update(secret_file="other.secret"),     # tokens checked against two secrets
    lambda raw: raw.update(curve=not raw.get("curve", True)),
    lambda raw: raw.update(limits={"message_lifetime": 5}),  # half applied until a restart
])
def test_a_live_change_refuses_changes_beyond_the_logic_nodes(base, change):
    """topochange's contract: only the logic nodes (and the version) may differ."""
    old = topology.load(base)
    new = topology.load(edit(base, "new.yaml", lambda raw: (bumped(raw), add_logic(raw), change(raw))))
    with pytest.raises(TopologyError):
        topochange.check_change(old, new)


def test_dropping_or_adding_a_yaml_channel_cannot_move_it_to_another_idc(tmp_path):
    """A YAML channel's declared ``idc`` is its home; a new file without the entry (or with a
    new entry for a name that exists at runtime) would hash it over the IDCs instead."""
    logics = {"west": ["w1"], "east": ["e1", "e2"]}
    name = next(f"ops{i}" for i in range(100)
                if two_idcs(tmp_path, logics, 1).home_of(f"ops{i}") == "west")
    declared = {name: {"members": [1], "idc": "east"}}
    grown = dict(logics, east=["e1", "e2", "e3"])
    for before, after in ((declared, {}), ({}, declared)):
        old, new = two_idcs(tmp_path, logics, 1, before), two_idcs(tmp_path, grown, 2, after)
        assert old.home_of(name) != new.home_of(name)
        with pytest.raises(TopologyError, match="home IDC"):
            topochange.check_change(old, new)


def test_a_topology_whose_keys_are_missing_is_neither_adopted_nor_kept(base):
    """A node must never keep (and so restart from) a topology it cannot run: a new logic
    node's public key file missing here is refused before anything is written."""
    mesh = MeshHarness(base).start()
    try:
        text = open(edit(base, "two.yaml", lambda raw: (bumped(raw), add_logic(raw, "l9", 29000)))).read()
        token = auth.mint(mesh.topo.read_secret(), 0, 300, scope="admin")
        reply = mesh.admin.call("b1", {"t": "topology", "auth": token, "phase": "adopt", "yaml": text})
        assert reply["t"] == "err", reply
        assert not os.path.exists(topochange.kept_path(mesh.topo, "b1"))
        assert mesh.admin.status("b1")["topology_version"] == 1
    finally:
        mesh.close()
