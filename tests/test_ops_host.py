"""docs/deploy.md "Two IDCs" followed literally on the operator's host: after the other nodes'
private keys are deleted there, `keys` must not replace their public keys, and `reshard` must
not "move" nothing offline when it simply reaches no node (issue 22 item 4)."""
from __future__ import annotations

import os

import yaml
from conftest import write_topology
from test_cli import run


def non_local(tmp_path) -> str:
    cfg = write_topology(tmp_path)
    raw = yaml.safe_load(open(cfg))
    raw["local"] = False
    with open(cfg, "w") as f:
        yaml.safe_dump(raw, f)
    return cfg


def test_keys_after_private_keys_left_the_host_keeps_their_public_keys(tmp_path):
    cfg = non_local(tmp_path)
    assert run("mesh", "keys", "-c", cfg).returncode == 0
    keys = os.path.join(os.path.dirname(cfg), "keys")
    publics = {n: open(os.path.join(keys, n), "rb").read() for n in os.listdir(keys) if n.endswith(".key")}
    gone = [n[:-len(".key")] for n in publics if n not in ("admin.key", "b1.key")]
    for name in gone:                          # step 1: "delete the other nodes' .key_secret files"
        os.remove(os.path.join(keys, name + ".key_secret"))
    os.remove(os.path.join(keys, "b1.key"))    # a pair with only its private half: public made from it
    os.remove(os.path.join(keys, "b1.key_secret"))   # ... and one wholly missing: made anew
    r = run("mesh", "keys", "-c", cfg)
    assert r.returncode == 0, r.stderr
    for name in gone:
        assert open(os.path.join(keys, name + ".key"), "rb").read() == publics[name + ".key"], name
        assert not os.path.exists(os.path.join(keys, name + ".key_secret")), name
    first = r.stdout.splitlines()[0]
    assert "created b1" in first, first
    assert "skipped" in r.stdout and all(n in r.stdout for n in gone), r.stdout
    assert os.path.exists(os.path.join(keys, "b1.key_secret"))


def test_reshard_refuses_the_offline_path_when_it_reaches_no_node_and_holds_no_data(tmp_path):
    """The ops host of deploy.md: no logic node answers from here and their data directories
    are on their own machines.  Before: "0 channel(s) moved", exit 0.  A stopped mesh whose
    data is here still reshards offline."""
    from test_reshard import reshard, with_second_logic

    from nodes.cluster import topology
    one = write_topology(tmp_path, brokers=1, logics=1)
    two = with_second_logic(one)
    for extra in (("--dry-run",), ()):
        r = reshard(two, one, *extra)
        assert r.returncode == 1, (extra, r.stdout, r.stderr)
        assert "moved" not in r.stdout and "would move" not in r.stdout, r.stdout
        assert "no logic node" in r.stderr and "answers" in r.stderr and "l1" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    os.makedirs(topology.load(one).node_dir("l1"))     # the mesh ran here and is stopped
    r = reshard(two, one, "--dry-run")
    assert r.returncode == 0 and "0 channel(s) would move" in r.stdout, (r.stdout, r.stderr)
