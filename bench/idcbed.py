"""Two IDCs with a mesh in each, on the WAN bed: shared by tests/test_idc.py and ``bin/bench idc``.

east: one broker, logic node, router and counter; west: two brokers, one
logic node, router and counter; ``eroom`` is homed in east, ``wroom`` in
west (members 1-20).  ``layout=SPARE_LAYOUT``: two routers and two counters
in each IDC, config/multi-idc.yaml's shape (tests/test_idc_failover.py kills
one of each).  CURVE is off so the forwarder can count how many
copies of a message text cross (``WanLink.watch``).  Clients run
bench/idcprobe.py in the hosts ``east-client`` and ``west-client``.
Everything is removed by ``close()``, also when starting failed.

A live reshard on the bed (tests/test_idc_reshard.py, ``bin/bench idc``):
``variant`` writes a newer topology with a logic node added (on a host of
its own in its IDC) or dropped, ``start_logic``/``move``/``remove_logic`` run
``bin/mesh reshard`` from the root namespace (it reaches every node without
crossing the WAN) the way an operator does, starting the new node in
between.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

from bench import wanbed
from nodes.cluster.topology import load
from nodes.ops.mesh import Mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = {"eroom": {"members": "1-20", "idc": "east"}, "wroom": {"members": "1-20", "idc": "west"}}
LAYOUT = {"east": {"brokers": 1, "logics": 1, "routers": 1, "counters": 1},
          "west": {"brokers": 2, "logics": 1, "routers": 1, "counters": 1}}
SPARE_LAYOUT = {idc: dict(counts, routers=2, counters=2) for idc, counts in LAYOUT.items()}


class ProbeError(RuntimeError):
    pass


class IdcMesh:
    def __init__(self, delay: float = 0.020, channels=None, limits=None, layout=None):
        self.delay = delay
        self.layout = LAYOUT if layout is None else layout
        self.channels = CHANNELS if channels is None else channels
        self.limits = limits
        self.bed = self.mesh = self.cfg = self.topo = None
        self.added = {}                       # logic node id -> the Mesh that started it (live reshard)
        self.dir = tempfile.mkdtemp(prefix="imesh-idc-")

    def start(self, ready_timeout: float = 60) -> IdcMesh:
        try:
            self.bed = wanbed.WanBed(delay=self.delay).start()
            self.cfg = wanbed.write_wan_topology(self.bed, self.dir, self.layout, channels=self.channels,
                                                limits=self.limits, curve=False)
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
            for mesh in self.added.values():
                mesh.close()
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

    # --- live reshard -------------------------------------------------------------
    def variant(self, base: str, version: int, add=None, drop=None) -> str:
        """A copy of topology ``base`` with ``version``; ``add`` (node id, idc): a logic node on a
        new host of the bed; ``drop``: a logic node id left out.  Returns its path."""
        raw = yaml.safe_load(open(base))
        if add:
            node_id, idc = add
            address = self.bed.host(node_id, idc)
            raw["idcs"][idc]["logics"].append({"id": node_id, **{
                name: f"tcp://{address}:{wanbed.ENDPOINT_PORTS[name]}" for name in ("rpc", "pub")}})
        if drop:
            for groups in raw["idcs"].values():
                groups["logics"] = [n for n in groups.get("logics", []) if n["id"] != drop]
        raw["version"] = version
        path = os.path.join(self.dir, f"topology-{version}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        return path

    def reshard(self, new: str, old: str, timeout=600) -> subprocess.CompletedProcess:
        """``bin/mesh reshard -c NEW --from OLD --json``, run from the root namespace."""
        return subprocess.run([sys.executable, "-m", "nodes.cli.mesh", "reshard", "-c", new, "--from", old,
                               "--json"], capture_output=True, text=True, timeout=timeout, env=self.env())

    def start_logic(self, old: str, node_id: str, idc: str, version: int) -> str:
        """The first half of adding a logic node live: the command admits its key and exits 3
        (start it), and the node is started on its own host with NEW.  ``move`` does the rest.
        Returns NEW's path."""
        new = self.variant(old, version, add=(node_id, idc))
        first = self.reshard(new, old)
        if first.returncode != 3 or f"--id {node_id}" not in first.stderr:
            raise ProbeError(f"reshard before {node_id} runs: exit {first.returncode}: {first.stderr}")
        mesh = self.added[node_id] = Mesh(new, wrap={node_id: self.bed.wrap(node_id)})
        mesh.start([node_id])
        mesh.wait_ready(60, [node_id])
        return new

    def remove_logic(self, old: str, node_id: str, version: int) -> tuple[str, dict]:
        """Remove a logic node live: its channels go back, then it is stopped.  (NEW, the report)."""
        new = self.variant(old, version, drop=node_id)
        report = self.move(new, old)
        self.added.pop(node_id).close()
        return new, report

    def move(self, new: str, old: str) -> dict:
        """The command that moves the channels (every logic node of NEW runs); its JSON report."""
        run = self.reshard(new, old)
        if run.returncode != 0:
            raise ProbeError(f"reshard -c {new}: exit {run.returncode}: {run.stderr}")
        return json.loads(run.stdout)


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
