"""Start one node process: ``python -m nodes.launch [--type T] --config FILE --id NODE_ID``.

The node's type comes from the topology; ``--type`` (set by the bin/broker,
bin/logic ... wrappers) guards against starting the wrong id by mistake.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import topology

NODE_CLASSES = {
    "broker": ("nodes.broker", "BrokerNode"),
    "logic": ("nodes.logic", "LogicNode"),
    "router": ("nodes.router", "RouterNode"),
    "counter": ("nodes.counter", "CounterNode"),
    "relay": ("nodes.relay", "RelayNode"),
}


def node_class(node_type: str):
    import importlib
    module, name = NODE_CLASSES[node_type]
    return getattr(importlib.import_module(module), name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="imesh-node", description=__doc__)
    parser.add_argument("--type", choices=sorted(NODE_CLASSES))
    parser.add_argument("--config", "-c", required=True, help="topology YAML file")
    parser.add_argument("--id", required=True, help="this node's id in the topology")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s")
    try:
        topo = topology.load(args.config)
        spec = topo.node(args.id)
    except topology.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.type and spec.type != args.type:
        print(f"error: node {args.id!r} is a {spec.type} in {args.config}, not a {args.type}",
              file=sys.stderr)
        return 2
    try:
        node = node_class(spec.type)(topo, args.id)
    except Exception as exc:                   # bind failure, locked store, missing secret ...
        logging.getLogger("launch").error("cannot start %s: %s", args.id, exc)
        return 1
    profile_dir = os.environ.get("IMESH_PROFILE")
    if profile_dir:                            # bin/bench e2e --profile: where the CPU goes
        import cProfile
        profiler = cProfile.Profile()
        try:
            profiler.runcall(node.run)
        finally:
            os.makedirs(profile_dir, exist_ok=True)
            profiler.dump_stats(os.path.join(profile_dir, f"{args.id}.prof"))
    else:
        node.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
