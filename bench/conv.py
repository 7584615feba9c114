"""bin/bench conv: what the conversation layer (issue 24) costs, end to end through a real mesh.

Three parts (``--parts``), each --repeats runs on a freshly started mesh, medians reported:

- ``reads``: bench e2e's G1k shape (--users in groups of --members, every user sends
  --messages closed-loop) in groups the bench creates (``create {kind: group}``, so
  receipts are on: --members <= receipts_max_members), once with every receiver sending
  ``read {channel, id}`` for every message it gets and once without; server CPU per acked
  message and acked/s of both.  A read pushes a ``receipt`` to the other online members.
- ``channels``: one user in --channels groups (and the topology's own room) (each with one message from another user),
  the latency of ``channels {limit: 100}`` (p50/p99 over --calls requests) and of the
  walk through all pages.
- ``typing``: every user of the G1k shape sends --typing notices closed-loop in its group;
  once at a typing rate raised out of the way (every notice goes to the channel's owner
  and is pushed to the other online members) and once at the topology's default rate
  (the broker refuses what is over it: RATE_LIMITED counts).  Server CPU per notice, and
  what the logic nodes stored meanwhile (their ``stored`` counters and every group's
  newest id must not move).

Generators are bench/leangen.py's lean workers (raw DEALERs, batched reads) in
--processes processes; bench/e2e.py's ``load`` measures the nodes' CPU around the run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

from nodes.client.blocking import Client, ClientError
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh, MeshError
from nodes.protocol import auth, wire
from nodes.runtime import curve

from .e2e import load, summarize, wait_presence
from .leangen import Worker
from .report import machine, parser as bench_parser, percentile, scratch, table, write_json

READ_RID = 1 << 40                  # rids of reads and typing notices: apart from the sends' seqs
DRAIN_QUIET = 0.5                   # seconds without a frame that end the drain after a run
BENCH_LIMITS = {"rate": 1e9, "burst": 1e9, "max_pending": 100000}
PARTS = ("reads", "channels", "typing")


class ConvWorker(Worker):
    """bench e2e's lean worker in the bench's groups; with ``args.reads`` every delivery is
    answered by a ``read`` of its id.  Counts the read answers and the receipts pushed."""

    def __init__(self, args, indexes, endpoints, secret):
        super().__init__(args, indexes, endpoints, secret)
        self.reads = self.read_answers = self.read_errors = self.receipts = 0
        self.codes: dict = {}                  # error codes of sends and reads: why a run failed

    def channel(self, i: int) -> str:
        return self.args.groups[i // self.args.group_size]

    def on_message(self, s, msg: dict, now: int) -> None:
        rid = msg.get("rid")
        if msg["t"] == "err":
            code = ("read " if rid is not None and rid >= READ_RID else "send ") + str(msg.get("code"))
            self.codes[code] = self.codes.get(code, 0) + 1
        if rid is not None and rid >= READ_RID:
            self.read_answers += 1
            self.read_errors += msg["t"] == "err"
            return
        if msg["t"] == "receipt":
            self.receipts += 1
            return
        super().on_message(s, msg, now)
        if msg["t"] == "msg" and self.args.reads:
            s.send(wire.pack({"t": "read", "rid": READ_RID + self.reads, "sid": self.sid[s],
                              "channel": msg["channel"], "id": msg["id"]}))
            self.reads += 1

    def drained(self, done) -> None:
        """Go on reading until ``done()`` or nothing came for DRAIN_QUIET s: the run's last
        answers and pushes are part of what it costs."""
        quiet = time.monotonic() + DRAIN_QUIET
        while not done() and time.monotonic() < quiet:
            if self.pump(50):
                quiet = time.monotonic() + DRAIN_QUIET

    def run(self, progress) -> dict:
        result = super().run(progress)
        self.drained(lambda: self.read_answers >= self.reads)
        result.update(reads=self.reads, read_answers=self.read_answers, read_errors=self.read_errors,
                      receipts=self.receipts, codes=self.codes)
        return result


class TypingWorker(ConvWorker):
    """Each user sends ``args.messages`` typing notices closed-loop (the next after the answer:
    ``typing`` or an error); counts the answers by code and the ``typing`` pushes received."""

    def __init__(self, args, indexes, endpoints, secret):
        super().__init__(args, indexes, endpoints, secret)
        self.pushes = 0

    def send(self, s, seq: int) -> None:
        i = self.user_of[s]
        self.sent_at[(i, READ_RID + seq)] = time.monotonic_ns()
        s.send(wire.pack({"t": "typing", "rid": READ_RID + seq, "sid": self.sid[s], "channel": self.channel(i)}))

    def on_message(self, s, msg: dict, now: int) -> None:
        t = msg["t"]
        if t == "typing" and "rid" not in msg:
            self.pushes += 1
        elif t in ("typing", "err"):
            code = "ok" if t == "typing" else msg.get("code", "?")
            self.codes[code] = self.codes.get(code, 0) + 1
            Worker.on_message(self, s, dict(msg, t="ack" if t == "typing" else "err"), now)

    def run(self, progress) -> dict:
        result = Worker.run(self, progress)
        self.drained(lambda: False)                  # the pushes of the last notices
        result.update(codes=self.codes, pushes=self.pushes)
        return result


@contextlib.contextmanager
def started(tmp: str, **topo):
    """A mesh from ``write_topology(tmp, **topo)``, every node ready; closed on the way out.
    Free ports are released before the nodes bind them, so another process on this shared
    machine may take one: a node that exits at start means new ports and another try."""
    for attempt in range(3):
        directory = os.path.join(tmp, f"try{attempt}")
        os.makedirs(directory)
        mesh = Mesh(write_topology(directory, **topo))
        try:
            mesh.start()
            mesh.wait_ready(60)
            break
        except MeshError:
            mesh.close()
            if attempt == 2:
                raise
    try:
        yield mesh
    finally:
        mesh.close()


def group_names(topo, users: int, size: int) -> list[str]:
    """Create the groups of the G1k shape: user g*size+1 makes group g of users g*size+1..+size."""
    names = []
    endpoint = curve.client_endpoint(topo, topo.ids("broker")[0])
    for first in range(1, users + 1, size):
        with Client(endpoint, timeout=10) as c:
            c.login(auth.mint(topo.read_secret(), first, 3600))
            reply = c.request({"t": "create", "kind": "group", "ctime": 1,
                               "members": list(range(first + 1, min(users, first + size - 1) + 1))})
            names.append(reply["channel"])
    return names


def newest_ids(admin, topo, users: int, size: int) -> dict:
    """{group: newest id} as the groups' creators' ``my_channels`` answers show them."""
    newest = {}
    for first in range(1, users + 1, size):
        for node in topo.ids("logic"):
            for item in (admin.call(node, {"t": "my_channels", "uin": first}, timeout=10) or {}).get("items", []):
                newest[item["channel"]] = item["last"]
    return newest


def stored(admin, topo) -> int:
    return sum((admin.status(n, timeout=10) or {}).get("stored", 0) for n in topo.ids("logic"))


def load_run(args, worker, limits: dict) -> dict:
    """One run of ``worker`` on a fresh mesh with the bench's groups; the figures of e2e's
    ``summarize`` plus the workers' counts and the stored counters before and after."""
    with scratch("conv") as tmp:
        with started(tmp, brokers=args.brokers, logics=args.logic, curve=args.curve == "on",
                     limits=dict(BENCH_LIMITS, **limits), heartbeat={"wired": 600.0}) as mesh:
            topo, admin = mesh.topo, mesh.admin
            run_args = argparse.Namespace(**dict(vars(args), worker=worker, group_size=args.members,
                                                 groups=group_names(topo, args.users, args.members),
                                                 transport="zmq", client="lean", size=100, window=1,
                                                 channels=args.users // args.members))
            if worker is TypingWorker:
                run_args.messages, run_args.members = args.typing, 1     # no message deliveries to wait for
            endpoints = [curve.client_endpoint(topo, b) for b in topo.ids("broker")]
            before = {}

            def pids_of():
                before.update(stored=stored(admin, topo), newest=newest_ids(admin, topo, args.users, args.members))
                return {n: mesh.procs[n].pid for n in topo.nodes}
            results, wall, cpu, rss, io = load(run_args, endpoints, topo.read_secret(), pids_of,
                                               lambda: wait_presence(admin, topo, args.users))
            after = {"stored": stored(admin, topo), "newest": newest_ids(admin, topo, args.users, args.members)}
    by_type, io_type = {}, {}
    for n in cpu:
        kind = topo.nodes[n].type
        by_type[kind] = round(by_type.get(kind, 0.0) + cpu[n], 3)
        io_type[kind] = round(io_type.get(kind, 0.0) + io[n], 3)
    out = summarize(run_args, results, wall, by_type, {}, io_type)
    for key in ("reads", "read_answers", "read_errors", "receipts", "pushes"):
        out[key] = sum(r.get(key, 0) for r in results)
    codes: dict = {}
    for r in results:
        for code, n in r.get("codes", {}).items():
            codes[code] = codes.get(code, 0) + n
    out["codes"] = codes
    out["stored_moved"] = after["stored"] - before["stored"]
    out["newest_moved"] = sorted(g for g, i in after["newest"].items() if before["newest"].get(g) != i)
    return out


def median_of(runs: list[dict], key: str):
    return statistics.median(r[key] for r in runs)


def reads_part(args) -> dict:
    arms = {}
    for name, reads in (("without reads", False), ("read after every message", True)):
        runs = [load_run(argparse.Namespace(**vars(args), reads=reads), ConvWorker, {}) for _ in range(args.repeats)]
        arms[name] = {"acked_per_s": median_of(runs, "acked_per_s"),
                      "server_cpu_us_per_msg": median_of(runs, "server_cpu_us_per_msg"),
                      "ack_p99_ms": median_of(runs, "ack_p99_ms"),
                      "reads": median_of(runs, "reads"), "read_errors": sum(r["read_errors"] for r in runs),
                      "receipts": median_of(runs, "receipts"),
                      "lost": sum(r["lost"] for r in runs), "errors": sum(r["errors"] for r in runs),
                      "duplicates": sum(r["duplicates"] for r in runs),
                      "codes": [r["codes"] for r in runs],
                      "cpu_s": {k: statistics.median(r["cpu_s"][k] for r in runs) for k in runs[0]["cpu_s"]},
                      "runs": [{k: r[k] for k in ("acked_per_s", "server_cpu_us_per_msg", "reads", "receipts")}
                               for r in runs]}
    return arms


def typing_part(args) -> dict:
    arms = {}
    for name, limits in (("typing rate raised (all forwarded)", {"typing_rate": 1e9, "typing_burst": 1e9}),
                         ("default typing rate (0.5/s, burst 2)", {})):
        runs = [load_run(argparse.Namespace(**vars(args), reads=False), TypingWorker, limits)
                for _ in range(args.repeats)]
        arms[name] = {"notices_per_s": median_of(runs, "acked_per_s"),
                      "server_cpu_us_per_notice": round(statistics.median(
                          1e6 * sum(v for k, v in r["cpu_s"].items() if k != "generator")
                          / (args.users * args.typing) for r in runs), 1),
                      "forwarded": median_of(runs, "acked"), "pushes": median_of(runs, "pushes"),
                      "codes": runs[-1]["codes"],
                      "stored_moved": max(r["stored_moved"] for r in runs),
                      "newest_moved": sum(len(r["newest_moved"]) for r in runs),
                      "cpu_s": {k: statistics.median(r["cpu_s"][k] for r in runs) for k in runs[0]["cpu_s"]}}
    return arms


def channels_part(args) -> dict:
    """One user in ``args.channels`` groups, each with a message from user 2: ``channels`` pages."""
    rounds = []
    for _ in range(args.repeats):
        with scratch("conv") as tmp:
            with started(tmp, brokers=args.brokers, logics=args.logic, curve=args.curve == "on",
                         limits=BENCH_LIMITS) as mesh:
                rounds.append(channel_pages(mesh.topo, args))
    return {"first_page_p50_ms": statistics.median(r["p50"] for r in rounds),
            "first_page_p99_ms": statistics.median(r["p99"] for r in rounds),
            "walk_ms": statistics.median(r["walk_ms"] for r in rounds), "pages": rounds[-1]["pages"],
            "items": rounds[-1]["items"], "unread": rounds[-1]["unread"], "rounds": rounds}


def channel_pages(topo, args) -> dict:
    endpoints = [curve.client_endpoint(topo, b) for b in topo.ids("broker")]
    secret = topo.read_secret()
    with Client(endpoints[0], timeout=10) as me, Client(endpoints[-1], timeout=10) as other:
        me.login(auth.mint(secret, 1, 3600))
        other.login(auth.mint(secret, 2, 3600))
        for k in range(args.channels):
            name = me.request({"t": "create", "kind": "group", "ctime": k + 1, "members": [2]})["channel"]
            other.send(name, f"hello {k}")
        times = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            page = me.request({"t": "channels", "limit": 100})
            times.append((time.perf_counter() - t0) * 1000)
            if len(page["items"]) < min(100, args.channels):          # (and the topology's room)
                raise RuntimeError(f"a page of {len(page['items'])} channels")
        t0, items, pages, after = time.perf_counter(), [], 0, None
        while True:
            req = {"t": "channels", "limit": 100}
            if after is not None:
                req["after"] = after
            page = me.request(req)
            items += page["items"]
            pages += 1
            after = page.get("next")
            if not after:
                break
        walk = (time.perf_counter() - t0) * 1000
    groups = {i["channel"] for i in items if i["kind"] == "group"}
    if len(groups) != args.channels or len({i["channel"] for i in items}) != len(items):
        raise RuntimeError(f"the walk listed {len(items)} items, {len(groups)} distinct groups")
    return {"p50": round(percentile(times, 50), 3), "p99": round(percentile(times, 99), 3),
            "walk_ms": round(walk, 3), "pages": pages, "items": len(items),
            "unread": sum(i["unread"] for i in items if i["kind"] == "group")}


def render(result: dict) -> str:
    out = [result["machine"], f"medians of {result['repeats']} runs; topology: {result['brokers']} brokers, "
           f"{result['logic']} logic, CURVE {result['curve']} between nodes"]
    if "reads" in result:
        w = result["reads"]
        out.append(f"\nG1k in groups ({result['users']} users, groups of {result['members']}, "
                   f"{result['messages']} msgs each):")
        out.append(table(["arm", "acked msg/s", "server CPU µs per acked msg", "ack p99 ms", "reads", "read errors",
                          "receipts pushed", "lost / dup / errors", "CPU s broker / logic / generator"],
                         [[name, a["acked_per_s"], a["server_cpu_us_per_msg"], round(a["ack_p99_ms"], 1), a["reads"],
                           a["read_errors"], a["receipts"], f"{a['lost']} / {a['duplicates']} / {a['errors']}",
                           f"{a['cpu_s'].get('broker')} / {a['cpu_s'].get('logic')} / {a['cpu_s'].get('generator')}"]
                          for name, a in w.items()]))
    if "channels" in result:
        c = result["channels"]
        out.append(f"\nchannels for one user in {result['channels_count']} groups ({c['items']} listed in "
                   f"{c['pages']} pages of 100, unread {c['unread']}):")
        out.append(table(["request", "p50 ms", "p99 ms"],
                         [["channels {limit: 100} (first page)", c["first_page_p50_ms"], c["first_page_p99_ms"]],
                          [f"walk of all {c['pages']} pages", c["walk_ms"], ""]]))
    if "typing" in result:
        out.append(f"\ntyping storm ({result['users']} users in groups of {result['members']}, "
                   f"{result['typing_count']} notices each):")
        out.append(table(["arm", "notices answered/s", "server CPU µs per notice", "answers by code",
                          "typing pushes received", "stored moved", "groups whose newest id moved",
                          "CPU s broker / logic"],
                         [[name, a["notices_per_s"], a["server_cpu_us_per_notice"],
                           " ".join(f"{k}={v}" for k, v in sorted(a["codes"].items())), a["pushes"],
                           a["stored_moved"], a["newest_moved"],
                           f"{a['cpu_s'].get('broker')} / {a['cpu_s'].get('logic')}"]
                          for name, a in result["typing"].items()]))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = bench_parser("conv", __doc__)
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run, comma separated")
    parser.add_argument("--users", type=int, default=1000, help="users of the reads and typing parts")
    parser.add_argument("--members", type=int, default=10, help="users per group (<= receipts_max_members)")
    parser.add_argument("--messages", type=int, default=20, help="messages each user sends (reads part)")
    parser.add_argument("--typing", type=int, default=20, help="typing notices each user sends (typing part)")
    parser.add_argument("--channels", type=int, default=1000, help="groups of the one user (channels part)")
    parser.add_argument("--calls", type=int, default=50, help="channels requests timed per run")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--brokers", type=int, default=2, help="brokers of the started mesh")
    parser.add_argument("--logic", type=int, default=2, help="logic nodes of the started mesh")
    parser.add_argument("--curve", choices=("on", "off"), default="on", help="CurveZMQ between the nodes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm (medians reported)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    parser.add_argument("--progress", action="store_true", help="progress bar even when not a tty")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts: some of {','.join(PARTS)}")
    if args.users % args.members or min(args.users, args.messages, args.typing, args.channels, args.calls,
                                        args.processes, args.brokers, args.logic, args.repeats) < 1 \
            or not 2 <= args.members <= 50:
        parser.error("counts >= 1, --members 2..50 (receipts on) dividing --users")
    result: dict = {"machine": machine(), "repeats": args.repeats, "brokers": args.brokers, "logic": args.logic,
                    "curve": args.curve, "users": args.users, "members": args.members, "messages": args.messages,
                    "typing_count": args.typing, "channels_count": args.channels}
    try:
        if "reads" in parts:
            result["reads"] = reads_part(args)
        if "channels" in parts:
            result["channels"] = channels_part(args)
        if "typing" in parts:
            result["typing"] = typing_part(args)
    except ClientError as exc:
        print(f"conv: {exc.code}: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json:
        write_json(args.json, result)
    bad = [a["lost"] + a["duplicates"] + a["errors"] + a["read_errors"] for a in result.get("reads", {}).values()]
    bad += [a["stored_moved"] + a["newest_moved"] for a in result.get("typing", {}).values()]
    return 1 if any(bad) else 0
