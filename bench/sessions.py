"""bin/bench sessions: memory per idle client session on one broker.

Two measurements:

- **mesh** (``--sessions``): a local mesh with one broker (1 logic, 1
  router, 1 counter); generator processes log in that many raw DEALER
  sessions, one TCP connection each, and keep them idle.  The figure is the
  broker's RSS growth divided by the sessions (its Python state *and*
  libzmq's per-connection buffers and pipes).  Every connection is a file
  descriptor in the broker, so the count is capped by RLIMIT_NOFILE (the
  soft limit is raised to the hard one first).
- **core** (``--core``): the broker's Python session state alone
  (BrokerCore: the session table, the routing ids, the deadline heap),
  sessions logged in through the real dispatcher in a fresh process without
  sockets; this one scales past the file-descriptor limit.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, schema, wire

from .procstat import reap, rss_kb
from .report import machine, parser as bench_parser, scratch, table, write_json


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); the limit now."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def hold(uins, endpoint, secret, ready, done) -> None:
    """One generator process: log its sessions in, report how many, stay idle until ``done``."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(uins) + 64)
    poller = zmq.Poller()
    socks = []
    try:
        for uin in uins:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                              "token": auth.mint(secret, uin, 3600), "device": 0}))
            socks.append(s)
            poller.register(s, zmq.POLLIN)
        ok, deadline = 0, time.monotonic() + 120
        while ok < len(socks) and time.monotonic() < deadline:
            for s, _ in poller.poll(200):
                while True:
                    try:
                        reply = wire.unpack(s.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    ok += reply.get("t") == "login_ok"
        ready.put(ok)
        done.wait(600)
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def measure_mesh(sessions: int, processes: int, tmp: str) -> dict:
    os.makedirs(tmp)
    cfg = write_topology(tmp, brokers=1, logics=1, heartbeat={"wired": 600.0},
                         limits={"rate": 1e9, "burst": 1e9},
                         channels={"lobby": {"members": f"1-{sessions}"}})
    mesh = Mesh(cfg)
    procs = []
    done = mp.Event()
    try:
        mesh.start()
        mesh.wait_ready(60)
        broker = mesh.topo.ids("broker")[0]
        pid = mesh.procs[broker].pid
        before = rss_kb(pid)
        secret = mesh.topo.read_secret()
        endpoint = mesh.topo.node(broker).endpoint("client")
        ready = mp.Queue()
        uins = list(range(1, sessions + 1))
        for k in range(processes):
            p = mp.Process(target=hold, args=(uins[k::processes], endpoint, secret, ready, done))
            p.start()
            procs.append(p)
        logins = sum(ready.get(timeout=300) for _ in procs)
        if logins < sessions:
            raise RuntimeError(f"only {logins} of {sessions} logins answered")
        deadline = time.monotonic() + 60
        while (mesh.admin.status(broker) or {}).get("sessions", 0) < sessions:
            if time.monotonic() > deadline:
                raise RuntimeError("the broker does not hold every session")
            time.sleep(0.1)                      # polling a status counter
        after = rss_kb(pid)
        return {"sessions": sessions, "broker_rss_before_mb": round(before / 1024, 1),
                "broker_rss_after_mb": round(after / 1024, 1),
                "kb_per_session": round((after - before) / sessions, 2)}
    finally:
        done.set()
        reap(procs, 30)
        mesh.close()


class _Out:
    """BrokerCore's effects, answered at once: the router says ok to every login."""

    def reply(self, ident, msg):
        pass

    def push(self, ident, packed):
        pass

    def push_many(self, idents, packed):
        pass

    def to_logic(self, owner, msg, callback, timeout=None):
        pass

    def to_router(self, uin, msg, callback, timeout=None):
        callback({"t": "ok", "interval": 600.0})


def core_main(sessions: int, tmp: str, out) -> None:
    from nodes.broker.core import BrokerCore
    from nodes.cluster import topology
    from nodes.protocol.dispatch import Dispatcher
    cfg = write_topology(tmp, brokers=1, logics=1, channels={})
    topo = topology.load(cfg)
    secret = topo.read_secret()
    core = BrokerCore("b1", topo, secret, _Out(), now=0.0)
    d = Dispatcher(schema.CLIENT_REQUESTS, core.handlers, core.guard, limits=core.schema_limits)
    tokens = [auth.mint(secret, uin, 3600) for uin in range(1, sessions + 1)]
    idents = [b"\x00" + uin.to_bytes(4, "big") for uin in range(1, sessions + 1)]   # libzmq's 5-byte ids
    gc.collect()
    before = rss_kb()
    for token, ident in zip(tokens, idents):
        d.one(ident, {"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": token, "device": 0}, 0.0)
    core.touches(1.0)                            # idle now: the touch round has reported them
    gc.collect()
    out.put({"sessions": len(core.sessions), "kb_per_session": round((rss_kb() - before) / sessions, 3)})


def measure_core(sessions: int, tmp: str) -> dict:
    os.makedirs(tmp)
    out = mp.Queue()
    p = mp.Process(target=core_main, args=(sessions, tmp, out))
    p.start()
    try:
        result = out.get(timeout=300)
    finally:
        p.join(30)
    if result["sessions"] != sessions:
        raise RuntimeError(f"{result['sessions']} of {sessions} sessions opened")
    return result


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = bench_parser("sessions", __doc__)
    parser.add_argument("--sessions", default="10000", help="comma-separated counts of real sessions "
                        "on one broker (each is a file descriptor there: capped by RLIMIT_NOFILE)")
    parser.add_argument("--core", default="10000,50000", help="comma-separated counts of sessions for "
                        "the broker's Python state alone")
    parser.add_argument("--processes", type=int, default=4, help="generator processes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each count (figures are medians)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    limit = raise_fd_limit()
    mesh_counts, core_counts = _ints(args.sessions), _ints(args.core)
    too_many = [n for n in mesh_counts if n + 1000 > limit]
    if too_many:
        parser.error(f"{too_many} sessions need more file descriptors in the broker than RLIMIT_NOFILE "
                     f"allows here ({limit}); use --core for larger counts")
    result = {"machine": machine(), "fd_limit": limit, "mesh": [], "core": []}
    with scratch("sessions") as tmp:
        for n in mesh_counts:
            runs = [measure_mesh(n, args.processes, f"{tmp}/m{n}-{r}") for r in range(args.repeats)]
            print(f"{n} sessions: {[r['kb_per_session'] for r in runs]} KB each", file=sys.stderr)
            result["mesh"].append(dict(runs[-1], kb_per_session=statistics.median(r["kb_per_session"]
                                                                                  for r in runs)))
        for n in core_counts:
            runs = [measure_core(n, f"{tmp}/c{n}-{r}") for r in range(args.repeats)]
            result["core"].append({"sessions": n, "kb_per_session": statistics.median(
                r["kb_per_session"] for r in runs)})
    print(f"{result['machine']}, RLIMIT_NOFILE {limit}; medians of {args.repeats}\n")
    rows = [["whole broker (mesh, real connections)", m["sessions"], m["kb_per_session"]] for m in result["mesh"]]
    rows += [["broker Python state only (core)", c["sessions"], c["kb_per_session"]] for c in result["core"]]
    print(table(["what", "idle sessions", "KB per session"], rows))
    if args.json:
        write_json(args.json, result)
    return 0
