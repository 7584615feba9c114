"""bin/bench websessions: broker memory per idle WebSocket session.

Starts a local mesh with one broker (ws endpoint), measures the broker's
RSS, logs in --sessions WebSocket sessions from --processes generator
processes (asyncio + websockets), measures the RSS again once every login
is acknowledged, and reports (after - before) / sessions.  --repeats runs,
median reported.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time

import msgpack

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, wire

from .procstat import reap, rss_kb
from .report import machine, parser as bench_parser, table, write_json


def worker(uins, url, secret, ready, done) -> None:
    """Open and log in one WebSocket per uin; report how many logged in; hold them until told."""
    from websockets.asyncio.client import connect

    async def one(uin, sem):
        async with sem:
            ws = await connect(url, open_timeout=60, compression=None, max_queue=4)
            await ws.send(msgpack.packb({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                                         "token": auth.mint(secret, uin, 3600), "device": 0}))
            reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 60))
            return ws, reply.get("t") == "login_ok"

    async def main():
        sem = asyncio.Semaphore(200)
        results = await asyncio.gather(*(one(u, sem) for u in uins), return_exceptions=True)
        ok = sum(1 for r in results if not isinstance(r, BaseException) and r[1])
        ready.put(ok)
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 600)
        for r in results:
            if not isinstance(r, BaseException):
                r[0].transport.abort()
    asyncio.run(main())


def run_once(sessions: int, processes: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        mesh = Mesh(write_topology(d, brokers=1, logics=1, ws=True,
                                   heartbeat={"wired": 600.0, "max": 600.0}))
        procs, done = [], mp.Event()
        try:
            mesh.start()                 # inside the try: a start cut short still closes what it started
            statuses = mesh.wait_ready(30)
            broker = mesh.topo.of_type("broker")[0]
            pid = statuses[broker.id]["pid"]
            before = rss_kb(pid) / 1024
            ready = mp.Queue()
            per = [list(range(1 + i, sessions + 1, processes)) for i in range(processes)]
            t0 = time.monotonic()
            for u in per:                # only started workers are in procs: the finally reaps them
                p = mp.Process(target=worker, args=(u, broker.endpoints["ws"] + "/ws", mesh.topo.read_secret(),
                                                    ready, done))
                p.start()
                procs.append(p)
            logged = sum(ready.get(timeout=300) for _ in procs)
            took = time.monotonic() - t0
            after = rss_kb(pid) / 1024
            status = mesh.admin.status(broker.id)
            return {"sessions": logged, "broker_sessions": status["sessions"], "rss_before_mb": round(before, 1),
                    "rss_after_mb": round(after, 1), "kib_per_session": round((after - before) * 1024 / logged, 2),
                    "login_seconds": round(took, 1)}
        finally:
            done.set()                   # also when a login or status failed: no worker holds its sockets on
            reap(procs, 30)
            mesh.close()


def main(argv=None) -> int:
    ap = bench_parser("websessions", __doc__)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    runs = [run_once(args.sessions, args.processes) for _ in range(args.repeats)]
    for r in runs:
        print(r, file=sys.stderr)
    median = statistics.median(r["kib_per_session"] for r in runs)
    rows = [["idle WebSocket sessions", runs[0]["sessions"], f"{median:.1f} KiB",
             f"{statistics.median(r['login_seconds'] for r in runs):.1f} s"]]
    print(table(["what", "sessions", "broker RSS per session (median)", "all logged in after"], rows))
    if args.json:
        write_json(args.json, {"machine": machine(), "runs": runs, "median_kib_per_session": median})
    return 0


if __name__ == "__main__":
    sys.exit(main())
