"""bin/bench handoff: how long a logic node's loop is held by a live reshard's hand-over.

A real ``LogicCore`` on a real RocksDB store holds ``--sends`` messages of
channels that stay and one channel that moves to a new logic node
(nodes/logic/handoff.py).  Finding a moving channel's send-index rows means
scanning every send row of the store (they are keyed by device); this
measures, medians of ``--repeats``:

- ``one_scan_ms``: that whole scan in one go (what one loop turn cost
  before pages were read in slices);
- ``longest_page_ms``: the longest ``handoff`` page now (one loop turn);
- ``pages`` and ``all_pages_ms``: how the move is spread over turns;
- ``done_ms``: ``handoff_done`` at the old owner (one loop turn).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import report
from nodes.cluster import topology
from nodes.logic import handoff
from nodes.logic.core import LogicCore
from nodes.protocol import auth
from nodes.storage import shards
from nodes.storage.store import Store

SECRET = b"bench-secret-bench-secret"


class _Out:
    """What a LogicCore asks of its node, dropped (no sockets here)."""

    def reply(self, ident, msg):
        pass

    def publish(self, broker, msg):
        pass

    def request_ids(self, channel, n, have):
        pass


class _Everyone:
    version = 0

    def brokers_for(self, uins):
        return {"b1": list(uins)}


def topology_with(directory, logics, version: int, channels=None):
    """A one-IDC topology (no sockets are bound from it) with these logic nodes."""
    ports = iter(range(30000, 30100))
    raw = {"local": True, "data_dir": str(directory), "version": version, "channels": channels or {},
           "idcs": {"a": {"brokers": [{"id": "b1", "client": "tcp://127.0.0.1:1", "rpc": "tcp://127.0.0.1:2"}],
                          "logics": [{"id": n, "rpc": f"tcp://127.0.0.1:{next(ports)}",
                                      "pub": f"tcp://127.0.0.1:{next(ports)}"} for n in logics],
                          "routers": [{"id": "r", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                          "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}
    return topology.parse(raw, str(Path(directory) / "t.yaml"))


def _admin(**fields) -> dict:
    return dict({"rid": 1, "auth": auth.mint(SECRET, 0, 300, scope="admin")}, **fields)


def _turn(core, store) -> None:
    core.assign(time.time())
    store.flush()
    core.commit(core.take_committed())


def run_once(sends: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        one, two = topology_with(directory, ["l1"], 1), topology_with(directory, ["l1", "l2"], 2)
        stay = [f"s{i}" for i in range(400) if two.logic_for(f"s{i}") == "l1"][:20]
        moving = next(f"m{i}" for i in range(400) if two.logic_for(f"m{i}") == "l2")
        store = Store(str(directory / "l1"))
        core = LogicCore("l1", one, store, _Everyone(), _Out(), SECRET)
        core.load()
        for name in stay + [moving]:
            core.members.channel_create(_admin(channel=name, members=[1]))
            core.ids.on_ids(name, 1, 10**9)
        for k in range(sends):
            core.sends.send(b"", {"rid": k, "uin": 1, "device": 0, "channel": stay[k % len(stay)],
                            "ctime": k + 1, "text": "x" * 20})
            if k % 1000 == 999:
                _turn(core, store)
        core.sends.send(b"", {"rid": 0, "uin": 1, "device": 0, "channel": moving, "ctime": sends + 1, "text": "m"})
        _turn(core, store)
        names = sorted(core.adopt(two))
        started = time.perf_counter()
        list(shards.channel_rows(store, set(names).__contains__))
        one_scan = time.perf_counter() - started
        side, longest, pages, after = handoff.Handoff(core, store), 0.0, 0, 0
        started = time.perf_counter()
        while True:
            t = time.perf_counter()
            page = side.handle_handoff(b"", _admin(to="l2", after=after))
            longest, pages = max(longest, time.perf_counter() - t), pages + 1
            if page["next"] == 0:
                break
            after = page["next"]
        all_pages = time.perf_counter() - started
        t = time.perf_counter()
        side.handle_done(b"", _admin(to="l2", channels=names))
        done = time.perf_counter() - t
        store.close()
    return {"one_scan_ms": one_scan * 1000, "longest_page_ms": longest * 1000, "pages": pages,
            "all_pages_ms": all_pages * 1000, "done_ms": done * 1000}


def main(argv=None) -> int:
    p = report.parser("handoff", __doc__)
    p.add_argument("--sends", default="20000,200000", help="stored sends of other channels (comma list)")
    p.add_argument("--repeats", type=int, default=3, help="runs per size (figures are medians)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    results = {}
    for sends in (int(x) for x in args.sends.split(",")):
        runs = [run_once(sends) for _ in range(args.repeats)]
        results[sends] = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
        r = results[sends]
        print(f"{sends} sends stored elsewhere: one scan {r['one_scan_ms']} ms; now {r['pages']:.0f} pages, "
              f"longest {r['longest_page_ms']} ms, all {r['all_pages_ms']} ms; handoff_done {r['done_ms']} ms "
              f"(medians of {args.repeats})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "by_sends": results}, f, indent=1)
    return 0
