"""Every node serves Prometheus metrics; counters move after a send; bin/mesh top shows the mesh."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import run

from nodes.cluster import topology
from nodes.runtime import metrics


def scrape(spec) -> dict:
    """{(sample name, frozenset of extra labels): value} of one node's /metrics."""
    host, port = spec.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels["node"] == spec.id and s.labels["type"] == spec.type
            extra = frozenset((k, v) for k, v in s.labels.items() if k not in ("node", "type"))
            out[(s.name, extra)] = s.value
    return out


def test_every_node_serves_metrics_and_counters_move_after_a_send(make_mesh):
    m = make_mesh(brokers=1, logics=1, relays=1, metrics=True)
    specs = list(m.topo.nodes.values())
    assert all(spec.metrics for spec in specs)
    before = {spec.id: scrape(spec) for spec in specs}
    for spec in specs:
        assert before[spec.id][("imesh_turns_total", frozenset())] > 0
        assert ("imesh_loop_turn_seconds_count", frozenset()) in before[spec.id]
    c = m.client(1)
    for i in range(3):
        c.send("lobby", f"counted {i}")
    after = {spec.id: scrape(spec) for spec in specs}
    key = ("imesh_stored_total", frozenset())
    assert after["l1"][key] - before["l1"][key] == 3
    writes = ("imesh_store_write_ops_total", frozenset())
    assert after["l1"][writes] > before["l1"][writes]
    assert after["b1"][("imesh_sessions", frozenset())] == 1
    turns = ("imesh_loop_turn_seconds_count", frozenset())
    assert after["b1"][turns] > before["b1"][turns]


def test_status_maps_become_counters_gauges_and_labelled_families():
    fams = {f[0]: f for f in metrics.families(
        {"id": "b1", "pid": 3, "turns": 10, "sessions": 4, "ready": True,
         "refused": {"NOT_MEMBER": 2, "RATE_LIMITED": 5}, "logic_links": ["l1", "l2"], "note": "x"})}
    assert set(fams) == {"imesh_turns", "imesh_sessions", "imesh_ready", "imesh_refused",
                         "imesh_logic_links_count"}
    assert fams["imesh_turns"][1] == "counter" and fams["imesh_sessions"][1] == "gauge"
    assert fams["imesh_refused"][3] == [({"code": "NOT_MEMBER"}, 2), ({"code": "RATE_LIMITED"}, 5)]
    assert fams["imesh_ready"][3] == [({}, 1.0)] and fams["imesh_logic_links_count"][3] == [({}, 2)]


def test_mesh_top_prints_every_node_with_rates(shared_mesh):
    cfg = shared_mesh.mesh.config
    r = run("mesh", "top", "-c", cfg, "--count", 1, "--interval", 0.3)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "turns/s" in lines[1]
    for node_id in shared_mesh.topo.nodes:
        assert any(line.split()[:1] == [node_id] and " up " in line for line in lines)
    assert lines[-1].startswith("mesh") or lines[-2].startswith("mesh")


def test_metrics_endpoint_syntax_is_checked(tmp_path):
    import yaml
    from conftest import write_topology
    cfg = write_topology(tmp_path, metrics=True)
    raw = yaml.safe_load(open(cfg))
    raw["idcs"]["test"]["brokers"][0]["metrics"] = "http://127.0.0.1:9l01"
    with pytest.raises(topology.TopologyError, match=r"brokers\[0\]\.metrics: .*not a number"):
        topology.parse(raw, cfg)
