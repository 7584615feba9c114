"""bin/mesh reshard: print what moved between logic nodes (the move itself: nodes/reshard.py)."""
from __future__ import annotations

import json
import sys
import time

from .. import reshard
from .common import load_topology


def run(args) -> int:
    old, new = load_topology(args.old), load_topology(args.config)
    started = time.monotonic()
    try:
        moves = reshard.move(old, new, dry_run=args.dry_run)
    except reshard.ReshardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    verb = "would move" if args.dry_run else "moved"
    if args.json:
        print(json.dumps({"moved": [{"channel": c, "from": a, "to": b} for c, a, b in moves],
                          "rows": moves.rows, "dry_run": args.dry_run, "seconds": round(seconds, 3)}))
        return 0
    for channel, src, dst in moves:
        print(f"{verb} {channel}: {src} -> {dst}")
    print(f"{len(moves)} channel(s) {verb} ({moves.rows} rows) in {seconds:.2f} s; "
          f"start the nodes with {args.config}")
    return 0
