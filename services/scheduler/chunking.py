"""How the elements of a fan-out are shipped: how many tasks travel in one message (pure).

A fan-out of n elements becomes n tasks, each with its own id, claim, outputs and result. On
the wire they travel as chunks (one :class:`TaskChunkMessage` per chunk) sized so that every
worker slot of the executors gets about :data:`CHUNKS_PER_SLOT` chunks: enough chunks to keep
every worker busy and to even out uneven elements, few enough that the per-message costs
(a Kafka message, a claim round trip, a worker round trip, a result message) are paid once
per chunk and not once per element. :data:`MAX_CHUNK` bounds how much one slow element can
hold back (the elements of a chunk run one after another on one worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["CHUNKS_PER_SLOT", "MAX_CHUNK", "chunk_size", "chunks"]

CHUNKS_PER_SLOT = 4
MAX_CHUNK = 256

_T = TypeVar("_T")


def chunk_size(
    count: int, slots: int, *, per_slot: int = CHUNKS_PER_SLOT, max_chunk: int = MAX_CHUNK
) -> int:
    """Elements per message for ``count`` ready tasks of one function and ``slots`` live
    worker slots (1 means: one task per message)."""
    if count <= 1:
        return 1
    wanted_chunks = max(1, slots) * max(1, per_slot)
    size = -(-count // wanted_chunks)  # ceil
    return max(1, min(max_chunk, size))


def chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    """``items`` cut into consecutive runs of at most ``size`` (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
