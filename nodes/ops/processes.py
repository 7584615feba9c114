"""Stopping child processes we started: SIGTERM, a grace period, then SIGKILL -- by pid, always."""
from __future__ import annotations

import signal
import subprocess
import time


def stop_all(procs, grace: float = 10.0) -> None:
    """Ask every running process in ``procs`` (Popen objects) to stop, wait up to ``grace``
    seconds for all of them together, and kill the ones still running."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
