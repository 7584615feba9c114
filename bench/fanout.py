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

from .logicbed import Out, broker_of, logic_core, online, topology_of
from .report import machine, parser as bench_parser, scratch, table, write_json


def measure(args, tmp: str, churn: int) -> float:
    """Logic CPU µs per message with ``churn`` presence changes before each message."""
    uins = range(1, args.members + 1)
    router, replica, deltas = online(uins, args.brokers)
    core, store = logic_core(f"{tmp}/l1-{churn}", topology_of(tmp, {"big": list(uins)}, args.brokers),
                             replica, Out())
    moved = 0
    spent = 0.0
    for n in range(args.messages):
        for _ in range(churn):
            uin = 1 + (moved * 7919) % args.members
            moved += 1
            router.set_online(uin, 0, broker_of(uin + moved, args.brokers))
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
