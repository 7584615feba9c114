"""bin/bench history: a page of history deep in a long channel (issue 24).

Stores --messages messages (pipelined sends through a broker) in one channel
whose lifetime is --days days and whose queue holds every one of them
(``channel_queue``), then asks its logic node for ``history`` pages of --limit
messages at several depths (ids below newest + 1 - depth) over one internal
connection: --calls calls per round, --repeats rounds, the median round's
per-call time per depth.  A page is read from RocksDB by key range, so the
figure should not grow with the depth.
"""
from __future__ import annotations

import statistics
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import wire

from .report import machine, parser as bench_parser, scratch, table, write_json
from .sweep import start_filled


def main(argv=None) -> int:
    parser = bench_parser("history", __doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages stored in the channel")
    parser.add_argument("--days", type=float, default=30.0, help="the channel's message lifetime")
    parser.add_argument("--limit", type=int, default=100, help="messages per history page (1..100)")
    parser.add_argument("--depths", default="0,1000,10000,50000,99900",
                        help="pages start this many ids below the newest")
    parser.add_argument("--calls", type=int, default=50, help="history calls per round and depth")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median is reported)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    if args.messages < 1 or not 1 <= args.limit <= 100 or min(args.calls, args.repeats) < 1 or \
            any(not 0 <= d < args.messages for d in depths):
        parser.error("--messages >= 1, --limit 1..100, --calls and --repeats >= 1, depths below --messages")
    with scratch("history") as tmp:
        return run(args, depths, tmp)


def run(args, depths: list[int], tmp: str) -> int:
    cfg = write_topology(tmp, brokers=1, logics=1,
                         limits={"rate": 1e9, "burst": 1e9, "session_inflight": 1000,
                                 "channel_queue": args.messages},
                         channels={"long": {"members": [1], "lifetime": args.days * 86400}})
    with Mesh(cfg) as mesh:
        logic, took = start_filled(mesh, ["long"], args.messages)
        newest = args.messages                                # ids 1.. in one channel, one block run
        sock = mesh.admin.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        mesh.admin.identity.connect(sock, mesh.topo.node(logic).endpoint("rpc"))
        rows, result = [], {}
        try:
            for depth in depths:
                rounds = [page_ms(sock, depth, newest, args) for _ in range(args.repeats)]
                median = statistics.median(rounds)
                result[str(depth)] = {"rounds_ms": [round(r, 3) for r in rounds], "median_ms": round(median, 3)}
                rows.append([depth, newest + 1 - depth, args.limit, f"{median:.3f}",
                             " ".join(f"{r:.3f}" for r in rounds)])
        finally:
            sock.close(0)
        st = mesh.admin.status(logic, timeout=5)
    out = {"machine": machine(), "messages": args.messages, "days": args.days, "limit": args.limit,
           "fill_s": round(took, 2), "stored": st["stored"] if st else None, "depths": result}
    print(machine())
    print(f"{args.messages} messages stored in {took:.1f}s; history pages of {args.limit}")
    print(table(["depth", "before", "limit", "median ms/call", "rounds"], rows))
    if args.json:
        write_json(args.json, out)
    return 0


def page_ms(sock, depth: int, newest: int, args) -> float:
    """One round: ``args.calls`` history calls at ``depth``; ms per call (a full page each)."""
    before = newest + 1 - depth
    t0 = time.perf_counter()
    for rid in range(args.calls):
        sock.send(wire.pack({"t": "history", "rid": rid, "uin": 1, "channel": "long", "before": before,
                             "limit": args.limit}))
        if not sock.poll(10_000):
            raise RuntimeError("no history reply in 10 s")
        reply = wire.unpack(sock.recv())
        want = min(args.limit, before - 1)
        if reply.get("t") != "history" or len(reply["msgs"]) != want:
            raise RuntimeError(f"history at {before}: {str(reply)[:200]}")
    return (time.perf_counter() - t0) * 1000 / args.calls
