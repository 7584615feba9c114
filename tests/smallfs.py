"""A small filesystem of its own (tmpfs) that a test can fill and free: full-disk tests.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests that use it are skipped.
The mount is undone on the way out, also when the test fails (lazily if a process
still has a file open there).
"""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

FILLER = ".filler"


@contextlib.contextmanager
def small_fs(path: str, size_mb: int):
    """``path`` (created) is a tmpfs of ``size_mb`` MiB while the block runs."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)


def fill(path: str) -> int:
    """Take every free byte of ``path``'s filesystem with a filler file; the bytes written."""
    written = 0
    with open(os.path.join(path, FILLER), "ab", buffering=0) as f:
        block = b"\0" * 65536
        while True:
            try:
                written += f.write(block)
            except OSError:
                break
        small = b"\0" * 512              # the last partial block
        while True:
            try:
                written += f.write(small)
            except OSError:
                return written


def free(path: str) -> None:
    """Give back what ``fill`` took."""
    os.remove(os.path.join(path, FILLER))
