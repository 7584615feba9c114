"""bin/bench e2e: the G1k group-chat benchmark, end to end through a real mesh.

Workload G1k (the defaults): 1000 users, each with its own DEALER session
(or, with ``--transport ws``, its own WebSocket to the brokers' ws endpoints);
100 channels of 10 members (user i is in channel i // 10); every user sends
20 messages of 100 bytes closed-loop (the next send after the ack, or
``--window`` in flight), and each message must reach the other 9 members.

The generator is lean (raw sockets, msgpack, draining sockets in batches;
bench/leangen.py) and runs in ``--processes`` processes; its CPU is reported apart from the
nodes'.  Every receiver checks every (sender, seq) it gets, so ``lost`` and
``duplicates`` are counted, not assumed.

``--client asyncio`` swaps in the generator real applications resemble (one
zmq.asyncio DEALER and coroutine per user, bench/agen.py); ``--baseline``
runs the same generator against bench/baseline.py's in-memory fan-out server
too, interleaved with the imesh runs (``--repeat`` runs of each, medians),
and reports imesh / baseline for acked/s, server CPU and ack p99.

``--colocate`` runs logic node i inside broker i's process (issue 26's hop over
inproc://, nodes/runtime/colocate.py); the guest loop thread's CPU counts as the
logic node's.

``--curve on|off`` (default on, as in every topology) switches CurveZMQ on the
node-to-node sockets; ``--client-curve on`` encrypts the client sessions too:
run both ways to see what encryption costs.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time

from nodes.cluster import topology
from nodes.ops.admin import Admin, AdminError
from nodes.ops.localtopo import free_ports, write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import wire
from nodes.runtime import colocate, curve

from .agen import loop_name
from .baseline import serve_main
from .leangen import channel_of, worker_main
from .procstat import node_cpu, peak_rss_mb, reap
from .report import machine, parser as bench_parser, percentile, table, write_json


def bench_topology(args, tmp: str) -> str:
    channels = {channel_of(i, args.members): None for i in range(args.users)}
    members = {name: [] for name in channels}
    for i in range(args.users):
        members[channel_of(i, args.members)].append(i + 1)
    return write_topology(tmp, brokers=args.brokers, logics=args.logic,
                          ws=args.transport == "ws",
                          limits={"rate": 1e9, "burst": 1e9, "max_pending": 100000, **gather_limits(args)},
                          heartbeat={"wired": 600.0},
                          channels={n: {"members": m} for n, m in members.items()},
                          curve=args.curve == "on", client_curve=args.client_curve == "on",
                          replication=args.replication, shards=args.shards)


def gather_limits(args) -> dict:
    """--gather-ms / --gather-frames: the started mesh's gathered turns (nodes/runtime/loop.py);
    unset, the topology's defaults."""
    given = {"gather_ms": args.gather_ms, "gather_frames": args.gather_frames}
    return {k: v for k, v in given.items() if v is not None}


def ensure_channels(admin: Admin, args) -> None:
    """--attach: create the workload's channels on a running mesh if they are missing."""
    for g in range(0, args.users, args.members):
        name = channel_of(g, args.members)
        uins = list(range(g + 1, min(args.users, g + args.members) + 1))
        try:
            admin.channel("create", name, uins)
        except AdminError as exc:
            if exc.code != wire.Err.CHANNEL_EXISTS:
                raise
            admin.channel("add", name, uins)


def wait_presence(admin: Admin, topo, users: int, timeout: float = 60) -> None:
    """Until every logic node's replica sees all the users online."""
    deadline = time.monotonic() + timeout
    for node in topo.ids("logic"):
        while True:
            st = admin.status(node, timeout=5) or {}
            if st.get("online", 0) >= users:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node} sees {st.get('online')} of {users} users online")
            time.sleep(0.05)                 # polling a status counter while logins propagate


def load(args, endpoints, secret, pids_of, after_login=None):
    """Start the generator processes, log every user in, then time one run.

    ``pids_of()`` names the server processes ({name: pid}) whose CPU counts (a co-located
    node: {name: (pid, its loop thread's name)}, bench/procstat.py ``node_cpu``);
    ``after_login()`` waits until the server is ready for sends.  Returns
    (generator results, wall seconds, {name: CPU s}, {name: peak RSS MB},
    {name: CPU s of its non-main threads}).
    """
    procs = []
    try:
        ready, go, out = mp.Queue(), mp.Queue(), mp.Queue()
        progress = [mp.Value("l", 0) for _ in range(args.processes)]
        for k in range(args.processes):
            p = mp.Process(target=worker_main, args=(args, list(range(k, args.users, args.processes)),
                                                     endpoints, secret, ready, go, out, progress[k]))
            p.start()
            procs.append(p)
        logins = sum(ready.get(timeout=120) for _ in procs)
        if logins < args.users:
            raise RuntimeError(f"only {logins} of {args.users} logins succeeded")
        if after_login is not None:
            after_login()
        pids = pids_of()
        start = {n: node_cpu(p, colocate.THREAD_PREFIX) for n, p in pids.items()}
        t0 = time.monotonic()
        for _ in procs:
            go.put(True)
        total = args.users * args.messages
        results = []
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=0.25))
            except Exception:
                pass
            done = sum(v.value for v in progress)
            if sys.stderr.isatty() or args.progress:
                width = 40
                fill = int(width * done / total)
                sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} acked")
                sys.stderr.flush()
            if time.monotonic() - t0 > args.messages * 60 + 120:
                raise RuntimeError("benchmark did not finish in time")
        wall = time.monotonic() - t0
        sys.stderr.write("\n")
        end = {n: node_cpu(p, colocate.THREAD_PREFIX) for n, p in pids.items()}
        cpu = {n: end[n][0] - start[n][0] for n in pids}
        io = {n: end[n][1] - start[n][1] for n in pids}
        rss = {n: peak_rss_mb(p[0] if isinstance(p, tuple) else p) for n, p in pids.items()}
    finally:
        reap(procs, 10)
    return results, wall, cpu, rss, io


def measure(args) -> dict:
    """One run against a mesh (started for it, or ``--attach``ed).  Its throwaway topology, data
    and logs are removed, or kept (the path printed) when the run raised or counted a failure."""
    tmp = tempfile.mkdtemp(prefix="imesh-e2e-")
    result = None
    try:
        result = _measure_mesh(args, tmp)
        return result
    finally:
        if result is not None and not any(result[k] for k in ("errors", "lost", "duplicates")):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"e2e: a run failed or counted errors, lost or duplicates: the mesh's logs are kept in {tmp}",
                  file=sys.stderr)


def _measure_mesh(args, tmp: str) -> dict:
    mesh = None
    if args.attach:
        topo = topology.load(args.attach)
    else:
        mesh = Mesh(bench_topology(args, tmp))
        topo = mesh.topo
    guests = colocated(args, topo)
    try:
        if mesh is not None:
            start_mesh(mesh, guests)
            mesh.wait_ready(60)
        admin = Admin(topo, timeout=5)
        if args.attach:
            ensure_channels(admin, args)
        if args.transport == "ws":
            endpoints = [b.endpoint("ws") for b in topo.of_type("broker")]
        else:
            endpoints = [curve.client_endpoint(topo, b) for b in topo.ids("broker")]
        turns0 = {}

        def pids_of():
            statuses = {n: admin.status(n) or {} for n in topo.nodes}
            turns0.update({n: st.get("turns", 0) for n, st in statuses.items()})
            pids = {n: (mesh.procs[n].pid if mesh else statuses[n]["pid"]) for n in topo.nodes
                    if n not in guests}
            pids.update({g: (pids[host], colocate.thread_name(g)) for g, host in guests.items()})
            if mesh is not None and mesh.etcd is not None:       # --replication: etcd's CPU counts too
                pids.update({f"etcd:{name}": p.pid for name, p in mesh.etcd.procs.items()})
            return pids
        results, wall, cpu, rss, io = load(args, endpoints, topo.read_secret(), pids_of,
                                           lambda: wait_presence(admin, topo, args.users))
        turns = {n: (admin.status(n) or {}).get("turns", 0) - turns0.get(n, 0) for n in topo.nodes}
    finally:
        if mesh is not None:
            mesh.close()
    by_type, rss_type, io_type = {}, {}, {}
    for n in cpu:                           # the nodes, and a replicated mesh's etcd
        kind = topo.nodes[n].type if n in topo.nodes else "etcd"
        by_type[kind] = round(by_type.get(kind, 0.0) + cpu[n], 3)
        io_type[kind] = round(io_type.get(kind, 0.0) + io[n], 3)
        rss_type[kind] = round(max(rss_type.get(kind, 0.0), rss[n]), 1)
    result = summarize(args, results, wall, by_type, rss_type, io_type)
    turns_type = {}
    for n, spec in topo.nodes.items():
        turns_type[spec.type] = turns_type.get(spec.type, 0) + turns[n]
    # loop turns per acked message: each turn has fixed costs (poll, one store write, frames out)
    result["turns_per_msg"] = {k: round(v / max(1, result["acked"]), 3) for k, v in turns_type.items()}
    result["topology"] = {"attach": args.attach, "brokers": len(topo.ids("broker")),
                          "logic": len(topo.ids("logic")), "router": len(topo.ids("router")),
                          "counter": len(topo.ids("counter")), "curve": topo.curve,
                          "client_curve": topo.client_curve, "replication": topo.replication,
                          "shards": topo.shards, "colocate": guests,
                          "gather_ms": topo.limits["gather_ms"], "gather_frames": topo.limits["gather_frames"]}
    return result


def colocated(args, topo) -> dict:
    """--colocate: {logic id: the broker whose process runs it} (b1+l1, b2+l2 ...)."""
    if not args.colocate:
        return {}
    return dict(zip(topo.ids("logic"), topo.ids("broker")))


def start_mesh(mesh: Mesh, guests: dict) -> None:
    """Start the mesh's processes; co-located logic nodes run inside their brokers'
    (nodes/runtime/colocate.py, selected by IMESH_COLOCATE for the launched brokers)."""
    if not guests:
        mesh.start()
        return
    os.environ[colocate.ENV] = ",".join(f"{host}={guest}" for guest, host in guests.items())
    try:
        mesh.start([n for n in mesh.topo.nodes if n not in guests])
    finally:
        del os.environ[colocate.ENV]


def measure_baseline(args) -> dict:
    """One run of the same generator against bench/baseline.py's in-memory fan-out server."""
    members = {}
    for i in range(args.users):
        members.setdefault(channel_of(i, args.members), []).append(i + 1)
    secret = os.urandom(32)
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    ready, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=serve_main, args=(endpoint, members, secret, ready, stop))
    server.start()
    try:
        ready.get(timeout=30)
        results, wall, cpu, rss, io = load(args, [endpoint], secret, lambda: {"baseline": server.pid})
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
    return summarize(args, results, wall, {"baseline": round(cpu["baseline"], 3)},
                     {"baseline": round(rss["baseline"], 1)}, {"baseline": round(io["baseline"], 3)})


def summarize(args, results, wall, by_type: dict, rss_type: dict, io_type: dict) -> dict:
    """The figures of one run from the generators' results and the servers' CPU
    (``io_type``: the part of it spent in non-main threads, libzmq I/O and CURVE)."""
    total = args.users * args.messages
    acked = sum(r["acked"] for r in results)
    deliveries = sum(r["deliveries"] for r in results)
    expected = sum(r["expected_deliveries"] for r in results)
    ack_ms = [x for r in results for x in r["ack_ms"]]
    deliver_ms = [x for r in results for x in r["deliver_ms"]]
    server_cpu = sum(by_type.values())
    by_type = dict(by_type, generator=round(sum(r["cpu_s"] for r in results), 3))
    return {
        "acked_per_s": round(acked / wall, 1), "deliveries_per_s": round(deliveries / wall, 1),
        "ack_p50_ms": percentile(ack_ms, 50), "ack_p99_ms": percentile(ack_ms, 99),
        "deliver_p50_ms": percentile(deliver_ms, 50), "deliver_p99_ms": percentile(deliver_ms, 99),
        "lost": expected - deliveries, "duplicates": sum(r["duplicates"] for r in results),
        "errors": total - acked,              # error replies plus sends never answered
        "error_codes": sum_codes(r.get("error_codes", {}) for r in results),
        "acked": acked, "deliveries": deliveries,
        "cpu_s": by_type, "peak_rss_mb": rss_type, "wall_s": round(wall, 3),
        "server_cpu_us_per_msg": round(1e6 * server_cpu / max(1, acked), 1),
        "server_cpu_us_per_delivery": round(1e6 * server_cpu / max(1, deliveries), 2),
        "server_io_threads_us_per_msg": round(1e6 * sum(io_type.values()) / max(1, acked), 1),
        "io_threads_cpu_s": io_type,
        "workload": {"users": args.users, "channels": args.channels, "members": args.members,
                     "messages": args.messages, "size": args.size, "window": args.window,
                     "processes": args.processes, "transport": args.transport, "client": args.client,
                     "loop": loop_name() if args.client == "asyncio" else None},
        "machine": machine(),
    }


MEDIAN_KEYS = ("acked_per_s", "deliveries_per_s", "ack_p50_ms", "ack_p99_ms", "deliver_p50_ms",
               "deliver_p99_ms", "server_cpu_us_per_msg", "server_cpu_us_per_delivery",
               "server_io_threads_us_per_msg", "wall_s")
SUM_KEYS = ("lost", "duplicates", "errors", "acked", "deliveries")


def sum_codes(counts) -> dict:
    """Error replies by code, summed over generator processes or runs."""
    total: collections.Counter = collections.Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def combine(runs: list[dict]) -> dict:
    """Medians of the figures over repeated runs (counts of failures summed: none may hide)."""
    out = dict(runs[-1])
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    for key in SUM_KEYS:
        out[key] = sum(r[key] for r in runs)
    for key in ("cpu_s", "io_threads_cpu_s"):
        out[key] = {k: round(statistics.median(r[key][k] for r in runs), 3) for k in runs[0][key]}
    out["error_codes"] = sum_codes(r["error_codes"] for r in runs)
    out["repeats"] = len(runs)
    return out


def run(args) -> dict:
    """``--repeat`` runs of imesh (and of the baseline, interleaved: imesh, baseline, imesh, ...)."""
    mine, base = [], []
    for _ in range(args.repeat):
        mine.append(measure(args))
        if args.baseline:
            base.append(measure_baseline(args))
    result = combine(mine)
    if args.repeat > 1:
        result["runs"] = [{k: r[k] for k in MEDIAN_KEYS + SUM_KEYS + ("error_codes",)} for r in mine]
    if base:
        b = combine(base)
        for key in ("acked_per_s", "deliveries_per_s", "ack_p50_ms", "ack_p99_ms", "server_cpu_us_per_msg",
                    "server_cpu_us_per_delivery", "server_io_threads_us_per_msg", "lost", "duplicates",
                    "errors", "error_codes"):
            result["baseline_" + key] = b[key]
        result["baseline_cpu_s"] = b["cpu_s"]
        result["baseline_runs"] = [{k: r[k] for k in MEDIAN_KEYS + SUM_KEYS + ("error_codes",)} for r in base]
        result["ratio_acked_per_s"] = round(result["acked_per_s"] / max(1e-9, b["acked_per_s"]), 3)
        result["ratio_server_cpu"] = round(result["server_cpu_us_per_msg"]
                                           / max(1e-9, b["server_cpu_us_per_msg"]), 3)
        result["ratio_ack_p99"] = round(result["ack_p99_ms"] / max(1e-9, b["ack_p99_ms"]), 3)
    return result


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def _codes(counts: dict | None) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted((counts or {}).items())) or "-"


def render(r: dict) -> str:
    b = r.get("baseline_acked_per_s") is not None
    headers = ["figure", "imesh"] + (["baseline", "imesh / baseline"] if b else [])

    def row(name, key, spec=".1f", ratio=None):
        cells = [name, _fmt(r[key], spec)]
        if b:
            cells += [_fmt(r.get("baseline_" + key), spec), _fmt(r.get(ratio), ".3f") if ratio else ""]
        return cells
    rows = [row("acked msg/s", "acked_per_s", ratio="ratio_acked_per_s"),
            row("deliveries/s", "deliveries_per_s"),
            row("ack p50 ms", "ack_p50_ms", ".2f"), row("ack p99 ms", "ack_p99_ms", ".2f", "ratio_ack_p99"),
            row("server CPU µs per acked msg", "server_cpu_us_per_msg", ratio="ratio_server_cpu"),
            row("server CPU µs per delivery", "server_cpu_us_per_delivery", ".2f"),
            row("  of which libzmq I/O threads, µs per msg", "server_io_threads_us_per_msg"),
            row("lost", "lost", "d"), row("duplicates", "duplicates", "d"), row("errors", "errors", "d")]
    if r.get("error_codes") or r.get("baseline_error_codes"):
        rows.append(["errors by code", _codes(r.get("error_codes"))]
                    + ([_codes(r.get("baseline_error_codes")), ""] if b else []))
    rows.append(["deliver p50 / p99 ms", f"{_fmt(r['deliver_p50_ms'])} / {_fmt(r['deliver_p99_ms'])}"]
                + (["", ""] if b else []))
    rows.append(["wall s", r["wall_s"]] + (["", ""] if b else []))
    rows += [[f"CPU s {k}" + (f" (I/O threads {r['io_threads_cpu_s'][k]})" if k in r["io_threads_cpu_s"] else ""),
              v] + ([r["baseline_cpu_s"].get(k, ""), ""] if b else []) for k, v in r["cpu_s"].items()]
    if b:
        rows.append(["CPU s baseline server", "", r["baseline_cpu_s"]["baseline"], ""])
    rows += [[f"peak RSS MB {k}", v] + (["", ""] if b else []) for k, v in r["peak_rss_mb"].items()]
    w = r["workload"]
    head = (f"{r['machine']}\nworkload: {w['users']} users, {w['channels']} channels x {w['members']} members, "
            f"{w['messages']} msgs of {w['size']} B each, window {w['window']}, over {w.get('transport', 'zmq')}, "
            f"{w['client']} generator{' on ' + w['loop'] if w.get('loop') else ''} in {w['processes']} processes; "
            f"topology: {r['topology']['brokers']} brokers, {r['topology']['logic']} logic, replication "
            f"{r['topology'].get('replication', 1)}"
            + ("; logic co-located in the brokers' processes" if r['topology'].get('colocate') else "")
            + (f"; gathered turns {r['topology']['gather_ms']:g} ms after {r['topology']['gather_frames']} frames"
               if r['topology'].get('gather_ms') else "; no gathered turns" if 'gather_ms' in r['topology'] else "")
            + "; CURVE "
            f"{'on' if r['topology']['curve'] else 'off'} between nodes, "
            f"{'on' if r['topology']['client_curve'] else 'off'} for clients; "
            f"medians of {r.get('repeats', 1)} run(s)" + (", baseline runs interleaved" if b else ""))
    return head + "\n\n" + table(headers, rows)


def main(argv=None) -> int:
    parser = bench_parser("e2e", __doc__)
    parser.add_argument("--users", type=int, default=1000, help="simulated users (= channels x members)")
    parser.add_argument("--channels", type=int, default=100, help="group channels")
    parser.add_argument("--members", type=int, default=10, help="users per channel")
    parser.add_argument("--messages", type=int, default=20, help="messages each user sends")
    parser.add_argument("--size", type=int, default=100, help="bytes of text per message (>= 32)")
    parser.add_argument("--window", type=int, default=1, help="unacked sends each user keeps in flight")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--brokers", type=int, default=2, help="brokers of the started mesh")
    parser.add_argument("--logic", type=int, default=2, help="logic nodes of the started mesh")
    parser.add_argument("--curve", choices=("on", "off"), default="on",
                        help="CurveZMQ between the nodes (default on; --attach: the topology decides)")
    parser.add_argument("--client-curve", choices=("on", "off"), default="off",
                        help="CurveZMQ on the client sessions too (default off)")
    parser.add_argument("--transport", choices=("zmq", "ws"), default="zmq",
                        help="client sessions over ZeroMQ DEALERs or WebSockets (brokers' ws endpoints)")
    parser.add_argument("--replication", type=int, default=1,
                        help="replicas per shard (docs/ha.md); >= 2 starts a local etcd and needs --logic >= it "
                        "(default: %(default)s)")
    parser.add_argument("--shards", type=int, default=64, help="shards of the started mesh (default: %(default)s)")
    parser.add_argument("--gather-ms", type=float, default=None,
                        help="limits.gather_ms of the started mesh: a busy broker or logic node waits this "
                             "long before a turn's reads (0: never; default: the topology default, 10)")
    parser.add_argument("--gather-frames", type=int, default=None,
                        help="limits.gather_frames of the started mesh: frames in one turn that make a node "
                             "busy (default: the topology default, 32)")
    parser.add_argument("--client", choices=("lean", "asyncio"), default="lean",
                        help="generator: lean (raw sockets, batched reads) or asyncio (one zmq.asyncio "
                             "DEALER and coroutine per user, uvloop if installed)")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the same generator against bench/baseline.py's in-memory fan-out "
                             "server, interleaved with the imesh runs, and report imesh / baseline")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each server (figures are medians; lost/duplicates/errors summed)")
    parser.add_argument("--attach", metavar="CONFIG", help="use a running mesh instead of starting one")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    parser.add_argument("--progress", action="store_true", help="progress bar even when not a tty")
    parser.add_argument("--colocate", action="store_true",
                        help="run logic node i inside broker i's process (reached over inproc://, not TCP: "
                             "issue 26's hop; nodes/runtime/colocate.py)")
    parser.add_argument("--profile", metavar="DIR", help="run the nodes under cProfile, stats into DIR")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["IMESH_PROFILE"] = os.path.abspath(args.profile)
    if args.users != args.channels * args.members:
        parser.error("--users must equal --channels x --members (user i is in channel i // members)")
    if not 1 <= args.replication <= args.logic:
        parser.error("--replication must be 1..--logic")
    if args.colocate and (args.attach or args.profile):
        parser.error("--colocate starts its own mesh, without --profile (the node threads share one process)")
    if args.transport == "ws" and (args.client != "lean" or args.baseline):
        parser.error("--transport ws runs with the lean generator only (no --client asyncio, no --baseline)")
    if min(args.users, args.members, args.messages, args.window, args.processes, args.brokers,
           args.logic, args.shards, args.repeat) < 1 or args.size < 32:
        parser.error("counts must be >= 1 and --size >= 32 (the text carries sender, seq and time)")
    result = run(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    failed = [result[k] for k in ("lost", "duplicates", "errors")]
    failed += [result.get("baseline_" + k, 0) for k in ("lost", "duplicates", "errors")]
    return 0 if not any(failed) else 1
