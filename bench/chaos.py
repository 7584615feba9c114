"""bin/bench chaos: the client library under node kills -- does every acked message arrive?

N users (default 200) in channels of ``--members`` (user i in channel i // members), each
an ``AsyncClient`` (the library applications use), send closed-loop for S seconds while a
broker, a logic node, the router and the counter are SIGKILLed and restarted one after the
other (evenly spread over the run; ``--down`` keeps each dead that long, so sends pile up in
the mailboxes).  Then the senders stop, every mailbox drains, and each
member's windows are brought level with the newest acked id of its channel.

Reported, from what each user's library handed over (not from server counters):

- ``acked``: messages acked (during the run or later from the mailbox);
- ``exactly_once_in_order``: members that got every acked message of their channel (except
  their own) once, in id order -- out of ``members_checked``;
- ``skipped``: acked messages a member never got; ``duplicates``; ``out_of_order``;
- ``lost_unacked``: messages still unsettled in a mailbox at the end (neither acked nor
  reported refused or expired); ``refused``/``expired``: reported to the app;
- ``busy``: sends that told the app "busy" (they stayed in the mailbox);
- ``reconnects``: total, max per user, max per user per kill.

Exit code 0 when nothing was skipped, duplicated, reordered or lost and no user
reconnected more than 3 times per kill.
"""
from __future__ import annotations

import asyncio
import collections
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time

import zmq.asyncio

from nodes.client.aclient import AsyncClient
from nodes.client.blocking import ClientError
from nodes.ops.admin import Admin
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth

from .e2e import wait_presence
from .leangen import channel_of
from .procstat import reap
from .report import machine, parser as bench_parser, table, write_json

KINDS = ("broker", "logic", "router", "counter")


# --- one generator process ---------------------------------------------------------
class User:
    """One AsyncClient and what it saw: acks (from the mailbox's outcomes) and deliveries."""

    def __init__(self, uin: int, channel: str):
        self.uin, self.channel = uin, channel
        self.acked, self.received = [], []
        self.outcomes = collections.Counter()
        self.client = None

    def on_mail(self, event, entry, detail) -> None:
        self.outcomes[event] += 1
        if event == "refused":
            self.outcomes[f"refused {detail.code}"] += 1
        if event == "acked":
            self.acked.append(detail)

    async def sender(self, stop: asyncio.Event, think: float) -> None:
        i = 0
        while not stop.is_set():
            try:
                await self.client.send(self.channel, f"{self.uin}:{i}")
            except ClientError as exc:
                if exc.code not in ("BUSY", "CANCELLED"):
                    self.outcomes[f"error {exc.code}"] += 1
            i += 1
            if think:
                await asyncio.sleep(think)

    async def receiver(self) -> None:
        async for msg in self.client.messages():
            self.received.append((msg["channel"], msg["id"], msg["uin"]))

    def report(self) -> dict:
        c = self.client
        return {"uin": self.uin, "channel": self.channel, "acked": self.acked, "received": self.received,
                "outcomes": dict(self.outcomes), "pending": len(c.pending()),
                "reconnects": c.reconnects, "malformed": c.malformed}


async def until(predicate, seconds: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def worker_async(args, users, brokers, secret, control, out) -> None:
    ctx = zmq.asyncio.Context()
    ctx.set(zmq.MAX_SOCKETS, 4 * len(users) + 64)
    people = [User(uin, channel) for uin, channel in users]
    gate = asyncio.Semaphore(16)

    async def connect(u):
        async with gate:
            spread = brokers[u.uin % len(brokers):] + brokers[:u.uin % len(brokers)]   # ties: list order
            u.client = AsyncClient(spread, auth.mint(secret, u.uin, 7200), timeout=args.timeout,
                                   ctx=ctx, on_mail=u.on_mail)
            await u.client.connect()
            u.client.watch(u.channel, since=0)
    try:
        await asyncio.gather(*(connect(u) for u in people))
        out.put(("ready", len(people)))
        await asyncio.get_running_loop().run_in_executor(None, control.get)      # go
        stop = asyncio.Event()
        receivers = [asyncio.ensure_future(u.receiver()) for u in people]
        senders = [asyncio.ensure_future(u.sender(stop, args.think)) for u in people]
        await asyncio.get_running_loop().run_in_executor(None, control.get)      # stop
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        await until(lambda: all(not u.client.pending() for u in people), args.drain)
        heads = collections.defaultdict(int)
        for u in people:
            heads[u.channel] = max([heads[u.channel], *u.acked])
        out.put(("drained", dict(heads)))
        heads = await asyncio.get_running_loop().run_in_executor(None, control.get)
        for _round in range(int(args.drain)):                    # heartbeats bring the stragglers
            if all(u.client.windows.last.get(u.channel, 0) >= heads.get(u.channel, 0) for u in people):
                break
            await asyncio.gather(*(u.client.heartbeat() for u in people), return_exceptions=True)
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.2)                                  # let the last deliveries be read
        for task in receivers:
            task.cancel()
        out.put(("report", [u.report() for u in people]))
    finally:
        await asyncio.gather(*(u.client.close(logout=False) for u in people if u.client),
                             return_exceptions=True)
        ctx.term()


def worker_main(args, users, brokers, secret, control, out) -> None:
    asyncio.run(worker_async(args, users, brokers, secret, control, out))


# --- the run -----------------------------------------------------------------------
def chaos_topology(args) -> str:
    members = collections.defaultdict(list)
    for i in range(args.users):
        members[channel_of(i, args.members)].append(i + 1)
    return write_topology(tempfile.mkdtemp(prefix="imesh-chaos-"), brokers=args.brokers, logics=args.logic,
                          limits={"rate": 1e9, "burst": 1e9, "request_timeout": 1.0},
                          heartbeat={"wired": args.hb, "min": args.hb / 2, "max": args.hb * 2},
                          channels={n: {"members": m} for n, m in members.items()})


def kill_and_restart(mesh: Mesh, node_id: str, down: float) -> float:
    """SIGKILL, ``down`` seconds dead, start again; seconds until it is ready."""
    t0 = time.monotonic()
    mesh.signal(node_id, signal.SIGKILL)
    time.sleep(down)
    mesh.start([node_id])
    mesh.wait_ready(60, [node_id])
    return time.monotonic() - t0


def gather(outq, procs, kind: str, timeout: float) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            tag, value = outq.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                raise RuntimeError(f"workers did not report {kind!r} in time") from None
            continue
        if tag != kind:
            raise RuntimeError(f"expected {kind!r} from a worker, got {tag!r}")
        got.append(value)
    return got


def run(args) -> dict:
    mesh = Mesh(chaos_topology(args))
    topo = mesh.topo
    brokers = [(b.endpoint("client"), b.idc) for b in topo.of_type("broker")]    # with their IDCs
    procs, controls, kills = [], [], []
    outq = mp.Queue()
    try:
        mesh.start()
        mesh.wait_ready(60)
        users = [(i + 1, channel_of(i, args.members)) for i in range(args.users)]
        for k in range(args.processes):
            control = mp.Queue()
            p = mp.Process(target=worker_main, args=(args, users[k::args.processes], brokers,
                                                     topo.read_secret(), control, outq))
            p.start()
            procs.append(p)
            controls.append(control)
        gather(outq, procs, "ready", 180)
        wait_presence(Admin(topo, timeout=5), topo, args.users)
        for c in controls:
            c.put("go")
        t0 = time.monotonic()
        victims = [topo.ids(kind)[0] for kind in args.kill]
        for n, node_id in enumerate(victims, 1):
            time.sleep(max(0.0, t0 + n * args.seconds / (len(victims) + 1) - time.monotonic()))
            kills.append({"node": node_id, "at_s": round(time.monotonic() - t0, 2),
                          "restart_s": round(kill_and_restart(mesh, node_id, args.down), 2)})
            print(f"killed and restarted {node_id} at {kills[-1]['at_s']} s", file=sys.stderr, flush=True)
        time.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
        for c in controls:
            c.put("stop")
        heads = {}
        for part in gather(outq, procs, "drained", args.drain + 120):
            for ch, head in part.items():
                heads[ch] = max(heads.get(ch, 0), head)
        for c in controls:
            c.put(heads)
        reports = [r for part in gather(outq, procs, "report", args.drain + 120) for r in part]
        wall = time.monotonic() - t0
    finally:
        reap(procs, 30)
        mesh.close()
        shutil.rmtree(os.path.dirname(topo.path), ignore_errors=True)
    return analyse(args, reports, kills, wall)


def analyse(args, reports, kills, wall) -> dict:
    acked = collections.defaultdict(list)                   # channel -> ids acked to any sender
    sent_by = {}
    for r in reports:
        acked[r["channel"]] += r["acked"]
        for i in r["acked"]:
            sent_by[(r["channel"], i)] = r["uin"]
    twice_acked = sum(len(ids) - len(set(ids)) for ids in acked.values())
    skipped = duplicates = out_of_order = unacked_delivered = exact = 0
    for r in reports:
        mine = [i for ch, i, uin in r["received"] if ch == r["channel"] and uin != r["uin"]]
        expected = sorted(i for i in set(acked[r["channel"]]) if sent_by[(r["channel"], i)] != r["uin"])
        skipped += len(set(expected) - set(mine))
        duplicates += len(mine) - len(set(mine))
        out_of_order += sum(1 for a, b in zip(mine, mine[1:]) if b <= a)
        unacked_delivered += len(set(mine) - set(expected))
        exact += mine == expected
    outcomes = collections.Counter()
    for r in reports:
        outcomes.update(r["outcomes"])
    reconnects = [r["reconnects"] for r in reports]
    n_kills = max(1, len(kills))
    return {
        "acked": sum(len(ids) for ids in acked.values()), "acked_per_s": round(
            sum(len(ids) for ids in acked.values()) / args.seconds, 1),
        "members_checked": len(reports), "exactly_once_in_order": exact,
        "skipped": skipped, "duplicates": duplicates, "out_of_order": out_of_order,
        "delivered_not_acked": unacked_delivered, "acked_twice": twice_acked,
        "lost_unacked": sum(r["pending"] for r in reports),
        "refused": outcomes.get("refused", 0), "expired": outcomes.get("expired", 0),
        "refused_codes": {k.split()[1]: v for k, v in outcomes.items() if k.startswith("refused ")},
        "busy": outcomes.get("busy", 0),
        "errors": {k: v for k, v in outcomes.items() if k.startswith("error")},
        "malformed": sum(r["malformed"] for r in reports),
        "reconnects": {"total": sum(reconnects), "max_per_user": max(reconnects, default=0),
                       "max_per_user_per_kill": round(max(reconnects, default=0) / n_kills, 2),
                       "mean_per_user_per_kill": round(sum(reconnects) / max(1, len(reports)) / n_kills, 3)},
        "kills": kills, "wall_s": round(wall, 1),
        "workload": {key: getattr(args, key) for key in ("users", "members", "seconds", "think", "down",
                                                         "processes", "brokers", "logic", "hb", "timeout")},
        "machine": machine(),
    }


def render(r: dict) -> str:
    rc = r["reconnects"]
    rows = [["acked (per s)", f"{r['acked']} ({r['acked_per_s']})"],
            ["members exactly-once in id order", f"{r['exactly_once_in_order']} of {r['members_checked']}"],
            ["skipped / duplicates / out of order",
             f"{r['skipped']} / {r['duplicates']} / {r['out_of_order']}"],
            ["delivered but never acked / acked twice", f"{r['delivered_not_acked']} / {r['acked_twice']}"],
            ["lost unacked / refused / expired", f"{r['lost_unacked']} / {r['refused']} / {r['expired']}"],
            ["refused by code", ", ".join(f"{k} {v}" for k, v in r["refused_codes"].items()) or "-"],
            ["busy (kept in mailbox)", r["busy"]], ["malformed frames", r["malformed"]],
            ["reconnects total / max per user / max per user per kill",
             f"{rc['total']} / {rc['max_per_user']} / {rc['max_per_user_per_kill']}"]]
    rows += [[f"kill {k['node']} at {k['at_s']} s", f"back in {k['restart_s']} s"] for k in r["kills"]]
    w = r["workload"]
    head = (f"{r['machine']}\nchaos: {w['users']} users in channels of {w['members']}, {w['seconds']} s "
            f"closed-loop, nodes down {w['down']} s per kill, {w['brokers']} brokers, {w['logic']} logic, "
            f"heartbeat {w['hb']} s")
    return head + "\n\n" + table(["figure", "value"], rows)


def passed(r: dict) -> bool:
    return (r["skipped"] == r["duplicates"] == r["out_of_order"] == r["lost_unacked"] == r["acked_twice"] == 0
            and r["exactly_once_in_order"] == r["members_checked"]
            and r["reconnects"]["max_per_user_per_kill"] <= 3 and r["acked"] > 0)


def main(argv=None) -> int:
    parser = bench_parser("chaos", __doc__)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--think", type=float, default=0.0, help="seconds between one user's sends")
    parser.add_argument("--kill", default=",".join(KINDS),
                        help="node types to SIGKILL and restart, in order (default: %(default)s)")
    parser.add_argument("--down", type=float, default=0.0, help="seconds a killed node stays down")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--brokers", type=int, default=2)
    parser.add_argument("--logic", type=int, default=2)
    parser.add_argument("--hb", type=float, default=2.0, help="heartbeat interval (wired), seconds")
    parser.add_argument("--timeout", type=float, default=3.0, help="client request timeout, seconds")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds allowed to drain and catch up")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    args.kill = [k for k in args.kill.split(",") if k]
    if any(k not in KINDS for k in args.kill):
        parser.error(f"--kill takes node types from {', '.join(KINDS)}")
    if min(args.users, args.members, args.processes, args.brokers, args.logic) < 1 or args.seconds <= 0:
        parser.error("counts must be >= 1 and --seconds > 0")
    if args.users % args.members:
        parser.error("--users must be a multiple of --members")
    result = run(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0 if passed(result) else 1
