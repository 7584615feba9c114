"""bin/bench fanout: a logic node's fan-out of one big channel under login churn.

A real LogicCore (RocksDB in a temp dir) owns one channel of ``--members``
members, all online on ``--brokers`` brokers, fed by a real RouterCore's
presence deltas through a real PresenceReplica.  Each step applies
``--churn`` presence changes (a member moves to another broker, as a
re-login does) and then stores and fans out one message; the figure is
the logic's CPU per message (ids, store batch, ack and fan-out included),
with and without churn, medians of ``--repeats``.  Before fan-out plans
were patched per uin, every presence change anywhere made the next
message of every channel recompute its plan over all members.
"""
from __future__ import annotations

import statistics
import time

from nodes.cluster import topology
from nodes.logic.core import LogicCore
from nodes.logic.presence import PresenceReplica
from nodes.router import RouterCore
from nodes.storage.store import Store

from .report import machine, parser as bench_parser, scratch, table, write_json


class _Out:
    def __init__(self):
        self.published = 0

    def reply(self, ident, msg):
        pass

    def publish(self, broker, msg):
        self.published += len(msg["items"])

    def request_ids(self, channel, n, have):
        pass


def _topology(tmp, members: int, brokers: int):
    raw = {"local": True, "data_dir": tmp, "limits": {"max_members": members + 1},
           "channels": {"big": {"members": list(range(1, members + 1))}},
           "idcs": {"a": {"brokers": [{"id": f"b{k}", "client": f"tcp://127.0.0.1:{100 + k}",
                                       "rpc": f"tcp://127.0.0.1:{200 + k}"} for k in range(brokers)],
                          "logics": [{"id": "l1", "rpc": "tcp://127.0.0.1:3", "pub": "tcp://127.0.0.1:4"}],
                          "routers": [{"id": "r1", "rpc": "tcp://127.0.0.1:5", "pub": "tcp://127.0.0.1:6"}],
                          "counters": [{"id": "c", "rpc": "tcp://127.0.0.1:7"}]}}}
    return topology.parse(raw, f"{tmp}/t.yaml")


def measure(args, tmp: str, churn: int) -> float:
    """Logic CPU µs per message with ``churn`` presence changes before each message."""
    deltas = []
    router = RouterCore("r1", lambda msg, *_to: deltas.append(msg) if msg["t"] == "delta" else None)
    asked = []
    replica = PresenceReplica(["r1"], asked.append)
    store = Store(f"{tmp}/l1-{churn}")
    core = LogicCore("l1", _topology(tmp, args.members, args.brokers), store, replica, _Out(), b"s" * 32)
    core.load()
    core.ids.on_ids("big", 1, 1 << 40)
    for uin in range(1, args.members + 1):
        router.set_online(uin, 0, f"b{uin % args.brokers}")
    replica.start()
    replica.on_snapshot(router.snapshot())
    deltas.clear()
    moved = 0
    spent = 0.0
    for n in range(args.messages):
        for _ in range(churn):
            uin = 1 + (moved * 7919) % args.members
            moved += 1
            router.set_online(uin, 0, f"b{(uin + moved) % args.brokers}")
        started = time.process_time()
        for d in deltas:
            replica.on_delta(d)
        deltas.clear()
        core.sends.send(b"b0", {"rid": n, "uin": 1, "device": 1, "channel": "big", "ctime": n + 1, "text": "x" * 100},
                  None)
        core.assign(time.time())
        store.flush()
        core.commit(core.take_committed())
        spent += time.process_time() - started
    store.close()
    return 1e6 * spent / args.messages


def main(argv=None) -> int:
    parser = bench_parser("fanout", __doc__)
    parser.add_argument("--members", type=int, default=10000, help="members of the channel, all online")
    parser.add_argument("--brokers", type=int, default=4, help="brokers the members are spread over")
    parser.add_argument("--messages", type=int, default=2000, help="messages per measurement")
    parser.add_argument("--churn", type=int, default=1, help="presence changes before each message")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    figures = {}
    with scratch("fanout") as tmp:
        for churn in (0, args.churn):
            runs = [measure(args, f"{tmp}/{churn}-{r}", churn) for r in range(args.repeats)]
            figures[churn] = round(statistics.median(runs), 1)
    result = {"members": args.members, "brokers": args.brokers, "messages": args.messages,
              "churn": args.churn, "us_per_msg_no_churn": figures[0],
              "us_per_msg_churn": figures[args.churn], "machine": machine()}
    print(f"{result['machine']}\nchannel of {args.members} members online on {args.brokers} brokers, "
          f"{args.messages} messages, medians of {args.repeats}\n")
    print(table(["presence changes per message", "logic CPU µs per message"],
                [[0, figures[0]], [args.churn, figures[args.churn]]]))
    if args.json:
        write_json(args.json, result)
    return 0
