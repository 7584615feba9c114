"""Two IDCs with a mesh in each, on the WAN bed: shared by tests/test_idc.py and ``bin/bench idc``.

east: one broker, logic node, router and counter; west: two brokers, one
logic node, router and counter; ``eroom`` is homed in east, ``wroom`` in
west (members 1-20).  CURVE is off so the forwarder can count how many
copies of a message text cross (``WanLink.watch``).  Clients run
bench/idcprobe.py in the hosts ``east-client`` and ``west-client``.
Everything is removed by ``close()``, also when starting failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import shutil

from bench import wanbed
from nodes.mesh import Mesh
from nodes.topology import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = {"eroom": {"members": "1-20", "idc": "east"}, "wroom": {"members": "1-20", "idc": "west"}}
LAYOUT = {"east": {"brokers": 1, "logics": 1, "routers": 1, "counters": 1},
          "west": {"brokers": 2, "logics": 1, "routers": 1, "counters": 1}}


class ProbeError(RuntimeError):
    pass


class IdcMesh:
    def __init__(self, delay: float = 0.020):
        self.delay = delay
        self.bed = self.mesh = self.cfg = self.topo = None
        self.dir = tempfile.mkdtemp(prefix="imesh-idc-")

    def start(self, ready_timeout: float = 60) -> "IdcMesh":
        try:
            self.bed = wanbed.WanBed(delay=self.delay).start()
            self.cfg = wanbed.write_wan_topology(self.bed, self.dir, LAYOUT, channels=CHANNELS, curve=False)
            self.topo = load(self.cfg)
            self.mesh = Mesh(self.cfg, wrap={node_id: self.bed.wrap(node_id) for node_id in self.bed.hosts})
            self.mesh.start()
            self.mesh.wait_ready(ready_timeout)
            self.bed.host("east-client", "east")
            self.bed.host("west-client", "west")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            if self.mesh is not None:
                self.mesh.close()
        finally:
            if self.bed is not None:
                self.bed.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- clients ------------------------------------------------------------------
    def argv(self, host, mode, broker, uin, *args) -> list:
        return self.bed.wrap(host) + [sys.executable, "-m", "bench.idcprobe", mode, self.cfg, broker,
                                      str(uin), *map(str, args)]

    def env(self) -> dict:
        return dict(os.environ, PYTHONPATH=ROOT)

    def probe(self, host, mode, broker, uin, *args, timeout=120) -> list:
        """Run bench/idcprobe.py on ``host`` to its end; its JSON lines."""
        run = subprocess.run(self.argv(host, mode, broker, uin, *args), capture_output=True, text=True,
                             timeout=timeout, env=self.env())
        if run.returncode != 0:
            raise ProbeError(run.stderr)
        return [json.loads(line) for line in run.stdout.splitlines()]

    def receiver(self, host, broker, uin, count, seconds=30) -> subprocess.Popen:
        """A probe in ``recv`` mode, logged in (it said ready); read it with ``collect``."""
        proc = subprocess.Popen(self.argv(host, "recv", broker, uin, "--count", count, "--seconds", seconds),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env())
        line = proc.stdout.readline()
        if json.loads(line or "null") != {"ready": True}:
            proc.kill()
            _out, err = proc.communicate()
            raise ProbeError(f"receiver did not start: {err}")
        return proc


def collect(proc, timeout=60) -> list:
    """The JSON lines of a probe process once it ended (killed if it does not end in time)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise ProbeError(err)
    return [json.loads(line) for line in (out or "").splitlines()]
