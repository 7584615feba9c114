"""Co-located nodes (issue 26, "the hop"): a logic node run inside a broker's process.

Why: every message crosses broker -> logic -> broker, two TCP hops with CurveZMQ
and libzmq I/O-thread work on both ends.  A *guest* node run in a second thread of
its *host*'s process shares the host's zmq.Context, binds an ``inproc://`` twin of
its rpc and pub endpoints (``inproc_endpoint``) and the host connects there
instead of the TCP endpoint; everyone else (other brokers, replication peers,
admin tools) still uses the guest's TCP endpoints, with CURVE as before.  libzmq
runs no security mechanism on inproc (no ZMTP handshake, no ZAP): the hop is
trusted because it never leaves the process.

This is a measurement prototype, selected by the environment variable
``IMESH_COLOCATE`` (``b1=l1,b2=l2``: broker b1 runs logic l1 in its process),
read by nodes/launch.py; docs/benchmarks.md "Co-located logic (issue 26, the
hop)" has what it measured.  The two loops share one GIL.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

ENV = "IMESH_COLOCATE"
PR_SET_NAME = 15
THREAD_PREFIX = "imesh-"          # the guest loop's thread name (/proc/PID/task/TID/comm): "imesh-l1"


class Looping(Protocol):
    """What the guest thread needs of a node (nodes/runtime/node.py)."""

    id: str

    def run(self, signals: bool = True) -> None: ...


class Stoppable(Protocol):
    def stop(self, *_args: object) -> None: ...


def inproc_endpoint(node_id: str, name: str) -> str:
    """The in-process twin of a node's ``name`` endpoint (rpc, pub)."""
    return f"inproc://imesh/{node_id}/{name}"


def guests_of(value: str | None, host_id: str) -> list[str]:
    """The nodes ``host_id`` runs in its process by an ``IMESH_COLOCATE`` value
    (``b1=l1,b2=l2``; a host may be named more than once); ValueError on a bad value."""
    guests = []
    for pair in (value or "").split(","):
        if not pair.strip():
            continue
        host, sep, guest = (part.strip() for part in pair.partition("="))
        if not sep or not host or not guest:
            raise ValueError(f"{ENV}: {pair.strip()!r} is not HOST=GUEST (e.g. b1=l1)")
        if host == host_id:
            guests.append(guest)
    return guests


def thread_name(node_id: str) -> str:
    """The OS name of a guest's loop thread (at most 15 bytes: the kernel's limit)."""
    return (THREAD_PREFIX + node_id)[:15]


def _name_this_thread(name: str) -> None:
    """Name the calling OS thread, so /proc shows which thread is the guest's (bench/procstat.py)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):      # not Linux: the name is only for measuring
        pass


class GuestThread(threading.Thread):
    """A guest's loop thread; ``failed``: its loop ended by an exception (the process then exits
    non-zero, so its supervisor sees a crash, not a clean stop)."""

    def __init__(self, guest: Looping, host_loop: Stoppable) -> None:
        super().__init__(name=thread_name(guest.id), daemon=True)
        self.guest, self.host_loop = guest, host_loop
        self.failed = False

    def run(self) -> None:
        _name_this_thread(thread_name(self.guest.id))
        try:
            self.guest.run(signals=False)
        except BaseException:
            self.failed = True
            log.exception("co-located node %s failed", self.guest.id)     # its traceback, once
        finally:
            self.host_loop.stop()


def start_guest(guest: Looping, host_loop: Stoppable) -> GuestThread:
    """Run ``guest``'s loop in a thread of its own; when it ends (stopped, or failed), the
    host's loop is stopped too: one process, one fate, so a supervisor restarts both."""
    thread = GuestThread(guest, host_loop)
    thread.start()
    return thread
