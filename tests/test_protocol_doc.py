"""docs/protocol.md against nodes/protocol/wire.py: the doc a third-party client is written from cannot drift.

Checked: the protocol version, the table of error codes, the lists of refused
and unknown send outcomes, every client request type with each of its
fields, every internal and relay request type, and the kicked reasons.
"""
from __future__ import annotations

import os
import re

import pytest

from nodes.protocol import wire

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "protocol.md")


@pytest.fixture(scope="module")
def doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def section(doc: str, heading: str) -> str:
    """The text from a markdown heading line to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", doc, re.M)
    assert match, f"docs/protocol.md has no heading {heading!r}"
    level = len(match.group(1))
    rest = doc[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def test_the_version_in_the_title_is_the_code_s(doc):
    assert doc.splitlines()[0] == f"# imesh wire protocol (version {wire.PROTOCOL_VERSION})"


def test_the_error_table_lists_exactly_the_codes(doc):
    table = section(doc, "Errors")
    codes = re.findall(r"^\| ([A-Z_]+) \|", table, re.M)
    assert sorted(codes) == sorted(wire.Err.all())


@pytest.mark.parametrize("label,codes", [("Refused", wire.REFUSED_OUTCOME), ("Unknown", wire.UNKNOWN_OUTCOME)])
def test_the_send_outcome_lists_are_the_code_s(doc, label, codes):
    match = re.search(rf"^\s*{label}: (.*)$", doc, re.M)
    assert match, f"no '{label}:' list in docs/protocol.md"
    assert re.findall(r"`([A-Z_]+)`", match.group(1)) == list(codes)


CLIENT_SECTIONS = {"login": "Login and the session"}


@pytest.mark.parametrize("t", sorted(wire.CLIENT_REQUESTS))
def test_every_client_request_and_field_is_documented(doc, t):
    text = section(doc, CLIENT_SECTIONS.get(t, t if t != "hb" else "hb (heartbeat)"))
    for field in wire.CLIENT_REQUESTS[t]:
        assert re.search(rf'(\| {field} \||"{field}"|\b{field}\b)', text), f"{t}.{field} undocumented"


@pytest.mark.parametrize("table", ["LOGIC_REQUESTS", "ROUTER_REQUESTS", "COUNTER_REQUESTS",
                                   "REPLICATION_REQUESTS", "BROKER_RPC", "TOPOLOGY_REQUESTS",
                                   "HANDOFF_REQUESTS"])
def test_every_internal_request_type_is_documented(doc, table):
    text = section(doc, "Internal protocol (between nodes)")
    for t in getattr(wire, table):
        assert re.search(rf"`{t}( \{{|`)", text), f"internal request {t!r} undocumented"


def test_every_relay_request_type_is_documented(doc):
    text = section(doc, "Media: the relay")
    for t in wire.RELAY_REQUESTS:
        assert f"`{t}`" in text, f"relay request {t!r} undocumented"


def test_every_kick_reason_is_documented(doc):
    text = section(doc, "Notices")
    for reason in wire.KICK_REASONS:
        assert f"`{reason}`" in text
