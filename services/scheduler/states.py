"""Invocation states kept in memory between batches, trusted only while their revision holds.

Parsing a big invocation state (a 10,000-way fan-out is megabytes of JSON) costs far more than
deciding on it, and the partition owner is the only writer. So after a successful save the
scheduler keeps the state it saved, and on the next batch it asks Redis only for the revision:
same revision, same state. Any doubt (another revision, a rebalance) means loading it again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from indexify.engine import InvocationState
from services.common.errors import PlatformUnavailable
from services.common.state_store import StateStore

__all__ = ["StateCache", "execute"]


async def execute(pipe: Pipeline) -> list[Any]:
    """Run a Redis pipeline built on ``StateStore.redis``, translating connection errors
    (for the few bulk operations ``StateStore`` has no method for)."""
    try:
        return list(await pipe.execute())
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry when it is back") from exc


class StateCache:
    """``invocation id -> (revision, state)`` of recently saved live invocations (LRU)."""

    def __init__(self, store: StateStore, capacity: int = 256) -> None:
        self._store = store
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[int, InvocationState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, invocation_ids: Iterable[str]) -> dict[str, tuple[InvocationState, int]]:
        """The current ``(state, rev)`` of each existing invocation; cached entries are handed
        out (and removed: the caller mutates them) when their revision is still current."""
        ids = list(dict.fromkeys(invocation_ids))
        cached = [inv for inv in ids if inv in self._entries]
        result: dict[str, tuple[InvocationState, int]] = {}
        if cached:
            revs = await self._revisions(cached)
            for inv in cached:
                rev, state = self._entries.pop(inv)
                if revs.get(inv) == rev:
                    result[inv] = (state, rev)
        missing = [inv for inv in ids if inv not in result]
        if missing:
            result.update(await self._store.load_invocations(missing))
        return result

    def keep(self, state: InvocationState, rev: int) -> None:
        """Remember ``state`` as saved at ``rev`` (finished invocations are not kept)."""
        if state.terminal:
            self._entries.pop(state.invocation_id, None)
            return
        self._entries[state.invocation_id] = (rev, state)
        self._entries.move_to_end(state.invocation_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (partitions were revoked: another scheduler may write now)."""
        self._entries.clear()

    async def _revisions(self, invocation_ids: list[str]) -> dict[str, int]:
        names = self._store.names
        pipe = self._store.redis.pipeline(transaction=False)
        for inv in invocation_ids:
            pipe.hget(names.invocation_key(inv), "rev")
        try:
            rows = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise PlatformUnavailable(
                f"Redis is unavailable ({exc}); retry when it is back"
            ) from exc
        return {
            inv: int(raw) for inv, raw in zip(invocation_ids, rows, strict=True) if raw is not None
        }
