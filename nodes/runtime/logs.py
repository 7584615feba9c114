"""Structured, levelled logs for nodes and tools, and a rate-limited event logger.

``setup(level, fmt, node_id)`` configures stdlib logging once per process:
``text`` is one human line per record, ``json`` one JSON object per line
(ts, level, node, logger, msg, plus any ``extra={"ev": ...}`` fields), so a
log shipper can index events without parsing prose.

``Events`` is what node cores call for things that happen often
(refusals, logins): the first record of each kind in a window is logged at
once, repeats inside the window are only counted, and the count is logged
when the window ends.  A client hammering a refused send costs one line per
window, not one per request.  State changes (a peer link up/down) are
logged as they happen (``change``): only a subject flapping more than a few
times in a window is held back, and the state it ends in is then logged.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import argparse

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# fields of a LogRecord that are not "extra" context
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

Kind = tuple[str, Hashable]             # (event, key or subject): what is sampled together


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (Unix seconds), level, node, logger, msg and extra fields."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"ts": round(record.created, 3), "level": record.levelname, "node": self.node_id,
               "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "INFO", fmt: str = "text", node_id: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger of this process (replaces earlier handlers)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        who = f" {node_id}" if node_id else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s{who} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def add_log_args(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format, for every command that starts nodes."""
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS,
                        help="lowest level written to the log (default: %(default)s)")
    parser.add_argument("--log-format", default="text", choices=FORMATS,
                        help="text: one readable line per record; json: one JSON object per line "
                             "(default: %(default)s)")


class Events:
    """Log events of a kind at most once per ``window`` seconds each; count the rest.

    A kind is the event name plus its ``key`` (e.g. ``refused`` + the error
    code).  ``clock`` is injectable so the counting can be tested without
    waiting.  Call ``flush()`` from a timer (or at exit) to report counts of
    kinds that went quiet.
    """

    MAX_CHANGES = 4      # state changes of one subject logged one by one per window; more: flapping

    def __init__(self, logger: logging.Logger | str = "events", window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.window = window
        self.clock = clock
        self._open: dict[Kind, list[float]] = {}   # kind -> [window start, repeats not yet logged, level]
        self._states: dict[Kind, _StateWindow] = {}   # (event, subject) -> _StateWindow

    def emit(self, event: str, key: Hashable, level: int = logging.INFO, **ctx: object) -> bool:
        """Log the event unless one of the same kind was logged within the window; True if logged.

        ``ctx`` becomes fields of the JSON record, so it must not use LogRecord
        attribute names (``msg``, ``name``, ``args`` ...).
        """
        kind = (event, key)
        now = self.clock()
        slot = self._open.get(kind)
        if slot is not None and now - slot[0] < self.window:
            slot[1] += 1
            return False
        if slot is not None and slot[1]:
            self._report(kind, slot)
        self._open[kind] = [now, 0, level]
        if self.log.isEnabledFor(level):
            detail = " ".join(f"{k}={v}" for k, v in ctx.items())
            self.log.log(level, f"{event} {_text(key)} {detail}".rstrip(),
                         extra={"ev": event, "key": key, **ctx})
        return True

    def change(self, event: str, subject: Hashable, state: str, level: int = logging.INFO, /, **ctx: object) -> bool:
        """A subject's state changed (a peer link up/down); True if logged.

        Sampling by (subject, state) held a peer's "up" back for a whole window
        when an "up" had been logged in it, so the log said "down" while the link
        was up.  Here a state other than the last one logged is logged at once;
        the same state again is only counted, and so is every change after
        ``MAX_CHANGES`` in a window (a flapping link): when that window ends,
        ``flush`` logs the state it was left in, with the count.
        """
        now = self.clock()
        kind = (event, subject)
        slot = self._states.get(kind)
        if slot is None or now - slot.start >= self.window:
            shown = None
            if slot is not None:
                self._report_state(kind, slot)
                shown = slot.latest[0] if slot.latest is not None else slot.shown
            slot = self._states[kind] = _StateWindow(now, shown)
        if state != slot.shown and slot.logged < self.MAX_CHANGES:
            slot.logged += 1
            slot.shown, slot.latest, slot.held = state, None, 0
            self._log(event, (subject, state), level, ctx)
            return True
        if state != slot.shown or slot.latest is not None:
            slot.held += 1
            slot.latest = (state, level, ctx)
        return False

    def _report_state(self, kind: Kind, slot: _StateWindow) -> None:
        if slot.latest is None:
            return
        event, subject = kind
        state, level, ctx = slot.latest
        detail = " ".join(f"{k}={v}" for k, v in ctx.items())
        self.log.log(level, f"{event} {_text((subject, state))} {detail} (latest of {slot.held} changes in "
                     f"{self.window:g}s not logged one by one)".replace("  ", " "),
                     extra={"ev": event, "key": (subject, state), "changes": slot.held, **ctx})

    def _log(self, event: str, key: Hashable, level: int, ctx: dict[str, object]) -> None:
        if self.log.isEnabledFor(level):
            detail = " ".join(f"{k}={v}" for k, v in ctx.items())
            self.log.log(level, f"{event} {_text(key)} {detail}".rstrip(), extra={"ev": event, "key": key, **ctx})

    def flush(self) -> None:
        """Log the repeat counts of windows that have ended (and forget them)."""
        now = self.clock()
        for kind, slot in list(self._open.items()):
            if now - slot[0] >= self.window:
                if slot[1]:
                    self._report(kind, slot)
                del self._open[kind]
        for kind, changes in list(self._states.items()):
            if now - changes.start >= self.window:
                self._report_state(kind, changes)
                if changes.latest is not None:
                    changes.shown = changes.latest[0]
                changes.start, changes.logged, changes.held, changes.latest = now, 0, 0, None

    def _report(self, kind: Kind, slot: list[float]) -> None:
        event, key = kind
        self.log.log(slot[2],  # type: ignore[arg-type]  # the int level emit stored
                     f"{event} {_text(key)} repeated {slot[1]} more times in {self.window:g}s",
                     extra={"ev": event, "key": key, "repeats": slot[1]})

    # --- the events node cores report ------------------------------------------
    def refused(self, code: str, **ctx: object) -> bool:
        """A request refused with an error code (BAD_FIELD, RATE_LIMITED, ...)."""
        return self.emit("refused", code, logging.INFO, **ctx)

    def login(self, uin: int, device: int, **ctx: object) -> bool:
        return self.emit("login", (uin, device), logging.INFO, uin=uin, device=device, **ctx)

    def logout(self, uin: int, device: int, reason: str = "logout", **ctx: object) -> bool:
        return self.emit("logout", (uin, device), logging.INFO, uin=uin, device=device,
                         reason=reason, **ctx)

    def kicked(self, uin: int, device: int, reason: str, **ctx: object) -> bool:
        return self.emit("kicked", reason, logging.INFO, uin=uin, device=device, **ctx)

    def admin(self, op: str, channel: str, **ctx: object) -> bool:
        """An admin change (channel create/add/remove), sampled per (op, channel)."""
        return self.emit("admin", (op, channel), logging.INFO, op=op, channel=channel, **ctx)

    def peer(self, peer: str, state: str, **ctx: object) -> bool:
        """A node-to-node link came ``up`` or went ``down`` (a warning): logged as it changes."""
        level = logging.WARNING if state == "down" else logging.INFO
        return self.change("peer", peer, state, level, peer=peer, state=state, **ctx)

    def slow_turn(self, ms: float, **ctx: object) -> bool:
        return self.emit("slow_turn", "loop", logging.WARNING, ms=round(ms, 1), **ctx)

    def error(self, what: str, **ctx: object) -> bool:
        return self.emit("error", what, logging.ERROR, **ctx)


class _StateWindow:
    """One subject's state changes in the current window (Events.change)."""
    __slots__ = ("start", "shown", "logged", "held", "latest")

    def __init__(self, start: float, shown: str | None) -> None:
        self.start, self.shown = start, shown     # shown: the state the log last said
        self.logged, self.held = 0, 0             # changes logged / counted in this window
        self.latest: tuple[str, int, dict[str, object]] | None = None  # (state, level, ctx): newest not logged


def _text(key: object) -> str:
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


events = Events()      # the process-wide event logger node code imports: ``from .logs import events``
