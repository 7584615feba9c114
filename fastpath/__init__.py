"""Cython fast paths of the hot data structures: dedup table, online bitmap, msg-id rings,
the msgpack header scan that bounds internal frames before they are decoded, and the
broker's delivery fan-out on pyzmq's own libzmq (``Fanout``), and the decoding and
validation of the broker's hot client requests (``HotRequests``).

The compiled modules are what runs.  There is deliberately no silent
fallback: if the extensions were not built, importing fails and says how to
build them.  Pure-Python twins with the same API live in
``fastpath.models`` and serve as the reference in the property tests (the
scan's reference is msgspec itself: tests/test_frame_bounds.py; the fan-out's
is nodes/runtime/outbox.py with nodes/broker/core.py's ``recipients``:
tests/test_fanout.py; the hot requests' is nodes/protocol/wire.py: tests/test_hotreq.py).
"""
try:
    from ._bitmap import OnlineBitmap
    from ._dedup import MAX_MSG_ID, NEW, STALE, DedupTable
    from ._fanout import Fanout
    from ._hotreq import HotRequests
    from ._ring import IdRing
    from ._scan import scan
except ImportError as exc:                      # pragma: no cover - exercised by hand
    raise ImportError(
        f"the fastpath Cython extensions are not built ({exc}). Build them with "
        "`pip install -e .` (or `python setup.py build_ext --inplace`) from the repository root."
    ) from exc

__all__ = ["DedupTable", "OnlineBitmap", "IdRing", "NEW", "STALE", "MAX_MSG_ID", "scan", "Fanout", "HotRequests"]
