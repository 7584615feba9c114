"""bench/wanhosts.py, the WAN bed kept up by hand for following docs/deploy.md: hosts with a
private /etc entry each, cut and heal from another process, and nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from conftest import ROOT

from bench import wanbed

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(wanbed.available() is not None, reason=str(wanbed.available()))]


def tool(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "bench.wanhosts", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def test_hosts_private_etc_cut_heal_and_teardown(tmp_path):
    state, entry = str(tmp_path / "bed.json"), f"imesh-test-{uuid.uuid4().hex[:8]}"
    bed = subprocess.Popen([sys.executable, "-m", "bench.wanhosts", "up", "--state", state, "--delay-ms", "5",
                            "--idc", "east:e1", "--idc", "west:w1", "--private-etc", entry],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(state):
            assert bed.poll() is None and time.monotonic() < deadline, bed.communicate()
            time.sleep(0.05)
        hosts = json.load(open(state))["hosts"]
        assert {h["idc"] for h in hosts.values()} == {"east", "west"}
        wrote = tool("run", "--state", state, "e1", "--", "sh", "-c", f"echo e1 > /etc/{entry}/mine")
        assert wrote.returncode == 0, wrote.stderr
        seen = tool("run", "--state", state, "w1", "--", "ls", f"/etc/{entry}")
        assert seen.returncode == 0 and seen.stdout.strip() == ""        # e1's file is on e1 only
        assert os.listdir(f"/etc/{entry}") == []                         # and not on the machine itself
        assert json.loads(tool("cut", "--state", state).stdout)["link"] == "cut"
        assert json.loads(tool("heal", "--state", state).stdout)["link"] == "up"
    finally:
        if bed.poll() is None:
            bed.send_signal(signal.SIGTERM)
        try:
            out, err = bed.communicate(timeout=30)
        except subprocess.TimeoutExpired:      # a bed stuck in its teardown: not left running
            bed.kill()
            out, err = bed.communicate()
    assert "bed removed" in out, err
    assert not os.path.exists(f"/etc/{entry}") and not os.path.exists(state)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(h["ns"] in namespaces for h in hosts.values())
