"""bin/bench logicturn: a logic node's main-thread CPU per message in the turns that carry sends, by phase.

A real LogicCore (RocksDB in a temp dir, removed afterwards; bench/logicbed.py) owns 100
channels of 10 members, every member online on one of 2 brokers, so every message is
fanned out to 9 other members.  Loop turns of ``--per-turn`` sends, each from a
distinct member (100 B texts, client times rising per device), run as the logic node
runs them, without sockets: the ``send`` request handler for each request (already
decoded: the frame's decoding and validation are not in it), then the turn's end by
``LogicNode._end_turn`` itself (nodes/logic/node.py), with the node's sockets left out:
``before_flush`` stages the sends (ids, keys, records), the store writes the batch,
``after_flush`` acks and fans out (one PUB frame per broker).  Acks and frames are packed
as the node packs them before queueing; queueing and sending (the outbox, libzmq) are not
in it.

Each phase is timed with ``time.thread_time`` around its calls:

- accept: the ``send`` handler calls (membership, dedup, the channel's queue);
- staging: ``before_flush`` (``LogicCore.assign``: ``Ids.assign``, the senders' cursors);
- write: ``Store.flush`` (``Rdict.write`` of the turn's batch);
- commit: the rest of the turn's end (acks, fan-out items -- one per broker with a
  member online -- the PUB frames, packing).

The timer's own cost (~0.2 µs a call, four calls a turn) is in the figures: ~0.8 µs a
message at one send per turn, ~0.1 µs at seven.

Per sends-per-turn value, ``--repeats`` batches of ``--messages`` sends, each on a new
core and store; the figures are those of the batch with the median total (so that the
phases add up to it), with the best total beside.  Exits 1 if any send was not acked
exactly once.
"""
from __future__ import annotations

import os
import shutil
import time

from nodes.logic import diskfull
from nodes.logic.node import LogicNode
from nodes.protocol import wire

from .logicbed import Out, broker_of, logic_core, online, topology_of
from .report import machine, parser as bench_parser, scratch, table, write_json

CHANNELS = 100
MEMBERS = 10
BROKERS = 2
TEXT = 100
PHASES = ("accept", "staging", "write", "commit")


class _TimedStore:
    """What ``_end_turn`` calls of the store: the flush, with the thread time at its start and end."""

    def __init__(self, store):
        self.store = store
        self.started = self.ended = 0.0

    def flush(self):
        self.started = time.thread_time()
        n = self.store.flush()
        self.ended = time.thread_time()
        return n


class _NoOutbox:
    def flush(self):
        """The node sends what its turn queued here; this bench measures up to the queueing."""


class _Turn:
    """The parts of a LogicNode that its turn's end uses, without sockets: ``_end_turn``,
    ``before_flush`` and ``after_flush`` are the node's own functions."""

    repl = None                                # no replication: acked once written
    _end_turn = LogicNode._end_turn
    before_flush = LogicNode.before_flush
    after_flush = LogicNode.after_flush

    def __init__(self, core, store, out):
        self.core, self.out = core, out
        self.store = _TimedStore(store)
        self.storage = diskfull.StorageState(store, core.stats)
        self.outbox = _NoOutbox()
        self.clock = time.time

    def reply(self, ident, msg):
        self.out.reply(ident, msg)


def _requests(messages: int) -> list[tuple[bytes, dict]]:
    """(broker identity, decoded send request) of each message: message i goes to channel
    i % 100 from its member (i // 100) % 10, so the sends of a turn come from distinct members."""
    reqs = []
    for i in range(messages):
        ch, member = i % CHANNELS, (i // CHANNELS) % MEMBERS
        uin = ch * MEMBERS + 1 + member
        text = f"{i} ".ljust(TEXT, "x")
        reqs.append((broker_of(uin, BROKERS).encode(),
                     {"rid": i, "uin": uin, "device": 1, "channel": f"c{ch}", "ctime": i + 1, "text": text}))
    return reqs


def measure(path: str, per_turn: int, messages: int) -> dict:
    """One batch of ``messages`` sends in turns of ``per_turn`` on a new core and store at ``path``:
    thread CPU µs per message by phase and in all, and whether every send was acked once."""
    channels = {f"c{c}": list(range(c * MEMBERS + 1, (c + 1) * MEMBERS + 1)) for c in range(CHANNELS)}
    os.makedirs(path)
    _router, replica, _deltas = online(range(1, CHANNELS * MEMBERS + 1), BROKERS)
    out = Out(pack=True)
    core, store = logic_core(f"{path}/l1", topology_of(path, channels, BROKERS), replica, out)
    node = _Turn(core, store, out)
    reqs = _requests(messages)
    turns = [reqs[k:k + per_turn] for k in range(0, len(reqs), per_turn)]
    send, tick, timed = core.sends.send, time.thread_time, node.store
    accept = staging = write = commit = 0.0
    try:
        began = tick()
        for turn in turns:
            now = time.time()
            a = tick()
            for ident, msg in turn:
                try:
                    reply = send(ident, msg, now)
                except wire.ProtocolError as exc:   # as the node's dispatch answers it (none expected)
                    reply = wire.error_from(msg["rid"], exc)
                if reply is not None:          # an immediate answer: the node queues it
                    out.reply(ident, reply)
            b = tick()
            node._end_turn()
            e = tick()
            accept += b - a
            staging += timed.started - b
            write += timed.ended - timed.started
            commit += e - timed.ended
        total = tick() - began
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    scale = 1e6 / messages
    acked_once = len(out.acks) == messages and set(out.acks.values()) == {1} and not out.errors
    return {"total": total * scale, "accept": accept * scale, "staging": staging * scale,
            "write": write * scale, "commit": commit * scale, "acked_once": acked_once,
            "acks": sum(out.acks.values()), "errors": len(out.errors), "fanout_items": out.published,
            "frames": out.frames, "turns": len(turns)}


def run(per_turns, messages: int, repeats: int) -> dict:
    """{per_turn: the median batch's figures, with best_total and the totals of every batch}."""
    figures = {}
    with scratch("logicturn") as tmp:
        for per_turn in per_turns:
            runs = [measure(f"{tmp}/{per_turn}-{r}", per_turn, messages) for r in range(repeats)]
            ranked = sorted(runs, key=lambda r: r["total"])
            figures[per_turn] = dict(ranked[(repeats - 1) // 2], best_total=ranked[0]["total"],
                                     totals=[r["total"] for r in runs],
                                     acked_once=all(r["acked_once"] for r in runs))
    return figures


def main(argv=None) -> int:
    parser = bench_parser("logicturn", __doc__)
    parser.add_argument("--per-turn", default="1,3,7,30", help="sends per loop turn, comma-separated")
    parser.add_argument("--messages", type=int, default=30000, help="sends per batch")
    parser.add_argument("--repeats", type=int, default=5, help="batches per sends-per-turn value")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    per_turns = [int(x) for x in args.per_turn.split(",")]
    if args.messages < 1 or args.repeats < 1 or min(per_turns) < 1:
        parser.error("--messages, --repeats and --per-turn must be at least 1")
    figures = run(per_turns, args.messages, args.repeats)
    r2 = {k: {f: round(v, 2) if isinstance(v, float) else v for f, v in fig.items() if f != "totals"}
          | {"totals": [round(t, 2) for t in fig["totals"]]} for k, fig in figures.items()}
    result = {"channels": CHANNELS, "members": MEMBERS, "brokers": BROKERS, "text_bytes": TEXT,
              "messages": args.messages, "repeats": args.repeats, "per_turn": r2, "machine": machine()}
    print(f"{result['machine']}\n{CHANNELS} channels of {MEMBERS}, every member online on {BROKERS} brokers, "
          f"{args.messages} sends per batch, the batch with the median total of {args.repeats}; "
          "main-thread CPU (time.thread_time) µs per message\n")
    print(table(["sends per turn", *PHASES, "total", "best total", "fan-out items per msg", "acked once"],
                [[k, *(f"{fig[p]:.2f}" for p in PHASES), f"{fig['total']:.2f}", f"{fig['best_total']:.2f}",
                  f"{fig['fanout_items'] / args.messages:.1f}", "yes" if fig["acked_once"] else "NO"]
                 for k, fig in figures.items()]))
    if args.json:
        write_json(args.json, result)
    if not all(fig["acked_once"] for fig in figures.values()):
        print("some send was not acked exactly once")
        return 1
    return 0
