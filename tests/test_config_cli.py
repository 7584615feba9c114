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
    assert run("mesh", "check", "-c", cfg).returncode == 0
    assert run("mesh", "token", "-c", cfg, "--uin", 1).stdout.startswith("v1.user.1.")


def test_shipped_multi_idc_example_token_without_secret_is_one_line():
    r = run("mesh", "token", "-c", os.path.join(ROOT, "config", "multi-idc.yaml"), "--uin", 1)
    assert r.returncode == 2
    one_error_line(r, "/etc/imesh/secret", "secret -c")
