"""Rendezvous (highest-random-weight) hashing: which node owns a key.

Every node computes owners from the topology alone, so no lookup service is
needed; adding or removing a node moves only the keys it wins or owned.
"""
from __future__ import annotations

import hashlib


def weight(node_id: str, key: bytes) -> int:
    digest = hashlib.blake2b(key, digest_size=8, key=node_id.encode()[:64]).digest()
    return int.from_bytes(digest, "big")


def owner(node_ids, key) -> str:
    """The node id with the highest weight for ``key`` (str or bytes)."""
    if isinstance(key, str):
        key = key.encode()
    best, best_w = None, -1
    for node_id in node_ids:
        w = weight(node_id, key)
        if w > best_w or (w == best_w and node_id > best):
            best, best_w = node_id, w
    if best is None:
        raise LookupError("no nodes to own the key")
    return best


def uin_key(uin: int) -> bytes:
    return uin.to_bytes(4, "big")
