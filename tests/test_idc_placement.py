"""Placement by home IDC from the topology alone (no sockets): docs/ha.md "Home IDC"."""
from __future__ import annotations

import pytest

from nodes.cli import channel_cli
from nodes.cluster.topology import TopologyError, parse


def topo(replication=1, channels=None, logics=(2, 2)):
    def nodes(idc, k, n_logic):
        base = 7000 + 100 * k
        return {"brokers": [{"id": f"{idc}-b1", "client": f"tcp://127.0.0.1:{base}",
                             "rpc": f"tcp://127.0.0.1:{base + 1}"}],
                "logics": [{"id": f"{idc}-l{i}", "rpc": f"tcp://127.0.0.1:{base + 10 + i}",
                            "pub": f"tcp://127.0.0.1:{base + 20 + i}"} for i in range(1, n_logic + 1)],
                "routers": [{"id": f"{idc}-r{i}", "rpc": f"tcp://127.0.0.1:{base + 30 + i}",
                             "pub": f"tcp://127.0.0.1:{base + 40 + i}"} for i in (1, 2)],
                "counters": [{"id": f"{idc}-c1", "rpc": f"tcp://127.0.0.1:{base + 50}"}]}
    raw = {"local": True, "replication": replication, "shards": 8, "channels": channels or {},
           "idcs": {"east": nodes("east", 1, logics[0]), "west": nodes("west", 2, logics[1])}}
    return parse(raw, "/tmp/t.yaml")


def test_a_channel_lives_in_its_home_idc():
    t = topo(channels={"lobby": {"members": [1], "idc": "west"}})
    assert t.home_of("lobby") == "west" and t.logic_for("lobby").startswith("west-")
    assert t.counter_for("lobby") == "west-c1"
    for name in ("a@east", "b@east", "c@west", "d@west"):
        home = name.rpartition("@")[2]
        assert t.home_of(name) == home and t.logic_for(name).startswith(home + "-")
    assert t.home_of("x@nowhere") in ("east", "west")          # not an IDC: hashed like any name
    homes = {t.home_of(f"room{i}") for i in range(50)}
    assert homes == {"east", "west"}                           # unhomed names spread over the IDCs


def test_per_idc_shard_spaces_keep_replicas_at_home():
    t = topo(replication=2)
    assert list(t.all_shards()) == list(range(16))
    for s in t.all_shards():
        idc = "east" if s < 8 else "west"
        assert t.shard_idc(s) == idc and all(n.startswith(idc + "-") for n in t.replicas_of(s))
    assert 8 <= t.shard_of("team@west") < 16 and t.shard_of("team@east") < 8
    assert set(t.shards_of("east-l1")) <= set(range(8))


def test_presence_lives_on_routers_of_the_brokers_idc():
    t = topo(replication=2)
    assert all(set(t.routers_for(u, "west")) == {"west-r1", "west-r2"} for u in range(1, 20))
    assert all(t.router_for(u, "east").startswith("east-") for u in range(1, 20))


def test_bad_homes_are_refused_with_the_key():
    with pytest.raises(TopologyError, match="channels.lobby.idc"):
        topo(channels={"lobby": {"members": [1], "idc": "north"}})
    with pytest.raises(TopologyError, match="IDC 'west' has 1"):
        topo(replication=2, logics=(2, 1))


def test_channel_create_idc_names_the_home():
    t = topo()
    assert channel_cli.homed_name(t, "team", "west") == "team@west"
    assert channel_cli.homed_name(t, "team@west", "west") == "team@west"
    with pytest.raises(SystemExit):
        channel_cli.homed_name(t, "team@east", "west")
    with pytest.raises(SystemExit):
        channel_cli.homed_name(t, "team", "north")


def test_a_counter_new_to_a_channel_starts_at_the_writers_ids(tmp_path):
    """A channel whose counter changed (a counter added to its home IDC) gets no id twice."""
    from nodes.counter import CounterCore
    from nodes.storage.store import Store
    store = Store(str(tmp_path / "c"), sync=False)
    try:
        core = CounterCore(store)
        assert core.alloc("lobby", 100, have=1003) == (1003, 1103)    # not (1, 101)
        assert core.alloc("lobby", 100, have=1103) == (1103, 1203)
        assert core.alloc("lobby", 100, have=1103) == (1103, 1203)    # a lost answer: the same block
        assert core.alloc("fresh", 10, have=1) == (1, 11)
    finally:
        store.close()


def test_fan_out_plan_sends_each_message_once_per_remote_idc():
    from nodes.cluster import idcfanout
    from nodes.protocol import wire
    t = parse({"local": True, "idcs": {
        "east": {"brokers": [{"id": "e-b1", "client": "tcp://127.0.0.1:7001", "rpc": "tcp://127.0.0.1:7002"}],
                 "logics": [{"id": "e-l1", "rpc": "tcp://127.0.0.1:7003", "pub": "tcp://127.0.0.1:7004"}],
                 "routers": [{"id": "e-r1", "rpc": "tcp://127.0.0.1:7005", "pub": "tcp://127.0.0.1:7006"}],
                 "counters": [{"id": "e-c1", "rpc": "tcp://127.0.0.1:7007"}]},
        "west": {"brokers": [{"id": f"w-b{i}", "client": f"tcp://127.0.0.1:71{i}1", "rpc": f"tcp://127.0.0.1:71{i}2"}
                             for i in (1, 2, 3)]}}}, "/tmp/t.yaml")
    p1, p2 = b"message one", b"message two"
    outbox = {"e-b1": [[p1, [1], 9, 0]], "w-b1": [[p1, [2], 9, 0], [p2, [2], 9, 0]],
              "w-b2": [[p1, [3, 4], 9, 0]], "w-b3": [[p2, [5], 9, 0]]}
    frames = idcfanout.plan(outbox, t, "east", "e-l1")
    assert [(b, m["t"]) for b, m in frames if b == "e-b1"] == [("e-b1", "msgs")]
    remote = [(b, m) for b, m in frames if m["t"] == "msgs_idc"]
    assert len(frames) == 2 and len(remote) == 1 and remote[0][0].startswith("w-b")
    gateway_msg = wire.unpack(wire.pack(remote[0][1]))
    assert sorted(gateway_msg["packs"]) == [p1, p2]                 # each message once
    assert idcfanout.split(gateway_msg) == {b: outbox[b] for b in ("w-b1", "w-b2", "w-b3")}
    with pytest.raises(wire.ProtocolError):
        idcfanout.split({"t": "msgs_idc", "packs": [p1], "to": {"w-b1": [[5, [1], 9, 0]]}})
    with pytest.raises(wire.ProtocolError):
        idcfanout.check_items([[p1, ["x"], 9, 0]])


def test_reshard_touches_only_the_idcs_whose_logic_nodes_change():
    from nodes.ops.reshard import affected_logic_nodes
    before, after = topo(logics=(2, 1)), topo(logics=(2, 2))
    assert affected_logic_nodes(before, after) == ["west-l1", "west-l2"]     # east keeps running
    assert affected_logic_nodes(after, before) == ["west-l1", "west-l2"]
    assert affected_logic_nodes(before, before) == []


def test_bench_idc_help_lists_its_options():
    import subprocess
    import sys

    from conftest import ROOT
    run = subprocess.run([sys.executable, "-m", "bench", "idc", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 0 and "--reshard-channels" in run.stdout and "(default: 200)" in run.stdout


def test_a_new_channel_is_homed_at_the_nearest_logic_node():
    """bin/mesh channel create NAME (no --idc): the IDC of the logic node with the best status
    round trip; near-equal ones (one LAN, loopback) are decided by the name's hash, so the
    same name gets the same home on every try; no answer at all is a clear error."""
    from nodes.ops.admin import AdminError, nearest_home
    t = topo()
    west = nearest_home(t, "team", {"east-l1": 0.0412, "east-l2": 0.0409, "west-l1": 0.0004, "west-l2": 0.0011})
    assert (west["idc"], west["logic"], west["by"]) == ("west", "west-l1", "nearest")
    assert "west-l1 (0.4 ms" in west["why"] and "east-l2 40.9 ms" in west["why"]
    assert west["rtt_ms"] == {"east-l1": 41.2, "east-l2": 40.9, "west-l1": 0.4, "west-l2": 1.1}
    east = nearest_home(t, "team", {"east-l1": 0.0003, "east-l2": None, "west-l1": 0.041, "west-l2": None})
    assert (east["idc"], east["logic"]) == ("east", "east-l1") and "west-l2 no answer" in east["why"]
    assert east["rtt_ms"]["west-l2"] is None
    # a cut link: only the own IDC answers
    cut = {"east-l1": None, "east-l2": None, "west-l1": 0.002, "west-l2": 0.003}
    assert nearest_home(t, "team", cut)["idc"] == "west"
    # loopback: every node about as near -> the name's hash among the tied IDCs, stable
    flat = {"east-l1": 0.00031, "east-l2": 0.00035, "west-l1": 0.00029, "west-l2": 0.0004}
    homes = {name: nearest_home(t, name, flat) for name in (f"room{i}" for i in range(20))}
    assert {h["idc"] for h in homes.values()} == {"east", "west"}
    for name, home in homes.items():
        assert home["by"] == "nearest_tie" and home["idc"] == t.home_of(name)
        assert nearest_home(t, name, {**flat, "west-l1": 0.00033})["idc"] == home["idc"]
    with pytest.raises(AdminError, match="UNAVAILABLE.*--idc"):
        nearest_home(t, "team", dict.fromkeys(flat))


def test_only_names_without_a_home_are_measured():
    """Which creates measure: a multi-IDC topology and a name with no @IDC suffix that is not a
    topology channel; a one-IDC topology never does (its names get no suffix)."""
    class NoMeasuring:
        def round_trips(self, ids, rounds=3):
            raise AssertionError("measured")

    class Measuring:
        def round_trips(self, ids, rounds=3):
            assert rounds == 3 and sorted(ids) == ["east-l1", "east-l2", "west-l1", "west-l2"]
            return {"east-l1": 0.04, "east-l2": 0.04, "west-l1": 0.0005, "west-l2": None}

    t = topo(channels={"lobby": {"members": [1]}, "hall": {"members": [1], "idc": "east"}})
    for name in ("team@east", "team@west", "lobby", "hall"):
        assert channel_cli.measured_home(t, NoMeasuring(), name) is None
    assert channel_cli.measured_home(t, Measuring(), "team")["idc"] == "west"
    assert channel_cli.measured_home(t, Measuring(), "team@nowhere")["idc"] == "west"   # not an IDC: no home yet
    one = parse({"local": True, "idcs": {"east": {
            "brokers": [{"id": "b1", "client": "tcp://127.0.0.1:7001", "rpc": "tcp://127.0.0.1:7002"}],
            "logics": [{"id": "l1", "rpc": "tcp://127.0.0.1:7003", "pub": "tcp://127.0.0.1:7004"}],
            "routers": [{"id": "r1", "rpc": "tcp://127.0.0.1:7005", "pub": "tcp://127.0.0.1:7006"}],
            "counters": [{"id": "c1", "rpc": "tcp://127.0.0.1:7007"}]}}}, "/tmp/t.yaml")
    assert channel_cli.measured_home(one, NoMeasuring(), "team") is None


def test_a_tie_over_a_wan_is_measured_again():
    """West measured slow for a moment (a busy machine): 38 vs 52 ms look tied, so it measures
    again and keeps each node's best; a tie on one LAN (< 1 ms) is settled by the hash at once."""
    class Passes:
        def __init__(self, *passes):
            self.passes, self.calls = list(passes), 0

        def round_trips(self, ids, rounds=3):
            self.calls += 1
            return self.passes.pop(0)

    t = topo()
    busy = {"east-l1": 0.052, "east-l2": 0.055, "west-l1": 0.038, "west-l2": 0.060}
    calm = {"east-l1": 0.041, "east-l2": 0.041, "west-l1": 0.0004, "west-l2": None}
    admin = Passes(busy, calm)
    home = channel_cli.measured_home(t, admin, "team")
    assert admin.calls == 2 and (home["idc"], home["by"], home["logic"]) == ("west", "nearest", "west-l1")
    assert home["rtt_ms"] == {"east-l1": 41.0, "east-l2": 41.0, "west-l1": 0.4, "west-l2": 60.0}
    stays = Passes(busy, busy, busy, calm)                        # at most 2 more passes
    assert channel_cli.measured_home(t, stays, "team")["by"] == "nearest_tie" and stays.calls == 3
    lan = Passes({"east-l1": 0.0003, "east-l2": 0.0003, "west-l1": 0.0004, "west-l2": 0.0003}, calm)
    assert channel_cli.measured_home(t, lan, "team")["by"] == "nearest_tie" and lan.calls == 1
