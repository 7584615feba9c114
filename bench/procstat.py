"""CPU time and peak memory of processes, read from /proc (Linux)."""
from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid: int | str, field: str) -> int | None:
    """A KiB field of /proc/PID/status (``VmRSS``, ``VmHWM``); None if it has none (a zombie)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_rss_mb(pid: int) -> float:
    return (status_kb(pid, "VmHWM") or 0) / 1024


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def reap(procs, wait: float) -> None:
    """Join worker processes, killing those still alive after ``wait`` seconds each."""
    for p in procs:
        p.join(wait)
        if p.is_alive():
            p.kill()


def io_thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's threads other than its main thread (libzmq's I/O threads,
    ZAP and metrics threads): how much of a node's CPU is spent moving bytes, not in Python."""
    return sum((seconds for tid, (_name, seconds) in threads_cpu(pid).items() if tid != pid), 0.0)


def threads_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (its name, CPU seconds)} of a process's threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, fields = f.read().rsplit(")", 1)
        except OSError:
            continue                         # the thread ended meanwhile
        cols = fields.split()
        out[int(tid)] = (head.split("(", 1)[1], (int(cols[11]) + int(cols[12])) / TICK)
    return out


def node_cpu(target, guest_prefix: str) -> tuple[float, float]:
    """(CPU seconds, of which non-main threads) of one node.  ``target`` is a pid (a node process;
    the loop threads of co-located guests, named ``guest_prefix``..., are left out: they are their
    own nodes) or (pid, thread name): a co-located guest's loop thread (nodes/runtime/colocate.py)."""
    if isinstance(target, tuple):
        pid, name = target
        return sum(s for n, s in threads_cpu(pid).values() if n == name), 0.0
    guests = sum(s for n, s in threads_cpu(target).values() if n.startswith(guest_prefix))
    return cpu_seconds(target) - guests, io_thread_cpu_seconds(target) - guests


def rss_kb(pid: int | str = "self") -> int:
    """Resident memory of a process now (VmRSS), in KiB."""
    return status_kb(pid, "VmRSS") or 0


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, MB; ValueError if it has none (it exited)."""
    kb = status_kb(pid, "VmRSS")
    if kb is None:
        raise ValueError(f"no VmRSS for pid {pid}")
    return kb / 1024
