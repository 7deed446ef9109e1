"""Driving the example from Python: index a folder of PDFs, ask a question. The same calls work
with ``create_client(in_process=True)`` and with a client of a running service."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from examples.pdf_index.graph import (
    INDEX_GRAPH,
    QUERY_GRAPH,
    DocumentStats,
    Hit,
    Question,
    index_graph,
    query_graph,
)
from indexify import File, IndexifyClient

__all__ = ["ask", "index_documents", "register"]

WAIT_SEC = 600.0


def register(client: IndexifyClient) -> None:
    client.register_compute_graph(index_graph())
    client.register_compute_graph(query_graph())


def index_documents(
    client: IndexifyClient, paths: Iterable[Path], index: str
) -> dict[str, DocumentStats]:
    """One invocation of ``pdf_index`` per document, all started before any is awaited; the
    statistics of each document by name."""
    started = {}
    for path in paths:
        pdf = File(
            data=path.read_bytes(),
            mime_type="application/pdf",
            metadata={"name": path.name, "index": index},
        )
        started[path.name] = client.invoke_graph_with_object(INDEX_GRAPH, doc=pdf)
    stats = {}
    for name, invocation in started.items():
        info = client.wait_for_invocation(INDEX_GRAPH, invocation, timeout=WAIT_SEC)
        if info.status != "succeeded":
            raise RuntimeError(f"indexing {name} ended {info.status}: {info}")
        (stats[name],) = client.graph_outputs(INDEX_GRAPH, invocation, "document_stats")
    return stats


def ask(client: IndexifyClient, index: str, question: str, limit: int = 3) -> list[Hit]:
    """The chunks of the index nearest to ``question``, nearest first."""
    invocation = client.invoke_graph_with_object(
        QUERY_GRAPH,
        block_until_done=True,
        question=Question(index=index, text=question, limit=limit),
    )
    hits: list[Hit] = client.graph_outputs(QUERY_GRAPH, invocation, "search")
    return hits
