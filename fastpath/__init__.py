"""Cython fast paths of the hot data structures: dedup table, online bitmap, msg-id rings,
and the msgpack header scan that bounds internal frames before they are decoded.

The compiled modules are what runs.  There is deliberately no silent
fallback: if the extensions were not built, importing fails and says how to
build them.  Pure-Python twins with the same API live in
``fastpath.models`` and serve as the reference in the property tests (the
scan's reference is msgspec itself: tests/test_frame_bounds.py).
"""
try:
    from ._bitmap import OnlineBitmap
    from ._dedup import MAX_MSG_ID, NEW, STALE, DedupTable
    from ._ring import IdRing
    from ._scan import scan
except ImportError as exc:                      # pragma: no cover - exercised by hand
    raise ImportError(
        f"the fastpath Cython extensions are not built ({exc}). Build them with "
        "`pip install -e .` (or `python setup.py build_ext --inplace`) from the repository root."
    ) from exc

__all__ = ["DedupTable", "OnlineBitmap", "IdRing", "NEW", "STALE", "MAX_MSG_ID", "scan"]
