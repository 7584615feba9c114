"""bin/bench logins: a login storm -- N connections that all log in at once.

A local mesh (one broker, one logic, one router, one counter); generator
processes prepare N raw DEALER sockets (one TCP connection each) and, on a
common signal, connect every one and send its login at once.  Each login's
latency runs from its connect to its ``login_ok``.  Two storms per run:

- **first**: the broker has just started and nobody is logged in;
- **after restart**: the N sessions of the first storm are closed, the
  broker is restarted (the router still remembers them until the new
  broker's ``broker_reset``) and N fresh connections log in at once -- what
  every client does when its broker comes back.

Reported: login latency p50 / p99 / max, how many answered, and the CPU
seconds the broker and the router used during the storm (the broker's split
into its Python main thread and libzmq's I/O threads, where CURVE handshakes
and TCP accepts run).  Every wait is bounded (``--timeout`` per storm).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, wire
from nodes.runtime import curve

from .procstat import cpu_seconds, io_thread_cpu_seconds, reap, self_cpu_seconds
from .report import machine, parser as bench_parser, percentile, scratch, table, write_json
from .sessions import raise_fd_limit

STORMS = ("first", "after restart")


def storm(uins, endpoint, secret, ready, go, results, done, timeout) -> None:
    """One generator process: sockets ready, then on ``go`` connect them all and log each in;
    put {"lat": [seconds], "failed": n, "codes": {code: n}, "missing": n, "sent": seconds the
    connect loop took, "cpu": its CPU seconds} and hold the sessions until ``done``."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(uins) + 64)
    frames = [wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                         "token": auth.mint(secret, uin, 3600), "device": 0}) for uin in uins]
    socks = []
    try:
        for _ in uins:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            socks.append(s)
        ready.put(len(socks))
        if not go.wait(120):
            return
        cpu0 = self_cpu_seconds()
        poller = zmq.Poller()
        started = {}
        for s, frame in zip(socks, frames):
            started[s] = time.monotonic()
            curve.connect_client(s, endpoint)
            s.send(frame)
            poller.register(s, zmq.POLLIN)
        sent = time.monotonic() - min(started.values())
        lat, failed, codes = [], 0, {}
        deadline = time.monotonic() + timeout
        while len(lat) + failed < len(socks) and time.monotonic() < deadline:
            for s, _ in poller.poll(100):    # one reply per socket: no unregister (O(n) in pyzmq)
                try:
                    reply = wire.unpack(s.recv(zmq.NOBLOCK))
                except zmq.Again:
                    continue
                if reply.get("t") == "login_ok":
                    lat.append(time.monotonic() - started[s])
                else:
                    failed += 1
                    code = str(reply.get("code"))
                    codes[code] = codes.get(code, 0) + 1
        results.put({"lat": lat, "failed": failed, "codes": codes, "missing": len(socks) - len(lat) - failed,
                     "sent": sent, "cpu": self_cpu_seconds() - cpu0})
        done.wait(timeout + 60)
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def run_storm(mesh: Mesh, broker: str, n: int, processes: int, timeout: float) -> dict:
    """One storm of ``n`` logins against ``broker``; latency percentiles and node CPU."""
    secret = mesh.topo.read_secret()
    endpoint = curve.client_endpoint(mesh.topo, broker)
    router = mesh.topo.ids("router")[0]
    pids = {"broker": mesh.procs[broker].pid, "router": mesh.procs[router].pid}
    ready, results, go, done = mp.Queue(), mp.Queue(), mp.Event(), mp.Event()
    uins = list(range(1, n + 1))
    procs = [mp.Process(target=storm, args=(uins[k::processes], endpoint, secret, ready, go, results,
                                            done, timeout)) for k in range(processes)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        io0 = io_thread_cpu_seconds(pids["broker"])
        t0 = time.monotonic()
        go.set()
        parts = [results.get(timeout=timeout + 60) for _ in procs]
        wall = time.monotonic() - t0
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        io = io_thread_cpu_seconds(pids["broker"]) - io0
    finally:
        done.set()
        reap(procs, 30)
    lat = sorted(x for part in parts for x in part["lat"])
    codes = {}
    for part in parts:
        for code, count in part["codes"].items():
            codes[code] = codes.get(code, 0) + count

    def ms(p):
        return round(percentile(lat, p) * 1000, 1) if lat else None
    return {"logins": n, "ok": len(lat), "failed": sum(p["failed"] for p in parts),
            "missing": sum(p["missing"] for p in parts), "codes": codes, "p50_ms": ms(50), "p99_ms": ms(99),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None, "wall_s": round(wall, 2),
            "connect_loop_s": round(max(p["sent"] for p in parts), 2),
            "generators_cpu_s": round(sum(p["cpu"] for p in parts), 2),
            "broker_cpu_s": round(cpu["broker"], 2), "broker_io_cpu_s": round(io, 2),
            "router_cpu_s": round(cpu["router"], 2), "histogram": histogram(lat)}


EDGES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def histogram(lat) -> dict:
    """Logins answered within each edge (seconds), cumulative: TCP SYN retries (1, 3, 7, 15,
    31 s) show as steps."""
    return {f"<{e}s": sum(1 for x in lat if x < e) for e in EDGES}


def measure(n: int, processes: int, client_curve: bool, timeout: float, tmp: str) -> dict:
    """A fresh mesh: the first storm, then a broker restart and the second; {storm: figures}."""
    os.makedirs(tmp)
    cfg = write_topology(tmp, brokers=1, logics=1, heartbeat={"wired": 600.0},
                         limits={"rate": 1e9, "burst": 1e9}, client_curve=client_curve,
                         channels={"lobby": {"members": f"1-{n}"}})
    mesh = Mesh(cfg)
    try:
        mesh.start()
        mesh.wait_ready(60)
        broker = mesh.topo.ids("broker")[0]
        first = run_storm(mesh, broker, n, processes, timeout)
        mesh.restart(broker, 60)
        return {"first": first, "after restart": run_storm(mesh, broker, n, processes, timeout)}
    finally:
        mesh.close()


def _median_of(runs: list) -> dict:
    """Per figure, the median of the runs (counts: the smallest, so a lost login shows)."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key == "codes":
            out[key] = {c: max(r[key].get(c, 0) for r in runs) for c in {c for r in runs for c in r[key]}}
        elif key == "histogram":
            out[key] = {edge: statistics.median(r[key][edge] for r in runs) for edge in values[0]}
        elif key == "ok":
            out[key] = min(values)
        elif key in ("failed", "missing"):
            out[key] = max(values)
        else:
            out[key] = None if None in values else statistics.median(values)
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    parser = bench_parser("logins", __doc__)
    parser.add_argument("--logins", default="2000,5000", help="comma-separated storm sizes (each is a "
                        "connection, so a file descriptor in the broker: capped by RLIMIT_NOFILE)")
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each size (figures are medians)")
    parser.add_argument("--client-curve", choices=("on", "off"), default="off",
                        help="CURVE on the client endpoint (each connection a handshake)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds one storm may take at most")
    parser.add_argument("--profile", metavar="DIR", help="cProfile every node's main thread into DIR "
                        "(NODE.prof, written when the node stops: the broker's is of the storm after restart)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["IMESH_PROFILE"] = os.path.abspath(args.profile)      # nodes/launch.py reads it
    limit = raise_fd_limit()
    sizes = _ints(args.logins)
    too_many = [n for n in sizes if n + 1000 > limit]
    if too_many:
        parser.error(f"{too_many} connections need more file descriptors than RLIMIT_NOFILE allows ({limit})")
    result = {"machine": machine(), "client_curve": args.client_curve, "repeats": args.repeats, "sizes": []}
    with scratch("logins") as tmp:
        for n in sizes:
            runs = [measure(n, args.processes, args.client_curve == "on", args.timeout, f"{tmp}/{n}-{r}")
                    for r in range(args.repeats)]
            for storm_name in STORMS:
                print(f"{n} logins, {storm_name}: p99 ms {[r[storm_name]['p99_ms'] for r in runs]}",
                      file=sys.stderr)
            result["sizes"].append({"logins": n, **{s: _median_of([r[s] for r in runs]) for s in STORMS},
                                    "runs": runs})
    print(f"{result['machine']}; client CURVE {args.client_curve}; medians of {args.repeats}\n")
    rows = [[e["logins"], s, f"{e[s]['ok']}/{e['logins']}", e[s]["p50_ms"], e[s]["p99_ms"], e[s]["max_ms"],
             e[s]["broker_cpu_s"], e[s]["broker_io_cpu_s"], e[s]["router_cpu_s"]]
            for e in result["sizes"] for s in STORMS]
    print(table(["logins", "storm", "ok", "p50 ms", "p99 ms", "max ms", "broker CPU s",
                 "of it I/O threads", "router CPU s"], rows))
    if args.json:
        write_json(args.json, result)
    return 0
