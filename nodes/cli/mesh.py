"""bin/mesh: run the local mesh, check it, mint tokens, manage channel membership.

    bin/mesh up [-c CONFIG]                      start every node, stay in the foreground
    bin/mesh status [-c CONFIG] [--json]         each node up/down (exit 0 all up, 1 otherwise)
    bin/mesh token --uin U [--lifetime S]        print a login token
    bin/mesh channel create NAME --members 1,2,3 [--lifetime S]
    bin/mesh channel add NAME UIN...
    bin/mesh channel remove NAME UIN...
    bin/mesh channel show NAME
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from .. import auth
from ..admin import Admin, AdminError
from ..mesh import Mesh, MeshError
from ..wire import ProtocolError
from .common import add_config_arg, fail, load_topology, uin_arg


def cmd_up(args) -> int:
    topo = load_topology(args.config)
    running = [n for n in topo.nodes if Admin(topo, timeout=0.3).status(n)]
    if running:
        fail(f"already running: {', '.join(running)} (stop them first, or use `bin/mesh status`)", 1)
    mesh = Mesh(args.config)
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting {len(topo.nodes)} nodes from {topo.path} (data and logs under {topo.data_dir})")
        mesh.start()
        try:
            statuses = mesh.wait_ready(args.timeout)
        except MeshError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for node_id, spec in topo.nodes.items():
            eps = " ".join(f"{k}={v}" for k, v in spec.endpoints.items())
            print(f"  up  {spec.type:8} {node_id:12} pid {statuses[node_id]['pid']:<7} {eps}")
        for name, ch in topo.channels.items():
            print(f"channel {name!r}: {len(ch['members'])} members")
        print("mesh is up; Ctrl-C stops every node.  Try: bin/chat --uin 1   and   bin/chat --uin 2")
        sys.stdout.flush()
        reported = set()
        while not stop["now"]:
            for node_id, code in mesh.exited().items():
                if node_id not in reported:
                    reported.add(node_id)
                    print(f"  down {node_id} exited with code {code}; see {mesh.log_path(node_id)}",
                          flush=True)
            time.sleep(0.5)                  # supervisor poll; signals end it early
        print("stopping ...", flush=True)
        return 0
    finally:
        mesh.close()
        if stop["now"]:
            print("all nodes stopped")


def cmd_status(args) -> int:
    topo = load_topology(args.config)
    admin = Admin(topo, timeout=args.timeout)
    rows = []
    for node_id, spec in topo.nodes.items():
        status = admin.status(node_id)
        rows.append({"id": node_id, "type": spec.type, "up": status is not None,
                     "pid": status and status.get("pid"), "status": status})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = "up  " if row["up"] else "down"
            extra = f"pid {row['pid']}" if row["up"] else ""
            print(f"{state} {row['type']:8} {row['id']:12} {extra}")
            for shard, info in ((row["status"] or {}).get("shards") or {}).items():
                print(f"       shard {shard:>5} leader {info['leader']} epoch {info['epoch']} "
                      f"seq {info['seq']} lag {info['lag']}")
    return 0 if all(r["up"] for r in rows) else 1


def cmd_token(args) -> int:
    topo = load_topology(args.config)
    print(auth.mint(topo.read_secret(), args.uin, args.lifetime))
    return 0


def _members(text: str) -> list[int]:
    return [uin_arg(x) for x in text.split(",") if x.strip()]


def cmd_channel(args) -> int:
    topo = load_topology(args.config)
    members = []
    if args.op == "create":
        members = args.members or []
    elif args.op in ("add", "remove"):
        if not args.uins:
            fail(f"channel {args.op} needs at least one UIN")
        members = args.uins
    try:
        if args.lifetime is not None and args.op != "create":
            fail("--lifetime applies to channel create only")
        reply = Admin(topo).channel(args.op, args.name, members, args.lifetime)
    except (AdminError, ProtocolError) as exc:
        print(f"error: {exc.code}: {exc.msg}", file=sys.stderr)
        return 1
    shown = {"channel": reply["channel"], "members": reply["members"],
             "last_id": reply["last"], "lifetime": reply.get("lifetime")}
    shown.update({k: reply[k] for k in ("shard", "replicas", "leader", "epoch") if k in reply})
    print(json.dumps(shown))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bin/mesh", description="Run and manage an imesh mesh.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="start every node of the topology in the foreground")
    add_config_arg(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for readiness")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("status", help="report each node as up or down")
    add_config_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=1.0)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("token", help="print a login token for a uin")
    add_config_arg(p)
    p.add_argument("--uin", type=uin_arg, required=True)
    p.add_argument("--lifetime", type=float, default=86400, help="seconds (default 1 day)")
    p.set_defaults(fn=cmd_token)
    p = sub.add_parser("channel", help="create/add/remove/show channel membership")
    add_config_arg(p)
    p.add_argument("op", choices=["create", "add", "remove", "show"])
    p.add_argument("name")
    p.add_argument("uins", nargs="*", type=uin_arg, help="for add/remove")
    p.add_argument("--members", type=_members, help="for create: comma-separated uins")
    p.add_argument("--lifetime", type=float, help="for create: seconds its messages live "
                   "(default: the topology's message_lifetime)")
    p.add_argument("--json", action="store_true", help="the output is always one JSON line (accepted for symmetry)")
    p.set_defaults(fn=cmd_channel)
    return parser


def main(argv=None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)        # `bin/... | head` ends quietly, like other tools
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
