"""bin/bench hop: what the broker -> logic -> broker hop costs per message, transport only (issue 26).

In the mesh every ``send`` leaves the broker on a DEALER to the owning logic node's rpc
ROUTER; the logic node answers an ``ack`` on that socket and publishes a ``msgs`` frame on
its PUB, which the broker's SUB reads.  This benchmark runs that hop alone, with the real
frames (nodes/protocol/wire + schema: the ``send`` request as the broker forwards it, the
logic's ``ack``, a ``msgs`` frame with one message for a channel of --members) and none of
the node cores.  ``--brokers 2`` publishes each message's msgs frame on two brokers' topics
(the members split between them), as a logic node of G1k's two-broker mesh does; side A
then subscribes to both and stands for both brokers:

  side A (the broker's end): DEALER + SUB; keeps a window (--windows) of requests in
      flight, counts every ack (by rid) and every delivered item;
  side B (the logic's end):  ROUTER + PUB; decodes and validates each request, answers the
      ack and publishes the msgs frame.

Both drain like the nodes (poll, then NOBLOCK reads until EAGAIN) and, with ``--batch on``,
join what one loop turn sends into one frame per peer as nodes/runtime/outbox.py does
(``off``: one frame per message).  Variants: tcp with CurveZMQ (as the mesh), tcp plain,
ipc plain, and inproc (both sides as threads of one process, one Context).  Each side is
its own process with its own Context (one I/O thread, as a logic node); the CPU of each
process is read from /proc and split into its main (Python) thread and its other threads
(libzmq's I/O thread: TCP and CURVE); inproc splits the process into A's thread, B's thread
and the rest.  The codec rows time the same encode/decode/validate calls with no sockets
(one thread), so "main thread minus codec" is what the Python side pays for the socket
calls themselves.  "msgs per B turn": requests per loop turn of side B that answered any
(compare the e2e JSON's ``turns_per_msg``).  Figures: µs of CPU per message, medians of
--repeats runs; every run must answer every request and deliver every item (exit 1 if not).
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import zmq

from nodes.logic.channels import push_of
from nodes.logic.sends import ack
from nodes.protocol import schema, wire
from nodes.runtime.outbox import batches
from nodes.runtime.zio import reader, send_one, send_pair

from .procstat import cpu_seconds, io_thread_cpu_seconds, reap, threads_cpu
from .report import machine, parser as bench_parser, table, write_json

VARIANTS = ("tcp-curve", "tcp", "ipc", "inproc")
CHANNEL = "g1k-0017"
SENDER, DEVICE = 100042, 1
MAX_FRAME = 1 << 24                  # the nodes' internal frame bound is the topology's; far above these
STOP = b""                           # A -> B: the run is over (not a frame the nodes send)
MARK = b"mark"                       # A -> B: the measured run starts here; count from zero
POLL_MS = 100


class Frames:
    """The hop's frames, made and read with the calls the nodes use (wire.pack,
    wire.unpack_internal, the schema Validators, the logic's ``ack`` and ``push_of``)."""

    def __init__(self, members: int = 10, size: int = 100, brokers: int = 1) -> None:
        self.text = "x" * size
        uins = list(range(SENDER - 5, SENDER - 5 + members))
        self.uins = [uins[k::brokers] for k in range(brokers)]      # the members on each broker
        self.topics = [wire.topic(f"b{k + 1}") for k in range(brokers)]
        self.check_request = wire.Validator(schema.LOGIC_REQUESTS).validate
        self.check_pub = wire.Validator(schema.PUB_FRAMES["logic"]).validate

    # --- the broker's end -----------------------------------------------------
    def request(self, rid: int) -> bytes:
        """A ``send`` as nodes/broker/core.py forwards it (rid set by nodes/runtime/rpc.py)."""
        return wire.pack({"t": "send", "uin": SENDER, "device": DEVICE, "channel": CHANNEL,
                          "ctime": 1_733_480_000_000 + rid, "text": self.text, "rid": rid})

    @staticmethod
    def acked(frame: bytes) -> list[int]:
        """The rids a reply frame answers (rpc.Requests.on_reply's decode)."""
        return [m["rid"] for m in wire.unpack_internal(frame, MAX_FRAME, 1 << 20)]

    def delivered(self, frame: bytes) -> int:
        """Items of a PUB frame, decoded and validated as the broker's PubDispatcher does."""
        n = 0
        for msg in wire.unpack_internal(frame, MAX_FRAME):
            self.check_pub(msg)
            n += len(msg["items"])
        return n

    # --- the logic's end ------------------------------------------------------
    def requests(self, frame: bytes) -> list[dict]:
        msgs = wire.unpack_internal(frame, MAX_FRAME)
        for msg in msgs:
            self.check_request(msg)
        return msgs

    def answer(self, req: dict) -> tuple[bytes, list[list]]:
        """(the packed ack, each broker's fan-out item [packed push, uins, uin, device]) of one
        send; the message id is the rid, the ack carries ``newest`` as the logic's does."""
        rid, ctime = req["rid"], req["ctime"]
        reply = wire.pack(ack(rid, req["channel"], req["device"], ctime, rid, newest=ctime))
        push = wire.pack(push_of(req["channel"], rid, (req["uin"], req["device"], ctime,
                                                        ctime + 1, None, req["text"])))
        return reply, [[push, uins, req["uin"], req["device"]] for uins in self.uins]

    @staticmethod
    def msgs(items: list) -> bytes:
        return wire.pack({"t": "msgs", "items": items, "logic": "l1"})


def drained(sock: zmq.Socket, read) -> Iterator[list[bytes]]:
    """Every message ready on ``sock`` now (NOBLOCK reads until EAGAIN, as the nodes drain)."""
    while True:
        try:
            yield read(sock)
        except zmq.Again:
            return


def send_joined(sock: zmq.Socket, first: bytes | None, packed: list[bytes], batch: bool) -> None:
    """Send queued messages: joined per loop turn (outbox.py) or one frame each."""
    chunks = batches(packed, None) if batch else [[p] for p in packed]
    for chunk in chunks:
        frame = chunk[0] if len(chunk) == 1 else wire.array_of_packed(chunk)
        if first is None:
            send_one(sock, frame)
        else:
            send_pair(sock, first, frame)


def configure(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.setsockopt(zmq.RCVHWM, 100000)


# --- side B: the logic's end --------------------------------------------------------------
def logic_bind(ctx: zmq.Context, variant: str, where: str, keys: dict) -> tuple:
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    for sock, name in ((router, "rpc"), (pub, "pub")):
        configure(sock)
        if variant == "tcp-curve":
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = keys["server"]
        if variant.startswith("tcp"):
            sock.bind("tcp://127.0.0.1:*")
        elif variant == "ipc":
            sock.bind(f"ipc://{where}/{name}")
        else:
            sock.bind(f"inproc://hop-{name}")
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return router, pub, (router.last_endpoint.decode(), pub.last_endpoint.decode())


def logic_serve(router: zmq.Socket, pub: zmq.Socket, frames: Frames, batch: bool,
                seconds: float) -> tuple[int, int]:
    """Answer every request until the STOP frame (or ``seconds``): (requests answered, loop
    turns that answered any: their ratio is what a logic node's ``turns_per_msg`` counts),
    both counted from the last MARK frame (the warm-up before it is not measured)."""
    read = reader(zmq.ROUTER)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    answered = turns = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not poller.poll(POLL_MS):
            continue
        acks: dict[bytes, list[bytes]] = {}
        in_turn = 0
        items: list[list] = [[] for _ in frames.topics]         # per broker, this turn's
        stop = False
        for msg in drained(router, read):
            ident, body = msg[:2]
            if body == STOP:
                stop = True
                break
            if body == MARK:
                answered = turns = in_turn = 0
                continue
            for req in frames.requests(body):
                reply, per_broker = frames.answer(req)
                acks.setdefault(ident, []).append(reply)
                for queued, item in zip(items, per_broker):
                    queued.append(item)
                in_turn += 1
        answered += in_turn
        turns += in_turn > 0
        for ident, packed in acks.items():
            send_joined(router, ident, packed, batch)
        for topic, queued in zip(frames.topics, items):
            for chunk in ([queued] if batch else [[item] for item in queued]) if queued else ():
                send_pair(pub, topic, frames.msgs(chunk))
        if stop:
            break
    return answered, turns


# --- side A: the broker's end -------------------------------------------------------------
class BrokerEnd:
    def __init__(self, ctx: zmq.Context, variant: str, endpoints: tuple, keys: dict, frames: Frames) -> None:
        self.frames = frames
        self.dealer, self.sub = ctx.socket(zmq.DEALER), ctx.socket(zmq.SUB)
        for sock, endpoint in zip((self.dealer, self.sub), endpoints):
            configure(sock)
            if variant == "tcp-curve":
                sock.curve_serverkey = keys["server"][0]
                sock.curve_publickey, sock.curve_secretkey = keys["client"]
            sock.connect(endpoint)
        for topic in frames.topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.next_rid = 1

    def run(self, n: int, window: int, batch: bool, seconds: float) -> dict:
        """``n`` sends, at most ``window`` not both acked and delivered (to every broker);
        counts of each (``delivered``: items, one per message and broker)."""
        frames, dealer, sub = self.frames, self.dealer, self.sub
        read_dealer, read_sub = reader(zmq.DEALER), reader(zmq.SUB)
        pending: set[int] = set()
        first = self.next_rid                 # an older rid is a late reply to the warm-up
        sent = acked = delivered = duplicates = 0
        brokers = len(frames.topics)
        deadline = time.monotonic() + seconds
        while (acked < n or delivered < n * brokers) and time.monotonic() < deadline:
            room = min(n - sent, window - (sent - min(acked, delivered // brokers)))
            if room > 0:
                rids = range(self.next_rid, self.next_rid + room)
                self.next_rid += room
                pending.update(rids)
                send_joined(dealer, None, [frames.request(rid) for rid in rids], batch)
                sent += room
            ready = dict(self.poller.poll(POLL_MS))
            if dealer in ready:
                for (body,) in drained(dealer, read_dealer):
                    for rid in frames.acked(body):
                        if rid in pending:
                            pending.discard(rid)
                            acked += 1
                        elif rid >= first:
                            duplicates += 1
            if sub in ready:
                for _topic, body in drained(sub, read_sub):
                    delivered += frames.delivered(body)
        return {"sent": sent, "acked": acked, "delivered": delivered, "duplicates": duplicates,
                "unanswered": len(pending)}

    def warm_up(self, seconds: float) -> int:
        """Round trips until a msgs frame arrives (a SUB misses what is published before it is
        connected), then drain; the number of requests it took."""
        deadline, used = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            got = self.run(1, 1, True, 0.2)
            used += got["sent"]
            if got["delivered"] and not got["unanswered"]:
                break
        else:
            raise RuntimeError("no msgs frame reached the SUB during the warm-up")
        while self.poller.poll(POLL_MS):      # late acks and frames of the warm-up
            for sock, kind in ((self.dealer, zmq.DEALER), (self.sub, zmq.SUB)):
                for _msg in drained(sock, reader(kind)):
                    pass
        return used

    def mark(self) -> None:
        send_one(self.dealer, MARK)

    def stop(self) -> None:
        send_one(self.dealer, STOP)


# --- processes ----------------------------------------------------------------------------
def _logic_process(variant, where, keys, opts, out, answered_out) -> None:
    ctx = zmq.Context(io_threads=1)
    try:
        router, pub, endpoints = logic_bind(ctx, variant, where, keys)
        out.put(endpoints)
        answered_out.put(logic_serve(router, pub, Frames(*opts["shape"]), opts["batch"],
                                     opts["seconds"]))
    finally:
        ctx.destroy(0)


def _broker_process(variant, endpoints, keys, opts, out, go, finish) -> None:
    ctx = zmq.Context(io_threads=1)
    try:
        end = BrokerEnd(ctx, variant, endpoints, keys, Frames(*opts["shape"]))
        out.put(("ready", end.warm_up(opts["seconds"]), threading.get_native_id()))
        if not go.wait(opts["seconds"]):
            return
        end.mark()
        out.put(("done", end.run(opts["n"], opts["window"], opts["batch"], opts["seconds"])))
        finish.wait(opts["seconds"])
        end.stop()
        time.sleep(0.05)                     # let the STOP frame leave before the context goes
    finally:
        ctx.destroy(0)


def _inproc_process(variant, endpoints, keys, opts, out, go, finish) -> None:
    """Both ends in this process, one Context: B in a thread, A in the main thread."""
    ctx = zmq.Context(io_threads=1)
    try:
        router, pub, endpoints = logic_bind(ctx, variant, "", keys)
        answered: list[tuple[int, int]] = []
        tid: list[int] = []

        def serve():
            tid.append(threading.get_native_id())
            answered.append(logic_serve(router, pub, Frames(*opts["shape"]), opts["batch"],
                                        opts["seconds"]))
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        end = BrokerEnd(ctx, variant, endpoints, keys, Frames(*opts["shape"]))
        out.put(("ready", end.warm_up(opts["seconds"]), tid[0]))
        if go.wait(opts["seconds"]):
            end.mark()
            out.put(("done", end.run(opts["n"], opts["window"], opts["batch"], opts["seconds"])))
            finish.wait(opts["seconds"])
        end.stop()
        thread.join(opts["seconds"])
        out.put(("answered", answered[0] if answered else (-1, -1)))
    finally:
        ctx.destroy(0)


def _get(queue, seconds: float, what: str):
    try:
        return queue.get(timeout=seconds)
    except Exception:
        raise RuntimeError(f"no {what} within {seconds:g} s") from None


def one_run(variant: str, n: int, window: int, batch: bool, shape: tuple = (10, 100, 1),
            seconds: float = 60.0) -> dict:
    """One measured run of ``n`` messages: counts, and µs of CPU per message of each thread group.
    ``shape``: (members, text bytes, brokers) of the frames."""
    opts = {"n": n, "window": window, "batch": batch, "shape": shape, "seconds": seconds}
    keys = {"server": zmq.curve_keypair(), "client": zmq.curve_keypair()} if variant == "tcp-curve" else {}
    where = tempfile.mkdtemp(prefix="imesh-hop-")
    out, go, finish = mp.Queue(), mp.Event(), mp.Event()
    procs: list = []
    try:
        if variant == "inproc":
            a = mp.Process(target=_inproc_process, args=(variant, None, keys, opts, out, go, finish))
            a.start()
            procs.append(a)
        else:
            answered_q = mp.Queue()
            b = mp.Process(target=_logic_process, args=(variant, where, keys, opts, out, answered_q))
            b.start()
            procs.append(b)
            endpoints = _get(out, seconds, "endpoints from side B")
            a = mp.Process(target=_broker_process, args=(variant, endpoints, keys, opts, out, go, finish))
            a.start()
            procs.append(a)
        _, warm, tid = _get(out, seconds, "warm-up of side A")
        before = _cpu(variant, procs, tid)
        t0 = time.monotonic()
        go.set()
        _, result = _get(out, seconds + 10, "result of side A")
        wall = time.monotonic() - t0
        after = _cpu(variant, procs, tid)
        finish.set()
        if variant == "inproc":
            answered, turns = _get(out, seconds, "count of side B")[1]
        else:
            answered, turns = _get(answered_q, seconds, "count of side B")
        reap(procs, 10)
    finally:
        go.set()
        finish.set()
        reap(procs, 5)
        shutil.rmtree(where, ignore_errors=True)
    per = {k: round(1e6 * (after[k] - before[k]) / n, 2) for k in after}
    return dict(result, answered=answered, warm_up=warm, wall_s=round(wall, 3),
                b_msgs_per_turn=round(n / max(1, turns), 2),
                msgs_per_s=round(n / wall, 1), us_per_msg=per)


def _cpu(variant: str, procs: list, tid: int) -> dict:
    """CPU seconds so far: each side's main thread and its other threads (inproc: A's thread,
    B's thread, and the process's other threads, shared)."""
    if variant == "inproc":
        pid = procs[0].pid
        threads = threads_cpu(pid)
        a, b = threads[pid][1], threads[tid][1]
        return {"broker_main": a, "logic_main": b, "shared_io": cpu_seconds(pid) - a - b}
    out = {}
    for side, p in (("logic", procs[0]), ("broker", procs[1])):
        total, io = cpu_seconds(p.pid), io_thread_cpu_seconds(p.pid)
        out[side + "_main"], out[side + "_io"] = total - io, io
    return out


# --- the codec alone ----------------------------------------------------------------------
def codec_cost(n: int, window: int, batch: bool, shape: tuple = (10, 100, 1)) -> dict:
    """µs of CPU per message (this thread) of each end's frame work with no sockets: the
    broker's (pack requests, decode acks, decode + validate msgs) and the logic's (decode +
    validate requests, pack ack, push and msgs), in turns of ``window`` messages."""
    frames = Frames(*shape)
    clock = time.thread_time
    broker = logic = 0.0
    rid = 1
    for _ in range(max(1, n // window)):
        t0 = clock()
        packed = [frames.request(r) for r in range(rid, rid + window)]
        chunks = batches(packed, None) if batch else [[p] for p in packed]
        sent = [c[0] if len(c) == 1 else wire.array_of_packed(c) for c in chunks]
        t1 = clock()
        acks, items = [], [[] for _ in frames.topics]
        for frame in sent:
            for req in frames.requests(frame):
                reply, per_broker = frames.answer(req)
                acks.append(reply)
                for queued, item in zip(items, per_broker):
                    queued.append(item)
        replies = [wire.array_of_packed(acks)] if batch and len(acks) > 1 else acks
        pubs = [frames.msgs(q) for q in items] if batch else [frames.msgs([i]) for q in items for i in q]
        t2 = clock()
        got = sum(len(frames.acked(r)) for r in replies)
        delivered = sum(frames.delivered(p) for p in pubs)
        t3 = clock()
        if got != window or delivered != window * len(frames.topics):
            raise AssertionError(f"codec turn lost messages: {got} acks, {delivered} items of {window}")
        broker += (t1 - t0) + (t3 - t2)
        logic += t2 - t1
        rid += window
    count = max(1, n // window) * window
    return {"broker": round(1e6 * broker / count, 2), "logic": round(1e6 * logic / count, 2)}


# --- the benchmark ------------------------------------------------------------------------
def configs(windows: list[int], batch: str) -> list[tuple[int, bool]]:
    """(window, batch) pairs: a window of 1 is the same either way, so it runs once (batched)."""
    modes = {"on": [True], "off": [False], "both": [True, False]}[batch]
    return [(w, b) for w in windows for b in (modes if w > 1 else [modes[0]])]


def measure(args) -> dict:
    rows = []
    shape = (args.members, args.size, args.brokers)
    for variant in args.variants:
        for window, batch in configs(args.windows, args.batch):
            runs = [one_run(variant, args.messages, window, batch, shape, args.seconds)
                    for _ in range(args.repeats)]
            keys = runs[0]["us_per_msg"].keys()
            rows.append({
                "variant": variant, "window": window, "batch": batch, "repeats": len(runs),
                "us_per_msg": {k: round(statistics.median(r["us_per_msg"][k] for r in runs), 2) for k in keys},
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in runs),
                "b_msgs_per_turn": statistics.median(r["b_msgs_per_turn"] for r in runs),
                "counts": [{k: r[k] for k in ("sent", "acked", "delivered", "answered", "duplicates",
                                              "unanswered")} for r in runs],
                "complete": all(r["acked"] == r["answered"] == args.messages
                                and r["delivered"] == args.messages * args.brokers
                                and not r["duplicates"] and not r["unanswered"] for r in runs)})
    codec = [{"window": w, "batch": b, **codec_cost(args.codec_messages, w, b, shape)}
             for w, b in configs(args.windows, args.batch)]
    return {"machine": machine(), "messages": args.messages, "members": args.members, "size": args.size,
            "brokers": args.brokers,
            "rows": rows, "codec": codec}


def render(r: dict) -> str:
    head = (f"{r['machine']}\n{r['messages']} messages per run, ~{r['size']} B text, msgs frame for "
            f"{r['members']} members on {r['brokers']} broker topic(s); µs of CPU per message, "
            f"medians of {r['rows'][0]['repeats']} runs"
            if r["rows"] else r["machine"])
    rows = []
    for row in r["rows"]:
        u = row["us_per_msg"]
        io = (f"{u['broker_io']:.1f}", f"{u['logic_io']:.1f}") if "broker_io" in u else \
            (f"{u['shared_io']:.1f} (shared)", "")
        total = sum(u.values())
        rows.append([row["variant"], row["window"], "on" if row["batch"] else "off",
                     f"{u['broker_main']:.1f}", io[0], f"{u['logic_main']:.1f}", io[1], f"{total:.1f}",
                     f"{row['b_msgs_per_turn']:.1f}", f"{row['msgs_per_s']:,.0f}",
                     "yes" if row["complete"] else "NO"])
    out = head + "\n\n" + table(["variant", "window", "batch", "A main", "A I/O", "B main", "B I/O", "total",
                                 "msgs per B turn", "msgs/s", "all answered"], rows)
    codec = [[c["window"], "on" if c["batch"] else "off", f"{c['broker']:.2f}", f"{c['logic']:.2f}",
              f"{c['broker'] + c['logic']:.2f}"] for c in r["codec"]]
    return out + "\n\nframe codec alone (no sockets), µs per message:\n\n" + table(
        ["window", "batch", "A (broker end)", "B (logic end)", "both"], codec)


def csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    p = bench_parser("hop", __doc__)
    p.add_argument("--messages", type=int, default=50000, help="messages per measured run")
    p.add_argument("--windows", type=csv(int), default=[1, 32], help="requests in flight, comma-separated")
    p.add_argument("--batch", choices=("on", "off", "both"), default="both",
                   help="join a loop turn's messages into one frame per peer (on, as the nodes) or not")
    p.add_argument("--variants", type=csv(str), default=list(VARIANTS), help="comma-separated, of "
                   + ",".join(VARIANTS))
    p.add_argument("--members", type=int, default=10, help="recipients named in the msgs frame")
    p.add_argument("--brokers", type=int, default=1, help="broker topics each msgs frame goes to")
    p.add_argument("--size", type=int, default=100, help="bytes of text per message")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians)")
    p.add_argument("--seconds", type=float, default=60.0, help="time bound of each run's loops")
    p.add_argument("--codec-messages", type=int, default=20000, help="messages of the codec-only timing")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.windows or min(args.windows) < 1 or min(args.messages, args.repeats, args.brokers) < 1:
        p.error(f"bad --variants {unknown}" if unknown else "windows, messages, repeats and brokers must be >= 1")
    result = measure(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0 if all(row["complete"] for row in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
