"""Keep a topology's nodes running on this machine: restart the ones that die, obey stop/restart.

``bin/mesh up`` runs one ``Supervisor`` around a ``Mesh``.  A node that exits
without being asked to is started again after a backoff (0.25 s, doubling up
to 30 s while it keeps dying within 10 s of its start); ``status`` shows how
often and with which exit code.  The supervisor listens on
``ipc://<data_dir>/mesh.ctl`` for ``bin/mesh stop|start|restart|status`` and
writes its pid to ``<data_dir>/mesh.pid``; the children die with it
(``PR_SET_PDEATHSIG``, set by nodes/launch.py).

Why our own supervisor and not circus: what we need is ~150 lines on top of
the Mesh class the tests already use (spawn, readiness from the nodes' own
status replies, death with the parent), while circus brings its own ZeroMQ
control plane, a tornado dependency and a config format of its own, would
have to be taught our readiness rule, and still needs a systemd unit in
production.  For production, deploy/ has one systemd unit per node type.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import zmq

from nodes.ops.mesh import Mesh

log = logging.getLogger("supervisor")


def control_endpoint(data_dir: str) -> str:
    return "ipc://" + os.path.join(data_dir, "mesh.ctl")


def pid_path(data_dir: str) -> str:
    return os.path.join(data_dir, "mesh.pid")


@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a node that has died ``failures`` times in a row."""
    first: float = 0.25
    cap: float = 30.0
    stable: float = 10.0       # a node that ran this long before dying starts a new series

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2 ** max(0, min(failures - 1, 16)))


@dataclasses.dataclass
class NodeState:
    restarts: int = 0              # automatic restarts after an unrequested exit
    last_exit: int | None = None
    failures: int = 0              # exits in a row, each within Backoff.stable of its start
    started: float = 0.0
    due: float | None = None       # when to start it again
    held: bool = False             # stopped by the operator: leave it down
    seen_exit: object = None       # the Popen whose exit has been handled


class Supervisor:
    def __init__(self, mesh: Mesh, backoff: Backoff = Backoff(), out=None):
        self.mesh = mesh
        self.backoff = backoff
        self.state = {n: NodeState() for n in mesh.topo.nodes}
        self.out = out                 # a text stream for operator lines (bin/mesh up's stdout)
        self.stopping = False
        self.ctl: zmq.Socket | None = None
        self.data_dir = mesh.topo.data_dir
        self.handlers = {"status": self.do_status, "stop": self.do_stop, "start": self.do_start,
                         "restart": self.do_restart}

    # --- lifetime ------------------------------------------------------------
    def open(self) -> None:
        """Bind the control socket and write the pid file (before starting nodes)."""
        os.makedirs(self.data_dir, exist_ok=True)
        self.ctl = zmq.Context.instance().socket(zmq.REP)
        self.ctl.setsockopt(zmq.LINGER, 0)
        path = os.path.join(self.data_dir, "mesh.ctl")
        if os.path.exists(path):
            os.unlink(path)            # left by a supervisor that was killed
        self.ctl.bind(control_endpoint(self.data_dir))
        with open(pid_path(self.data_dir), "w") as f:
            f.write(f"{os.getpid()}\n")

    def start_all(self) -> None:
        now = time.monotonic()
        self.mesh.start()
        for st in self.state.values():
            st.started = now

    def close(self) -> None:
        try:
            self.mesh.close()
        finally:
            if self.ctl is not None:
                self.ctl.close(0)
            for path in (pid_path(self.data_dir), os.path.join(self.data_dir, "mesh.ctl")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def run(self, stop_requested=lambda: False, tick: float = 0.1) -> None:
        """Serve control requests and restart dead nodes until told to stop."""
        ctl = self.ctl
        if ctl is None:
            raise RuntimeError("Supervisor.run before open()")
        while not (self.stopping or stop_requested()):
            if ctl.poll(int(tick * 1000)):
                try:
                    request = json.loads(ctl.recv())
                    if not isinstance(request, dict):
                        raise ValueError("a control request is a JSON object")
                    reply = self.handle(request)
                except (ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:             # one bad request must not stop the whole mesh
                    log.exception("control request failed")
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                ctl.send(json.dumps(reply).encode())
            if self.stopping or stop_requested():
                break        # a signal to the whole process group stopped the nodes too: no crash, no restart
            self.check(time.monotonic())

    # --- restarts --------------------------------------------------------------
    def check(self, now: float) -> None:
        """Note nodes that exited, start the ones whose backoff has passed."""
        for node_id, proc in list(self.mesh.procs.items()):
            st = self.state[node_id]
            if proc.poll() is None or st.seen_exit is proc:
                continue
            st.seen_exit, st.last_exit = proc, proc.returncode
            if st.held:
                continue
            st.failures = st.failures + 1 if now - st.started < self.backoff.stable else 1
            wait = self.backoff.delay(st.failures)
            st.due = now + wait
            self.say(f"  down {node_id} exited with code {proc.returncode}; restarting in {wait:g}s "
                     f"(log: {self.mesh.log_path(node_id)})", logging.WARNING)
        for node_id, st in self.state.items():
            if st.due is not None and now >= st.due and not st.held:
                st.due = None
                st.restarts += 1
                try:
                    self.spawn(node_id, now)
                except Exception as exc:         # e.g. a full disk: try again later, keep the others
                    st.failures += 1
                    st.due = now + self.backoff.delay(st.failures)
                    self.say(f"  cannot restart {node_id}: {exc}; next try in "
                             f"{st.due - now:g}s", logging.ERROR)
                    continue
                self.say(f"  restarted {node_id} (pid {self.mesh.procs[node_id].pid}, "
                         f"restart #{st.restarts})")

    def spawn(self, node_id: str, now: float) -> None:
        self.state[node_id].started = now
        self.mesh.start([node_id])

    def say(self, line: str, level: int = logging.INFO) -> None:
        """An operator line: on ``out`` (bin/mesh up's terminal or mesh.log), else to the log."""
        if self.out is not None:
            print(line, file=self.out, flush=True)
        else:
            log.log(level, line.strip())

    # --- control requests ------------------------------------------------------
    def handle(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd not in self.handlers:
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(self.handlers)})"}
        node_id = request.get("node")
        if node_id is not None and node_id not in self.state:
            return {"ok": False, "error": f"no node {node_id!r} in {self.mesh.topo.path}"}
        return self.handlers[cmd](node_id)

    def running(self, node_id: str) -> bool:
        proc = self.mesh.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def do_status(self, _node_id) -> dict:
        nodes = {}
        for node_id, st in self.state.items():
            proc = self.mesh.procs.get(node_id)
            nodes[node_id] = {"running": self.running(node_id), "pid": proc and proc.pid,
                              "restarts": st.restarts, "last_exit": st.last_exit, "held": st.held}
        return {"ok": True, "pid": os.getpid(), "config": self.mesh.config, "nodes": nodes}

    def do_stop(self, node_id) -> dict:
        if node_id is None:                     # the whole mesh: run() returns, the caller closes
            self.stopping = True
            return {"ok": True, "stopping": "all"}
        st = self.state[node_id]
        st.held, st.due = True, None
        code = self.mesh.signal(node_id)
        self.say(f"  stopped {node_id} (exit {code}) on request")
        return {"ok": True, "node": node_id, "exit": code}

    def do_start(self, node_id) -> dict:
        if node_id is None:
            return {"ok": False, "error": "start needs a node id"}
        st = self.state[node_id]
        st.held, st.due = False, None
        if not self.running(node_id):
            self.spawn(node_id, time.monotonic())
            self.say(f"  started {node_id} on request")
        return {"ok": True, "node": node_id, "pid": self.mesh.procs[node_id].pid}

    def do_restart(self, node_id) -> dict:
        if node_id is None:
            return {"ok": False, "error": "restart needs a node id"}
        st = self.state[node_id]
        st.held, st.due = False, None
        code = self.mesh.signal(node_id)
        st.seen_exit = self.mesh.procs.get(node_id)
        self.spawn(node_id, time.monotonic())
        self.say(f"  restarted {node_id} on request (old one exited with {code})")
        return {"ok": True, "node": node_id, "pid": self.mesh.procs[node_id].pid}


def control(data_dir: str, request: dict, timeout: float = 15.0) -> dict | None:
    """Send one request to the supervisor of ``data_dir``; its reply, or None if none runs."""
    if not os.path.exists(os.path.join(data_dir, "mesh.ctl")) or read_pid(data_dir) is None:
        return None                 # no supervisor, or a killed one's leftovers: answer at once
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(control_endpoint(data_dir))
        sock.send(json.dumps(request).encode())
        if not sock.poll(int(timeout * 1000)):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close(0)


def read_pid(data_dir: str) -> int | None:
    """The pid in ``<data_dir>/mesh.pid`` if that process is alive."""
    try:
        with open(pid_path(data_dir)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True                           # no /proc: trust kill(0)
