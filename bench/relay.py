"""bin/bench relay: media upload and download throughput through a relay on loopback.

Starts a mesh with one relay, then uploads and downloads 1 MiB and 50 MiB
files (random bytes, 256 KiB chunks) --repeats times each, with the media
client of nodes.client.media (parallel chunks, sha256 computed and verified on the
client side, every chunk stored in the relay's RocksDB before it is acked).
Reports the median MB/s (MB = 10**6 bytes) of each.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from nodes.client.media import MediaClient
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth

from .procstat import cpu_seconds
from .report import machine, parser as bench_parser, scratch, table, write_json


async def measure(relays, token, sizes, repeats, window) -> dict:
    client = MediaClient(relays, token, window=window, timeout=60)
    await client.connect()
    out = {}
    try:
        for size in sizes:
            data = os.urandom(size)
            ups, downs = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ref = await client.upload(data, "bench")
                ups.append(size / (time.perf_counter() - t0) / 1e6)
                t0 = time.perf_counter()
                got = await client.download(ref)
                downs.append(size / (time.perf_counter() - t0) / 1e6)
                if got != data:
                    raise RuntimeError("downloaded file differs")
            out[size] = {"upload_mb_s": round(statistics.median(ups), 1),
                         "download_mb_s": round(statistics.median(downs), 1)}
            print(f"{size / 2**20:g} MiB: {out[size]}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return out


def main(argv=None) -> int:
    parser = bench_parser("relay", __doc__)
    parser.add_argument("--sizes-mib", default="1,50", help="comma-separated file sizes in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (the median is shown)")
    parser.add_argument("--window", type=int, default=16, help="chunks in flight")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(float(x) * 2**20) for x in args.sizes_mib.split(",")]
    except ValueError:
        parser.error(f"--sizes-mib: {args.sizes_mib!r} is not a list of numbers")
    with scratch("relay") as tmp:
        return measure_sizes(args, sizes, tmp)


def measure_sizes(args, sizes, tmp: str) -> int:
    cfg = write_topology(tmp, brokers=1, logics=1, relays=1,
                         limits={"max_file": max(sizes), "open_upload_bytes": max(sizes) * 2},
                         channels={"bench": {"members": [1]}})
    with Mesh(cfg) as mesh:
        mesh.start()
        mesh.wait_ready(30)
        relay = mesh.topo.of_type("relay")[0]
        pid = mesh.procs[relay.id].pid
        cpu0 = cpu_seconds(pid)
        results = asyncio.run(measure({relay.id: relay.endpoint("client")},
                                      auth.mint(mesh.topo.read_secret(), 1, 3600), sizes, args.repeats,
                                      args.window))
        relay_cpu = cpu_seconds(pid) - cpu0
    rows = [[f"{s / 2**20:g} MiB", r["upload_mb_s"], r["download_mb_s"]] for s, r in results.items()]
    print(machine())
    print(table(["file", "upload MB/s", "download MB/s"], rows))
    if args.json:
        write_json(args.json, {"machine": machine(), "repeats": args.repeats, "window": args.window,
                               "relay_cpu_s": round(relay_cpu, 2),
                               "results": {str(s): r for s, r in results.items()}})
    return 0
