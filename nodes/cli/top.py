"""bin/mesh top: a refreshing table of the live rates of every node of a mesh.

Reads the nodes' status replies over their rpc endpoints (asked in
parallel), so it works without metrics endpoints; the counters it turns
into per-second rates are the ones nodes/runtime/metrics.py exports as counters.
"""
from __future__ import annotations

import sys
import time

from nodes.ops.admin import Admin
from nodes.runtime.metrics import COUNTERS

# rate columns: (header, status key) — sums over a map (refused by code) count as one figure
RATES = (("turns/s", "turns"), ("stored/s", "stored"), ("refused/s", "refused"),
         ("expired/s", "expired"), ("acks/s", "acks"), ("deliv/s", "deliveries"))
GAUGES = (("sessions", "sessions"), ("online", "online"), ("chans", "channels"), ("waiting", "waiting"))


def total(value) -> float:
    if isinstance(value, dict):
        return sum(v for v in value.values() if isinstance(v, (int, float)))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def rates(before: dict | None, after: dict | None, seconds: float) -> dict:
    """{counter key: per-second rate} between two status maps of one node."""
    if not before or not after or seconds <= 0 or before.get("pid") != after.get("pid"):
        return {}
    return {key: max(0.0, (total(after.get(key)) - total(before.get(key))) / seconds)
            for key in COUNTERS if key in after}


def render(topo, statuses: dict, node_rates: dict, seconds: float) -> str:
    header = ["node", "type", "state", *(h for h, _ in RATES), *(h for h, _ in GAUGES), "max_turn_ms"]
    rows: list = []
    sums: dict = {}                                # only figures some node reports get a total
    for node_id, spec in topo.nodes.items():
        st, r = statuses.get(node_id), node_rates.get(node_id, {})
        row = [node_id, spec.type, "up" if st else "DOWN"]
        for _, key in RATES:
            row.append(f"{r[key]:.0f}" if key in r else "-")
            if key in r:
                sums[key] = sums.get(key, 0.0) + r[key]
        for _, key in GAUGES:
            row.append(str(total(st.get(key))) if st and key in st else "-")
        row.append(f"{st.get('max_turn_ms', 0):.1f}" if st else "-")
        rows.append(row)
    rows.append(["mesh", "", f"{sum(1 for s in statuses.values() if s)}/{len(topo.nodes)}",
                 *(f"{sums[k]:.0f}" if k in sums else "-" for _, k in RATES), *([""] * len(GAUGES)), ""])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"imesh top — {topo.path} — rates over the last {seconds:.1f}s  ({time.strftime('%H:%M:%S')})",
             "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def run(topo, interval: float, iterations: int | None, timeout: float, out=sys.stdout) -> int:
    """Refresh every ``interval`` seconds (``iterations`` times, or until Ctrl-C)."""
    admin = Admin(topo)
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    before, then = admin.status_all(topo.nodes, timeout), time.monotonic()
    shown = 0
    try:
        while iterations is None or shown < iterations:
            time.sleep(max(0.0, interval - (time.monotonic() - then)))
            after, now = admin.status_all(topo.nodes, timeout), time.monotonic()
            node_rates = {n: rates(before.get(n), after.get(n), now - then) for n in topo.nodes}
            out.write(clear + render(topo, after, node_rates, now - then) + "\n\n")
            out.flush()
            before, then, shown = after, now, shown + 1
    except KeyboardInterrupt:
        pass
    return 0
