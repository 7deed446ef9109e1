"""The values an invocation ended with, kept from the answer that said it ended.

A blocking invoke and a long poll of the remote client ask the server for an invocation's
final outputs (``with_outputs``): once it succeeded, the values of the functions nothing
follows, when they are few and small. :class:`FinalOutputs` keeps them until
``graph_outputs`` asks for one of those functions, which then needs no request of its own.

Each function's values are handed out once: a second ``graph_outputs`` reads the server, as
does one for an invocation this client replayed or deleted since (:meth:`FinalOutputs.forget`).
The oldest invocations' values are dropped beyond :data:`MAX_INVOCATIONS` invocations or
:data:`MAX_BYTES` bytes (their base64 text), so a client that waits for invocations without
reading their outputs holds a bounded amount.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["MAX_BYTES", "MAX_INVOCATIONS", "FinalOutputs", "OutputItem"]

#: One value as the server lists it: ``content_type`` and ``data`` (base64), with its ``id``.
OutputItem = dict[str, str]

MAX_INVOCATIONS = 1024
MAX_BYTES = 16 * 1024 * 1024

_Key = tuple[str, str]


def _items(values: Any) -> dict[str, list[OutputItem]] | None:
    """``final_outputs`` of an answer as ``function -> items``; None when it has none or is
    not of that shape (then nothing is kept, and the outputs are read as without it)."""
    if not isinstance(values, dict) or not values:
        return None
    for function, items in values.items():
        if not isinstance(function, str) or not isinstance(items, list):
            return None
        for item in items:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("content_type"), str)
                and isinstance(item.get("data"), str)
            ):
                return None
    return values


def _size(values: dict[str, list[OutputItem]]) -> int:
    return sum(len(item["data"]) for items in values.values() for item in items)


class FinalOutputs:
    """``(graph, invocation id) -> function -> values`` (see the module docstring);
    thread-safe."""

    def __init__(self, *, max_invocations: int = MAX_INVOCATIONS, max_bytes: int = MAX_BYTES):
        self.max_invocations = max_invocations
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[_Key, dict[str, list[OutputItem]]] = OrderedDict()
        self._sizes: dict[_Key, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """The base64 text held, in bytes."""
        return self._bytes

    def keep(self, graph: str, invocation_id: str, values: Any) -> None:
        """Keep an answer's ``final_outputs`` (anything else is ignored)."""
        found = _items(values)
        if found is None:
            return
        key = (graph, invocation_id)
        size = _size(found)
        if size > self.max_bytes:
            return
        with self._lock:
            self._drop(key)
            self._kept[key] = dict(found)
            self._sizes[key] = size
            self._bytes += size
            while len(self._kept) > self.max_invocations or self._bytes > self.max_bytes:
                self._drop(next(iter(self._kept)))

    def take(self, graph: str, invocation_id: str, function: str) -> list[OutputItem] | None:
        """The kept values of ``function`` (handed out once), or None if none are kept."""
        key = (graph, invocation_id)
        with self._lock:
            values = self._kept.get(key)
            if values is None or function not in values:
                return None
            items = values.pop(function)
            if not values:
                self._drop(key)
            else:
                size = _size({function: items})
                self._sizes[key] -= size
                self._bytes -= size
            return items

    def forget(self, graph: str, invocation_id: str | None = None) -> None:
        """Drop what is kept of one invocation of ``graph`` (None: of all its invocations):
        it was replayed or deleted."""
        with self._lock:
            if invocation_id is not None:
                self._drop((graph, invocation_id))
                return
            for key in [k for k in self._kept if k[0] == graph]:
                self._drop(key)

    def _drop(self, key: _Key) -> None:
        if self._kept.pop(key, None) is not None:
            self._bytes -= self._sizes.pop(key)
