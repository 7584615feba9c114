# cython: language_level=3
"""Argument checks shared by the fast-path modules: Python ints in, C integers out,
ValueError/TypeError (never OverflowError, never a silent wraparound) on bad input."""
from libc.stdint cimport uint32_t, uint64_t


cdef inline uint64_t to_u64(object value, uint64_t maxv, str name) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t result
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    try:
        result = value                  # negative or > 2**64-1 raises OverflowError
    except OverflowError:
        raise ValueError(f"{name} must be in 0..{maxv}, got {value}") from None
    if result > maxv:
        raise ValueError(f"{name} must be <= {maxv}, got {value}")
    return result


cdef inline uint32_t to_u32(object value, str name) except? 0xFFFFFFFF:
    return <uint32_t>to_u64(value, 0xFFFFFFFF, name)
