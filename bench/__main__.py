"""bin/bench SUBCOMMAND [...]: run one benchmark.

    bin/bench e2e [--users 1000 --channels 100 --members 10 --messages 20 --size 100 --window 1
                   --processes 2 --brokers 2 --logic 2 --replication 1 --shards 64] [--attach CONFIG]
                  [--json FILE]
    bin/bench failover [--kills 10] [--senders 4] [--shards 4] [--wipe] [--stop] [--json FILE]
    bin/bench fastpath [--json FILE] [--write-docs] [--sizes 10000,100000,1000000]
    bin/bench heartbeat [--sessions 10000] [--interval 1.0] [--seconds 20] [--json FILE]
    bin/bench relay [--sizes-mib 1,50] [--repeats 3] [--window 16] [--json FILE]
    bin/bench sweep [--messages 100000] [--channels 100] [--lifetime 20] [--json FILE]
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"fastpath": "bench.fastpath", "heartbeat": "bench.heartbeat",
                "sweep": "bench.sweep", "e2e": "bench.e2e",
                "relay": "bench.relay", "failover": "bench.failover"}
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import importlib
    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
