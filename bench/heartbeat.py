"""bin/bench heartbeat: router and broker CPU while many sessions heartbeat at a short interval.

Starts a local mesh (2 brokers, 1 logic, 1 router, 1 counter), logs in
--sessions raw DEALER sessions (half on each broker), then has every session
heartbeat every --interval seconds for --seconds, and reports the CPU each
node type used in that window.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, wire

from .procstat import cpu_seconds, reap, self_cpu_seconds
from .report import machine, parser as bench_parser, scratch, table, write_json


def drain(poller, timeout_ms, errors=None, sids=None) -> int:
    """Receive every ready reply; count them (error replies into ``errors``; the sid of
    each login into ``sids``)."""
    got = 0
    for sock, _ in poller.poll(timeout_ms):
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            got += 1
            if errors is None and sids is None:
                continue
            reply = wire.unpack(frame)
            if errors is not None and reply.get("t") == "err":
                errors[0] += 1
            if sids is not None and reply.get("t") == "login_ok":
                sids[sock] = reply["sid"]
    return got


def worker(uins, eps, secret, interval, rounds, ready, go, out) -> None:
    """One generator process: log its sessions in, then heartbeat them every interval."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(uins) + 64)             # libzmq's default is 1023
    poller = zmq.Poller()
    socks = []
    for uin in uins:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(eps[uin % len(eps)])
        s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION, "token": auth.mint(secret, uin, 3600),
                          "device": 0}))
        socks.append(s)
        poller.register(s, zmq.POLLIN)
    logins, deadline, sids = 0, time.monotonic() + 60, {}
    while logins < len(socks) and time.monotonic() < deadline:
        logins += drain(poller, 100, sids=sids)
    ready.put(logins)
    t0 = go.get()
    cpu0 = self_cpu_seconds()
    frames = {s: wire.pack({"t": "hb", "rid": 2, "sid": sids.get(s, 0)}) for s in socks}
    sent = acked = 0
    errors = [0]
    for r in range(rounds):
        due = t0 + r * interval
        while time.time() < due:
            acked += drain(poller, max(1, int((due - time.time()) * 1000)), errors)
        for s in socks:
            s.send(frames[s])
            sent += 1
        acked += drain(poller, 0, errors)
    end = time.monotonic() + 10
    while acked < sent and time.monotonic() < end:
        acked += drain(poller, 100, errors)
    out.put((sent, acked, self_cpu_seconds() - cpu0, errors[0]))
    for s in socks:
        s.close(0)
    ctx.term()


def main(argv=None) -> int:
    parser = bench_parser("heartbeat", __doc__)
    parser.add_argument("--sessions", type=int, default=10000, help="logged-in sessions that heartbeat")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    with scratch("hb") as tmp:
        return measure(args, tmp)


def measure(args, tmp: str) -> int:
    # a long first interval covers the login phase; after 3 beats the router settles on --interval
    hb = {"wired": 60.0, "min": args.interval, "max": args.interval}
    cfg = write_topology(tmp, brokers=2, logics=1, heartbeat=hb,
                         channels={"lobby": {"members": f"1-{args.sessions}"}})
    mesh = Mesh(cfg)
    procs = []
    try:
        mesh.start()
        mesh.wait_ready(30)
        secret = mesh.topo.read_secret()
        eps = [b.endpoint("client") for b in mesh.topo.of_type("broker")]
        rounds = int(args.seconds / args.interval)
        ready, go, out = mp.Queue(), mp.Queue(), mp.Queue()
        uins = list(range(1, args.sessions + 1))
        n = args.processes
        print(f"logging in {args.sessions} sessions from {n} processes ...", file=sys.stderr, flush=True)
        for k in range(n):
            p = mp.Process(target=worker, args=(uins[k::n], eps, secret, args.interval, rounds, ready, go, out))
            p.start()
            procs.append(p)
        logins = sum(ready.get(timeout=120) for _ in procs)
        if logins < args.sessions:
            print(f"error: only {logins} of {args.sessions} logins answered", file=sys.stderr)
            return 1
        pids = {node: mesh.procs[node].pid for node in mesh.topo.nodes}
        types = {node: spec.type for node, spec in mesh.topo.nodes.items()}
        before = {node: cpu_seconds(pid) for node, pid in pids.items()}
        print(f"{args.sessions} sessions heartbeating every {args.interval}s for {rounds} rounds ...",
              file=sys.stderr, flush=True)
        t0 = time.time() + 0.5
        for _ in procs:
            go.put(t0)
        results = [out.get(timeout=args.seconds + 120) for _ in procs]
        wall = time.time() - t0
        sent = sum(r[0] for r in results)
        acked = sum(r[1] for r in results)
        errors = sum(r[3] for r in results)
        by_type = {}
        for node, pid in pids.items():
            by_type[types[node]] = by_type.get(types[node], 0.0) + cpu_seconds(pid) - before[node]
        online = mesh.admin.status(mesh.topo.ids("router")[0])["sessions"]
        result = {"machine": machine(), "sessions": args.sessions, "interval_s": args.interval,
                  "wall_s": round(wall, 2), "heartbeats_sent": sent, "heartbeats_acked": acked,
                  "error_replies": errors,
                  "router_sessions_online": online,
                  "cpu_s": {k: round(v, 2) for k, v in by_type.items()},
                  "cpu_pct": {k: round(100 * v / wall, 1) for k, v in by_type.items()},
                  "router_us_per_heartbeat": round(1e6 * by_type["router"] / max(1, acked), 1),
                  "generator_cpu_s": round(sum(r[2] for r in results), 2)}
        rows = [[k, result["cpu_s"][k], f"{result['cpu_pct'][k]}%"] for k in sorted(by_type)]
        print(f"{machine()}\n{args.sessions} sessions, heartbeat every {args.interval}s, {wall:.1f}s: "
              f"{acked}/{sent} answered ({errors} errors), router holds {online} sessions, "
              f"router {result['router_us_per_heartbeat']} µs CPU per heartbeat\n")
        print(table(["node type", "CPU s", "CPU % of one core"], rows))
        if args.json:
            write_json(args.json, result)
        return 0
    finally:
        reap(procs, 5)
        mesh.close()
