"""Start one node process: ``python -m nodes.launch [--type T] --config FILE --id NODE_ID``.

The node's type comes from the topology; ``--type`` (set by the bin/broker,
bin/logic ... wrappers) guards against starting the wrong id by mistake.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import time

from nodes.cluster import topochange, topology
from nodes.runtime import colocate, links as peerwatch, logs
from nodes.runtime.logs import events

PR_SET_PDEATHSIG = 1
SLOW_TURN = 0.1          # seconds: a loop turn this long is logged (sampled) as slow_turn

NODE_CLASSES = {
    "broker": ("nodes.broker.node", "BrokerNode"),
    "logic": ("nodes.logic.node", "LogicNode"),
    "router": ("nodes.router", "RouterNode"),
    "counter": ("nodes.counter", "CounterNode"),
    "relay": ("nodes.relay", "RelayNode"),
}


def node_class(node_type: str):
    import importlib
    module, name = NODE_CLASSES[node_type]
    return getattr(importlib.import_module(module), name)


def die_with_parent() -> None:
    """Started by a supervisor (``IMESH_DIE_WITH`` = its pid): get SIGTERM when it dies.

    PR_SET_PDEATHSIG is Linux's; it is set here in the child rather than in a
    preexec_fn (not safe in a parent with threads).  If the parent died before
    this ran, we have been re-parented already: exit at once.
    """
    parent = os.environ.pop("IMESH_DIE_WITH", None)
    if not parent:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):          # not Linux: the supervisor's own stop is all there is
        return
    if os.getppid() != int(parent):
        sys.exit(1)


def main(argv=None, node_type: str | None = None, prog: str | None = None) -> int:
    """Start the node ``--id``; ``node_type`` is set by the per-type commands (imesh-broker ...)."""
    die_with_parent()
    from nodes.cli.common import add_version_arg, prog_name
    prog = prog or prog_name("node" if node_type is None else node_type)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    if node_type is None:
        parser.add_argument("--type", choices=sorted(NODE_CLASSES),
                            help="refuse to start unless the id is a node of this type")
    parser.add_argument("--config", "-c", required=True, help="topology YAML file")
    parser.add_argument("--id", required=True, help="this node's id in the topology")
    logs.add_log_args(parser)
    add_version_arg(parser)
    args = parser.parse_args(argv)
    if node_type is not None:
        args.type = node_type
    logs.setup(args.log_level, args.log_format, args.id)
    try:
        # a topology adopted while running (bin/mesh reshard) wins over an older file
        topo = topochange.newest(topology.load(args.config), args.id)
        spec = topo.node(args.id)
    except topology.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.type and spec.type != args.type:
        print(f"error: node {args.id!r} is a {spec.type} in {args.config}, not a {args.type}",
              file=sys.stderr)
        return 2
    try:
        guests = colocate.guests_of(os.environ.get(colocate.ENV), args.id)
        for guest in guests:
            if spec.type != "broker" or topo.node(guest).type != "logic":
                raise topology.TopologyError(f"{colocate.ENV}: only a broker runs logic nodes in its "
                                             f"process, not {spec.type} {args.id} {guest}")
    except (ValueError, topology.TopologyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        node = node_class(spec.type)(topo, args.id, **({"colocated": guests} if guests else {}))
        hosted = [node_class("logic")(topo, guest, host=node) for guest in guests]
    except Exception as exc:                   # bind failure, locked store, missing secret ...
        logging.getLogger("launch").error("cannot start %s: %s", args.id, exc)
        return 1
    watch(node)
    if hosted:
        return run_colocated(node, hosted)
    profile_dir = os.environ.get("IMESH_PROFILE")
    if profile_dir:                            # bin/bench e2e --profile: where the CPU goes
        import cProfile
        # the main thread's CPU, not wall time: on a busy machine a send that wakes libzmq's I/O
        # thread is often preempted, and wall time would charge that wait to the send
        profiler = cProfile.Profile(time.thread_time)
        try:
            profiler.runcall(node.run)
        finally:
            os.makedirs(profile_dir, exist_ok=True)
            profiler.dump_stats(os.path.join(profile_dir, f"{args.id}.prof"))
    else:
        node.run()
    return 0


def run_colocated(host, guests) -> int:
    """A broker with logic nodes in its process (nodes/runtime/colocate.py): each guest's loop in
    a thread, the host's here; SIGTERM/SIGINT stop them all, the host closes the shared context
    last.  Exits 1 when a guest's loop failed (as a node whose loop raises), else 0."""
    threads = []
    for guest in guests:
        watch(guest)
        threads.append(colocate.start_guest(guest, host.loop))
    host.loop.install_signal_handlers()        # main thread only: they stop the host's loop
    logging.getLogger("launch").info("%s %s up with %s in its process (pid %d)", host.type, host.id,
                                     ", ".join(g.id for g in guests), os.getpid())
    try:
        host.loop.run()
    finally:
        for guest in guests:
            guest.loop.stop()
        for thread in threads:
            thread.join(10)
        host.close()
    return 1 if any(thread.failed for thread in threads) else 0


def watch(node) -> None:
    """Log slow loop turns (sampled), peer connection changes, and the repeat counts of
    sampled events regularly."""
    def on_turn(seconds):
        if seconds > SLOW_TURN:
            events.slow_turn(seconds * 1000, node=node.id)
    node.loop.watch_turns(on_turn)
    node.loop.every(events.window, events.flush)
    peerwatch.watch_peers(node)


# console-script entry points of the node types (imesh-broker, imesh-logic ...)
def broker() -> int:
    return main(node_type="broker")


def logic() -> int:
    return main(node_type="logic")


def router() -> int:
    return main(node_type="router")


def counter() -> int:
    return main(node_type="counter")


def relay() -> int:
    return main(node_type="relay")


if __name__ == "__main__":
    sys.exit(main())
