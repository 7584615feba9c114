"""Shared output of the benchmarks: machine line, tables, JSON, and docs/benchmarks.md sections."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show every option's default."""


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of ``bin/bench NAME`` (prog as started, --version, defaults in help)."""
    from nodes.cli.common import add_version_arg, prog_name
    p = argparse.ArgumentParser(prog=f"{prog_name('bench')} {name}", description=doc,
                                formatter_class=HelpFormatter)
    add_version_arg(p)
    return p


@contextlib.contextmanager
def scratch(name: str):
    """A temporary directory for one run's topology and data, removed afterwards (also on error)."""
    path = tempfile.mkdtemp(prefix=f"imesh-{name}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kept_on_failure(name: str):
    """A temporary directory for one run's mesh: removed when the block succeeds, kept (its path
    printed) when it raises, so that the nodes' logs can be read."""
    path = tempfile.mkdtemp(prefix=f"imesh-{name}-")
    try:
        yield path
    except BaseException:
        print(f"failed: logs kept in {path}")
        raise
    shutil.rmtree(path, ignore_errors=True)


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def percentile(values, p):
    """The nearest-rank P-th percentile of VALUES (None if there are none)."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_docs_section(name: str, body: str) -> None:
    """Replace (or append) the section between <!-- NAME:begin --> and <!-- NAME:end -->."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(DOCS).read() if os.path.exists(DOCS) else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(DOCS, "w") as f:
        f.write(text)
