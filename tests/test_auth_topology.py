"""Tokens, topology loading and ownership: pure functions, no sockets."""
from __future__ import annotations

import collections
import os

import pytest
import yaml

from nodes.cluster import rendezvous, topology
from nodes.protocol import auth, wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = b"0123456789abcdef-test"


def test_token_round_trip_and_failures():
    token = auth.mint(SECRET, 42, 60, now=1000)
    assert auth.verify(SECRET, token, now=1000) == 42
    with pytest.raises(wire.ProtocolError) as exc:
        auth.verify(SECRET, token, now=2000)
    assert exc.value.code == wire.Err.TOKEN_EXPIRED
    tampered = token.replace("v1.user.42.", "v1.user.43.")
    for bad in (tampered, token + "0", "", "v1.user.x.1.ab", auth.mint(b"other-secret-1234", 42, 60)):
        with pytest.raises(wire.ProtocolError) as exc:
            auth.verify(SECRET, bad, now=1000)
        assert exc.value.code == wire.Err.AUTH_FAILED
    admin = auth.mint(SECRET, 0, 60, scope="admin", now=1000)
    assert auth.verify(SECRET, admin, scope="admin", now=1000) == 0
    with pytest.raises(wire.ProtocolError):
        auth.verify(SECRET, admin, now=1000)               # admin token is not a login token
    with pytest.raises(ValueError):
        auth.mint(SECRET, 2**32, 60)


def test_ensure_secret_creates_once(tmp_path):
    path = tmp_path / "sub" / "secret"
    assert auth.ensure_secret(str(path)) is True
    first = path.read_bytes()
    assert auth.ensure_secret(str(path)) is False and path.read_bytes() == first
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_local_topology_loads_with_the_promised_shape():
    topo = topology.load(os.path.join(ROOT, "config", "local.yaml"))
    assert len(topo.ids("broker")) == 2 and len(topo.ids("logic")) == 2
    assert len(topo.ids("router")) == 1 and len(topo.ids("counter")) == 1
    assert topo.channels["lobby"]["members"] == list(range(1, 101))
    assert topo.local is True and topo.data_dir == os.path.join(ROOT, "var")
    assert all(ep.startswith("ws://127.0.0.1:" if name == "ws" else "tcp://127.0.0.1:")
               for n in topo.nodes.values() for name, ep in n.endpoints.items())
    assert all("ws" in n.endpoints for n in topo.of_type("broker"))        # the web chat page


def test_multi_idc_example_loads():
    topo = topology.load(os.path.join(ROOT, "config", "multi-idc.yaml"))
    assert len({n.idc for n in topo.nodes.values()}) == 2


def _write(tmp_path, raw):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return str(path)


BASE = {"idcs": {"a": {"brokers": [{"id": "b", "client": "tcp://127.0.0.1:1", "rpc": "tcp://127.0.0.1:2"}],
                       "logics": [{"id": "l", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"}],
                       "routers": [{"id": "r", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                       "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}


@pytest.mark.parametrize("change,key", [
    ({"limits": {"max_text": 0}}, "limits.max_text"),
    ({"limits": {"message_lifetime": -1}}, "limits.message_lifetime"),
    ({"limits": {"max_txt": 10}}, "limits.max_txt"),
    ({"limits": {"id_block": 2.5}}, "limits.id_block"),
    ({"limits": {"rate": 0}}, "limits.rate"),
    ({"limits": {"burst": -5}}, "limits.burst"),
    ({"limits": {"max_fragments": 0}}, "limits.max_fragments"),
    ({"limits": {"channel_queue": 0}}, "limits.channel_queue"),
    ({"channels": {"ok": {"members": [1], "lifetime": 0}}}, "channels.ok.lifetime"),
    ({"channels": {"ok": {"members": [1], "lifetime": "1d"}}}, "channels.ok.lifetime"),
    ({"channels": {"ok": {"members": [1], "colour": 1}}}, "channels.ok.colour"),
    ({"heartbeat": {"wifi": "fast"}}, "heartbeat.wifi"),
    ({"colour": "blue"}, "colour"),
    ({"channels": {"bad name": {"members": [1]}}}, "channels.bad name"),
    ({"channels": {"ok": {"members": ["1-x"]}}}, "channels.ok.members"),
    ({"channels": {"ok": {"members": [2**32]}}}, "channels.ok.members"),
    ({"limits": {"gather_ms": -1}}, "limits.gather_ms"),
    ({"limits": {"gather_frames": 0}}, "limits.gather_frames"),
    ({"limits": {"gather_frames": 2.5}}, "limits.gather_frames"),
])
def test_bad_topology_values_name_the_file_and_key(tmp_path, change, key):
    path = _write(tmp_path, dict(BASE, **change))
    with pytest.raises(topology.TopologyError) as exc:
        topology.load(path)
    assert path in str(exc.value) and key in str(exc.value)


def test_bad_topology_structure(tmp_path):
    no_counter = {"idcs": {"a": {k: v for k, v in BASE["idcs"]["a"].items() if k != "counters"}}}
    dup = yaml.safe_load(yaml.safe_dump(BASE))
    dup["idcs"]["a"]["logics"][0]["rpc"] = "tcp://127.0.0.1:1"
    for raw, needle in [(no_counter, "counter"), (dup, "already used"), ("a: [", "YAML"),
                        ({"idcs": {"a": {"brokers": [{"id": "b"}]}}}, "endpoint")]:
        with pytest.raises(topology.TopologyError) as exc:
            topology.load(_write(tmp_path, raw))
        assert needle in str(exc.value)
    with pytest.raises(topology.TopologyError):
        topology.load(str(tmp_path / "missing.yaml"))


def test_rendezvous_is_stable_spread_and_moves_only_a_share():
    nodes = ["l1", "l2", "l3"]
    keys = [f"room{i}" for i in range(3000)]
    owners = {k: rendezvous.owner(nodes, k) for k in keys}
    counts = collections.Counter(owners.values())
    assert all(800 < counts[n] < 1200 for n in nodes)
    grown = {k: rendezvous.owner(nodes + ["l4"], k) for k in keys}
    moved = [k for k in keys if grown[k] != owners[k]]
    assert all(grown[k] == "l4" for k in moved)          # only keys the new node wins move
    assert 500 < len(moved) < 1000
    assert rendezvous.owner(list(reversed(nodes)), "room1") == owners["room1"]
