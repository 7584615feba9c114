"""python -m bench.frames: what hostile internal frames cost a node, and what a normal frame costs
to decode (issue 23 item 5).

Starts a local mesh (1 broker, 1 logic, 1 router, 1 counter), reads the logic node's peak RSS
(VmHWM), sends it --deep frames nested 1,000 deep and one frame of --mib MiB of empty arrays on
its internal rpc socket (as the operator, CURVE), and reports the replies, the peak RSS after and
the tracebacks in its log.  Then times wire.unpack_internal on a typical internal frame (a
``send`` request and a PUB ``msgs`` batch) in this process.
"""
from __future__ import annotations

import timeit

import zmq

from fastpath._scan import scan
from nodes.ops.localtopo import write_topology
from nodes.ops.mesh import Mesh
from nodes.protocol import wire

from .procstat import peak_rss_mb
from .report import machine, parser as bench_parser, scratch, table

SEND = {"t": "send", "rid": 123456, "uin": 100042, "device": 1, "channel": "room-17",
        "ctime": 1_733_480_000_123, "text": "x" * 100}
MSGS = {"t": "msgs", "logic": "l1", "items": [[wire.pack({"t": "msg", "channel": "room-17", "id": i,
                                                        "uin": 100042, "device": 1, "ctime": i,
                                                        "stime": 1_733_480_000_000, "text": "x" * 100}),
                                              [100000 + j for j in range(10)], 100042, 1]
                                             for i in range(128)]}


def ask(sock, frame: bytes, timeout: float):
    sock.send(frame)
    if not sock.poll(int(timeout * 1000)):
        return None
    return wire.unpack_many(sock.recv(), 2**30)[0]


def hostile(deep: int, mib: int) -> list:
    with scratch("frames") as d:
        mesh = Mesh(write_topology(d, brokers=1, logics=1))
        try:
            mesh.start()
            mesh.wait_ready(60)
            logic = mesh.topo.ids("logic")[0]
            pid = mesh.procs[logic].pid
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            mesh.admin.identity.as_client(sock, logic)
            sock.connect(mesh.topo.node(logic).endpoint("rpc"))
            rows = [("ready", "", f"{peak_rss_mb(pid):.0f}")]
            replies = [ask(sock, b"\x91" * 1000 + b"\x80", 5) for _ in range(deep)]
            codes = {(r or {}).get("code", "no reply") for r in replies}
            rows.append((f"{deep} frames nested 1,000 deep", ", ".join(sorted(codes)), f"{peak_rss_mb(pid):.0f}"))
            n = mib * 2**20 - 5
            reply = ask(sock, b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n, 120)
            rows.append((f"{mib} MiB frame of empty arrays", (reply or {}).get("code", "no reply"),
                         f"{peak_rss_mb(pid):.0f}"))
            status = ask(sock, wire.pack({"t": "status", "rid": 1}), 10)
            rows.append(("status after", (status or {}).get("t", "no reply"), f"{peak_rss_mb(pid):.0f}"))
            sock.close(0)
            with open(mesh.log_path(logic), errors="replace") as f:
                tracebacks = f.read().count("Traceback")
            rows.append(("tracebacks in its log", str(tracebacks), ""))
            return rows
        finally:
            mesh.close()


def decode_cost(number: int) -> list:
    """µs per call: msgspec's decode alone (what unpack_internal was), the header scan alone,
    and unpack_internal (both, plus the shape check), each the best of 5 timings."""
    def best(call):
        return f"{min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6:.2f}"
    rows = []
    for name, msg in (("send request", SEND), ("PUB msgs, 128 items", MSGS)):
        frame = wire.pack(msg)
        budget = len(frame) // wire.BYTES_PER_CONTAINER + wire.CONTAINER_FLOOR
        rows.append((name, str(len(frame)), best(lambda frame=frame: wire._internal.decode(frame)),
                     best(lambda frame=frame, budget=budget: scan(frame, wire.MAX_DEPTH, budget)),
                     best(lambda frame=frame: wire.unpack_internal(frame, 1 << 24, 1 << 20))))
    return rows


def main(argv=None) -> None:
    p = bench_parser("frames", __doc__)
    p.add_argument("--deep", type=int, default=100, help="frames nested 1,000 deep to send")
    p.add_argument("--mib", type=int, default=8, help="size of the frame of empty arrays, MiB")
    p.add_argument("--number", type=int, default=20000, help="decodes per timing")
    p.add_argument("--skip-node", action="store_true", help="only the decode micro-benchmark")
    args = p.parse_args(argv)
    print(machine())
    if not args.skip_node:
        print(table(("sent to the logic node", "reply", "its peak RSS, MB"), hostile(args.deep, args.mib)))
    print(table(("frame", "bytes", "msgspec decode, µs", "scan, µs", "wire.unpack_internal, µs"),
                decode_cost(args.number)))


if __name__ == "__main__":
    main()
