"""A throwaway mesh with WebSocket endpoints for the JavaScript tests (clients/js/test).

Run by a Node test: writes a local topology with ``ws`` endpoints in a temp
dir (and a relay with one), starts every node, prints ONE JSON line (ws endpoints, relays' ws, client endpoints,
pids, tokens for uins 1-20, the topology path), then runs until stdin closes
or SIGTERM, and always stops every node and removes the temp dir.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodes.ops.localtopo import write_topology  # noqa: E402
from nodes.ops.mesh import Mesh  # noqa: E402
from nodes.protocol import auth  # noqa: E402


def main() -> int:
    directory = tempfile.mkdtemp(prefix="imesh-js-")
    mesh = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        mesh = Mesh(write_topology(directory, ws=True, relays=1, heartbeat={"wired": 2.0, "min": 1.0}))
        mesh.start()
        statuses = mesh.wait_ready(60)
        topo = mesh.topo
        secret = topo.read_secret()
        brokers = topo.of_type("broker")
        print(json.dumps({"topology": topo.path, "dir": directory,
                          "ws": {b.id: b.endpoints["ws"] for b in brokers},
                          "client": {b.id: b.endpoints["client"] for b in brokers},
                          "relays": {r.id: r.endpoints["ws"] for r in topo.of_type("relay")},
                          "pids": {k: v["pid"] for k, v in statuses.items()},
                          "owners": {"lobby": topo.logic_for("lobby")},
                          "tokens": {u: auth.mint(secret, u, 3600) for u in range(1, 21)}}), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait(600)                          # bounded: a forgotten mesh ends by itself
        return 0
    finally:
        if mesh is not None:
            mesh.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
