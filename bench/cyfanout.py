"""The broker's delivery fan-out alone, Python twin vs fastpath.Fanout: main-thread CPU per message.

`python -m bench.cyfanout` -- one client ROUTER (ROUTER_MANDATORY) on 127.0.0.1 with 1,000
DEALER sessions connected over TCP, channels of 10: each message goes to the 9 other members'
sessions, ``--per-turn`` messages per loop turn (G1k's brokers see 2-3).  Measures
``time.thread_time`` of the calling thread only -- what the broker's main thread pays for
``BrokerCore.deliver`` plus the turn-end flush; the sessions' reads run in libzmq's I/O threads
and are not counted.  The two paths alternate, ``--rounds`` times each.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import zmq

from fastpath import Fanout
from nodes.broker.core import recipients
from nodes.runtime.outbox import ARRAY_HEADER, MAX_BATCH, Outbox
from nodes.runtime.sessions import Session

MAX_FRAME = 65536


def setup(ctx: zmq.Context, users: int):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealers = []
    for uin in range(users):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.IDENTITY, b"u%d" % uin)
        d.setsockopt(zmq.RCVHWM, 0)
        d.connect(f"tcp://127.0.0.1:{port}")
        dealers.append(d)
    by_uin = {uin: {b"u%d" % uin: Session(b"u%d" % uin, uin, 1, "zmq", 30, 0.0)} for uin in range(users)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:               # every session routable before measuring
        try:
            for uin in range(users):
                router.send_multipart([b"u%d" % uin, b"\xc0"], zmq.NOBLOCK)
            break
        except zmq.ZMQError:
            time.sleep(0.05)
    return router, dealers, by_uin


def one_round(router, by_uin, users: int, messages: int, per_turn: int, compiled: bool) -> float:
    out = Outbox(lambda sock, key, exc: None)
    out.frame_limits[router] = MAX_FRAME
    if compiled:
        fanout = Fanout(router, MAX_FRAME, MAX_BATCH, ARRAY_HEADER)
        out.attach(router, fanout)
        deliver = fanout.deliver
    else:
        def deliver(by_uin, to, sender, device, packed):
            idents = recipients(by_uin, to, sender, device)
            out.put_many(router, idents, packed)
            return len(idents)
    rng = random.Random(7)
    payload = bytes(100)
    plan = []
    for _ in range(messages):
        sender = rng.randrange(users)
        first = sender - sender % 10
        plan.append((list(range(first, first + 10)), sender, b"\x81" + payload + bytes([rng.randrange(256)])))
    start = time.thread_time()
    for i, (to, sender, packed) in enumerate(plan):
        deliver(by_uin, to, sender, 1, packed)
        if i % per_turn == per_turn - 1:
            out.flush()
    out.flush()
    return (time.thread_time() - start) / messages * 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cyfanout", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--per-turn", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    ctx = zmq.Context()
    try:
        router, dealers, by_uin = setup(ctx, a.users)
        figures: dict[str, list[float]] = {"python": [], "cython": []}
        for _ in range(a.rounds):
            for name in figures:
                figures[name].append(one_round(router, by_uin, a.users, a.messages, a.per_turn, name == "cython"))
        for name, runs in figures.items():
            print(f"{name}: median {statistics.median(runs):.2f} µs per message (9 recipients) "
                  f"main-thread CPU; runs {', '.join(f'{r:.2f}' for r in runs)}")
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
