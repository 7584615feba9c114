"""bin/mesh reshard: move channels between logic nodes, live (mesh running: nodes/ops/livereshard.py)
or offline (logic nodes stopped: nodes/ops/reshard.py), and print what moved."""
from __future__ import annotations

import json
import sys
import time

from nodes.cli.common import load_topology
from nodes.cluster import topochange
from nodes.cluster.topology import TopologyError
from nodes.ops import livereshard, reshard


def run(args) -> int:
    old, new = load_topology(args.old), load_topology(args.config)
    started = time.monotonic()
    running = livereshard.logic_running(old)
    live = any(running.values())
    if live and not all(running.values()):
        down = sorted(n for n, up in running.items() if not up)
        print(f"error: logic node(s) {', '.join(down)} of {args.old} are down while others run: start them "
              "(live reshard) or stop every logic node (offline reshard)", file=sys.stderr)
        return 1
    say = (lambda _line: None) if args.json or args.dry_run else print
    try:
        if live:
            change = livereshard.LiveReshard(old, new, say=say)
            moves, rows = change.run(dry_run=args.dry_run), change.rows
        else:
            topochange.check_offline(old, new)
            moves = reshard.move(old, new, dry_run=args.dry_run)
            rows = moves.rows
    except livereshard.LiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (reshard.ReshardError, TopologyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    verb = "would move" if args.dry_run else "moved"
    if args.json:
        print(json.dumps({"moved": [{"channel": c, "from": a, "to": b} for c, a, b in moves],
                          "rows": rows, "dry_run": args.dry_run, "seconds": round(seconds, 3),
                          "live": live, "version": new.version}))
        return 0
    if not live or args.dry_run:
        for channel, src, dst in moves:
            print(f"{verb} {channel}: {src} -> {dst}")
    if live and args.dry_run:
        print(f"{len(moves)} channel(s) {verb}; the mesh still runs version {old.version} (every node "
              f"admits the keys of {args.config} now)")
        return 0
    print(f"{len(moves)} channel(s) {verb} ({rows} rows) in {seconds:.2f} s", end="")
    if live:
        gone = [n for n in old.ids("logic") if n not in new.nodes]
        print(f"; the mesh runs topology version {new.version}" + (f"; {', '.join(gone)} serve(s) nothing "
              "now: stop them" if gone else "") + f"; use {args.config} from now on")
    else:
        print(f"; start the nodes with {args.config}")
    return 0
