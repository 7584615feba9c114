"""A node that cannot bind one of its endpoints says which one (found following docs/deploy.md:
a ws address left over from the example topology gave only "[Errno 99] Cannot assign requested
address", and a broker has four endpoints to check)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import yaml
from conftest import ROOT, write_topology


def launch(config, node_id):
    return subprocess.run([sys.executable, "-m", "nodes.launch", "--config", config, "--id", node_id],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))


def test_a_taken_ws_or_metrics_port_is_named_in_the_error(tmp_path):
    path = write_topology(tmp_path, brokers=1, logics=1, ws=True, curve=False)
    raw = yaml.safe_load(open(path))
    broker = raw["idcs"]["test"]["brokers"][0]
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        broker["ws"] = f"ws://127.0.0.1:{taken}"
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        run = launch(path, "b1")
        assert run.returncode != 0 and f"ws endpoint ws://127.0.0.1:{taken}" in run.stderr, run.stderr
        del broker["ws"]
        broker["metrics"] = taken
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        run = launch(path, "b1")
        assert run.returncode != 0 and f"metrics endpoint http://127.0.0.1:{taken}" in run.stderr, run.stderr
    finally:
        holder.close()
