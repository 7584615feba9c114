"""bin/bench SUBCOMMAND [...]: run one benchmark.

    bin/bench chaos [--users 200 --members 10 --seconds 30 --think 0 --down 0 --kill broker,logic,router,counter
                     --processes 2 --brokers 2 --logic 2 --hb 2 --timeout 3 --drain 60] [--json FILE]
    bin/bench conv [--parts reads,channels,typing --users 1000 --members 10 --messages 20 --typing 20
                    --channels 1000 --calls 50 --processes 2 --brokers 2 --logic 2 --repeats 3] [--json FILE]
    bin/bench e2e [--users 1000 --channels 100 --members 10 --messages 20 --size 100 --window 1
                   --processes 2 --brokers 2 --logic 2 --replication 1 --shards 64] [--curve on|off]
                  [--gather-ms 10 --gather-frames 32] [--colocate]
                  [--client-curve on|off] [--transport zmq|ws] [--client lean|asyncio] [--baseline]
                  [--repeat 1] [--attach CONFIG] [--json FILE]
    bin/bench failover [--kills 10] [--senders 4] [--shards 4] [--wipe] [--stop] [--json FILE]
    bin/bench fanout [--members 10000 --brokers 4 --messages 2000 --churn 1 --repeats 3] [--json FILE]
    bin/bench fastpath [--json FILE] [--write-docs] [--sizes 10000,100000,1000000]
    bin/bench logicturn [--per-turn 1,3,7,30 --messages 30000 --repeats 5] [--json FILE]
    bin/bench idc [--messages 200 --repeats 3 --delay-ms 20 --reshard-channels 1000] [--json FILE]   (root: WAN bed)
    bin/bench handoff [--sends 20000,200000] [--repeats 3] [--json FILE]
    bin/bench history [--messages 100000 --days 30 --limit 100 --depths 0,1000,10000,50000,99900
                       --calls 50 --repeats 3] [--json FILE]
    bin/bench heartbeat [--sessions 10000] [--interval 1.0] [--seconds 20] [--json FILE]
    bin/bench hop [--messages 50000 --windows 1,32 --batch both --variants tcp-curve,tcp,ipc,inproc
                   --repeats 3] [--json FILE]
    bin/bench logins [--logins 2000,5000 --processes 2 --repeats 3 --client-curve off] [--json FILE]
    bin/bench hostile [--scenario prelogin|slow|both --conns 20 --seconds 10 --kind small|echo|both
                       --readers 10 --messages 20000 --size 1400 --settle 8] [--json FILE]
    bin/bench relay [--sizes-mib 1,50] [--repeats 3] [--window 16] [--json FILE]
    bin/bench snapshot [--rows 50000,200000] [--repeats 3] [--shards 4] [--json FILE]
    bin/bench sessions [--sessions 10000 --core 10000,50000 --processes 4 --repeats 3] [--json FILE]
    bin/bench sweep [--messages 100000] [--channels 100] [--lifetime 20] [--json FILE]
    bin/bench websessions [--sessions 10000] [--processes 2] [--repeats 3] [--json FILE]
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"fastpath": "bench.fastpath", "heartbeat": "bench.heartbeat",
                "sweep": "bench.sweep", "e2e": "bench.e2e",
                "relay": "bench.relay", "chaos": "bench.chaos", "websessions": "bench.websessions",
                "failover": "bench.failover", "fanout": "bench.fanout", "sessions": "bench.sessions",
                "idc": "bench.idc", "handoff": "bench.handoff", "history": "bench.history",
                "snapshot": "bench.snapshot", "logins": "bench.logins", "hostile": "bench.hostile",
                "conv": "bench.conv", "hop": "bench.hop", "logicturn": "bench.logicturn"}
    if argv and argv[0] == "--version":
        from nodes import __version__
        from nodes.cli.common import prog_name
        print(f"{prog_name('bench')} (imesh) {__version__}")
        return 0
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        print("\nEvery benchmark takes --help (options with their defaults) and --version.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib
    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
