"""bin/mesh: run the local mesh, check it, mint tokens, manage channel membership.

    bin/mesh up [-c CONFIG] [--detach]           start and supervise every node (restarts the dead)
    bin/mesh stop [NODE]                         stop the mesh (or one node, kept down)
    bin/mesh start NODE / restart NODE           through the running supervisor
    bin/mesh status [-c CONFIG] [--json]         each node up/down (exit 0 all up, 1 otherwise)
    bin/mesh top [--interval S] [--count N]      live rates of every node, refreshing
    bin/mesh check -c FILE                       validate a topology (exit 1 with file: key: why)
    bin/mesh secret -c FILE                      create the secret file of a topology
    bin/mesh keys [-c CONFIG]                    create missing CURVE keypairs, say what goes where
    bin/mesh apikey --name NAME [-c CONFIG]      create a key of the server HTTP API (docs/api.md)
    bin/mesh token --uin U [--lifetime S] [--jwt]   print a login token (v1, or an HS256 JWT)
    bin/mesh channel create NAME --members 1,2,3 [--lifetime S] [--idc IDC]   (default home: nearest IDC)
    bin/mesh channel add NAME UIN...
    bin/mesh channel remove NAME UIN...
    bin/mesh channel show NAME
    bin/mesh reshard -c NEW --from OLD [--dry-run]   move channels to new owners: live while the mesh
                                                 runs (NEW has a higher version), else offline
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from nodes.cli import preflight
from nodes.cli.channel_cli import cmd_channel, members_arg
from nodes.cli.common import (
    DEFAULT_CONFIG,
    add_config_arg,
    add_version_arg,
    ensure_default_config,
    fail,
    load_topology,
    prog_name,
    seconds_arg,
    tool_name,
    uin_arg,
)
from nodes.cluster import topology
from nodes.ops import supervisor
from nodes.ops.admin import Admin
from nodes.ops.mesh import Mesh, MeshError, MeshInterrupted, child_env
from nodes.ops.supervisor import Supervisor
from nodes.protocol import apikeys, auth
from nodes.runtime import curve, logs

PROG = prog_name("mesh")


def log_args(args) -> list[str]:
    return ["--log-level", args.log_level, "--log-format", args.log_format]


def cmd_up(args) -> int:
    topo = load_topology(args.config)
    found = preflight.problems(topo)
    if found:
        fail("\n".join(found), 1)
    pid = supervisor.read_pid(topo.data_dir)
    if pid:
        fail(f"a supervisor (pid {pid}) already runs this mesh: `{PROG} status`, `{PROG} stop`", 1)
    running = [n for n, st in Admin(topo).status_all(topo.nodes, timeout=1.0).items() if st]
    if running:
        fail(f"already running: {', '.join(running)} (`{PROG} stop` stops them)", 1)
    if args.detach:
        return up_detached(args, topo)
    logs.setup(args.log_level, args.log_format, "supervisor")
    sup = Supervisor(Mesh(args.config, log_args=log_args(args)), out=sys.stdout)
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        sup.open()
        print(f"starting {len(topo.nodes)} nodes from {topo.path} (data and logs under {topo.data_dir})")
        sup.start_all()
        try:
            statuses = sup.mesh.wait_ready(args.timeout, stop_requested=lambda: stop["now"])
        except MeshInterrupted:
            print("interrupted while starting: stopping ...", flush=True)
            return 130
        except MeshError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for node_id, spec in topo.nodes.items():
            eps = " ".join(f"{k}={v}" for k, v in spec.endpoints.items())
            print(f"  up  {spec.type:8} {node_id:12} pid {statuses[node_id]['pid']:<7} {eps}")
        for name, ch in topo.channels.items():
            print(f"channel {name!r}: {len(ch['members'])} members")
        print(f"mesh is up (supervisor pid {os.getpid()}); Ctrl-C or `{PROG} stop` stops every node.  "
              f"Try: {chat_hint(topo, 1)}   and   {chat_hint(topo, 2)}", flush=True)
        web = web_chat_line(topo)
        if web:
            print(web, flush=True)
        sup.run(lambda: stop["now"])
        print("stopping ...", flush=True)
        return 0
    finally:
        sup.close()
        print("all nodes stopped", flush=True)


def chat_hint(topo, uin: int) -> str:
    """The chat command a new user can paste: in a channel the topology makes, if it has one."""
    channel = next(iter(topo.channels), None)
    config = "" if os.path.abspath(topo.path) == os.path.abspath(DEFAULT_CONFIG) else f" -c {topo.path}"
    return f"{tool_name('chat')}{config} --uin {uin}" + (f" --channel {channel}" if channel else "")


def web_chat_line(topo) -> str | None:
    """Where a browser finds the chat page: every broker with a ws endpoint serves it."""
    pages = [f"http://{n.endpoints['ws'][5:]}/" for n in topo.of_type("broker") if "ws" in n.endpoints]
    if not pages:
        return None
    return f"web chat: open {pages[0]} in a browser (every broker serves it: {' '.join(pages)})"


def up_detached(args, topo) -> int:
    """Run `up` in a new session with its output in <data_dir>/mesh.log; return once it is up."""
    os.makedirs(topo.data_dir, exist_ok=True)
    log_path = os.path.join(topo.data_dir, "mesh.log")
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen([sys.executable, "-m", "nodes.cli.mesh", "up", "-c", topo.path,
                                 "--timeout", str(args.timeout), *log_args(args)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), start_new_session=True)
    deadline = time.monotonic() + args.timeout + 10
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "mesh is up" in text:
            print(f"mesh is up under supervisor pid {proc.pid} (pid file "
                  f"{supervisor.pid_path(topo.data_dir)}, log {log_path}); `{PROG} stop` stops it")
            web = web_chat_line(topo)
            if web:
                print(web)
            return 0
        if proc.poll() is not None:
            sys.stderr.write(text)
            fail(f"the supervisor exited with code {proc.returncode}; see {log_path}", 1)
        time.sleep(0.1)                       # watching a log file for one line
    proc.terminate()
    fail(f"not up after {args.timeout}s; see {log_path}", 1)


def cmd_stop(args) -> int:
    """Stop one node or the whole mesh: through the supervisor if one runs, else by pid."""
    topo = load_topology(args.config)
    if args.node:
        topo_node(topo, args.node)                 # an unknown id is a bad argument (2), as for restart
    reply = supervisor.control(topo.data_dir, {"cmd": "stop", "node": args.node})
    if reply is not None:
        if not reply["ok"]:
            fail(reply["error"], 1)
        if args.node:
            print(f"stopped {args.node} (exit {reply['exit']}); the supervisor keeps it down until "
                  f"`{PROG} start {args.node}`")
            return 0
        sup_pid = supervisor.read_pid(topo.data_dir)
        deadline = time.monotonic() + 30
        while (supervisor.read_pid(topo.data_dir) or (sup_pid and supervisor.alive(sup_pid))) \
                and time.monotonic() < deadline:
            time.sleep(0.1)       # it removes its pid file when all are down, then exits: wait for both
        print("mesh stopped")
        return 0
    ids = [args.node] if args.node else list(topo.nodes)
    statuses = Admin(topo).status_all(ids, timeout=args.timeout)
    pids = {n: st["pid"] for n, st in statuses.items() if st and is_local(topo.node(n))}
    for node_id, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as exc:
            print(f"error: {node_id} (pid {pid}): {exc.strerror}", file=sys.stderr)
    deadline = time.monotonic() + 15
    while any(supervisor.alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)                       # waiting for processes we signalled to exit
    print(f"stopped {', '.join(pids) or 'nothing (no node of this topology answered here)'}")
    return 0


def is_local(spec) -> bool:
    host = spec.endpoint("rpc")[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def cmd_node(args) -> int:
    """start / restart one node through the running supervisor, then wait until it serves."""
    topo = load_topology(args.config)
    topo_node(topo, args.node)
    reply = supervisor.control(topo.data_dir, {"cmd": args.cmd, "node": args.node})
    if reply is None:
        fail(f"no supervisor runs for {topo.data_dir} (start the mesh with `{PROG} up`)", 1)
    if not reply["ok"]:
        fail(reply["error"], 1)
    try:
        Mesh(args.config).wait_ready(args.timeout, [args.node])
    except MeshError as exc:
        fail(str(exc), 1)
    print(f"{args.node} is up (pid {reply['pid']})")
    return 0


def topo_node(topo, node_id):
    try:
        return topo.node(node_id)
    except topology.TopologyError as exc:
        fail(str(exc))


def cmd_status(args) -> int:
    topo = load_topology(args.config)
    statuses = Admin(topo).status_all(topo.nodes, timeout=args.timeout)
    sup = supervisor.control(topo.data_dir, {"cmd": "status"}, timeout=2.0) or {}
    supervised = sup.get("nodes", {})
    rows = []
    for node_id, spec in topo.nodes.items():
        status = statuses[node_id]
        row = {"id": node_id, "type": spec.type, "up": status is not None,
               "pid": status and status.get("pid"), "status": status,
               "disk_full": bool(status and status.get("disk_full"))}
        if node_id in supervised:
            info = supervised[node_id]
            row.update(supervised=True, restarts=info["restarts"], last_exit=info["last_exit"],
                       held=info["held"])
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        if sup:
            print(f"supervisor pid {sup['pid']}")
        for row in rows:
            state = "up  " if row["up"] else ("stopped" if row.get("held") else "down")
            extra = f"pid {row['pid']}" if row["up"] else ""
            if row.get("restarts"):
                extra += f"  restarts {row['restarts']} (last exit {row['last_exit']})"
            if (row["status"] or {}).get("storage_error"):     # writes refused (nodes/logic/diskfull.py)
                extra += ("  disk full: writes refused (STORAGE_FULL) until there is room" if row["disk_full"]
                          else "  storage failed: writes refused") + f" ({row['status']['storage_error']})"
            version = (row["status"] or {}).get("topology_version", topo.version)
            if version != topo.version:           # a live reshard this file does not have (yet)
                extra += f"  topology version {version} (this file: {topo.version})"
            print(f"{state} {row['type']:8} {row['id']:12} {extra}".rstrip())
            for shard, info in ((row["status"] or {}).get("shards") or {}).items():
                print(f"       shard {shard:>5} leader {info['leader']} epoch {info['epoch']} "
                      f"seq {info['seq']} lag {info['lag']}")
    return 0 if all(r["up"] for r in rows) else 1


def cmd_top(args) -> int:
    from nodes.cli import top
    return top.run(load_topology(args.config), args.interval, args.count, args.timeout)


def cmd_keys(args) -> int:
    topo = load_topology(args.config)
    try:
        created = curve.ensure_keys(topo)
        print(curve.deployment_guide(topo, created))
    except curve.CurveError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot write keys in {topo.keys_dir}: {exc.strerror}", 1)
    return 0


def cmd_token(args) -> int:
    topo = load_topology(args.config)
    try:
        secret = topo.read_secret()
    except topology.TopologyError as exc:
        fail(f"{exc} (create it with `{PROG} secret -c {args.config}` and copy it to every machine)")
    try:
        print(auth.mint_login(secret, args.uin, args.lifetime, topo.jwt if args.jwt else None))
    except ValueError as exc:
        fail(f"{topo.path}: {exc}")
    return 0


def cmd_secret(args) -> int:
    """Create the topology's secret file (mode 0600) unless it exists."""
    topo = load_topology(args.config)
    try:
        created = auth.ensure_secret(topo.secret_file)
    except OSError as exc:
        fail(f"{topo.path}: secret_file {topo.secret_file}: {exc.strerror}", 1)
    if created:
        print(f"created {topo.secret_file}; copy it (mode 0600) to every machine of the mesh")
    else:
        topo_secret(topo)
        print(f"{topo.secret_file} exists; left as it is")
    if topo.push is not None:
        try:
            made = auth.ensure_secret(topo.push.secret_file)
        except OSError as exc:
            fail(f"{topo.path}: push.secret_file {topo.push.secret_file}: {exc.strerror}", 1)
        print(f"{'created' if made else 'kept'} {topo.push.secret_file}: the push receiver checks "
              "X-Imesh-Signature with it (docs/push.md); copy it to every logic node's machine and the receiver")
    return 0


def cmd_apikey(args) -> int:
    """Add a named key to the topology's ``api_keys`` (beside the secret file) and print it once."""
    topo = load_topology(args.config)
    path = apikeys.path_for(topo.secret_file)
    try:
        key = apikeys.create(path, args.name)
    except ValueError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", 1)
    print(key)
    print(f"added {args.name!r} to {path}; the key is shown only now (copy {path} to every broker's "
          "machine; delete its line to revoke it)", file=sys.stderr)
    return 0


def topo_secret(topo) -> bytes:
    try:
        return topo.read_secret()
    except topology.TopologyError as exc:
        fail(str(exc), 1)


def cmd_check(args) -> int:
    """Validate a topology fully: structure, endpoints and ports (on load), the secret, metrics."""
    try:
        ensure_default_config(args.config)
        topo = topology.load(args.config)
    except (topology.TopologyError, OSError) as exc:
        fail(str(exc), 1)
    if os.path.exists(topo.secret_file) or not topo.local:
        try:
            topo.read_secret()
        except topology.TopologyError as exc:
            fail(f"{exc} (`{PROG} secret -c {args.config}` creates one)", 1)
    secret = "present" if os.path.exists(topo.secret_file) else "created by `up` (local topology)"
    if topo.push is not None and (os.path.exists(topo.push.secret_file) or not topo.local):
        try:
            topo.read_push_secret()
        except topology.TopologyError as exc:
            fail(f"{exc} (`{PROG} secret -c {args.config}` creates one)", 1)
    keys = check_keys(topo, args.config)
    found = preflight.problems(topo) if topo.local else []     # elsewhere: checked on the nodes' machines
    if found:
        fail("\n".join(found), 1)
    counts = ", ".join(f"{len(topo.ids(t))} {t}" for t in topology.NODE_TYPES if topo.ids(t))
    print(f"{topo.path}: ok: cluster {topo.cluster!r}, {counts}; secret {topo.secret_file} {secret}; "
          f"keys {keys}; data under {topo.data_dir}")
    return 0


def check_keys(topo, config) -> str:
    """CURVE keys: every public key readable, no private key open to others (a local
    topology without keys yet gets them from `up`)."""
    if not topo.curve:
        return "off (curve: false)"
    if topo.local and not os.path.isdir(topo.keys_dir):
        return f"created by `up` under {topo.keys_dir} (local topology)"
    problems = []
    for name in curve.key_names(topo):
        try:
            curve.check_private_mode(curve.key_files(topo, name)[1])
            curve.public_key(topo, name)
        except curve.CurveError as exc:
            problems.append(str(exc))
    if problems:
        fail("\n".join(problems) + f"\n(`{PROG} keys -c {config}` creates missing keypairs)", 1)
    return f"present under {topo.keys_dir}"


def cmd_reshard(args) -> int:
    """Move channels to their owners under a new topology (logic nodes stopped; nodes/ops/reshard.py)."""
    from nodes.cli import reshard_cli
    return reshard_cli.run(args)


def subcommand(sub, name: str, **kw) -> argparse.ArgumentParser:
    """A subcommand's parser; each takes --version, as README says every command does."""
    p = sub.add_parser(name, **kw)
    add_version_arg(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run and manage an imesh mesh.")
    add_version_arg(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = subcommand(sub, "up", help="start every node of the topology and restart the ones that die")
    add_config_arg(p)
    p.add_argument("--timeout", type=seconds_arg, default=30.0,
                   help="seconds to wait for readiness (default: %(default)s)")
    p.add_argument("--detach", action="store_true",
                   help="run the supervisor in the background (pid file and mesh.log in the data dir)")
    logs.add_log_args(p)
    p.set_defaults(fn=cmd_up)
    p = subcommand(sub, "stop", help="stop the whole mesh, or one node (the supervisor keeps it down)")
    add_config_arg(p)
    p.add_argument("node", nargs="?", help="node id (default: every node and the supervisor)")
    p.add_argument("--timeout", type=seconds_arg, default=5.0,
                   help="seconds to wait for status replies when no supervisor runs (default: %(default)s)")
    p.set_defaults(fn=cmd_stop)
    for name, what in (("start", "start a node stopped with `stop NODE`"),
                       ("restart", "stop and start one node, wait until it serves")):
        p = subcommand(sub, name, help=what)
        add_config_arg(p)
        p.add_argument("node", help="node id")
        p.add_argument("--timeout", type=seconds_arg, default=30.0,
                       help="seconds to wait for readiness (default: %(default)s)")
        p.set_defaults(fn=cmd_node)
    p = subcommand(sub, "status", help="report each node as up or down (and its restarts)")
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON array of rows")
    p.add_argument("--timeout", type=seconds_arg, default=5.0,
                   help="seconds a running node may take to answer; nodes are asked in parallel and "
                        "a closed port counts as down at once (default: %(default)s)")
    p.set_defaults(fn=cmd_status)
    p = subcommand(sub, "top", help="a refreshing table of every node's live rates")
    add_config_arg(p)
    p.add_argument("--interval", type=seconds_arg, default=2.0, help="seconds between refreshes (default: %(default)s)")
    p.add_argument("--count", type=int, help="refresh this many times, then exit (default: until Ctrl-C)")
    p.add_argument("--timeout", type=seconds_arg, default=2.0,
                   help="seconds a node may take to answer (default: %(default)s)")
    p.set_defaults(fn=cmd_top)
    for name, fn, text in (
            ("check", cmd_check, "validate a topology file (endpoints, ports, secret, keys); exit 1 if bad"),
            ("secret", cmd_secret, "create the topology's secret file (and push.secret_file) if it does not exist"),
            ("keys", cmd_keys, "create missing CURVE keypairs and print what a deployment copies where")):
        p = subcommand(sub, name, help=text)
        add_config_arg(p)
        p.set_defaults(fn=fn)
    p = subcommand(sub, "apikey", help="create a key of the server HTTP API and print it (docs/api.md)")
    add_config_arg(p)
    p.add_argument("--name", required=True, help="what the key is for (letters, digits, _.-)")
    p.set_defaults(fn=cmd_apikey)
    p = subcommand(sub, "token", help="print a login token for a uin")
    add_config_arg(p)
    p.add_argument("--uin", type=uin_arg, required=True, help="user number the token is for")
    p.add_argument("--lifetime", type=seconds_arg, default=86400, help="seconds (default 1 day)")
    p.add_argument("--jwt", action="store_true",
                   help="a JWT (HS256 with the cluster secret, the topology's jwt issuer/audience) instead of v1")
    p.set_defaults(fn=cmd_token)
    p = subcommand(sub, "channel", help="create/add/remove/show channel membership")
    add_config_arg(p)
    p.add_argument("op", choices=["create", "add", "remove", "show"], help="what to do")
    p.add_argument("name", help="channel name")
    p.add_argument("uins", nargs="*", type=uin_arg, help="for add/remove")
    p.add_argument("--members", type=members_arg, help="for create: comma-separated uins")
    p.add_argument("--lifetime", type=float, help="for create: seconds its messages live "
                   "(default: the topology's message_lifetime)")
    p.add_argument("--idc", help="for create: the channel's home IDC (its shard's replicas and counter "
                   "are there); the channel is named NAME@IDC. Default: a suffix @IDC in NAME; else, with "
                   "logic nodes in several IDCs, the IDC of the logic node nearest to where the command "
                   "runs (best of 3 status round trips to each, in parallel; near-equal IDCs: the name's "
                   "hash decides) -- it prints the choice and why on stderr and as \"home\" in the JSON; "
                   "one IDC: no suffix")
    p.add_argument("--json", action="store_true", help="show: one JSON line instead of text (create, add and "
                   "remove always print one JSON line)")
    p.set_defaults(fn=cmd_channel)
    p = subcommand(sub, "reshard", help="move channels (members, messages, dedup rows, ids) to their owners "
                       "under a topology with other logic nodes: live while the logic nodes run (NEW's "
                       "version must be higher; start added logic nodes with NEW when told; exit 3 until "
                       "they run), offline when every logic node is stopped")
    add_config_arg(p)
    p.add_argument("--from", dest="old", required=True, metavar="OLD",
                   help="the topology the mesh runs (or last ran) with")
    p.add_argument("--dry-run", action="store_true", help="print what would move, move nothing")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    p.set_defaults(fn=cmd_reshard)
    return parser


def main(argv=None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)        # `bin/... | head` ends quietly, like other tools
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except curve.CurveError as exc:          # the admin key (or a node's public key) missing or open
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
