"""The media ref: the string a message carries to point at a file on a relay.

``imesh-media:RELAY_ID:MEDIA_HEX`` (16 hex digits): the relay that holds the file and its
8-byte media id.  The relay writes it (nodes/relay.py, in ``up_done``) and reads it back in
``down_info``; a client (nodes/client/media.py) reads it to know which relay to ask.  Both
directions live here, below both of them, so the format is written once.
"""
from __future__ import annotations

from nodes.protocol import wire

PREFIX = "imesh-media"


def make_ref(relay_id: str, media: bytes) -> str:
    return f"{PREFIX}:{relay_id}:{media.hex()}"


def parse_ref(ref: str) -> tuple[str, bytes]:
    """(relay id, media id) of a ref; ProtocolError(NO_MEDIA) if it is not one."""
    parts = ref.split(":") if isinstance(ref, str) else []
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[2]) != 16:
        raise wire.ProtocolError(wire.Err.NO_MEDIA, f"not a media ref: {ref!r}")
    try:
        return parts[1], bytes.fromhex(parts[2])
    except ValueError:
        raise wire.ProtocolError(wire.Err.NO_MEDIA, f"not a media ref: {ref!r}") from None
