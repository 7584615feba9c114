"""What the interactive bin/chat shows of a conversation besides its messages: who is
typing, who has seen my messages, a channel in the /channels list, an edit or delete.
Pure functions and small trackers with the clock passed in (tests drive them with a
fake one); nodes/cli/chatroom.py feeds them the client's events.
"""
from __future__ import annotations

TYPING_SHOWN = 5.0          # seconds a typing notice counts ("2 is typing…")


class Typing:
    """Who is typing in which channel, for the line the chat prints."""

    def __init__(self, shown: float = TYPING_SHOWN):
        self.shown = shown
        self._at: dict[str, dict[int, float]] = {}

    def typing(self, channel: str, uin: int, now: float) -> str:
        """A typing notice came: the line to show now."""
        self._at.setdefault(channel, {})[uin] = now
        return self.line(channel, now)

    def stopped(self, channel: str, uin: int) -> None:
        """A message from ``uin`` ends its typing."""
        self._at.get(channel, {}).pop(uin, None)

    def line(self, channel: str, now: float) -> str:
        active = sorted(u for u, at in self._at.get(channel, {}).items() if now - at < self.shown)
        if not active:
            return ""
        names = ", ".join(map(str, active))
        return f"  {names} {'is' if len(active) == 1 else 'are'} typing…"


class Seen:
    """Who has read my messages: receipts (``uin`` read up to ``id``) kept per reader, shown
    for the newest of my messages a receipt covers ("#12 seen by 2, 3")."""

    def __init__(self, keep: int = 200):
        self.keep = keep
        self._mine: dict[str, list[int]] = {}           # channel -> my message ids, ascending
        self._read: dict[str, dict[int, int]] = {}      # channel -> reader -> read up to

    def sent(self, channel: str, msg_id: int) -> None:
        mine = self._mine.setdefault(channel, [])
        if not mine or msg_id > mine[-1]:
            mine.append(msg_id)
            del mine[:-self.keep]

    def receipt(self, channel: str, uin: int, read_id: int) -> str:
        """The line to show for a receipt ("" when it covers none of my messages)."""
        readers = self._read.setdefault(channel, {})
        readers[uin] = max(readers.get(uin, 0), read_id)
        covered = [m for m in self._mine.get(channel, []) if m <= read_id]
        if not covered:
            return ""
        newest = covered[-1]
        seen_by = sorted(u for u, upto in readers.items() if upto >= newest)
        return f"  #{newest} seen by {', '.join(map(str, seen_by))}"


def channel_line(item: dict) -> str:
    """One row of /channels: name (title), kind and role, unread, last message."""
    title = f" \"{item['title']}\"" if item.get("title") else ""
    unread = item.get("unread", 0)
    badge = f"{unread}{'+' if item.get('unread_more') else ''} unread" if unread else "read"
    line = f"  {item['channel']}{title} [{item.get('kind', 'room')}, {item.get('role', 'member')}, " \
           f"{item.get('members', '?')} members] {badge}"
    preview = item.get("preview")
    if preview:
        text = "(deleted)" if preview.get("deleted") else preview.get("text", "")
        line += f" -- #{preview['id']} {preview['uin']}: {text}"
    return line


def change_line(event: dict) -> str:
    """An edit or a delete as the chat shows it."""
    where = f"[{event['channel']} #{event['ref']}]"
    if event["t"] == "edit":
        return f"{where} edited by {event['uin']}: {event['text']}"
    return f"{where} deleted by {event['uin']}"
