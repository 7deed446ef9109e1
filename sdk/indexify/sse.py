"""Server-Sent Events: turn the lines of a ``text/event-stream`` response into events.

Implements the parsing rules of the HTML living standard that matter here: ``event:``,
``data:`` (several lines are joined with newlines), ``id:``, comments (lines starting with
``:``, used as keep-alives) and a blank line that dispatches the event. ``retry:`` and unknown
fields are ignored. An event with no data is not dispatched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ServerSentEvent", "iter_events"]


@dataclass(frozen=True)
class ServerSentEvent:
    """One event: its type (``"message"`` when the server named none), data and id."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def iter_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events in the order the server sent them; an unterminated last event is dropped."""
    event = ""
    data: list[str] = []
    last_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event=event or "message", data="\n".join(data), id=last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
