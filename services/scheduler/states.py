"""Invocation summaries kept in memory between batches, trusted only while their revision holds.

The partition owner writes every change the scheduler decides, so after a successful save
it keeps the summary it saved, and on the next batch it asks Redis only for the revision (in
the same round trip as the task records its events name): same revision, same summary. Any
doubt (another revision: the API starting an invocation, an executor ending one; a
rebalance) means reading the summary again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from indexify.engine import InvocationState
from services.common.invocations import InvocationRepository, InvocationView
from services.common.state_store import StateStore

__all__ = ["StateCache"]


class StateCache:
    """``invocation id -> (revision, summary)`` of recently saved live invocations (LRU)."""

    def __init__(self, store: StateStore, *, window: int, capacity: int = 1024) -> None:
        self._store = store
        self._window = window
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[int, InvocationState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, InvocationView]:
        """Views of the invocations in ``wanted`` (id -> task ids its events name); a cached
        summary is handed out (and removed: the caller mutates it) when its revision is still
        the stored one."""
        cached = {
            inv: (state, rev)
            for inv in wanted
            if inv in self._entries
            for rev, state in [self._entries.pop(inv)]
        }
        return await self._store.invocations.load_views(wanted, cached, self._window)

    def keep(self, view: InvocationView) -> None:
        """Remember the summary of a view that was saved or left untouched (it becomes a
        summary here, see ``InvocationRepository.saved``); finished invocations are not kept."""
        InvocationRepository.saved(view, view.rev)
        state = view.state
        if state.terminal:
            self._entries.pop(state.invocation_id, None)
            return
        self._entries[state.invocation_id] = (view.rev, state)
        self._entries.move_to_end(state.invocation_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (partitions were revoked: another scheduler may write now)."""
        self._entries.clear()
