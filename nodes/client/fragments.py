"""Long texts: split into fragments on the sending side, reassembled on the receiving side.

A text longer than the broker's ``max_text`` bytes is cut into pieces of at
most that many bytes, never inside a UTF-8 character, and each piece is
sent as an ordinary message with ``frag = [group id, index, count]``.  The
receiver collects a group's pieces (they arrive in id order, possibly
between other messages, missing ones filled by sync) and hands the
application one message: the whole text, under the id of the last piece.
A group that cannot complete within the message lifetime is dropped.
"""
from __future__ import annotations

import logging
import secrets

log = logging.getLogger(__name__)


def split_utf8(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` bytes of UTF-8 each, cut only between characters."""
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes (one UTF-8 character)")
    data = text.encode("utf-8")
    pieces, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:    # continuation byte: back off
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


def new_group_id() -> int:
    return secrets.randbits(63)


MAX_COUNT = 10_000                      # far above any broker's max_fragments: only a sanity bound


class BadFragment(ValueError):
    """A ``frag`` header (or a piece) that cannot belong to any group: the piece is dropped."""


def parse_header(msg: dict) -> tuple[int, int, int]:
    """``frag = [group, index, count]`` checked: uints, 2 <= count, index < count; BadFragment otherwise."""
    frag = msg.get("frag")
    if not isinstance(frag, (list, tuple)) or len(frag) != 3 \
            or any(type(x) is not int or x < 0 for x in frag):
        raise BadFragment(f"fragment header {frag!r} is not [group, index, count] of unsigned integers")
    group, index, count = frag
    if not 2 <= count <= MAX_COUNT or index >= count:
        raise BadFragment(f"fragment header {frag!r}: index must be < count and 2 <= count <= {MAX_COUNT}")
    if not isinstance(msg.get("text"), str):
        raise BadFragment("a fragment without text")
    return group, index, count


class Assembler:
    """Collects fragments per (channel, sender, device, group) until a group is whole."""

    def __init__(self, lifetime: float = 86400.0):
        self.lifetime = lifetime
        self.groups: dict = {}                       # key -> {"count", "parts": {index: msg}, "since"}
        self.dropped = 0

    def add(self, msg: dict, now: float):
        """A message in id order; returns the message to hand on (whole), or None while incomplete.
        A malformed header raises BadFragment and changes nothing."""
        if msg.get("frag") is None:
            return msg
        group, index, count = parse_header(msg)
        key = (msg["channel"], msg["uin"], msg["device"], group)
        state = self.groups.setdefault(key, {"count": count, "parts": {}, "since": now})
        if state["count"] != count:
            log.warning("fragment group %s: count %s differs from %s; dropped", group, count, state["count"])
            return None
        state["parts"][index] = msg
        if len(state["parts"]) < count:
            return None
        del self.groups[key]
        parts = [state["parts"][i] for i in range(count)]
        whole = {k: v for k, v in parts[-1].items() if k != "frag"}
        whole["text"] = "".join(p["text"] for p in parts)
        whole["ids"] = [p["id"] for p in parts]
        return whole

    def expire(self, now: float) -> int:
        """Drop groups older than the lifetime (their missing pieces are gone); return how many."""
        old = [k for k, g in self.groups.items() if now - g["since"] > self.lifetime]
        for key in old:
            log.warning("fragment group %s of %s/%s in %s never completed; dropped",
                        key[3], key[1], key[2], key[0])
            del self.groups[key]
        self.dropped += len(old)
        return len(old)
