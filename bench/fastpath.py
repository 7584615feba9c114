"""bin/bench fastpath: the fast-path structures against plain Python, in the same run.

Each figure is the median of several repeats, in ns per operation (per key
for batch calls), on shuffled random keys.  The Python baselines are what a
node would write without the fast path: a dict of tuples for dedup, a set
of ints for presence, a deque(maxlen) for the id ring.
"""
from __future__ import annotations

import collections
import gc
import random
import statistics
import sys
import time
import tracemalloc
from array import array

import fastpath

from .report import machine, parser as bench_parser, table, write_docs_section, write_json

REPEATS = 5


def timed(fn, ops: int, repeats: int = REPEATS) -> float:
    """Median ns per op of fn() (which performs ``ops`` operations)."""
    samples = []
    for _ in range(repeats):
        gc.disable()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / ops)
        gc.enable()
    return statistics.median(samples)


def traced_bytes(build) -> tuple[object, int]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return obj, after - before


# --- dedup ---------------------------------------------------------------------------

def bench_dedup(n: int, rng: random.Random) -> dict:
    keys = list({(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(n)})[:n]
    ctimes = [rng.getrandbits(50) for _ in keys]
    fast = fastpath.DedupTable()
    for i, ((u, d), c) in enumerate(zip(keys, ctimes)):
        fast.commit(u, d, c, i)
    py, py_bytes = traced_bytes(lambda: {k: (c, i) for i, (k, c) in enumerate(zip(keys, ctimes))})
    order = list(range(n))
    rng.shuffle(order)
    probe_n = min(n, 200_000)
    probe = [(keys[i][0], keys[i][1], ctimes[i]) for i in order[:probe_n]]
    missing = [(rng.getrandbits(32), rng.getrandbits(32), 1) for _ in range(probe_n)]

    def fast_check(items):
        check = fast.check
        for u, d, c in items:
            check(u, d, c)

    def py_check(items):
        get = py.get
        for u, d, c in items:
            v = get((u, d))
            if v is None or c > v[0]:
                _r = -1
            elif c == v[0]:
                _r = v[1]
            else:
                _r = -2

    us = array("I", (p[0] for p in probe))
    ds = array("I", (p[1] for p in probe))
    cs = array("Q", (p[2] for p in probe))
    new_keys = [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(probe_n)]

    def fast_insert():
        t = fastpath.DedupTable()
        commit = t.commit
        for i, (u, d) in enumerate(new_keys):
            commit(u, d, 5, i)

    def py_insert():
        t = {}
        for i, (u, d) in enumerate(new_keys):
            t[(u, d)] = (5, i)

    r = {
        "entries": n,
        "bytes_per_entry": round(fast.nbytes / n, 1),
        "py_bytes_per_entry": round(py_bytes / n, 1),
        "check_dup_ns": timed(lambda: fast_check(probe), probe_n),
        "py_check_dup_ns": timed(lambda: py_check(probe), probe_n),
        "check_new_ns": timed(lambda: fast_check(missing), probe_n),
        "py_check_new_ns": timed(lambda: py_check(missing), probe_n),
        "check_batch_ns": timed(lambda: fast.check_batch(us, ds, cs), probe_n),
        "insert_ns": timed(lambda: fast_insert(), probe_n, 3),
        "py_insert_ns": timed(lambda: py_insert(), probe_n, 3),
        "max_probe": fast.max_probe(),
    }
    assert list(fast.check_batch(us, ds, cs)) == [order[i] for i in range(probe_n)]
    return r


# --- bitmap ---------------------------------------------------------------------------

def bench_bitmap(n: int, rng: random.Random) -> dict:
    spread = n * 10
    online = rng.sample(range(spread), n)
    bm = fastpath.OnlineBitmap()
    bm.set_batch(array("I", online))
    py, py_bytes = traced_bytes(lambda: set(online))
    batch = array("I", rng.sample(range(spread), 1000))
    batch_list = list(batch)
    calls = 2000

    def fast_filter():
        f = bm.filter_online
        for _ in range(calls):
            f(batch)

    def py_filter():
        for _ in range(calls):
            [u for u in batch_list if u in py]

    probe = [rng.randrange(spread) for _ in range(100_000)]

    def fast_test():
        t = bm.test
        for u in probe:
            t(u)

    def py_test():
        for u in probe:
            _ = u in py

    high = fastpath.OnlineBitmap()
    high.set(2**32 - 1)
    return {
        "online": n, "spread": spread,
        "bytes": bm.nbytes, "py_bytes": py_bytes,
        "filter_1000_us": timed(fast_filter, calls) / 1000,
        "py_filter_1000_us": timed(py_filter, calls) / 1000,
        "test_ns": timed(fast_test, len(probe)),
        "py_test_ns": timed(py_test, len(probe)),
        "one_high_uin_bytes": high.nbytes,
    }


# --- ring ------------------------------------------------------------------------------

def bench_ring(n: int, rng: random.Random) -> dict:
    ring = fastpath.IdRing(n)
    dq = collections.deque(maxlen=n)
    ids = list(range(1, n + 1))
    for i in ids:
        ring.push(i)
        dq.append(i)
    calls = 2000

    def fast_since(k):
        since = ring.since
        at = n - k
        for _ in range(calls):
            since(at)

    def py_since(k):
        at = n - k
        for _ in range(min(calls, 20)):
            [x for x in dq if x > at]

    pushes = list(range(n + 1, n + 100_001))

    def fast_push():
        r = fastpath.IdRing(n)
        p = r.push
        for i in pushes:
            p(i)

    def py_push():
        d = collections.deque(maxlen=n)
        a = d.append
        for i in pushes:
            a(i)

    return {
        "ids": n, "bytes_per_id": ring.nbytes / n,
        "since_10_ns": timed(lambda: fast_since(10), calls),
        "since_1000_ns": timed(lambda: fast_since(min(1000, n)), calls),
        "py_since_10_ns": timed(lambda: py_since(10), min(calls, 20)),
        "push_ns": timed(fast_push, len(pushes), 3),
        "py_push_ns": timed(py_push, len(pushes), 3),
    }


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def render(results) -> str:
    lines = [f"Machine: {results['machine']}. Medians of {REPEATS} repeats, shuffled random keys; "
             "ratio = fastpath / Python (lower is better).", ""]
    def row(n, label, fast, py, fmt=".0f"):
        """One comparison row: the figures of both sides and their ratio."""
        return [n, label, format(fast, fmt), format(py, fmt), ratio(fast, py)]

    rows = []
    for r in results["dedup"]:
        n = f"{r['entries']:,}"
        rows += [
            row(n, "bytes per entry", r["bytes_per_entry"], r["py_bytes_per_entry"], ".1f"),
            row(n, "check, duplicate (single call), ns", r["check_dup_ns"], r["py_check_dup_ns"]),
            row(n, "check, new key (single call), ns", r["check_new_ns"], r["py_check_new_ns"]),
            row(n, "check_batch, ns per key", r["check_batch_ns"], r["py_check_dup_ns"], ".1f"),
            row(n, "commit new key, ns", r["insert_ns"], r["py_insert_ns"]),
        ]
    lines += ["### DedupTable vs dict of tuples", "",
              table(["entries", "operation", "fastpath", "Python", "ratio"], rows), ""]
    rows = []
    for r in results["bitmap"]:
        n = f"{r['online']:,} over {r['spread']:,}"
        rows += [
            row(n, "memory, MiB", r["bytes"] / 2**20, r["py_bytes"] / 2**20, ".2f"),
            row(n, "filter_online(1,000 uins), µs", r["filter_1000_us"], r["py_filter_1000_us"], ".2f"),
            row(n, "test (single call), ns", r["test_ns"], r["py_test_ns"]),
        ]
    rows.append(["1 uin at 2**32-1", "memory, KiB", f"{results['bitmap'][0]['one_high_uin_bytes'] / 1024:.0f}",
                 "-", "-"])
    lines += ["### OnlineBitmap vs set of ints", "",
              table(["online uins", "operation", "fastpath", "Python", "ratio"], rows), ""]
    rows = []
    for r in results["ring"]:
        n = f"{r['ids']:,}"
        rows += [
            [n, "bytes per id", f"{r['bytes_per_id']:.1f}", "-", "-"],
            row(n, "since() returning 10 ids, ns", r["since_10_ns"], r["py_since_10_ns"]),
            [n, "since() returning 1,000 ids, ns", f"{r['since_1000_ns']:.0f}", "-", "-"],
            row(n, "push, ns", r["push_ns"], r["py_push_ns"]),
        ]
    lines += ["### IdRing vs deque(maxlen)", "",
              table(["ids in ring", "operation", "fastpath", "Python", "ratio"], rows), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = bench_parser("fastpath", __doc__)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--seed", type=int, default=12345, help="random seed of the workload")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(args.seed)
    results = {"machine": machine(), "sizes": sizes, "dedup": [], "bitmap": [], "ring": []}
    for n in sizes:
        print(f"measuring {n:,} ...", file=sys.stderr, flush=True)
        results["dedup"].append(bench_dedup(n, rng))
        results["bitmap"].append(bench_bitmap(n, rng))
        results["ring"].append(bench_ring(n, rng))
    text = render(results)
    print(text)
    if args.json:
        write_json(args.json, results)
    if args.write_docs:
        write_docs_section("fastpath", "## Fast paths (`bin/bench fastpath`)\n\n" + text)
    return 0
