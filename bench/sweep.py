"""bin/bench sweep: how long the expiry sweeper takes, and how long it blocks the loop.

Fills one logic node with --messages messages over --channels channels
(pipelined raw sends), all with a short lifetime, then waits for them to
expire and reports: sweeper time for all of them (sum of its slices), wall
time from first to last deletion, the longest sweeper slice, and the
longest loop turn of the node while it swept.
"""
from __future__ import annotations

import sys
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, wire

from .report import machine, parser as bench_parser, scratch, table, write_json


def fill(endpoint, token, channels, total, window=500) -> float:
    """Send ``total`` messages round-robin over channels with ``window`` in flight; seconds taken."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send(wire.pack({"t": "login", "rid": 0, "v": wire.PROTOCOL_VERSION, "token": token, "device": 0}))
        reply = wire.unpack_many(s.recv())[0]
        if reply["t"] != "login_ok":
            raise RuntimeError(f"login refused: {reply}")
        session = {"sid": reply["sid"]} if "sid" in reply else {}      # protocol v2 carries a session id
        t0 = time.monotonic()
        sent = acked = 0
        deadline = t0 + 600
        while acked < total and time.monotonic() < deadline:
            while sent < total and sent - acked < window:
                sent += 1
                s.send(wire.pack({"t": "send", "rid": sent, "channel": channels[sent % len(channels)],
                                  "ctime": sent, "text": "x" * 100, **session}))
            if s.poll(1000):
                while True:
                    try:
                        replies = wire.unpack_many(s.recv(zmq.NOBLOCK), max_items=1 << 16)
                    except zmq.Again:
                        break
                    for reply in replies:                 # acks come in arrays, one frame per turn
                        if reply["t"] != "ack":
                            raise RuntimeError(f"send refused: {reply}")
                        acked += 1
        return time.monotonic() - t0
    finally:
        s.close(0)


def start_filled(mesh: Mesh, names: list[str], total: int) -> tuple[str, float]:
    """Start the mesh (one broker, one logic node) and store ``total`` messages of uin 1 over
    ``names``: (the logic node's id, seconds the sends took)."""
    mesh.start()
    mesh.wait_ready(30)
    print(f"storing {total} messages ...", file=sys.stderr, flush=True)
    took = fill(mesh.topo.of_type("broker")[0].endpoint("client"),
                auth.mint(mesh.topo.read_secret(), 1, 3600), names, total)
    return mesh.topo.ids("logic")[0], took


def main(argv=None) -> int:
    parser = bench_parser("sweep", __doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages to store, then expire")
    parser.add_argument("--channels", type=int, default=100, help="channels they are spread over")
    parser.add_argument("--lifetime", type=float, default=20.0, help="seconds every message lives")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.messages, args.channels) < 1 or args.lifetime <= 0:
        parser.error("--messages and --channels must be >= 1, --lifetime > 0")
    with scratch("sweep") as tmp:
        return sweep(args, tmp)


def sweep(args, tmp: str) -> int:
    names = [f"room{i}" for i in range(args.channels)]
    cfg = write_topology(tmp, brokers=1, logics=1,
                         limits={"message_lifetime": args.lifetime, "rate": 1e9, "burst": 1e9,
                                 "session_inflight": 1000,          # the filler pipelines 500 sends
                                 "channel_queue": args.messages // args.channels + 1},
                         channels={n: {"members": [1]} for n in names})
    with Mesh(cfg) as mesh:
        logic, took = start_filled(mesh, names, args.messages)
        mesh.admin.status(logic, timeout=5)
        mesh.admin.call(logic, {"t": "status", "reset_max": True})
        print(f"stored in {took:.1f}s; waiting for expiry ...", file=sys.stderr, flush=True)
        first = last = None
        deadline = time.monotonic() + args.lifetime + 300
        while time.monotonic() < deadline:
            st = mesh.admin.status(logic, timeout=5)
            if st["expired"] and first is None:
                first = time.monotonic()
            if st["expired"] >= args.messages:
                last = time.monotonic()
                break
            time.sleep(0.05)                     # polling a status counter, not a test
        if last is None:
            print(f"error: only {st['expired']} of {args.messages} expired", file=sys.stderr)
            return 1
    result = {"machine": machine(), "messages": args.messages, "channels": args.channels,
              "fill_s": round(took, 2), "sweeper_cpu_s": st["sweep_s"],
              "sweep_wall_s": round(last - first, 2), "sweep_max_slice_ms": st["sweep_max_ms"],
              "loop_max_turn_ms": st["max_turn_ms"], "expired": st["expired"]}
    print(machine())
    print(table(["figure", "value"], [[k, v] for k, v in result.items() if k != "machine"]))
    if args.json:
        write_json(args.json, result)
    return 0
