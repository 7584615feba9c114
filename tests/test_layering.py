"""The layering of nodes/: every module imports only from its own room or from a lower floor.

A room is a folder of nodes/ (nodes/logic/, nodes/cluster/, ...) or a loose module
(nodes/relay.py, nodes/launch.py); the floors below go from the bottom up.  Rooms on one
floor do not import each other either: the five node types share the runtime and the
cluster's placement, never each other's code, and the client library (on their floor) needs
none of them -- an application imports nodes/client/ without the servers.  Every import counts, also one inside a
function (a lazy import still ties the two rooms together).  docs/architecture.md states
the same rule with the module map.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOORS = (
    {"nodes"},                                           # nodes/__init__.py: version, package dir
    {"protocol", "storage"},                             # frames and their schema; the RocksDB store
    {"cluster"},                                         # topology, placement, etcd coordination
    {"runtime"},                                         # the node loop, sockets, sessions, metrics
    {"logic", "broker", "router", "counter", "relay",    # the five node types, and beside them
     "client"},                                          # the library applications import
    {"ops"},                                             # operator tools: admin client, supervisor, reshard
    {"cli"},                                             # bin/mesh, bin/chat
    {"launch"},                                          # starts a node (uses the CLI's --version)
)
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}

# (importing module, imported module): known breaks of the rule, each with why it is still there.
# The test fails when one goes away, so the list stays the truth.
EXCEPTIONS = {
    # the frame dispatcher counts and logs a handler's failure through the runtime's event log;
    # logs.py imports nothing of nodes/, so this makes no cycle; the cure is dispatch.py moving
    # to nodes/runtime/ (it routes frames inside a node) once broker/logic/router stop changing
    ("nodes.protocol.dispatch", "nodes.runtime.logs"),
    # which counter a logic node asks for ids (and the next after a timeout) is placement,
    # written in counter.py beside its server-side twin check_serves; it belongs in
    # nodes/cluster/placement.py with the other "who serves channel X" answers
    ("nodes.logic.node", "nodes.counter"),
}


def module_name(path: str, root: str = ROOT) -> str:
    rel = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "nodes":
        return None
    return parts[1] if len(parts) > 1 else "nodes"


def imports_of(path: str, module: str):
    """(imported module, line) of every import in the file, at any depth; ``from nodes import
    x`` names nodes.x when x is a room, else nodes itself."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if room_of(sub) in FLOOR_OF and base == "nodes" else base), node.lineno


def nodes_modules():
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "nodes")):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield path, module_name(path)


def edges():
    """(importer, imported, file:line) for every import of one nodes/ room by another."""
    for path, module in nodes_modules():
        for target, line in imports_of(path, module):
            if room_of(target) is not None and room_of(target) != room_of(module):
                yield module, target, f"{os.path.relpath(path, ROOT)}:{line}"


def breaks(importer: str, imported: str) -> bool:
    """True if the import goes up a floor, or sideways to another room of the same floor."""
    src, dst = room_of(importer), room_of(imported)
    return FLOOR_OF[dst] >= FLOOR_OF[src] and dst != "nodes"


def test_every_room_has_a_floor():
    rooms = {room_of(module) for _path, module in nodes_modules()}
    assert rooms - set(FLOOR_OF) == set(), "a new room of nodes/: give it a floor here and in docs/architecture.md"


def test_no_module_imports_from_its_own_floor_or_above():
    found = [(a, b, where) for a, b, where in edges() if breaks(a, b)]
    unexplained = [f"{where}: {a} imports {b}" for a, b, where in found if (a, b) not in EXCEPTIONS]
    assert unexplained == []
    gone = EXCEPTIONS - {(a, b) for a, b, _where in found}
    assert gone == set(), "fixed: remove these from EXCEPTIONS (and docs/architecture.md)"


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The parser the rule stands on: an import inside a function, and a relative one, count."""
    pkg = tmp_path / "nodes" / "client"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from nodes.relay import thing\n\nfrom ..ops import admin\n")
    path = str(pkg / "x.py")
    assert sorted(imports_of(path, module_name(path, str(tmp_path)))) == [("nodes.ops", 4), ("nodes.relay", 2)]
    assert breaks("nodes.client.x", "nodes.relay") and breaks("nodes.client.x", "nodes.ops")
    assert not breaks("nodes.ops.admin", "nodes.client.blocking") and not breaks("nodes.relay", "nodes.runtime.node")
