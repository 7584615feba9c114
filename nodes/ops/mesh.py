"""Start, watch and stop the node processes of a topology on this machine.

One piece serves ``bin/mesh up`` and the tests: every node is a child
process (``python -m nodes.launch``), its log goes to ``<data_dir>/<id>.log``,
readiness is judged from the nodes' own status replies, and ``close()``
stops every child it started (SIGTERM, then SIGKILL) even on failure.

Every child is told the pid of the process that started it
(``IMESH_DIE_WITH``) and asks the kernel for SIGTERM when that process dies
(``PR_SET_PDEATHSIG``, in nodes/launch.py), so a SIGKILLed ``bin/mesh up``
or test run leaves no node behind under pid 1.  Restarting nodes that die is
the supervisor's job (nodes/ops/supervisor.py); this class only starts and stops.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from nodes import PACKAGE_DIR
from nodes.cluster import topology
from nodes.ops.admin import Admin
from nodes.ops.processes import stop_all
from nodes.protocol import auth
from nodes.runtime import curve

if TYPE_CHECKING:
    from nodes.ops.etcdserver import LocalEtcd


def child_env() -> dict:
    """This environment, with the directory holding this package first on PYTHONPATH."""
    env = dict(os.environ)
    root = os.path.dirname(PACKAGE_DIR)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


class MeshError(RuntimeError):
    pass


class MeshInterrupted(MeshError):
    """wait_ready gave up because the caller was asked to stop (Ctrl-C, SIGTERM): the nodes
    that exited meanwhile got the same signal; they did not fail."""


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` (which itself waits on a reply: a status, a leader) until it is
    truthy; its value, or MeshError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MeshError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Mesh:
    def __init__(self, config: str, python: str = sys.executable, log_args=(), wrap=None):
        self.config = os.path.abspath(config)
        self.topo = topology.load(self.config)
        self.python = python
        self.log_args = list(log_args)        # e.g. ["--log-level", "DEBUG", "--log-format", "json"]
        self.procs: dict[str, subprocess.Popen] = {}   # node id -> Popen
        self.admin = Admin(self.topo, timeout=1.0)
        self.etcd: LocalEtcd | None = None    # the local etcd of a replicated local topology
        self.wrap = dict(wrap or {})          # node id -> command prefix (a namespace: ["ip", "netns", "exec", ns])

    def start_etcd(self) -> None:
        """A replicated local topology without endpoints gets its etcd here (data under data_dir)."""
        if self.etcd is None and self.topo.replicated and not self.topo.etcd:
            from nodes.ops.etcdserver import LocalEtcd
            self.etcd = LocalEtcd.persistent(os.path.dirname(self.topo.etcd_endpoints_file())).start()

    # --- processes -----------------------------------------------------------
    def log_path(self, node_id: str) -> str:
        return os.path.join(self.topo.data_dir, f"{node_id}.log")

    def start(self, node_ids=None) -> None:
        if self.topo.local:
            auth.ensure_secret(self.topo.secret_file)
            if self.topo.push is not None:
                auth.ensure_secret(self.topo.push.secret_file)     # signs offline pushes (docs/push.md)
            if self.topo.curve or self.topo.client_curve:
                curve.ensure_keys(self.topo)       # no manual key step on a local mesh
        os.makedirs(self.topo.data_dir, exist_ok=True)
        self.start_etcd()
        env = child_env()
        env["IMESH_DIE_WITH"] = str(os.getpid())          # nodes.launch: exit when we die
        for node_id in node_ids or list(self.topo.nodes):
            if node_id in self.procs and self.procs[node_id].poll() is None:
                raise MeshError(f"node {node_id} is already running")
            log = open(self.log_path(node_id), "ab")
            self.procs[node_id] = subprocess.Popen(
                self.wrap.get(node_id, []) + [self.python, "-m", "nodes.launch", "--config", self.config,
                                              "--id", node_id, *self.log_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            log.close()

    def signal(self, node_id: str, sig: int = signal.SIGTERM, wait: float = 10.0) -> int | None:
        """Send ``sig`` to one node and wait for it to exit; its exit code."""
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def kill(self, node_id: str) -> int | None:
        return self.signal(node_id, signal.SIGKILL)

    def restart(self, node_id: str, timeout: float = 15.0) -> None:
        self.signal(node_id)
        self.start([node_id])
        self.wait_ready(timeout, [node_id])

    def exited(self) -> dict:
        """Nodes that have exited: {id: exit code}."""
        return {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}

    def close(self) -> None:
        stop_all(self.procs.values())
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- readiness -----------------------------------------------------------
    def is_ready(self, node_id: str, status: dict | None) -> bool:
        if status is None:
            return False
        if status["type"] == "broker":
            return bool(status.get("ready"))
        if status["type"] == "logic":
            return bool(status.get("presence_synced"))
        return True

    def wait_ready(self, timeout: float = 20.0, node_ids=None, stop_requested=lambda: False) -> dict:
        """Ask every node for its status until all are ready; raise MeshError with the laggards
        (MeshInterrupted once ``stop_requested()``)."""
        waiting = set(node_ids or self.topo.nodes)
        deadline = time.monotonic() + timeout
        statuses, last = {}, {}
        while waiting:
            for node_id in sorted(waiting):
                proc = self.procs.get(node_id)
                if stop_requested():
                    raise MeshInterrupted("asked to stop while the nodes were starting")
                if proc is not None and proc.poll() is not None:
                    raise MeshError(f"node {node_id} exited with code {proc.returncode}; "
                                    f"see {self.log_path(node_id)}")
            asked = time.monotonic()
            last.update(self.admin.status_all(sorted(waiting), timeout=1.0))
            for node_id in sorted(waiting):
                if self.is_ready(node_id, last.get(node_id)):
                    statuses[node_id] = last[node_id]
                    waiting.discard(node_id)
            if waiting and time.monotonic() - asked < 0.05:
                time.sleep(0.05)                 # nothing listening yet: refused at once, don't spin
            if waiting and time.monotonic() > deadline:
                why = "; ".join(f"{n}: {self.not_ready_reason(last.get(n))}" for n in sorted(waiting))
                raise MeshError(f"not ready after {timeout}s: {why}")
        if self.topo.replicated and node_ids is None:
            self.wait_shards_served(deadline)
        return statuses

    def wait_shards_served(self, deadline: float) -> None:
        """Replicated topologies: until every shard has a leader that serves it."""
        while True:
            served = set()
            for node_id in self.topo.ids("logic"):
                served.update((self.admin.status(node_id, timeout=1.0) or {}).get("shards", {}))
            missing = sorted(set(self.topo.all_shards()) - {int(s) for s in served})
            if not missing:
                return
            if time.monotonic() > deadline:
                raise MeshError(f"shards without a serving leader: {missing[:20]}")
            time.sleep(0.05)                 # leaders come from etcd campaigns: poll their status

    def not_ready_reason(self, status: dict | None) -> str:
        if status is None:
            return "no answer on its rpc endpoint"
        if status["type"] == "broker":
            return f"hears logic nodes {status.get('logic_links')} of {self.topo.ids('logic')}"
        if status["type"] == "logic":
            return "presence replica not synced with the routers"
        return "not ready"
