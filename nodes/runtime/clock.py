"""The wall clock that expiry reads, and (for tests only) a way to step it.

Expiry times are stored as Unix times, so expiry needs the wall clock; every
reading of it for expiry goes through ``wall_clock(node_id)`` so that a test
can step one node's clock while the rest of the mesh keeps the true time.

Test only: when the environment variable ``IMESH_TEST_CLOCK_DIR`` names a
directory, a node's wall clock is ``time.time()`` plus the seconds written in
the file ``$IMESH_TEST_CLOCK_DIR/<node id>`` (none, empty or unreadable: 0).
The file is read again at every reading, so a test steps the clock of a
running node by rewriting it.  Deployments never set the variable; then the
wall clock is ``time.time`` itself, with no file read.
"""
from __future__ import annotations

import os
import time

TEST_CLOCK_ENV = "IMESH_TEST_CLOCK_DIR"


def wall_clock(node_id: str):
    """``time.time``, or with ``IMESH_TEST_CLOCK_DIR`` set (tests only): time.time() shifted
    by the offset in that directory's file named ``node_id``."""
    directory = os.environ.get(TEST_CLOCK_ENV)
    if not directory:
        return time.time
    path = os.path.join(directory, node_id)

    def shifted() -> float:
        try:
            with open(path) as f:
                offset = float(f.read().strip() or 0)
        except (OSError, ValueError):
            offset = 0.0
        return time.time() + offset
    return shifted
