"""bin/bench hostile: a broker's memory under clients that never log in, or never read.

Two scenarios on a local mesh (1 broker, 1 logic), broker RSS read from
/proc/<pid>/status (VmRSS) before, at its peak during, and after the peers
closed (issue 23.2 and 23.3):

- ``prelogin``: --conns raw ZeroMQ DEALERs (another process) send frames of
  64 requests without logging in for --seconds and never read; meanwhile a
  legitimate client logs in and sends once a second (its latency is reported;
  it must succeed).
- ``slow``: --readers sessions log in and never read while a sender puts a
  burst of --messages texts of --size bytes into their channel; the broker
  kicks them as ``too_slow`` (count reported) and RSS after they close shows
  whether the memory came back.

The helpers are shared with tests/test_memory_bounds.py.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time

import zmq

from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import auth, wire

from .procstat import rss_mb
from .report import machine, parser as bench_parser, percentile, scratch, table, write_json

PIPELINE = 64                   # requests per hostile frame (the broker's MAX_PIPELINED)


def hostile_frame(kind: str) -> bytes:
    """``small``: 64 heartbeats without a sid (each answered NOT_LOGGED_IN); ``echo``: 64
    requests of an unknown 900-byte type (each answered BAD_TYPE quoting it)."""
    if kind == "echo":
        return wire.pack([{"t": "x" * 900, "rid": i} for i in range(PIPELINE)])
    return wire.pack([{"t": "hb", "rid": i} for i in range(PIPELINE)])


def flood(endpoint: str, conns: int, seconds: float, kind: str, out=None) -> int:
    """``conns`` connections send pre-login frames as fast as they leave for ``seconds``, never
    read, then close; return (and put on ``out``) how many frames left."""
    ctx = zmq.Context()
    frame = hostile_frame(kind)
    socks = []
    for _ in range(conns):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            try:
                s.send(frame, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        if not sent:
            time.sleep(0.001)
    for s in socks:
        s.close(0)
    ctx.term()
    if out is not None:
        out.put(sent)
    return sent


def start_flood(endpoint: str, conns: int, seconds: float, kind: str = "small"):
    """The flood in its own process: (process, queue its frame count arrives on)."""
    out = mp.Queue()
    proc = mp.Process(target=flood, args=(endpoint, conns, seconds, kind, out), daemon=True)
    proc.start()
    return proc, out


def login(ctx, endpoint: str, secret: bytes, uin: int, never_read: bool = False, timeout: float = 10.0):
    """A raw DEALER session: (socket, sid).  ``never_read``: tiny receive buffers, so what the
    broker sends it piles up at the broker, not in this process."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if never_read:
        s.setsockopt(zmq.RCVHWM, 1)
        s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(endpoint)
    s.send(wire.pack({"t": "login", "rid": 1, "v": wire.PROTOCOL_VERSION,
                      "token": auth.mint(secret, uin, 3600), "device": 0}))
    if not s.poll(int(timeout * 1000)):
        raise TimeoutError(f"login of {uin}: no reply in {timeout}s")
    reply = wire.unpack(s.recv())
    if reply.get("t") != "login_ok":
        raise RuntimeError(f"login of {uin}: {reply}")
    return s, reply["sid"]


def replies(sock, want: int, timeout: float) -> list:
    """Up to ``want`` reply maps (frames may hold several) within ``timeout`` seconds."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            break
        got.extend(wire.unpack_many(sock.recv(), 1 << 30, 1 << 20))
    return got


def login_and_send(endpoint: str, secret: bytes, uin: int, channel: str, timeout: float = 10.0) -> float:
    """A legitimate client's login + one acked send on a new connection: seconds it took."""
    ctx = zmq.Context()
    try:
        t0 = time.monotonic()
        s, sid = login(ctx, endpoint, secret, uin, timeout=timeout)
        s.send(wire.pack({"t": "send", "rid": 2, "sid": sid, "channel": channel,
                          "ctime": time.time_ns() // 1000, "text": "hello"}))
        acks = [m for m in replies(s, 1, timeout) if m.get("rid") == 2]
        if not acks or acks[0].get("t") != "ack":
            raise RuntimeError(f"send of {uin}: {acks or 'no reply'}")
        return time.monotonic() - t0
    finally:
        ctx.destroy(0)


def burst(sock, sid: int, channel: str, messages: int, size: int, timeout: float = 60.0) -> int:
    """Send ``messages`` texts of ``size`` bytes pipelined (up to 64 a frame, frames within the
    64 KiB client frame limit); return how many were acked."""
    text = "m" * size
    acked = 0
    per_frame = max(1, min(PIPELINE, 60000 // (size + 64)))
    for start in range(0, messages, per_frame):
        n = min(per_frame, messages - start)
        sock.send(wire.pack([{"t": "send", "rid": start + i, "sid": sid, "channel": channel,
                              "ctime": time.time_ns() // 1000 + i, "text": text} for i in range(n)]))
        acked += sum(1 for m in replies(sock, n, timeout) if m.get("t") == "ack")
    return acked


def settle_rss(pid: int, seconds: float) -> float:
    """RSS after ``seconds`` (the broker trims freed heap every few seconds): the lowest seen."""
    low, end = rss_mb(pid), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        low = min(low, rss_mb(pid))
    return low


def prelogin(mesh: Mesh, conns: int, seconds: float, kind: str, settle: float) -> dict:
    pid = mesh.procs["b1"].pid
    ep = mesh.topo.node("b1").endpoint("client")
    secret = mesh.topo.read_secret()
    base = rss_mb(pid)
    quiet = login_and_send(ep, secret, 90, "lobby")
    proc, out = start_flood(ep, conns, seconds, kind)
    peak, latencies, failures, n = base, [], 0, 0
    while proc.is_alive():
        peak = max(peak, rss_mb(pid))
        try:
            latencies.append(login_and_send(ep, secret, 60 + n % 40, "lobby"))     # members 1-100
        except (RuntimeError, TimeoutError):
            failures += 1
        n += 1
        time.sleep(0.5)
    frames = out.get(timeout=10)
    proc.join(10)
    after = settle_rss(pid, settle)
    status = mesh.admin.status("b1")
    return {"scenario": f"prelogin/{kind}", "conns": conns, "seconds": seconds, "frames_sent": frames,
            "rss_base_mb": round(base, 1), "rss_peak_mb": round(peak, 1), "rss_after_mb": round(after, 1),
            "legit_quiet_ms": round(quiet * 1000, 1),
            "legit_p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "legit_max_ms": round(1000 * max(latencies), 1) if latencies else None,
            "legit_ok": len(latencies), "legit_failed": failures,
            "dropped": status.get("prelogin", {}).get("dropped")}


def slow(mesh: Mesh, readers: int, messages: int, size: int, settle: float) -> dict:
    pid = mesh.procs["b1"].pid
    ep = mesh.topo.node("b1").endpoint("client")
    secret = mesh.topo.read_secret()
    ctx = zmq.Context()
    try:
        base = rss_mb(pid)
        slow_socks = [login(ctx, ep, secret, uin, never_read=True)[0] for uin in range(1, readers + 1)]
        sender, sid = login(ctx, ep, secret, 50)
        t0 = time.monotonic()
        acked = burst(sender, sid, "lobby", messages, size)
        took = time.monotonic() - t0
        peak = rss_mb(pid)
        kicked = mesh.admin.status("b1").get("kicked", {}).get("too_slow", 0)
        for s in slow_socks:
            s.close(0)
        after = settle_rss(pid, settle)
    finally:
        ctx.destroy(0)
    return {"scenario": "slow", "readers": readers, "messages": messages, "size": size, "acked": acked,
            "burst_s": round(took, 2), "rss_base_mb": round(base, 1), "rss_peak_mb": round(peak, 1),
            "rss_after_mb": round(after, 1), "too_slow": kicked}


def main(argv=None) -> int:
    parser = bench_parser("hostile", __doc__)
    parser.add_argument("--scenario", choices=("prelogin", "slow", "both"), default="both")
    parser.add_argument("--conns", type=int, default=20, help="pre-login connections that never read")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they flood")
    parser.add_argument("--kind", choices=("small", "echo", "both"), default="both",
                        help="their requests: small (NOT_LOGGED_IN replies) or echo (BAD_TYPE quoting 900 bytes)")
    parser.add_argument("--readers", type=int, default=10, help="sessions that never read")
    parser.add_argument("--messages", type=int, default=20000, help="texts in the burst to their channel")
    parser.add_argument("--size", type=int, default=1400, help="bytes of each text")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds to wait after the peers closed")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = []
    kinds = ("small", "echo") if args.kind == "both" else (args.kind,)
    with scratch("hostile") as tmp:
        cfg = write_topology(tmp, brokers=1, logics=1)
        with Mesh(cfg) as mesh:
            mesh.start()
            mesh.wait_ready(30)
            if args.scenario in ("prelogin", "both"):
                for kind in kinds:
                    print(f"prelogin/{kind}: {args.conns} connections for {args.seconds}s ...",
                          file=sys.stderr, flush=True)
                    results.append(prelogin(mesh, args.conns, args.seconds, kind, args.settle))
            if args.scenario in ("slow", "both"):
                print(f"slow: {args.readers} readers, {args.messages} x {args.size} B ...",
                      file=sys.stderr, flush=True)
                results.append(slow(mesh, args.readers, args.messages, args.size, args.settle))
    print(machine())
    rows = [[r["scenario"], r["rss_base_mb"], r["rss_peak_mb"], r["rss_after_mb"],
             r.get("legit_p50_ms", ""), r.get("legit_max_ms", ""),
             f"{r['legit_failed']} failed" if "legit_failed" in r else f"{r['too_slow']} too_slow"]
            for r in results]
    print(table(["scenario", "RSS base MB", "RSS peak MB", "RSS after MB", "legit p50 ms", "legit max ms",
                 "outcome"], rows))
    if args.json:
        write_json(args.json, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
