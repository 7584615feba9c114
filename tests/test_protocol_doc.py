"""docs/protocol.md against nodes/protocol/wire.py: the doc a third-party client is written from cannot drift.

Checked: the protocol version, the table of error codes, the lists of refused
and unknown send outcomes, the "Frame reference" (every frame kind, field by
field: type, required or optional, limit) against what nodes/protocol/schemadoc.py
renders from nodes/protocol/schema.py, every hand-written field table of the
client sections against the same schema (name, type, optional), every internal
and relay request type, and the kicked reasons.
"""
from __future__ import annotations

import os
import re

import pytest

from nodes.protocol import schema, schemadoc, wire

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


def test_the_frame_reference_is_the_one_the_schema_renders(doc):
    """Every frame kind with every field, its type, required or optional and its limit; if this
    fails, run `python -m nodes.protocol.schemadoc --write` and commit docs/protocol.md."""
    assert schemadoc.BEGIN in doc and schemadoc.END in doc
    assert schemadoc.splice(doc) == doc


# the field tables written by hand in the client sections: (section, frame kind) -> schema table
HAND_TABLES = {("Login and the session", "login"): schema.CLIENT_REQUESTS,
               ("send", "send"): schema.CLIENT_REQUESTS, ("hb (heartbeat)", "hb"): schema.CLIENT_REQUESTS,
               ("hb (heartbeat)", "hb_ack"): schema.CLIENT_REPLIES, ("Pushed messages", "msg"): schema.PUSHES}
OPTIONAL_MARKS = (", optional", ", only on fragments")


def hand_tables(text: str) -> dict:
    """{frame kind: {field: (type, optional)}} of the ``| field | type | meaning |`` tables in text."""
    tables = {}
    for block in re.findall(r"^\| field \| type \| meaning \|\n\|---\|---\|---\|\n((?:\|.*\n?)+)", text, re.M):
        rows = {}
        for line in block.strip().splitlines():
            name, kind = (cell.strip() for cell in line.strip("|").split("|")[:2])
            optional = kind.endswith(OPTIONAL_MARKS)
            for mark in OPTIONAL_MARKS:
                kind = kind.removesuffix(mark)
            rows[name] = (kind, optional)
        t = re.search(r'`"(\w+)"`', block).group(1)
        rows.pop("t")
        tables[t] = rows
    return tables


@pytest.mark.parametrize("heading,t", sorted(HAND_TABLES))
def test_the_hand_written_field_tables_match_the_schema_field_by_field(doc, heading, t):
    documented = hand_tables(section(doc, heading))[t]
    fields = HAND_TABLES[heading, t][t]
    assert sorted(documented) == sorted(fields), f"{t}: fields differ from nodes/protocol/schema.py"
    for name, field in fields.items():
        assert documented[name] == (schemadoc.TYPE_NAMES[field.kind], field.optional), f"{t}.{name}"


def test_every_client_request_has_a_documented_section(doc):
    for t in schema.CLIENT_REQUESTS:
        section(doc, {"login": "Login and the session", "hb": "hb (heartbeat)"}.get(t, t))


@pytest.mark.parametrize("table", ["LOGIC_REQUESTS", "ROUTER_REQUESTS", "COUNTER_REQUESTS",
                                   "REPLICATION_REQUESTS", "BROKER_RPC", "TOPOLOGY_REQUESTS",
                                   "HANDOFF_REQUESTS"])
def test_every_internal_request_type_is_documented(doc, table):
    text = section(doc, "Internal protocol (between nodes)")
    for t in getattr(schema, table):
        assert re.search(rf"`{t}( \{{|`)", text), f"internal request {t!r} undocumented"


def test_every_relay_request_type_is_documented(doc):
    text = section(doc, "Media: the relay")
    for t in schema.RELAY_REQUESTS:
        assert f"`{t}`" in text, f"relay request {t!r} undocumented"


def test_every_kick_reason_is_documented(doc):
    text = section(doc, "Notices")
    for reason in wire.KICK_REASONS:
        assert f"`{reason}`" in text
