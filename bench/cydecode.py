"""The broker's client request decoding alone, Python path vs fastpath.HotRequests: µs per request.

`python -m bench.cydecode` -- for a G1k-sized ``send`` (100 B of text), an ``hb`` and a ``sync``,
times (``time.thread_time``, best of ``--repeat`` batches of ``--number``, the two paths alternating):

- decode + validate: ``wire.unpack_many`` + ``wire.Validator.validate`` vs ``HotRequests``;
- ``Dispatcher.frame`` with a guard and handler that do nothing, without and with the fast path
  (what the broker's main thread pays per request before its handler);
- a refused ``send`` (BAD_CHANNEL) through both dispatchers: what the fast path's attempt adds
  to a frame it leaves to the Python path.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from fastpath import HotRequests
from nodes.protocol import schema, wire
from nodes.protocol.dispatch import Dispatcher, hot_requests

LIMITS = {"max_text": 1440, "max_fragments": 64, "max_channels": 1000, "group_max_members": 100}
SID = 2**62 + 17
FRAMES = {
    "send": wire.pack({"t": "send", "rid": 12345, "sid": SID, "channel": "g17", "ctime": 1796565623123456,
                       "text": "x" * 100}),
    "hb": wire.pack({"t": "hb", "rid": 5, "sid": SID}),
    "sync": wire.pack({"t": "sync", "rid": 5, "sid": SID, "channel": "g17", "after": 123456}),
}
REFUSED = wire.pack({"t": "send", "rid": 1, "sid": SID, "channel": "bad name!", "ctime": 1, "text": "x"})


def per_call(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Best µs per call of ``repeat`` batches of ``number`` calls (this thread's CPU time)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(number):
            fn()
        best = min(best, time.thread_time() - start)
    return best / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cydecode", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per batch (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="batches per figure; the best counts (default 5)")
    args = parser.parse_args(argv)
    validator = wire.Validator(schema.CLIENT_REQUESTS, LIMITS)
    fast = HotRequests(LIMITS["max_text"], LIMITS["max_fragments"], LIMITS["max_channels"])
    handlers = {t: (lambda ctx, msg, now: None) for t in schema.CLIENT_REQUESTS}

    def dispatcher(with_fast: bool) -> Dispatcher:
        return Dispatcher(schema.CLIENT_REQUESTS, handlers, lambda ident, t, msg, now: ident, limits=LIMITS,
                          fast=hot_requests(schema.CLIENT_REQUESTS, LIMITS) if with_fast else None)
    python_d, fast_d = dispatcher(False), dispatcher(True)

    def reply(ident: bytes, msg: wire.Msg) -> None:
        pass

    def python_decode(frame: bytes) -> None:
        for msg in wire.unpack_many(frame, 65536, 8):
            validator.validate(msg)

    n, r = args.number, args.repeat
    print("| request | decode+validate: Python · HotRequests, µs | Dispatcher.frame: Python · fast, µs |")
    print("|---|---|---|")
    for name, frame in FRAMES.items():
        assert fast(frame, 65536, 8) == wire.unpack_many(frame, 65536, 8)
        py = per_call(lambda f=frame: python_decode(f), n, r)
        hot = per_call(lambda f=frame: fast(f, 65536, 8), n, r)
        d_py = per_call(lambda f=frame: python_d.frame(b"id", f, 0.0, reply, 65536, 8), n, r)
        d_fast = per_call(lambda f=frame: fast_d.frame(b"id", f, 0.0, reply, 65536, 8), n, r)
        print(f"| {name} | {py:.2f} · {hot:.2f} | {d_py:.2f} · {d_fast:.2f} |")
    refused_py = per_call(lambda: python_d.frame(b"id", REFUSED, 0.0, reply, 65536, 8), n // 4, r)
    refused_fast = per_call(lambda: fast_d.frame(b"id", REFUSED, 0.0, reply, 65536, 8), n // 4, r)
    print(f"| send refused (BAD_CHANNEL) | | {refused_py:.2f} · {refused_fast:.2f} |")


if __name__ == "__main__":
    main()
