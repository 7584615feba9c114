"""The I/O a core is given: what its ``out`` must provide, as typing Protocols.

The cores (nodes/logic/core.py, nodes/broker/core.py) hold no sockets: every
reply, push and request goes through an ``out`` object, the node in production
and a recording fake in tests.  Writing the interface down here lets mypy check
that the node passing itself (``LogicCore(..., out=self)``) has every method the
core calls, with matching arguments, and tells a test author what a fake needs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from nodes.protocol.wire import Msg as Msg  # a decoded frame (re-exported for the cores)

Callback = Callable[[Msg], None]        # gets the reply, or an UNAVAILABLE error after the timeout


class LogicOut(Protocol):
    """What a logic core sends (nodes/logic/node.py provides it)."""

    def reply(self, ident: bytes, msg: Msg) -> None:
        """Answer the request that came from ``ident`` (a broker's DEALER) on the rpc socket."""

    def publish(self, broker: str, msg: Msg) -> None:
        """One PUB frame on the broker's topic (acks and deliveries of this turn)."""

    def request_ids(self, channel: str, n: int, have: int) -> None:
        """Ask a counter for ``n`` more ids of ``channel``; ``have``: the first id not held."""


class BrokerOut(Protocol):
    """What a broker core sends (nodes/broker/node.py provides it)."""

    def reply(self, ident: bytes, msg: Msg) -> None:
        """Answer a client session (ZeroMQ, WebSocket or HTTP)."""

    def push(self, ident: bytes, packed: bytes) -> None:
        """Push an already packed message to one client session."""

    def push_many(self, idents: Iterable[bytes], packed: bytes) -> None:
        """Push one packed message to many client sessions."""

    def to_logic(self, owner: str, msg: Msg, callback: Callback, timeout: float | None = None) -> None:
        """A request to a logic node; ``callback`` gets its reply."""

    def to_router(self, uin: int, msg: Msg, callback: Callback, timeout: float | None = None) -> None:
        """A request to the router(s) of ``uin``; ``callback`` gets the first good reply."""
