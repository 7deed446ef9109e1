"""The vector index: one LanceDB table of chunks (document, page, text, vector) in a directory.

LanceDB is embedded: the index is a directory of Lance files, written by whichever worker runs
:func:`add_chunks` and read by whichever runs :func:`search`, so on a service every executor
that runs them must see the same directory (one machine, or a shared file system). Workers of
an executor started as root run as an unprivileged user: the directory must be writable by
them (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from examples.minilm import DIMENSION

__all__ = ["KEY", "TABLE", "Row", "add_chunks", "search"]

TABLE = "chunks"
KEY = ("document", "page", "chunk")
_SCHEMA = pa.schema(
    [
        pa.field("document", pa.string()),
        pa.field("page", pa.int32()),
        pa.field("chunk", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), DIMENSION)),
    ]
)

Row = dict[str, Any]


def _table(uri: str) -> Any:
    """The chunks table at ``uri``, created on first use (by whichever worker comes first:
    ``exist_ok`` makes the others open it)."""
    import lancedb

    return lancedb.connect(uri).create_table(TABLE, schema=_SCHEMA, exist_ok=True)


def add_chunks(uri: str, rows: Sequence[Row]) -> None:
    """Upsert ``rows`` (the schema's fields) into the index at ``uri``, keyed by document,
    page and chunk: writing a page again (a retried task, a document indexed twice) replaces
    its chunks instead of adding duplicates."""
    if rows:
        (
            _table(uri)
            .merge_insert(list(KEY))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(list(rows))
        )


def search(uri: str, vector: Sequence[float], limit: int) -> list[Row]:
    """The ``limit`` chunks nearest to ``vector`` by cosine distance, nearest first; each row
    has the schema's fields but the vector, plus ``_distance``."""
    table = _table(uri)
    hits = table.search(list(vector)).distance_type("cosine").limit(limit).to_list()
    return [{k: v for k, v in hit.items() if k != "vector"} for hit in hits]
